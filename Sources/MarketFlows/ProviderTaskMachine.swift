import Foundation
import JobRunner
import MarketCore
import MarketProtocol
import Participant
import Workspace

/// What the provider does for one task it won, decided without I/O, like `TaskStateMachine` on
/// the market's side. `ProviderDaemon` turns each frame (and each end of the job it ran) into an
/// `Event` at the edge — the requester's signature, the seal and the blobs are checked there —,
/// applies it, and performs the actions returned, in order.
public struct ProviderTaskMachine: Sendable {
    public enum Phase: Sendable, Equatable {
        /// Won; waiting for the payload.
        case assigned
        /// The payload is in; its workspace or conversation is still coming.
        case awaitingInputs
        case running
        /// The job ended here (result sent, handed back, rejected or failed).
        case ended
    }

    /// What the provider is like as the payload comes.
    public struct Conditions: Sendable, Equatable {
        public var optedOut = false
        public var stopping = false
        /// The backend runs Claude Code (it can continue a conversation).
        public var runsClaude = true
        public init(optedOut: Bool = false, stopping: Bool = false, runsClaude: Bool = true) {
            self.optedOut = optedOut
            self.stopping = stopping
            self.runsClaude = runsClaude
        }
    }

    /// How a job this provider ran ended.
    public enum JobEnd: Sendable, Equatable {
        /// The result went to the requester.
        case delivered(summary: String)
        /// The account hit its limit: back to the market, no fault.
        case handedBack(reason: String)
        /// The provider stopped before the job finished.
        case stopped
        /// The provider's side failed (`sent` is what the market is told, when not the reason).
        case failedHere(reason: String, sent: String?)
        /// The job was refused before it ran (consent, limits, approval): the requester's loss.
        case refused(reason: String)
    }

    public enum Event: Sendable {
        /// `task.assigned` to this provider, the requester's key document verified.
        case assigned(requester: String, price: Int64)
        case assignedUnverified(problem: String)
        /// `payload.deliver`, signed by the requester and opened with this provider's keys.
        case payload(JobContent.Payload, Conditions)
        /// A payload whose signature does not verify: said and audited, nothing else.
        case payloadUnsigned(problem: String)
        /// A payload, signed, that does not open or names another task.
        case payloadUnreadable(problem: String)
        /// Every piece of the workspace and conversation arrived and was read within the limits.
        case inputsOpened(workspace: WorkspaceTree?, conversation: ClaudeTranscript?)
        case inputsRefused(reason: String)
        /// This home shows the inputs were being read when the provider last stopped: reading
        /// them again could stop it again, in a loop, as the market sends them after each restart.
        case inputsStoppedTheProvider
        /// The inputs did not arrive whole within `seconds` of the payload.
        case inputsLate(seconds: Int)
        case jobEnded(JobEnd)
        case dispute(reason: String)
        case settlement(SettlementBody, earned: Int64)
    }

    public enum Action: Sendable {
        /// Record the task in this home the first time it is won.
        case recordWon(requester: String, price: Int64)
        case record(LocalTaskState, note: String? = nil)
        case note(String)
        case audit(kind: String, details: [String: String])
        /// `job.rejected` to the market with the reason (the requester's side, no fault).
        case reject(reason: String)
        /// Wait for the inputs the payload names, and give up after the workspace wait.
        case awaitInputs
        /// Run the job.
        case start(JobContent.Payload, workspace: WorkspaceTree?, conversation: ClaudeTranscript?)
        /// `job.failed` (the market re-opens the task) or `job.handback`, with the reason.
        case tellMarket(MessageType, reason: String)
        /// Everything kept for the task goes: it is over here, or back on the book.
        case forget
    }

    public let taskId: String
    public private(set) var phase: Phase = .assigned
    public private(set) var requester: String?
    /// The payload whose inputs are still coming.
    public private(set) var awaiting: JobContent.Payload?

    public init(taskId: String) { self.taskId = taskId }

