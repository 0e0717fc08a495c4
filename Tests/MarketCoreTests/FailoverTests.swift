import MarketCore
import Testing

/// Failover within the requester's maximum (issue #33, point 3): a provider that hands a task
/// back or faults loses it for good, and any other provider asking up to the maximum may take it,
/// because the whole maximum stays in escrow until the task settles.
@Suite struct FailoverTests {
    let requester = PeerID(digestPrefix: [UInt8](repeating: 1, count: 20))
    let cheap = PeerID(digestPrefix: [UInt8](repeating: 2, count: 20))
    let dearer = PeerID(digestPrefix: [UInt8](repeating: 3, count: 20))
    let machine = TaskStateMachine(rules: MarketRules(feeBasisPoints: 500, holdbackJobs: 0))
    static let hash = String(repeating: "c", count: 64)

    func posted(max: Int64 = 5) -> MarketTask {
        MarketTask(
            id: "f", requester: requester, maxPrice: Credits(micro: max * 1_000_000), minReputation: 0, model: nil,
            timeoutSeconds: 60, createdMs: 0, deadlineMs: 3_600_000)
    }

    /// A task as books would hold it: won by `provider` at `price`, with `cap` in escrow.
    func held(by provider: PeerID, state: TaskState, price: Int64, cap: Int64) -> MarketTask {
        var task = posted()
        task.state = state
        task.provider = provider
        task.price = Credits(micro: price)
        task.cap = Credits(micro: cap)
        task.resultHash = state == .delivered ? Self.hash : nil
        task.deadlineMs = 100
        return task
    }

    func offer(_ provider: PeerID, _ whole: Int64, age: Int64 = 0) -> OfferCandidate {
        OfferCandidate(
            offer: Offer(
                provider: provider, price: Credits(micro: whole * 1_000_000), slots: 1, models: [],
                minRequesterReputation: 0, createdMs: age),
            busySlots: 0, providerReputation: 0.5)
    }

    /// How the movements change each account, in micro-credits.
    static func net(_ movements: [Movement]) -> [Account: Int64] {
        var net: [Account: Int64] = [:]
        for movement in movements {
            net[movement.from, default: 0] -= movement.amount.micro
            net[movement.to, default: 0] += movement.amount.micro
        }
        return net.filter { $0.value != 0 }
    }

    /// The ways a provider loses a task it won, each of which re-opens it.
    enum Loss: String, CaseIterable, Sendable {
        case handBack, failure, approvalTimeout, runTimeout, silence
    }

    func lose(_ task: MarketTask, by provider: PeerID, _ loss: Loss) throws -> TaskTransition {
        switch loss {
        case .handBack:
            return try machine.apply(.handBack(by: provider, reason: "five_hour at its limit"), to: task, nowMs: 10)
        case .failure:
            return try machine.apply(.fail(by: provider, reason: "the engine stopped"), to: task, nowMs: 10)
        case .approvalTimeout:
            return try machine.apply(.deadlinePassed, to: task, nowMs: task.deadlineMs!)
        case .runTimeout:
            let running = try machine.apply(.approve(by: provider), to: task, nowMs: 5).task
            return try machine.apply(.deadlinePassed, to: running, nowMs: running.deadlineMs!)
        case .silence:
            return try machine.apply(.providerSilent, to: task, nowMs: 10)
        }
    }

    /// The cheapest provider (1) wins, then loses the task; the one asking 2 is matched next,
    /// settles it, and the requester pays 2 of its 5: 3 come back with the settlement.
    @Test(arguments: Loss.allCases)
    func anotherProviderWithinTheMaximumTakesTheTaskOver(loss: Loss) throws {
        var movements: [Movement] = []
        let task = posted()
        let pool = [offer(cheap, 1), offer(dearer, 2, age: 1)]
        let first = try #require(Matching.best(among: pool, for: task, requesterReputation: 0.5))
        #expect(first.offer.provider == cheap)
        let won = try machine.apply(.assign(provider: cheap, price: first.offer.price), to: task, nowMs: 1)
        movements += won.movements
        let lost = try lose(won.task, by: cheap, loss)
        movements += lost.movements
        #expect(lost.reopened && lost.task.state == .open)
        #expect(lost.task.cap == Credits(micro: 5_000_000), "the whole maximum is still in escrow")
        #expect(lost.task.excluded == [cheap])
        #expect(lost.handedBackBy == (loss == .handBack ? cheap : nil))
        #expect(
            lost.outcomes
                == (loss == .handBack
                    ? [] : [ReputationOutcome(peer: cheap, success: false, taskID: "f", role: "provider")]))

