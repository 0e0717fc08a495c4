import MarketCore
import Testing

@Suite struct TaskStateMachineTests {
    let requester = PeerID(digestPrefix: [UInt8](repeating: 1, count: 20))
    let provider = PeerID(digestPrefix: [UInt8](repeating: 2, count: 20))
    let stranger = PeerID(digestPrefix: [UInt8](repeating: 3, count: 20))
    let machine = TaskStateMachine(rules: MarketRules(feeBasisPoints: 1000, holdbackJobs: 3, holdbackBasisPoints: 2000))

    func openTask(max: Int64 = 10) -> MarketTask {
        MarketTask(
            id: "t", requester: requester, maxPrice: Credits(micro: max * 1_000_000), minReputation: 0, model: nil,
            timeoutSeconds: 60, createdMs: 0, deadlineMs: 3_600_000)
    }

    func assigned(price: Int64 = 6) throws -> MarketTask {
        try machine.apply(
            .assign(provider: provider, price: Credits(micro: price * 1_000_000)), to: openTask(), nowMs: 1
        )
        .task
    }

    /// The requester's whole maximum stays in escrow once a provider wins: should it hand the
    /// task back or fail, the next provider may ask anything up to that maximum.
    @Test func assignmentKeepsTheWholeMaximumInEscrow() throws {
        let transition = try machine.apply(
            .assign(provider: provider, price: Credits(micro: 6_000_000)), to: openTask(), nowMs: 5)
        #expect(transition.task.state == .assigned)
        #expect(transition.task.price == Credits(micro: 6_000_000))
        #expect(transition.task.cap == Credits(micro: 10_000_000))
        #expect(transition.movements.isEmpty)
        #expect(transition.task.deadlineMs == 5 + MarketRules().approvalTimeoutMs)
    }

