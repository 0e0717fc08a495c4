import MarketCore
import MarketProtocol

/// The market's operations, each run inside one transaction: load what the rules need, let the
/// pure rules (`TaskStateMachine`, `Matching`) decide, write the result — the task, its ledger
/// rows and reputation outcomes together, or nothing.
public struct MarketBook: Sendable {
    public let rules: MarketRules
    let machine: TaskStateMachine
    /// The most credits that may ever exist, so that no balance or sum can overflow.
    public static let maxSupply = Int64.max / 4

    public init(rules: MarketRules) {
        self.rules = rules
        self.machine = TaskStateMachine(rules: rules)
    }

    /// What a `task.post` did.
    public struct PostOutcome: Sendable {
        public var task: MarketTask
        /// The assignment made at once against a standing offer, if any.
        public var assignment: TaskTransition?
        /// Why no standing offer fitted, for the requester.
        public var whyUnmatched: String?
        /// Unmatched: the providers of every standing offer (read for `whyUnmatched`), whom the
        /// open task goes to.
        public var offeredBy: [PeerID] = []
    }

    // MARK: Money

    public func mint(to peer: PeerID, amount: Credits, memo: String, nowMs: Int64, in tx: some MarketTransaction)
        async throws -> Credits
    {
        guard amount.micro > 0 else {
            throw MarketError(.invalidAmount, "amount \(amount) must be above zero")
        }
        let minted = -(try await tx.balance(.mint).micro)
        guard amount.micro <= Self.maxSupply - minted else {
            throw MarketError(
                .invalidAmount,
                "minting \(amount) would take the supply past \(Credits(micro: Self.maxSupply)) (now \(Credits(micro: minted)))"
            )
        }
        try await tx.insertMovement(
            Movement(from: .mint, to: .peer(peer), amount: amount, kind: .mint, memo: memo), nowMs: nowMs)
        return try await tx.balance(.peer(peer))
    }

    // MARK: Offers

    public func advertise(_ body: AdvertiseBody, from provider: PeerID, nowMs: Int64, in tx: some MarketTransaction)
        async throws -> (offer: Offer, assignments: [TaskTransition])
    {
        let previous = try await tx.offer(of: provider)
        let offer = Offer(
            provider: provider, price: Credits(micro: body.price), slots: body.slots, models: body.models ?? [],
            minRequesterReputation: body.minRequesterReputation ?? 0, createdMs: previous?.createdMs ?? nowMs,
            maxWorkspaceBytes: body.maxWorkspaceBytes, maxWorkspaceFiles: body.maxWorkspaceFiles,
            pausedUntilMs: body.pausedUntilMs, pausedFor: body.pausedFor)
        try await tx.putOffer(offer)
        // A paused offer takes nothing until its capacity returns (the provider advertises again then).
        if offer.isPaused(atMs: nowMs) { return (offer, []) }
        // A new offer may fit tasks that are already waiting: oldest first, while slots last. Tasks
        // it cannot take are skipped before any lock is taken.
        var assignments: [TaskTransition] = []
        var busy = try await tx.busySlots(of: provider)
        for task in try await tx.tasks(state: .open, limit: 200) where busy < offer.slots {
            guard offer.price <= task.cap, task.requester != provider, !task.excluded.contains(provider),
                offer.runs(model: task.model), offer.takes(task)
            else { continue }
            if let transition = try await matchOpenTask(task.id, nowMs: nowMs, only: provider, in: tx) {
                assignments.append(transition)
                busy += 1
            }
        }
        return (offer, assignments)
    }

    public func withdraw(_ provider: PeerID, in tx: some MarketTransaction) async throws -> Bool {
        try await tx.deleteOffer(of: provider)
    }

    // MARK: Tasks