        // The provider that lost it is never matched again, even as the cheapest.
        #expect(
            Matching.ineligibility(of: pool[0], for: lost.task, requesterReputation: 0.5)?.code == .excludedProvider)
        #expect(throws: MarketError(.excludedProvider, "provider \(cheap) already lost task f")) {
            try machine.apply(.assign(provider: cheap, price: Credits(micro: 1_000_000)), to: lost.task, nowMs: 11)
        }
        let next = try #require(Matching.best(among: pool, for: lost.task, requesterReputation: 0.5))
        #expect(next.offer.provider == dearer)
        let again = try machine.apply(.assign(provider: dearer, price: next.offer.price), to: lost.task, nowMs: 11)
        movements += again.movements
        let running = try machine.apply(.approve(by: dearer), to: again.task, nowMs: 12).task
        let delivered = try machine.apply(.deliver(by: dearer, resultHash: Self.hash), to: running, nowMs: 13).task
        let settled = try machine.apply(
            .accept(by: requester), to: delivered, nowMs: 14,
            provider: ProviderStanding(settledJobs: 0, heldBack: .zero))
        movements += settled.movements
        #expect(settled.task.state == .settled && settled.task.cap == .zero)

        // From the post on: the requester put 5 in and got 3 back; 2 less the 5 % fee to the
        // provider that did the work, the fee to the market, nothing to the one that lost it.
        let fee: Int64 = 100_000
        movements.insert(
            Movement(
                from: .peer(requester), to: .escrow(taskID: "f"), amount: task.maxPrice, kind: .escrowLock,
                taskID: "f"),
            at: 0)
        #expect(
            Self.net(movements) == [
                .peer(requester): -2_000_000, .peer(dearer): 2_000_000 - fee, .market: fee,
            ])
        #expect(settled.movements.last?.kind == .differenceRefund)
        #expect(settled.movements.last?.amount == Credits(micro: 3_000_000))
    }

    /// After every rematch is used, the whole maximum goes back: nothing was paid.
    @Test func theLastFaultRefundsTheWholeMaximum() throws {
        var task = posted()
        for round in 1...(machine.rules.maxFaultRematches + 1) {
            let provider = PeerID(digestPrefix: [UInt8](repeating: UInt8(20 + round), count: 20))
            task = try machine.apply(
                .assign(provider: provider, price: Credits(micro: Int64(round))), to: task, nowMs: 1
            )
            .task
            let fault = try machine.apply(.fail(by: provider, reason: "no"), to: task, nowMs: 2)
            task = fault.task
            if task.state == .refunded {
                #expect(fault.movements.map(\.amount) == [Credits(micro: 5_000_000)])
            } else {
                #expect(fault.movements.isEmpty && task.cap == Credits(micro: 5_000_000))
            }
        }
        #expect(task.state == .refunded && task.excluded.count == machine.rules.maxFaultRematches + 1)
    }

    /// Books from before the escrow stayed whole: a task assigned then had `maxPrice − price`
    /// refunded at once, and its `cap` became the price. It settles and refunds what it holds,
    /// never the difference a second time, and re-opens at no more than what is there.
    @Test func aTaskAssignedUnderTheOldRuleMovesItsDifferenceOnlyOnce() throws {
        let old = held(by: cheap, state: .assigned, price: 1_000_000, cap: 1_000_000)
        let delivered = try machine.apply(
            .deliver(by: cheap, resultHash: Self.hash),
            to: try machine.apply(.approve(by: cheap), to: old, nowMs: 2).task, nowMs: 3
        ).task
        let settled = try machine.apply(
            .accept(by: requester), to: delivered, nowMs: 4, provider: ProviderStanding(settledJobs: 0, heldBack: .zero)
        )
        #expect(settled.movements.map(\.kind) == [.fee, .release])
        #expect(settled.movements.map(\.amount.micro).reduce(0, +) == 1_000_000)

        let failed = try machine.apply(.fail(by: cheap, reason: "gone"), to: old, nowMs: 5)
        #expect(failed.task.state == .open && failed.task.cap == Credits(micro: 1_000_000))
        #expect(
            Matching.ineligibility(of: offer(dearer, 2), for: failed.task, requesterReputation: 0.5)?.code
                == .priceAboveMax)
        let cancelled = try machine.apply(.cancel(by: requester), to: failed.task, nowMs: 6)
        #expect(cancelled.movements.map(\.amount) == [Credits(micro: 1_000_000)])
    }

    /// A settlement whose books hold less than the price refuses, naming both, rather than move
    /// credits that are not there.
    @Test func aSettlementThatWouldOverdrawTheEscrowIsRefused() throws {
        let broken = held(by: cheap, state: .delivered, price: 2_000_000, cap: 1_000_000)
        #expect(
            throws: MarketError(
                .internalError, "task f holds 1 RUV in escrow, less than its price 2 RUV: it cannot settle")
        ) {
            try machine.apply(
                .accept(by: requester), to: broken, nowMs: 4,
                provider: ProviderStanding(settledJobs: 0, heldBack: .zero))
        }
    }

    /// `market verify` compares each live task's escrow with what its books say it holds.
    @Test func theAuditNamesALiveTaskWhoseEscrowDiffersFromItsBooks() {
        let rows: [(id: Int64, from: String, to: String, amountMicro: Int64)] = [
            (1, "mint", "peer:\(requester)", 5_000_000), (2, "peer:\(requester)", "escrow:f", 5_000_000),
            (3, "escrow:f", "peer:\(requester)", 3_000_000),
        ]
        let balances: [String: Int64] = ["mint": -5_000_000, "peer:\(requester)": 3_000_000, "escrow:f": 2_000_000]
        let whole = LedgerAudit.check(
            movements: rows, balances: balances, finalTasks: [], liveTasks: ["f": Credits(micro: 2_000_000)])
        #expect(whole.balanced, "\(whole.discrepancies)")
        let short = LedgerAudit.check(
            movements: rows, balances: balances, finalTasks: [], liveTasks: ["f": Credits(micro: 5_000_000)])
        #expect(short.discrepancies.map(\.kind) == ["escrow"] && short.discrepancies.map(\.subject) == ["escrow:f"])
        #expect(short.discrepancies.map(\.detail) == ["task f should hold 5 RUV in escrow but holds 2 RUV"])
    }
}
