import MarketCore
import MarketProtocol

/// A market task's state as this home records it: the market's own states, and the steps before
/// and beside them that only this participant knows. Stored as its text; a text this build does
/// not know (written by a newer one) reads back as `unknown`.
public enum LocalTaskState: TolerantText {
    /// A state the market reported (an ack, `task.assigned`, a settlement) or that follows from
    /// what this participant sent.
    case market(TaskState)
    /// Requester: written before `task.post` goes out, so that a crash leaves a trace.
    case posting
    /// Requester: the market refused the post.
    case refused
    /// Provider: the account hit its limit and the task went back to the market.
    case handedBack
    /// Provider: this provider (or its policy) declined the job.
    case rejected
    /// Provider: the job could not be run or its result not delivered.
    case failed
    /// Provider: the requester's payload, workspace or conversation is being read. Left behind
    /// only by a process that stopped while reading them: what the market sends again after
    /// the restart is refused instead of read into the same stop.
    case readingInputs
    case unknown(String)

    public static let open = Self.market(.open)
    public static let assigned = Self.market(.assigned)
    public static let running = Self.market(.running)
    public static let delivered = Self.market(.delivered)
    public static let disputed = Self.market(.disputed)
    public static let settled = Self.market(.settled)
    public static let refunded = Self.market(.refunded)
    public static let cancelled = Self.market(.cancelled)

    public init(rawValue: String) {
        switch rawValue {
        case "posting": self = .posting
        case "refused": self = .refused
        case "handed-back": self = .handedBack
        case "rejected": self = .rejected
        case "failed": self = .failed
        case "reading-inputs": self = .readingInputs
        default: self = TaskState(rawValue: rawValue).map { .market($0) } ?? .unknown(rawValue)
        }
    }

    public var rawValue: String {
        switch self {
        case .market(let state): state.rawValue
        case .posting: "posting"
        case .refused: "refused"
        case .handedBack: "handed-back"
        case .rejected: "rejected"
        case .failed: "failed"
        case .readingInputs: "reading-inputs"
        case .unknown(let text): text
        }
    }

    /// Nothing more happens to the task at the market for this participant.
    public var isFinal: Bool {
        switch self {
        case .market(let state): state.isFinal
        case .refused, .handedBack, .rejected, .failed: true
        case .posting, .readingInputs, .unknown: false
        }
    }
}

extension LocalTaskState {
    /// The state a settlement reports.
    public init(_ state: WireEnum<TaskState>) {
        self = state.known.map { .market($0) } ?? .unknown(state.rawValue)
    }

    /// The state an `ack` to `task.post` reports.
    public init(ack: AckState) {
        if case .task(let state) = ack { self = .market(state) } else { self = .unknown(ack.rawValue) }
    }
}
