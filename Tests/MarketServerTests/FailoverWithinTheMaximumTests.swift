import Foundation
import Logging
import MarketClient
import MarketCore
import MarketProtocol
import MarketServer
import MarketStore
import TestSupport
import Testing

/// Issue #33, point 3, over real connections on both stores: a requester posts with a maximum
/// of 5; the provider asking 1 wins and loses the task (a hand-back, a failure, a missed
/// approval); the provider asking 2 takes it — matched from its standing offer, or by its bid —
/// and settles it; the requester pays 2, and `market verify` holds.
@Suite(.serialized) struct FailoverWithinTheMaximumTests {
    static let rules = MarketRules(feeBasisPoints: 500, approvalTimeoutMs: 30_000, holdbackJobs: 0)
    static let books = PostgresTestDatabase.shouldRun ? ["sqlite", "postgres"] : ["sqlite"]
    static let hash = String(repeating: "5e", count: 32)

    enum Loss: String, CaseIterable, Sendable {
        /// `job.handback`: the provider's account is at its limit.
        case handBack
        /// `job.failed`: a provider fault.
        case failure
        /// No `job.approved` within the approval timeout (the sweep, on the test's clock): a fault.
        case approvalTimeout
    }

    /// Whether the second provider takes the re-opened task from its standing offer (matched at
    /// once) or by `bid.place`.
    enum Taking: String, CaseIterable, Sendable {
        case standingOffer, bid
    }

    static var cases: [(String, Loss, Taking)] {
        books.flatMap { books in Loss.allCases.flatMap { loss in Taking.allCases.map { (books, loss, $0) } } }
    }