    public func post(_ body: PostBody, from requester: PeerID, nowMs: Int64, in tx: some MarketTransaction)
        async throws -> PostOutcome
    {
        let expiresMs = body.expiresInSeconds.map { $0 * 1000 } ?? rules.openTimeoutMs
        var task = MarketTask(
            id: body.taskId, requester: requester, maxPrice: Credits(micro: body.maxPrice),
            minReputation: body.minReputation ?? 0, model: body.model,
            timeoutSeconds: body.timeoutSeconds ?? 300, createdMs: nowMs, deadlineMs: nowMs + expiresMs)
        task.workspaceBytes = body.workspaceBytes
        task.workspaceFiles = body.workspaceFiles
        task.workspaceArchiveBytes = body.workspaceArchiveBytes
        task.conversationBytes = body.conversationBytes
        // The insert refuses a task id already taken (`duplicate_task`), and the escrow movement an
        // account that holds too little: neither needs a read before it.
        try await tx.insertTask(
            task, entering: TaskEventRecord(taskID: task.id, state: .open, atMs: nowMs, createdMs: nowMs, price: nil))
        do {
            try await tx.insertMovement(
                Movement(
                    from: .peer(requester), to: .escrow(taskID: task.id), amount: task.maxPrice, kind: .escrowLock,
                    taskID: task.id),
                nowMs: nowMs)
        } catch let error as MarketError where error.code == .insufficientFunds {
            throw MarketError(.insufficientFunds, "maxPrice \(task.maxPrice) cannot go into escrow: \(error.message)")
        }
        if let assignment = try await matchOpenTask(task, nowMs: nowMs, only: nil, in: tx) {
            return PostOutcome(task: assignment.task, assignment: assignment, whyUnmatched: nil)
        }
        let standing = try await candidates(in: tx, nowMs: nowMs)
        let why = Matching.whyNoMatch(
            among: standing, for: task,
            requesterReputation: try await reputationScore(of: requester, nowMs: nowMs, in: tx))
        return PostOutcome(task: task, assignment: nil, whyUnmatched: why, offeredBy: standing.map(\.offer.provider))
    }

    /// `bid.place`: the first valid bid on an open task wins it.
    public func bid(_ body: BidBody, from provider: PeerID, nowMs: Int64, in tx: some MarketTransaction)
        async throws -> TaskTransition
    {
        guard let task = try await tx.task(body.taskId, lock: true) else {
            throw MarketError(.unknownTask, "no task \(body.taskId)")
        }
        guard task.state == .open else {
            throw MarketError(.invalidState, "task \(task.id) is \(task.state.rawValue): it takes no more bids")
        }
        guard var candidate = try await candidates(in: tx, nowMs: nowMs, provider: provider, lock: true).first else {
            throw MarketError(.noOffer, "\(provider) has no standing offer: send offer.advertise before bidding")
        }
        candidate.offer.price = Credits(micro: body.price)
        let offer = candidate.offer
        if let refusal = Matching.ineligibility(
            of: candidate, for: task,
            requesterReputation: try await reputationScore(of: task.requester, nowMs: nowMs, in: tx)
        ) {
            throw refusal
        }
        let transition = try await machine.apply(
            .assign(provider: provider, price: offer.price), to: task, nowMs: nowMs)
        try await write(transition, nowMs: nowMs, in: tx)
        return transition
    }

    /// Any other event on a task; a re-opened task is matched again at once.
    public func apply(_ event: TaskEvent, toTask id: String, nowMs: Int64, in tx: some MarketTransaction)
        async throws -> [TaskTransition]
    {
        guard let task = try await tx.task(id, lock: true) else { throw MarketError(.unknownTask, "no task \(id)") }
        var standing: ProviderStanding?
        if let provider = task.provider { standing = try await tx.standing(of: provider) }
        let transition = try machine.apply(event, to: task, nowMs: nowMs, provider: standing)
        try await write(transition, nowMs: nowMs, in: tx)
        var transitions = [transition]
        if transition.reopened,
            let rematch = try await matchOpenTask(transition.task, nowMs: nowMs, only: nil, in: tx)
        {
            transitions.append(rematch)
        }
        return transitions
    }