    public mutating func apply(_ event: Event) -> [Action] {
        switch event {
        case .assigned(let requester, let price):
            let first = self.requester == nil
            self.requester = requester
            guard first else { return [] }
            return [
                .note("won task \(taskId) from \(requester) at \(Credits(micro: price))"),
                .recordWon(requester: requester, price: price),
            ]
        case .assignedUnverified(let problem):
            return end(rejecting: "the requester's key document does not verify: \(problem)")
        case .payload(let payload, let conditions):
            guard phase == .assigned else { return [] }  // sent again after a reconnect
            if conditions.optedOut || conditions.stopping {
                return end(
                    rejecting: conditions.optedOut ? "the provider has opted out" : "the provider is stopping")
            }
            if payload.conversation != nil && !conditions.runsClaude {
                return end(
                    rejecting: "this provider runs a command, not Claude Code: it cannot continue a conversation")
            }
            guard payload.workspace != nil || payload.conversation != nil else {
                phase = .running
                return [.start(payload, workspace: nil, conversation: nil)]
            }
            phase = .awaitingInputs
            awaiting = payload
            var parts: [String] = []
            if let info = payload.workspace {
                parts.append("its workspace (\(info.files) files, \(info.bytes) bytes, \(info.blob.chunks) pieces)")
            }
            if let info = payload.conversation {
                parts.append("its conversation (\(info.turns) turns, \(info.blob.bytes) bytes)")
            }
            return [.note("task \(taskId): waiting for " + parts.joined(separator: " and ")), .awaitInputs]
        case .payloadUnsigned(let problem):
            return [
                .note("refused a payload for task \(taskId): \(problem)"),
                .audit(kind: "market.payload-refused", details: ["task": taskId, "reason": problem]),
            ]
        case .payloadUnreadable(let problem):
            guard phase == .assigned else { return [] }
            return end(rejecting: "the payload could not be opened with this provider's keys: \(problem)")
        case .inputsOpened(let workspace, let conversation):
            guard phase == .awaitingInputs, let payload = awaiting else { return [] }
            phase = .running
            awaiting = nil
            return [.start(payload, workspace: workspace, conversation: conversation)]
        case .inputsRefused(let reason):
            // Pieces that contradict each other may come before their payload.
            guard phase == .assigned || phase == .awaitingInputs else { return [] }
            awaiting = nil
            return end(rejecting: reason)
        case .inputsStoppedTheProvider:
            guard phase == .assigned else { return [] }
            return end(
                rejecting:
                    "this provider stopped while it read the requester's inputs for this task; they are refused rather than read again"
            )
        case .inputsLate(let seconds):
            guard phase == .awaitingInputs, let payload = awaiting else { return [] }
            awaiting = nil
            let what = payload.workspace != nil ? "workspace" : "conversation"
            return end(rejecting: "the \(what) did not arrive whole within \(seconds) s of its payload")
        case .jobEnded(let end):
            phase = .ended
            switch end {
            case .delivered(let summary):
                return [.record(.delivered), .note("task \(taskId) \(summary); result sent")]
            case .handedBack(let reason):
                return [
                    .note("handing task \(taskId) back: \(reason)"), .record(.handedBack, note: reason),
                    .audit(kind: "market.handed-back", details: ["task": taskId, "reason": reason]),
                    .tellMarket(.jobHandback, reason: reason),
                ]
            case .stopped:
                return [
                    .record(.handedBack),
                    .tellMarket(.jobFailed, reason: "the provider stopped before the job finished"),
                ]
            case .failedHere(let reason, let sent):
                return [
                    .note("task \(taskId) failed on this provider: \(reason)"), .record(.failed, note: reason),
                    .tellMarket(.jobFailed, reason: sent ?? reason),
                ]
            case .refused(let reason):
                return self.end(rejecting: reason)
            }
        case .dispute(let reason):
            return [
                .record(.disputed, note: reason), .note("task \(taskId) disputed: \(reason)"),
                .audit(kind: "market.disputed", details: ["task": taskId, "reason": reason]),
            ]
        case .settlement(let settlement, let earned):
            let state = LocalTaskState(settlement.state)
            var actions: [Action] = [
                .record(state),
                .note(
                    "task \(taskId) \(settlement.state)" + (earned > 0 ? ": earned \(Credits(micro: earned))" : "")
                        + (settlement.reason.map { " (\($0))" } ?? "")),
            ]
            if state.isFinal || state == .open {
                actions.append(.forget)
            }
            return actions
        }
    }

    /// The job is rejected: said, recorded, and `job.rejected` to the market.
    private mutating func end(rejecting reason: String) -> [Action] {
        phase = .ended
        return [.note("rejected task \(taskId): \(reason)"), .record(.rejected, note: reason), .reject(reason: reason)]
    }
}