    @Test(arguments: cases)
    func aSecondProviderWithinTheMaximumSettlesWhatTheFirstLost(books: String, loss: Loss, taking: Taking)
        async throws
    {
        let directory = TemporaryDirectory("cmm-failover")
        let location = books == "postgres" ? try PostgresTestDatabase.create() : directory.file("market.sqlite").path
        var postgres: (any MarketStore)?
        if books == "postgres" {
            postgres = try await PostgresMarketStore.connect(
                url: location, size: 4, logger: Logger(label: "test.postgres"))
        }
        let store = postgres.map { store in { @Sendable (_: URL) in store } }
        try await TestMarket.with(
            rules: Self.rules, configure: { $0.sweepIntervalMs = 3_600_000 }, store: store, directory: directory
        ) { market in
            let requester = TestMarket.newPeer()
            let cheap = TestMarket.newPeer()
            let dearer = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            try await market.connect(cheap) { c in
                try await c.ok(.offerAdvertise, AdvertiseBody(price: micro(1), slots: 1))
                try await market.connect(dearer) { d in
                    // Bidding, the second provider's standing offer asks more than the maximum:
                    // only its bid can win the task.
                    let standing = taking == .standingOffer ? micro(2) : micro(9)
                    try await d.ok(.offerAdvertise, AdvertiseBody(price: standing, slots: 1))
                    try await market.connect(requester) { r in
                        let posted = try await r.ok(.taskPost, PostBody(taskId: "f1", maxPrice: micro(5)))
                        #expect(posted.state == "assigned")
                        let won = try await c.next(.taskAssigned, taskId: "f1").decodeBody(AssignedBody.self)
                        #expect(won.provider == cheap.peerID.rawValue && won.price == micro(1))
                        // Delivered: a missed approval is then the provider's fault, not a payload
                        // that never came.
                        try await r.ok(.payloadDeliver, SealedBody(taskId: "f1", sealed: "Zmlyc3Q="))
                        // The whole maximum stays in escrow while the first provider has it.
                        #expect(try await market.balance(.escrow(taskID: "f1")) == Credits(whole: 5))
                        #expect(try await market.balance(.peer(requester.peerID)) == Credits(whole: 5))
                        #expect(try await market.audit().balanced)

                        try await Self.lose("f1", loss, provider: c, market: market)
                        let reopened = try await r.next(.settlement, taskId: "f1").decodeBody(SettlementBody.self)
                        #expect(reopened.state == "open" && reopened.movements.isEmpty, "\(reopened)")
                        #expect(try await market.balance(.escrow(taskID: "f1")) == Credits(whole: 5))
                        if taking == .bid {
                            let open = try await d.next(.taskOpen, taskId: "f1").decodeBody(OpenTaskBody.self)
                            #expect(open.maxPrice == micro(5), "offered again within the requester's maximum")
                            #expect(
                                try await c.refused(.bidPlace, BidBody(taskId: "f1", price: micro(1)))
                                    == "excluded_provider")
                            #expect(
                                try await d.refused(.bidPlace, BidBody(taskId: "f1", price: micro(6)))
                                    == "price_above_max")
                            let bid = try await d.ok(.bidPlace, BidBody(taskId: "f1", price: micro(2)))
                            #expect(bid.state == "assigned")
                            // The provider that lost it was never offered it again.
                            #expect(!(await c.pending()).contains { $0.type == MessageType.taskOpen.rawValue })
                        }
                        let assigned = try await d.next(.taskAssigned, taskId: "f1").decodeBody(AssignedBody.self)
                        #expect(assigned.provider == dearer.peerID.rawValue && assigned.price == micro(2))
                        #expect(try await market.balance(.escrow(taskID: "f1")) == Credits(whole: 5))
                        // The payload sealed to the first provider went with it: the second gets
                        // only the one sealed to it.
                        let stale = try await market.store.read { try await $0.frame(taskID: "f1", kind: .payload) }
                        #expect(stale == nil)

                        try await r.ok(.payloadDeliver, SealedBody(taskId: "f1", sealed: "c2VhbGVk"))
                        try await d.ok(.jobApproved, TaskRefBody(taskId: "f1"))
                        try await d.ok(.jobResult, ResultBody(taskId: "f1", sealed: "cmVzdWx0", resultHash: Self.hash))
                        _ = try await r.next(.jobResult, taskId: "f1")
                        #expect(try await r.ok(.jobAccept, TaskRefBody(taskId: "f1")).state == "settled")
                        let settled = try await d.next(.settlement, taskId: "f1").decodeBody(SettlementBody.self)
                        #expect(
                            settled.movements.map(\.kind) == [
                                .known(.fee), .known(.release), .known(.differenceRefund),
                            ])
                        #expect(settled.movements.last?.amount == micro(3))
                    }
                }
            }
            // Exactly: the requester paid 2 of its 10; the provider that did the work got 2 less
            // the 5 % fee; the market the fee; the provider that lost the task nothing.
            let fee = Credits(micro: micro(2) / 20)
            #expect(try await market.balance(.peer(requester.peerID)) == Credits(whole: 8))
            #expect(try await market.balance(.peer(dearer.peerID)) == Credits(micro: micro(2) - fee.micro))
            #expect(try await market.balance(.market) == fee)
            #expect(try await market.balance(.peer(cheap.peerID)) == .zero)
            #expect(try await market.balance(.held(dearer.peerID)) == .zero)
            #expect(try await market.balance(.escrow(taskID: "f1")) == .zero)
            let task = try #require(try await market.task("f1"))
            #expect(try task.state == .settled && task.excluded == [cheap.peerID] && task.price == Credits(whole: 2))
            let audit = try await market.audit()
            #expect(try audit.balanced && audit.minted == Credits(whole: 10), "\(audit.discrepancies)")
            // And the operator's own command, on the same books.
            let verify = try await CLIRunner.runAsync(
                ["market", "verify", "--db", books == "postgres" ? location : "sqlite:\(location)", "--json"],
                home: directory.url)
            #expect(verify.exitCode == 0, "\(verify.stdout) \(verify.stderr)")
            #expect((try verify.jsonObject()["discrepancies"] as? [Any])?.isEmpty == true, "\(verify.stdout)")
        }
    }

    /// The first provider loses task `id` as `loss` says.
    static func lose(_ id: String, _ loss: Loss, provider: MarketConnection, market: TestMarket) async throws {
        switch loss {
        case .handBack:
            let ack = try await provider.ok(.jobHandback, ReasonBody(taskId: id, reason: "five_hour at its limit"))
            #expect(ack.taskId == id)
        case .failure:
            try await provider.ok(.jobApproved, TaskRefBody(taskId: id))
            try await provider.ok(.jobFailed, ReasonBody(taskId: id, reason: "the engine stopped"))
        case .approvalTimeout:
            market.clock.advance(seconds: rules.approvalTimeoutMs / 1000 + 1)
            await market.server.sweepOnce()
        }
    }
}