    /// Timeouts and silent providers, as of `nowMs`: every due task takes its deadline path.
    public func sweep(nowMs: Int64, limit: Int = 500, in tx: some MarketTransaction) async throws -> [TaskTransition] {
        var transitions: [TaskTransition] = []
        // Each task is locked and looked at again before it moves: another instance on the same
        // books may have swept it, or a message moved it, since the list was read.
        for provider in try await tx.silentProviders(lastSeenBefore: nowMs - rules.heartbeatTimeoutMs) {
            _ = try await tx.deleteOffer(of: provider)
            for task in try await tx.tasks(of: provider, states: [.assigned, .running]) where task.provider == provider
            {
                guard let current = try await tx.task(task.id, lock: true), current.provider == provider,
                    current.state.holdsSlot
                else { continue }
                transitions += try await apply(.providerSilent, toTask: task.id, nowMs: nowMs, in: tx)
            }
        }
        for id in try await tx.tasksDue(nowMs: nowMs, limit: limit) {
            guard let task = try await tx.task(id, lock: true), !task.state.isFinal, let deadline = task.deadlineMs,
                deadline <= nowMs
            else { continue }
            let waitingForPayload =
                task.state == .assigned ? try await tx.frame(taskID: id, kind: .payload) == nil : false
            transitions += try await apply(
                waitingForPayload ? .payloadMissing : .deadlinePassed, toTask: id, nowMs: nowMs, in: tx)
        }
        return transitions
    }

    // MARK: Matching

    /// Matches one open task against the standing offers (or only `provider`'s); assigns it to
    /// the best and returns the assignment, or nil when none fits.
    func matchOpenTask(_ id: String, nowMs: Int64, only provider: PeerID?, in tx: some MarketTransaction)
        async throws -> TaskTransition?
    {
        guard let task = try await tx.task(id, lock: true) else { return nil }
        return try await matchOpenTask(task, nowMs: nowMs, only: provider, in: tx)
    }

    /// The same for a task this transaction holds already (read with its lock, or inserted).
    func matchOpenTask(_ task: MarketTask, nowMs: Int64, only provider: PeerID?, in tx: some MarketTransaction)
        async throws -> TaskTransition?
    {
        guard task.state == .open else { return nil }
        let pool = try await candidates(in: tx, nowMs: nowMs, maxPrice: task.cap, provider: provider, lock: true)
        let requesterScore = try await reputationScore(of: task.requester, nowMs: nowMs, in: tx)
        guard let best = Matching.best(among: pool, for: task, requesterReputation: requesterScore) else { return nil }
        let transition = try await machine.apply(
            .assign(provider: best.offer.provider, price: best.offer.price), to: task, nowMs: nowMs)
        try await write(transition, nowMs: nowMs, in: tx)
        return transition
    }

    func candidates(
        in tx: some MarketTransaction, nowMs: Int64, maxPrice: Credits? = nil, provider: PeerID? = nil,
        lock: Bool = false
    ) async throws -> [OfferCandidate] {
        try await tx.offerCandidates(maxPrice: maxPrice, provider: provider, lock: lock).map {
            OfferCandidate(
                offer: $0.offer, busySlots: $0.busySlots,
                providerReputation: $0.reputation.score(atMs: nowMs, halfLifeMs: rules.reputationHalfLifeMs),
                paused: $0.offer.isPaused(atMs: nowMs))
        }
    }

    public func reputationScore(of peer: PeerID, nowMs: Int64, in tx: some MarketTransaction) async throws -> Double {
        try await tx.peer(peer)?.reputation.score(atMs: nowMs, halfLifeMs: rules.reputationHalfLifeMs) ?? 0.5
    }

