/// Where a task is in its life. `settled`, `refunded` and `cancelled` are final: a task in a
/// final state holds nothing in escrow.
public enum TaskState: String, Codable, Sendable, CaseIterable {
    /// Posted, its `cap` held in escrow, waiting for a provider.
    case open
    /// A provider won it; waiting for the sealed payload and the provider's approval.
    case assigned
    /// The provider approved it and runs it.
    case running
    /// The provider sent a signed result; waiting for the requester's accept or dispute.
    case delivered
    /// The requester disputed the result; the escrow waits for the operator or the dispute window.
    case disputed
    case settled
    case refunded
    case cancelled

    public var isFinal: Bool { self == .settled || self == .refunded || self == .cancelled }
    /// States in which the task occupies one of its provider's slots.
    public var holdsSlot: Bool { self == .assigned || self == .running }
}

/// One task as the market keeps it. Public fields only: the payload and result are ciphertext
/// kept elsewhere, and the market cannot read them anyway.
public struct MarketTask: Codable, Sendable, Equatable {
    public var id: String
    public var requester: PeerID
    /// The requester's maximum price as posted.
    public var maxPrice: Credits
    /// What the task holds in escrow, and so the most any provider may ask: `maxPrice` from the
    /// post until the task ends, whoever had it and lost it; zero once final. (A task assigned in
    /// books from before the escrow stayed whole holds only its first winner's price: its
    /// difference went back then, and it is offered again at no more than that.)
    public var cap: Credits
    /// The minimum provider reputation (0…1).
    public var minReputation: Double
    public var model: String?
    /// The job's own wall-clock limit, seconds.
    public var timeoutSeconds: Int64
    public var state: TaskState
    public var provider: PeerID?
    public var price: Credits?
    public var createdMs: Int64
    public var updatedMs: Int64
    /// When the current state times out (open: expiry; assigned: approval; running: run limit;
    /// delivered: acceptance window; disputed: dispute window). Nil in a final state.
    public var deadlineMs: Int64?
    public var rejections: Int
    public var faults: Int
    /// Providers that already had this task and lost it (rejection or fault): never re-matched to it.
    public var excluded: [PeerID]
    /// Hex SHA-256 of the result plaintext as the provider signed it.
    public var resultHash: String?
    /// Why the task ended as it did (or why it was re-opened), for people.
    public var reason: String?
    /// The requester's dispute, if any.
    public var dispute: String?
    /// A workspace job's sizes, as posted (nil: a prompt alone).
    public var workspaceBytes: Int64?
    public var workspaceFiles: Int64?
    public var workspaceArchiveBytes: Int64?
    /// A follow-up's transcript size, as posted (nil: a new conversation or no claude job).
    public var conversationBytes: Int64?

    public init(
        id: String, requester: PeerID, maxPrice: Credits, minReputation: Double, model: String?,
        timeoutSeconds: Int64, createdMs: Int64, deadlineMs: Int64
    ) {
        self.id = id
        self.requester = requester
        self.maxPrice = maxPrice
        self.cap = maxPrice
        self.minReputation = minReputation
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.state = .open
        self.createdMs = createdMs
        self.updatedMs = createdMs
        self.deadlineMs = deadlineMs
        self.rejections = 0
        self.faults = 0
        self.excluded = []
    }

    public func isParty(_ peer: PeerID) -> Bool { peer == requester || peer == provider }
}
