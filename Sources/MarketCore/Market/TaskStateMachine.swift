import Foundation

/// Something that happens to a task. `by` is the authenticated peer that asked for it.
public enum TaskEvent: Sendable, Equatable {
    case assign(provider: PeerID, price: Credits)
    case cancel(by: PeerID)
    case approve(by: PeerID)
    case reject(by: PeerID, reason: String)
    case deliver(by: PeerID, resultHash: String)
    case accept(by: PeerID)
    case dispute(by: PeerID, reason: String)
    case fail(by: PeerID, reason: String)
    /// The provider's account hit its limit (a declared capacity stop): the task goes to the
    /// next provider within what is in escrow (the requester's maximum), unpaid, with no fault
    /// counted against the provider's reputation — but counted, like a rejection, against the
    /// task's rematches.
    case handBack(by: PeerID, reason: String)
    /// The provider stopped sending heartbeats.
    case providerSilent
    /// The clock passed `deadlineMs`.
    case deadlinePassed
    /// The approval deadline passed on an assigned task whose requester never delivered the
    /// payload: nothing the provider could approve, so the requester is refunded and no one's
    /// reputation moves.
    case payloadMissing
    /// The operator decides a dispute.
    case resolve(forProvider: Bool, memo: String)

    /// The peer that asked, for events a party sends.
    public var actor: PeerID? {
        switch self {
        case .cancel(let by), .approve(let by), .reject(let by, _), .deliver(let by, _), .accept(let by),
            .dispute(let by, _), .fail(let by, _), .handBack(let by, _):
            by
        case .assign, .providerSilent, .deadlinePassed, .payloadMissing, .resolve: nil
        }
    }

    public var name: String {
        switch self {
        case .assign: "assign"
        case .cancel: "task.cancel"
        case .approve: "job.approved"
        case .reject: "job.rejected"
        case .deliver: "job.result"
        case .accept: "job.accept"
        case .dispute: "job.dispute"
        case .fail: "job.failed"
        case .handBack: "job.handback"
        case .providerSilent: "provider silent"
        case .deadlinePassed: "deadline"
        case .payloadMissing: "payload missing"
        case .resolve: "resolve"
        }
    }
}

/// A finished outcome that changes a reputation: `peer` did well or not, as seen by its counterparty.
public struct ReputationOutcome: Sendable, Equatable, Codable {
    public var peer: PeerID
    public var success: Bool
    public var taskID: String
    public var role: String

    public init(peer: PeerID, success: Bool, taskID: String, role: String) {
        self.peer = peer
        self.success = success
        self.taskID = taskID
        self.role = role
    }
}

/// What one event does: the task as it is afterwards, the ledger rows to write in the same
/// transaction, and the reputation outcomes to record.
public struct TaskTransition: Sendable, Equatable {
    public var before: TaskState
    public var task: MarketTask
    public var movements: [Movement]
    public var outcomes: [ReputationOutcome]
    /// True when this settled a job for the provider (its settled count grows by one).
    public var providerSettled: Bool
    /// True when the task went back to `open` for another provider.
    public var reopened: Bool
    /// The provider that handed the task back for its capacity (counted, with no blame).
    public var handedBackBy: PeerID? = nil
}

/// What settlement needs to know about the provider, read in the same transaction.
public struct ProviderStanding: Sendable, Equatable {
    public var settledJobs: Int
    public var heldBack: Credits

    public init(settledJobs: Int, heldBack: Credits) {
        self.settledJobs = settledJobs
        self.heldBack = heldBack
    }
}

/// The task lifecycle (docs/PROTOCOL.md, "Task states and money"): a pure function from a task, an event
/// and the time to a transition or a refusal. Every state change names its ledger movements.
///
/// ```
/// open ─assign→ assigned ─approve→ running ─deliver→ delivered ─accept / window→ settled
///  │cancel        │reject (re-open once)  │fail, silent, timeout (re-open ≤ 3×)   │dispute→ disputed
///  ↓              ↓ then refunded         ↓ then refunded                         ↓ operator / window
/// cancelled    refunded                refunded                           settled or refunded
/// open ─expiry→ refunded
/// ```
public struct TaskStateMachine: Sendable {
    public let rules: MarketRules

