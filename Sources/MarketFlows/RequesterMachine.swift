import Foundation
import JobRunner
import MarketCore
import MarketProtocol
import Participant
import Workspace

/// What the requester does for one task, decided without I/O, like `TaskStateMachine` on the
/// market's side. `Requester` turns each frame into an `Event` at the edge (signatures, seals
/// and hashes are checked there; a frame that does not check out is no event), applies it, and
/// performs the actions returned, in order.
public struct RequesterMachine: Sendable {
    /// A frame about the task, checked.
    public enum Event: Sendable {
        /// `task.assigned` to this requester; the provider's key document verified.
        case assigned(provider: String, price: Int64)
        /// `task.assigned` naming a provider whose key document does not verify.
        case assignedUnverified(provider: String, problem: String)
        /// `job.approved`, signed by the assigned provider.
        case approved
        /// A `job.event` batch, signed and opened.
        case events(seq: Int, items: [JobContent.Item])
        /// `job.result`, signed by the provider, opened, and matching the hash it signed.
        case result(JobContent.Result, hash: String)
        /// `job.result` that does not check out.
        case resultRefused(problem: String)
        /// Every blob the result names arrived and matched it; what was read from each.
        case blobsOpened(patch: WorkspacePatch?, transcript: ClaudeTranscript?, transcriptProblem: String?)
        /// A blob the result names does not match it.
        case blobsRefused(problem: String)
        /// `job.rejected`, `job.failed` or `job.handback`, signed by the provider: it let the task go.
        case providerLeft(MessageType, reason: String)
        case settlement(SettlementBody)
        /// A frame about the task whose body the protocol's rules refuse: said, not acted on.
        case frameDropped(reason: String)
    }

    /// What `Requester` does, in order.
    public enum Action: Sendable {
        /// Record the task's state in this home (with what else is known).
        case record(LocalTaskState, counterparty: String? = nil, price: Int64? = nil, note: String? = nil)
        case report(RequesterUpdate)
        /// Seal the prompt (and workspace, and conversation) to the assigned provider and queue it.
        case deliverPayload
        /// Keep the result frame for `result --task-id`, with its hash when it checked out.
        case storeResult(hash: String?)
        /// Gather the blobs the result names; once all are in, they are opened into an event.
        case collectBlobs
        case audit(kind: String, details: [String: String])
        case accept
        case dispute(reason: String)
        /// Following ends here, with `outcome`.
        case finish
    }

    public let taskId: String
    /// Accept a result that checks out and succeeded.
    public let acceptsResults: Bool
    /// Stop following once the payload is on its way (`submit` without `--wait`).
    public let stopsAtPayload: Bool
    public private(set) var outcome: RequesterOutcome
    /// The provider assigned now, whose frames count; nil before assignment and after it let go.
    public private(set) var provider: String?
    /// The next event batch expected: an older or repeated one is dropped.
    public private(set) var nextSeq = 0
    /// A result whose blobs are still coming.
    public private(set) var awaitingBlobs: JobContent.Result?

    public init(taskId: String, accepts: Bool, stopsAtPayload: Bool = false) {
        self.taskId = taskId
        self.acceptsResults = accepts
        self.stopsAtPayload = stopsAtPayload
        outcome = RequesterOutcome(taskId: taskId, state: .open)
    }

    public mutating func apply(_ event: Event) -> [Action] {
        switch event {
        case .assigned(let provider, let price):
            self.provider = provider
            nextSeq = 0
            outcome.provider = provider
            let actions: [Action] = [
                .record(.assigned, counterparty: provider, price: price),
                .report(.assigned(provider: provider, price: price)), .deliverPayload,
            ]
            guard stopsAtPayload else { return actions }
            outcome.state = .assigned
            return actions + [.finish]
        case .assignedUnverified(let provider, let problem):
            // Nothing is sealed to it; the approval timeout re-opens the task.
            return [.report(.badResult(provider: provider, problem: "its key document does not verify: \(problem)"))]
        case .approved:
            guard let provider else { return [] }
            return [.record(.running), .report(.approved(provider: provider))]
        case .events(let seq, let items):
            guard provider != nil, seq >= nextSeq else { return [] }
            nextSeq = seq + 1
            return [.report(.items(items))]
        case .result(let result, let hash):
            guard let provider else { return [] }
            outcome.result = result
            var actions: [Action] = [.storeResult(hash: hash), .report(.result(result, provider: provider))]
            if result.patch?.blob != nil || result.transcript?.blob != nil {
                awaitingBlobs = result
                return actions + [.collectBlobs]
            }
            if let transcript = result.transcript {
                actions.append(.report(.noTranscript(transcript.error ?? "the job left no transcript")))
            }
            return actions + settle(result)
        case .resultRefused(let problem):
            guard let provider else { return [] }
            return [
                .storeResult(hash: nil), .report(.badResult(provider: provider, problem: problem)),
                .audit(
                    kind: "market.result-refused", details: ["task": taskId, "provider": provider, "reason": problem]),
            ] + dispute("the result does not check out: \(problem)", note: problem)
        case .blobsOpened(let patch, let transcript, let transcriptProblem):
            guard let result = awaitingBlobs else { return [] }
            awaitingBlobs = nil
            var actions: [Action] = []
            if let patch {
                outcome.patch = patch
                actions.append(.report(.patch(patch)))
            }
            if let transcript {
                outcome.transcript = transcript
                actions.append(.report(.transcript(transcript)))
            } else if let transcriptProblem {
                actions.append(.report(.noTranscript("the transcript was not kept: \(transcriptProblem)")))
            }
            return actions + settle(result)
        case .blobsRefused(let problem):
            guard awaitingBlobs != nil, let provider else { return [] }
            awaitingBlobs = nil
            return [.report(.badResult(provider: provider, problem: problem))] + dispute(problem, note: problem)
        case .providerLeft(let type, let reason):
            guard let provider else { return [] }
            self.provider = nil
            nextSeq = 0
            let update: RequesterUpdate =
                switch type {
                case .jobRejected: .rejected(provider: provider, reason: reason)
                case .jobHandback: .handedBack(provider: provider, reason: reason)
                default: .failed(provider: provider, reason: reason)
                }
            return [.report(update)]
        case .frameDropped(let reason):
            return [.report(.frameDropped(reason))]
        case .settlement(let settlement):
            outcome.state = LocalTaskState(settlement.state)
            var actions: [Action] = [
                .record(outcome.state, note: settlement.reason), .report(.settlement(settlement)),
            ]
            if outcome.state.isFinal {
                actions.append(
                    .audit(
                        kind: "market.\(settlement.state)",
                        details: ["task": taskId, "reason": settlement.reason ?? ""]))
                actions.append(.finish)
            } else if outcome.state == .disputed {
                actions.append(.finish)
            }
            return actions
        }
    }

    /// Only a job that succeeded (and, for a workspace job, whose patch could be made) is
    /// accepted unasked; any other ending is the requester's call (`accept` or `dispute`),
    /// settled by the acceptance window otherwise.
    private mutating func settle(_ result: JobContent.Result) -> [Action] {
        if acceptsResults && result.state == .known(.succeeded) && result.patch?.error == nil { return [.accept] }
        outcome.state = .delivered
        return [.record(.delivered), .finish]
    }

    /// A dispute moves no money until the operator decides: nothing more to wait for.
    private mutating func dispute(_ reason: String, note: String) -> [Action] {
        outcome.state = .disputed
        return [.dispute(reason: String(reason.prefix(1000))), .record(.disputed, note: note), .finish]
    }
}