    /// Writes one transition: the task, its ledger rows, the outcomes and the provider's count.
    func write(_ transition: TaskTransition, nowMs: Int64, in tx: some MarketTransaction) async throws {
        let task = transition.task
        try await tx.updateTask(
            task,
            entering: task.state == transition.before
                ? nil
                : TaskEventRecord(
                    taskID: task.id, state: task.state, atMs: nowMs, createdMs: task.createdMs,
                    price: task.price?.micro))
        for movement in transition.movements { try await tx.insertMovement(movement, nowMs: nowMs) }
        try await dropPieces(of: transition, in: tx)
        if let provider = transition.handedBackBy { try await tx.countHandBack(of: provider) }
        // A task's outcomes are its parties': their records in one read.
        var records: [PeerID: PeerRecord] = [:]
        if let first = transition.outcomes.first, let last = transition.outcomes.last {
            records = try await tx.peers(first.peer, last.peer)
        }
        for outcome in transition.outcomes {
            var found = records[outcome.peer]
            if found == nil { found = try await tx.peer(outcome.peer) }
            guard var record = found else {
                try await tx.insertOutcome(outcome, nowMs: nowMs)
                continue
            }
            record.reputation = record.reputation.recording(
                success: outcome.success, atMs: nowMs, halfLifeMs: rules.reputationHalfLifeMs)
            record.settledJobs += transition.providerSettled && outcome.role == "provider" ? 1 : 0
            records[outcome.peer] = record
            try await tx.recordOutcome(
                outcome, nowMs: nowMs, reputation: record.reputation, settledJobs: record.settledJobs)
        }
    }

    /// Pieces sealed to one provider are of no use to the next, the requester's none once the
    /// result is in, and none outlive the task. Here, where every change of a task's state is
    /// written, so that no path (a frame, a sweep, `market resolve`) leaves pieces behind.
    func dropPieces(of transition: TaskTransition, in tx: some MarketTransaction) async throws {
        let task = transition.task
        guard task.state != transition.before else { return }
        if task.state.isFinal || task.state == .open {
            try await tx.deleteBlobChunks(taskID: task.id, blob: nil)
        }
        if task.state == .open {
            // The payload too was sealed to the provider that lost the task: kept, it would go
            // to the next one on its reconnect (which cannot open it), and a missed approval
            // would count as the next one's fault though the requester never sent it its own.
            try await tx.setFrame(taskID: task.id, kind: .payload, frame: nil)
        } else if task.state == .delivered || task.state == .disputed {
            if task.workspaceBytes != nil { try await tx.deleteBlobChunks(taskID: task.id, blob: "workspace") }
            if task.conversationBytes != nil { try await tx.deleteBlobChunks(taskID: task.id, blob: "conversation") }
        }
    }

    // MARK: Checks

    /// `market verify`: the ledger balances, every row's sides are sound, final tasks hold nothing,
    /// and every other task holds exactly what its books say (`cap`).
    public func audit(in tx: some MarketTransaction) async throws -> LedgerAudit {
        var finalTasks = Set<String>()
        var liveTasks: [String: Credits] = [:]
        for state in TaskState.allCases {
            for task in try await tx.tasks(state: state, limit: Int.max) {
                if state.isFinal { finalTasks.insert(task.id) } else { liveTasks[task.id] = task.cap }
            }
        }
        return LedgerAudit.check(
            movements: try await tx.allMovements(), balances: try await tx.allBalances(), finalTasks: finalTasks,
            liveTasks: liveTasks)
    }
}

// MARK: Operator commands

/// The operator's commands (`market verify`, `mint`, `resolve`), each one transaction on `store`.
extension MarketBook {
    public func audit(on store: any MarketStore) async throws -> LedgerAudit {
        try await store.read { try await self.audit(in: $0) }
    }

    public func mint(to peer: PeerID, amount: Credits, memo: String, nowMs: Int64, on store: any MarketStore)
        async throws -> Credits
    {
        try await store.write { try await self.mint(to: peer, amount: amount, memo: memo, nowMs: nowMs, in: $0) }
    }

    public func apply(_ event: TaskEvent, toTask id: String, nowMs: Int64, on store: any MarketStore) async throws
        -> [TaskTransition]
    {
        try await store.write { try await self.apply(event, toTask: id, nowMs: nowMs, in: $0) }
    }
}