    public init(rules: MarketRules) {
        self.rules = rules
    }

    public func apply(
        _ event: TaskEvent, to task: MarketTask, nowMs: Int64, provider standing: ProviderStanding? = nil
    ) throws(MarketError) -> TaskTransition {
        // A stranger learns nothing about the task, not even its state.
        if let actor = event.actor, !task.isParty(actor) {
            throw MarketError(.notAParty, "\(actor) is not a party to task \(task.id)")
        }
        var next = task
        next.updatedMs = nowMs
        var transition = TaskTransition(
            before: task.state, task: next, movements: [], outcomes: [], providerSettled: false, reopened: false)
        switch (event, task.state) {
        case (.assign(let provider, let price), .open):
            guard provider != task.requester else { throw MarketError(.ownTask, "a provider never takes its own task") }
            guard !task.excluded.contains(provider) else {
                throw MarketError(.excludedProvider, "provider \(provider) already lost task \(task.id)")
            }
            guard price.micro > 0 else { throw MarketError(.invalidAmount, "price \(price) must be above zero") }
            guard price <= task.cap else {
                throw MarketError(.priceAboveMax, "price \(price) is above the task's maximum \(task.cap)")
            }
            // No money moves: the escrow stays whole (`cap`), so that should this provider hand
            // the task back or fail, the next may ask anything up to the requester's maximum.
            // What the price leaves over goes back at settlement.
            transition.task.state = .assigned
            transition.task.provider = provider
            transition.task.price = price
            transition.task.deadlineMs = nowMs + rules.approvalTimeoutMs

        case (.cancel(let by), .open):
            try requireRequester(by, task, event)
            try refund(&transition, reason: "cancelled by the requester", state: .cancelled)

        case (.approve(let by), .assigned):
            try requireProvider(by, task, event)
            transition.task.state = .running
            transition.task.deadlineMs = nowMs + task.timeoutSeconds * 1000 + rules.runGraceMs

        case (.reject(let by, let reason), .assigned):
            try requireProvider(by, task, event)
            transition.task.rejections += 1
            let again = transition.task.rejections <= rules.maxRejectionRematches
            try loseProvider(&transition, nowMs: nowMs, reopen: again, reason: "rejected by the provider: \(reason)")

        case (.deliver(let by, let hash), .running):
            try requireProvider(by, task, event)
            guard hash.utf8.count == 64,
                hash.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
            else { throw MarketError(.invalidBody, "resultHash must be 64 lowercase hex digits (SHA-256)") }
            transition.task.state = .delivered
            transition.task.resultHash = hash
            transition.task.deadlineMs = nowMs + rules.acceptanceWindowMs

        case (.accept(let by), .delivered):
            try requireRequester(by, task, event)
            try settle(&transition, standing: standing, reason: "accepted by the requester")
            transition.outcomes.append(
                ReputationOutcome(peer: task.requester, success: true, taskID: task.id, role: "requester"))

        case (.dispute(let by, let reason), .delivered):
            try requireRequester(by, task, event)
            guard !reason.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
                throw MarketError(.invalidBody, "a dispute needs a reason")
            }
            transition.task.state = .disputed
            transition.task.dispute = reason
            transition.task.deadlineMs = nowMs + rules.disputeWindowMs

        case (.fail(let by, let reason), .assigned), (.fail(let by, let reason), .running):
            try requireProvider(by, task, event)
            try fault(&transition, nowMs: nowMs, reason: "failed: \(reason)")

        case (.handBack(let by, let reason), .assigned), (.handBack(let by, let reason), .running):
            try requireProvider(by, task, event)
            transition.task.rejections += 1
            transition.handedBackBy = by
            let again = transition.task.rejections <= rules.maxRejectionRematches
            try loseProvider(
                &transition, nowMs: nowMs, reopen: again, reason: "handed back by the provider (capacity): \(reason)")

        case (.providerSilent, .assigned), (.providerSilent, .running):
            try fault(&transition, nowMs: nowMs, reason: "the provider went silent")

        case (.deadlinePassed, _):
            guard let deadline = task.deadlineMs, nowMs >= deadline else {
                throw MarketError(.invalidState, "task \(task.id) has not reached its deadline")
            }
            switch task.state {
            case .open:
                try refund(&transition, reason: "no provider took it before it expired", state: .refunded)
            case .assigned:
                try fault(&transition, nowMs: nowMs, reason: "the provider did not approve in time")
            case .running:
                try fault(&transition, nowMs: nowMs, reason: "the job ran past its time limit")
            case .delivered:
                try settle(&transition, standing: standing, reason: "the acceptance window passed")
            case .disputed:
                try settle(&transition, standing: standing, reason: "the dispute window passed without a ruling")
            case .settled, .refunded, .cancelled:
                throw MarketError(.invalidState, "task \(task.id) is already \(task.state.rawValue)")
            }

        case (.payloadMissing, .assigned):
            guard let deadline = task.deadlineMs, nowMs >= deadline else {
                throw MarketError(.invalidState, "task \(task.id) has not reached its deadline")
            }
            try refund(
                &transition, reason: "the requester never delivered the payload before the approval deadline",
                state: .refunded)

        case (.resolve(let forProvider, let memo), .disputed):
            if forProvider {
                try settle(&transition, standing: standing, reason: "dispute resolved for the provider: \(memo)")
                transition.outcomes.append(
                    ReputationOutcome(peer: task.requester, success: false, taskID: task.id, role: "requester"))
            } else {
                try refund(&transition, reason: "dispute resolved for the requester: \(memo)", state: .refunded)
                if let provider = task.provider {
                    transition.outcomes.append(
                        ReputationOutcome(peer: provider, success: false, taskID: task.id, role: "provider"))
                }
            }

        default:
            throw MarketError(
                .invalidState, "\(event.name) is not allowed while task \(task.id) is \(task.state.rawValue)")
        }
        if transition.task.state.isFinal { transition.task.deadlineMs = nil }
        return transition
    }

    private func requireRequester(_ peer: PeerID, _ task: MarketTask, _ event: TaskEvent) throws(MarketError) {
        guard peer == task.requester else {
            throw MarketError(.notAParty, "only the requester of task \(task.id) may send \(event.name)")
        }
    }

    private func requireProvider(_ peer: PeerID, _ task: MarketTask, _ event: TaskEvent) throws(MarketError) {
        guard peer == task.provider else {
            throw MarketError(.notAParty, "only the assigned provider of task \(task.id) may send \(event.name)")
        }
    }

    /// Everything in escrow goes back to the requester.
    private func refund(_ transition: inout TaskTransition, reason: String, state: TaskState) throws(MarketError) {
        let task = transition.task
        if task.cap.micro > 0 {
            transition.movements.append(
                Movement(
                    from: .escrow(taskID: task.id), to: .peer(task.requester), amount: task.cap, kind: .refund,
                    taskID: task.id, memo: reason))
        }
        transition.task.state = state
        transition.task.reason = reason
        transition.task.cap = .zero
    }

    /// A provider fault: its reputation records a failure; the task re-opens or is refunded.
    private func fault(_ transition: inout TaskTransition, nowMs: Int64, reason: String) throws(MarketError) {
        if let provider = transition.task.provider {
            transition.outcomes.append(
                ReputationOutcome(peer: provider, success: false, taskID: transition.task.id, role: "provider"))
        }
        transition.task.faults += 1
        let again = transition.task.faults <= rules.maxFaultRematches
        try loseProvider(&transition, nowMs: nowMs, reopen: again, reason: reason)
    }

    /// The provider loses the task, and never gets it again: back to open for any other provider
    /// within what is in escrow (the requester's whole maximum), or refunded.
    private func loseProvider(
        _ transition: inout TaskTransition, nowMs: Int64, reopen: Bool, reason: String
    ) throws(MarketError) {
        if let provider = transition.task.provider { transition.task.excluded.append(provider) }
        guard reopen else {
            try refund(&transition, reason: reason, state: .refunded)
            return
        }
        transition.task.state = .open
        transition.task.provider = nil
        transition.task.price = nil
        transition.task.reason = reason
        transition.task.deadlineMs = nowMs + rules.openTimeoutMs
        transition.reopened = true
    }

    /// The escrow empties: of the price, the fee to the market, a new provider's hold-back to its
    /// held account, the rest to the provider; what is left (`cap − price`) back to the requester;
    /// reaching the hold-back threshold releases what was held.
    private func settle(
        _ transition: inout TaskTransition, standing: ProviderStanding?, reason: String
    ) throws(MarketError) {
        let task = transition.task
        guard let provider = task.provider, let price = task.price else {
            throw MarketError(.invalidState, "task \(task.id) has no provider to pay")
        }
        guard let standing else { throw MarketError(.internalError, "settlement needs the provider's standing") }
        // A task assigned before the escrow stayed whole got its difference back then: its cap is
        // its price, and nothing is left over now.
        guard price <= task.cap else {
            throw MarketError(
                .internalError,
                "task \(task.id) holds \(task.cap) in escrow, less than its price \(price): it cannot settle")
        }
        let difference = try checked { () throws(CreditsError) in try task.cap.subtracting(price) }
        let escrow = Account.escrow(taskID: task.id)
        let fee = MarketRules.share(of: price, basisPoints: rules.feeBasisPoints)
        let earned = try checked { () throws(CreditsError) in try price.subtracting(fee) }
        let settledAfter = standing.settledJobs + 1
        let stillNew = settledAfter < rules.holdbackJobs
        let held = stillNew ? MarketRules.share(of: earned, basisPoints: rules.holdbackBasisPoints) : .zero
        let paid = try checked { () throws(CreditsError) in try earned.subtracting(held) }
        var rows: [Movement] = []
        if fee.micro > 0 { rows.append(Movement(from: escrow, to: .market, amount: fee, kind: .fee, taskID: task.id)) }
        if held.micro > 0 {
            rows.append(Movement(from: escrow, to: .held(provider), amount: held, kind: .holdback, taskID: task.id))
        }
        if paid.micro > 0 {
            rows.append(Movement(from: escrow, to: .peer(provider), amount: paid, kind: .release, taskID: task.id))
        }
        if difference.micro > 0 {
            rows.append(
                Movement(
                    from: escrow, to: .peer(task.requester), amount: difference, kind: .differenceRefund,
                    taskID: task.id, memo: "the maximum \(task.cap) less the price \(price)"))
        }
        if !stillNew, standing.heldBack.micro > 0 {
            rows.append(
                Movement(
                    from: .held(provider), to: .peer(provider), amount: standing.heldBack, kind: .holdbackRelease,
                    taskID: task.id, memo: "reached \(rules.holdbackJobs) settled jobs"))
        }
        transition.movements += rows
        transition.outcomes.append(ReputationOutcome(peer: provider, success: true, taskID: task.id, role: "provider"))
        transition.providerSettled = true
        transition.task.state = .settled
        transition.task.reason = reason
        transition.task.cap = .zero
    }

    private func checked<T>(_ body: () throws(CreditsError) -> T) throws(MarketError) -> T {
        do { return try body() } catch { throw MarketError(.invalidAmount, error.description) }
    }
}