    /// Settlement empties the escrow: the price to fee, hold-back and provider, and the rest of
    /// the maximum back to the requester, in the same transition.
    @Test func settlementGivesTheDifferenceBackToTheRequester() throws {
        let delivered = try deliver(try assigned(price: 6))
        let settled = try machine.apply(
            .accept(by: requester), to: delivered, nowMs: 4, provider: ProviderStanding(settledJobs: 0, heldBack: .zero)
        )
        // 6 RUV: fee 10 % = 0.6; of the 5.4 left, 20 % (1.08) held back; 4.32 paid; 4 of the 10 back.
        #expect(
            settled.movements == [
                Movement(
                    from: .escrow(taskID: "t"), to: .market, amount: Credits(micro: 600_000), kind: .fee, taskID: "t"),
                Movement(
                    from: .escrow(taskID: "t"), to: .held(provider), amount: Credits(micro: 1_080_000), kind: .holdback,
                    taskID: "t"),
                Movement(
                    from: .escrow(taskID: "t"), to: .peer(provider), amount: Credits(micro: 4_320_000), kind: .release,
                    taskID: "t"),
                Movement(
                    from: .escrow(taskID: "t"), to: .peer(requester), amount: Credits(micro: 4_000_000),
                    kind: .differenceRefund, taskID: "t", memo: "the maximum 10 RUV less the price 6 RUV"),
            ])
        #expect(settled.task.state == .settled && settled.task.cap == .zero)
    }

    func deliver(_ assigned: MarketTask) throws -> MarketTask {
        let running = try machine.apply(.approve(by: provider), to: assigned, nowMs: 2).task
        return try machine.apply(
            .deliver(by: provider, resultHash: String(repeating: "a", count: 64)), to: running, nowMs: 3
        ).task
    }

    @Test func aProviderNeverWinsItsOwnTaskNorAboveTheMaximum() {
        #expect(throws: MarketError.self) {
            try machine.apply(.assign(provider: requester, price: Credits(micro: 1)), to: openTask(), nowMs: 1)
        }
        #expect(throws: MarketError(.priceAboveMax, "price 11 RUV is above the task's maximum 10 RUV")) {
            try machine.apply(.assign(provider: provider, price: Credits(micro: 11_000_000)), to: openTask(), nowMs: 1)
        }
        #expect(throws: MarketError.self) {
            try machine.apply(.assign(provider: provider, price: .zero), to: openTask(), nowMs: 1)
        }
    }

    @Test func onlyThePartiesMayAct() throws {
        let task = try assigned()
        #expect(throws: MarketError.self) { try machine.apply(.approve(by: stranger), to: task, nowMs: 2) }
        #expect(throws: MarketError.self) { try machine.apply(.approve(by: requester), to: task, nowMs: 2) }
        let running = try machine.apply(.approve(by: provider), to: task, nowMs: 2).task
        let delivered = try machine.apply(
            .deliver(by: provider, resultHash: String(repeating: "0", count: 64)), to: running, nowMs: 3
        ).task
        #expect(throws: MarketError.self) { try machine.apply(.accept(by: provider), to: delivered, nowMs: 4) }
        #expect(throws: MarketError.self) { try machine.apply(.accept(by: stranger), to: delivered, nowMs: 4) }
    }

    @Test func settlementPaysFeeHoldBackAndProvider() throws {
        let running = try machine.apply(.approve(by: provider), to: try assigned(price: 10), nowMs: 2).task
        let delivered = try machine.apply(
            .deliver(by: provider, resultHash: String(repeating: "a", count: 64)), to: running, nowMs: 3
        ).task
        let standing = ProviderStanding(settledJobs: 0, heldBack: .zero)
        let settled = try machine.apply(.accept(by: requester), to: delivered, nowMs: 4, provider: standing)
        #expect(settled.task.state == .settled)
        // 10 RUV: fee 10 % = 1; of the 9 left, 20 % (1.8) held back; 7.2 paid.
        let amounts = settled.movements.map { ($0.kind, $0.amount.micro) }
        #expect(amounts.map(\.0) == [.fee, .holdback, .release])
        #expect(amounts.map(\.1) == [1_000_000, 1_800_000, 7_200_000])
        #expect(settled.movements.map(\.amount.micro).reduce(0, +) == 10_000_000)
        #expect(
            settled.outcomes.contains(ReputationOutcome(peer: provider, success: true, taskID: "t", role: "provider")))
    }

    @Test func reachingTheThresholdReleasesWhatWasHeld() throws {
        let running = try machine.apply(.approve(by: provider), to: try assigned(price: 10), nowMs: 2).task
        let delivered = try machine.apply(
            .deliver(by: provider, resultHash: String(repeating: "a", count: 64)), to: running, nowMs: 3
        ).task
        let standing = ProviderStanding(settledJobs: 2, heldBack: Credits(micro: 3_600_000))
        let settled = try machine.apply(.accept(by: requester), to: delivered, nowMs: 4, provider: standing)
        #expect(settled.movements.map(\.kind) == [.fee, .release, .holdbackRelease])
        #expect(settled.movements.last?.amount == Credits(micro: 3_600_000))
    }

    @Test func rejectionReopensOnceThenRefunds() throws {
        let first = try machine.apply(.reject(by: provider, reason: "busy"), to: try assigned(), nowMs: 2)
        #expect(first.reopened)
        #expect(first.task.state == .open)
        #expect(first.task.excluded == [provider])
        #expect(first.outcomes.isEmpty, "a rejection is the provider's right, not a failure")
        let other = PeerID(digestPrefix: [UInt8](repeating: 9, count: 20))
        let again = try machine.apply(
            .assign(provider: other, price: Credits(micro: 6_000_000)), to: first.task, nowMs: 3)
        #expect(throws: MarketError.self) {
            try machine.apply(.assign(provider: provider, price: Credits(micro: 1)), to: first.task, nowMs: 3)
        }
        let second = try machine.apply(.reject(by: other, reason: "no"), to: again.task, nowMs: 4)
        #expect(second.task.state == .refunded)
        #expect(second.movements.map(\.kind) == [.refund])
        #expect(second.movements.first?.amount == Credits(micro: 10_000_000), "the whole maximum goes back")
        #expect(second.task.cap == .zero)
    }

    @Test func faultsReopenThreeTimesThenRefundAndCountAsFailures() throws {
        var task = openTask()
        for round in 1...4 {
            let provider = PeerID(digestPrefix: [UInt8](repeating: UInt8(10 + round), count: 20))
            task = try machine.apply(.assign(provider: provider, price: Credits(micro: 5_000_000)), to: task, nowMs: 1)
                .task
            task = try machine.apply(.approve(by: provider), to: task, nowMs: 2).task
            let fault = try machine.apply(.deadlinePassed, to: task, nowMs: task.deadlineMs!)
            #expect(
                fault.outcomes == [ReputationOutcome(peer: provider, success: false, taskID: "t", role: "provider")])
            task = fault.task
            #expect(task.state == (round <= 3 ? .open : .refunded))
        }
        #expect(task.faults == 4)
    }

    @Test func aPayloadThatNeverCameRefundsWithoutBlamingTheProvider() throws {
        let task = try assigned()
        #expect(throws: MarketError.self) { try machine.apply(.payloadMissing, to: task, nowMs: task.deadlineMs! - 1) }
        let missing = try machine.apply(.payloadMissing, to: task, nowMs: task.deadlineMs!)
        #expect(missing.task.state == .refunded)
        #expect(missing.outcomes.isEmpty)
        #expect(missing.movements.map(\.kind) == [.refund])
        #expect(missing.movements.first?.amount == Credits(micro: 10_000_000), "the whole maximum goes back")
        // Only an assigned task waits for a payload.
        let running = try machine.apply(.approve(by: provider), to: task, nowMs: 2).task
        #expect(throws: MarketError.self) { try machine.apply(.payloadMissing, to: running, nowMs: .max) }
    }

    @Test func deadlinesOnlyFireWhenDue() throws {
        let task = openTask()
        #expect(throws: MarketError.self) { try machine.apply(.deadlinePassed, to: task, nowMs: task.deadlineMs! - 1) }
        let expired = try machine.apply(.deadlinePassed, to: task, nowMs: task.deadlineMs!)
        #expect(expired.task.state == .refunded)
        #expect(
            expired.movements == [
                Movement(
                    from: .escrow(taskID: "t"), to: .peer(requester), amount: Credits(micro: 10_000_000), kind: .refund,
                    taskID: "t",
                    memo: "no provider took it before it expired")
            ])
    }

    @Test func disputesWaitForTheOperatorOrTheWindow() throws {
        let running = try machine.apply(.approve(by: provider), to: try assigned(), nowMs: 2).task
        let delivered = try machine.apply(
            .deliver(by: provider, resultHash: String(repeating: "a", count: 64)), to: running, nowMs: 3
        ).task
        #expect(throws: MarketError.self) {
            try machine.apply(.dispute(by: requester, reason: "  "), to: delivered, nowMs: 4)
        }
        let disputed = try machine.apply(.dispute(by: requester, reason: "wrong answer"), to: delivered, nowMs: 4)
        #expect(disputed.movements.isEmpty && disputed.outcomes.isEmpty)
        let standing = ProviderStanding(settledJobs: 5, heldBack: .zero)
        let forRequester = try machine.apply(.resolve(forProvider: false, memo: "bad"), to: disputed.task, nowMs: 5)
        #expect(forRequester.task.state == .refunded)
        #expect(forRequester.movements.map(\.kind) == [.refund])
        #expect(forRequester.movements.first?.amount == Credits(micro: 10_000_000))
        #expect(
            forRequester.outcomes == [ReputationOutcome(peer: provider, success: false, taskID: "t", role: "provider")])
        let lapsed = try machine.apply(
            .deadlinePassed, to: disputed.task, nowMs: disputed.task.deadlineMs!, provider: standing)
        #expect(lapsed.task.state == .settled)
        // For the provider, by the operator or the window: the price is paid and the rest of the
        // maximum goes back, 6 and 4 of the 10 in escrow.
        let forProvider = try machine.apply(
            .resolve(forProvider: true, memo: "fine"), to: disputed.task, nowMs: 5, provider: standing)
        for settled in [lapsed, forProvider] {
            #expect(settled.movements.map(\.kind) == [.fee, .release, .differenceRefund])
            #expect(settled.movements.last?.amount == Credits(micro: 4_000_000))
            #expect(settled.movements.map(\.amount.micro).reduce(0, +) == 10_000_000)
        }
    }

    @Test func finalStatesAcceptNothing() throws {
        let cancelled = try machine.apply(.cancel(by: requester), to: openTask(), nowMs: 1).task
        #expect(cancelled.state == .cancelled)
        for event: TaskEvent in [
            .cancel(by: requester), .approve(by: provider), .accept(by: requester), .deadlinePassed, .providerSilent,
        ] {
            #expect(throws: MarketError.self) { try machine.apply(event, to: cancelled, nowMs: 10_000_000_000) }
        }
    }

    @Test func sharesNeverOverflow() {
        #expect(MarketRules.share(of: Credits(micro: .max), basisPoints: 10_000) == Credits(micro: .max))
        #expect(MarketRules.share(of: Credits(micro: .max), basisPoints: 5_000) == Credits(micro: .max / 2))
    }

    @Test func reputationDecaysWithItsHalfLife() {
        let halfLife: Int64 = 1000
        var reputation = Reputation()
        #expect(reputation.score(atMs: 0, halfLifeMs: halfLife) == 0.5)
        for _ in 0..<8 { reputation = reputation.recording(success: true, atMs: 0, halfLifeMs: halfLife) }
        #expect(reputation.score(atMs: 0, halfLifeMs: halfLife) == 0.9)
        // After one half-life the 8 successes weigh 4: (4+1)/(4+2).
        #expect(abs(reputation.score(atMs: 1000, halfLifeMs: halfLife) - 5.0 / 6.0) < 1e-12)
        #expect(reputation.samples == 8)
        #expect(reputation.tier(atMs: 0, halfLifeMs: halfLife, newBelow: 10) == .new)
        #expect(reputation.tier(atMs: 0, halfLifeMs: halfLife, newBelow: 3) == .trusted)
    }

    /// A declared capacity stop, assigned or running: the task re-opens for the next provider
    /// within the requester's maximum, the provider is paid nothing and blamed for nothing, and it
    /// counts against the task's rematches like a rejection (so no two providers bounce a task
    /// forever).
    @Test func aHandBackReopensWithoutBlameAndCountsAgainstTheRematches() throws {
        let running = try machine.apply(.approve(by: provider), to: try assigned(), nowMs: 2).task
        #expect(throws: MarketError.self) {
            try machine.apply(.handBack(by: stranger, reason: "capacity"), to: running, nowMs: 3)
        }
        let first = try machine.apply(.handBack(by: provider, reason: "five_hour at its limit"), to: running, nowMs: 3)
        #expect(first.task.state == .open && first.reopened)
        #expect(first.outcomes.isEmpty && first.movements.isEmpty)
        #expect(first.task.cap == Credits(micro: 10_000_000), "the whole maximum is still in escrow")
        #expect(first.task.excluded == [provider] && first.task.rejections == 1)
        #expect(first.task.reason?.contains("handed back by the provider (capacity): five_hour at its limit") == true)
        let other = PeerID(digestPrefix: [UInt8](repeating: 9, count: 20))
        let again = try machine.apply(
            .assign(provider: other, price: Credits(micro: 6_000_000)), to: first.task, nowMs: 4)
        let second = try machine.apply(.handBack(by: other, reason: "capacity"), to: again.task, nowMs: 5)
        #expect(second.task.state == .refunded && second.movements.map(\.kind) == [.refund])
        #expect(second.outcomes.isEmpty)
        #expect(throws: MarketError.self) {
            try machine.apply(.handBack(by: provider, reason: "late"), to: second.task, nowMs: 6)
        }
    }

    /// A paused offer takes nothing until its capacity returns, and a requester is told when.
    @Test func aPausedOfferIsIneligibleAndTheRequesterLearnsWhenCapacityReturns() {
        var offer = Offer(
            provider: provider, price: Credits(micro: 1), slots: 2, models: [], minRequesterReputation: 0, createdMs: 0)
        offer.pausedUntilMs = 1_796_000_000_000
        offer.pausedFor = "five_hour"
        let paused = OfferCandidate(offer: offer, busySlots: 0, providerReputation: 0.5, paused: true)
        #expect(
            Matching.ineligibility(of: paused, for: openTask(), requesterReputation: 0.5)?.code == .capacityPaused)
        #expect(Matching.best(among: [paused], for: openTask(), requesterReputation: 0.5) == nil)
        let why = Matching.whyNoMatch(among: [paused], for: openTask(), requesterReputation: 0.5)
        #expect(why == "no provider can take it now; capacity returns at 2026-11-30T00:53:20Z", "\(why)")
        // Past its time the same offer is eligible again.
        let returned = OfferCandidate(offer: offer, busySlots: 0, providerReputation: 0.5, paused: false)
        #expect(Matching.best(among: [returned], for: openTask(), requesterReputation: 0.5) != nil)
        #expect(offer.isPaused(atMs: 1_795_999_999_999) && !offer.isPaused(atMs: 1_796_000_000_000))
    }

    @Test func matchingOrdersByPriceThenReputationThenAge() {
        func candidate(_ byte: UInt8, price: Int64, reputation: Double, created: Int64, slots: Int = 1, busy: Int = 0)
            -> OfferCandidate
        {
            OfferCandidate(
                offer: Offer(
                    provider: PeerID(digestPrefix: [UInt8](repeating: byte, count: 20)), price: Credits(micro: price),
                    slots: slots,
                    models: [], minRequesterReputation: 0, createdMs: created),
                busySlots: busy, providerReputation: reputation)
        }
        let task = openTask()
        let cheap = candidate(20, price: 4, reputation: 0.5, created: 9)
        let cheapBetter = candidate(21, price: 4, reputation: 0.7, created: 10)
        let cheapBetterOlder = candidate(22, price: 4, reputation: 0.7, created: 1)
        let cheapestBusy = candidate(23, price: 1, reputation: 0.9, created: 1, busy: 1)
        let best = Matching.best(
            among: [cheap, cheapBetter, cheapBetterOlder, cheapestBusy], for: task, requesterReputation: 0.5)
        #expect(best == cheapBetterOlder)
        #expect(
            Matching.whyNoMatch(among: [], for: task, requesterReputation: 0.5) == "no provider has a standing offer")
        let pricey = candidate(24, price: 50_000_000, reputation: 0.5, created: 1)
        #expect(Matching.whyNoMatch(among: [pricey], for: task, requesterReputation: 0.5).contains("below every offer"))
        #expect(
            Matching.whyNoMatch(among: [cheapestBusy], for: task, requesterReputation: 0.5)
                == "all providers' slots are busy")
    }
}
