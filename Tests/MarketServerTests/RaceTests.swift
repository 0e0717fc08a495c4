import Foundation
import MarketClient
import MarketCore
import MarketProtocol
import TestSupport
import Testing

/// Releases every waiter at once, after all of them have arrived.
actor Gate {
    private var arrived = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var isOpen = false

    func wait() async {
        arrived += 1
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    func count() -> Int { arrived }

    func open() {
        isOpen = true
        for waiter in waiters { waiter.resume() }
        waiters.removeAll()
    }
}

@Suite(.serialized) struct RaceTests {
    /// 200 providers on 200 connections bid for one open task at the same moment: exactly one
    /// wins, every other bid is refused, and the ledger balances.
    @Test func twoHundredConcurrentBidsMakeOneAssignment() async throws {
        try await TestMarket.with(configure: { $0.preAuthFrames = 8 }) { market in
            let requester = TestMarket.newPeer()
            try await market.mint(requester.peerID, 50)
            try await market.connect(requester) { connection in
                let ack = try await connection.ok(.taskPost, PostBody(taskId: "race", maxPrice: micro(20)))
                #expect(ack.state == "open")
            }
            let bidders = 200
            let (outcomes, winner) = try await Self.bidRace(urls: [market.url], bidders: bidders) {
                micro(10) + Int64($0)
            }
            #expect(outcomes == ["ack": 1, "invalid_state": bidders - 1])
            let task = try #require(try await market.task("race"))
            #expect(task.state == .assigned)
            #expect(winner == task.provider?.rawValue)
            // The whole maximum stays in escrow until the task settles (should the winner lose it,
            // another may ask up to the maximum); the difference goes back then.
            #expect(task.price != nil)
            #expect(try await market.balance(.escrow(taskID: "race")) == Credits(whole: 20))
            #expect(try await market.balance(.peer(requester.peerID)) == Credits(whole: 30))
            let audit = try await market.audit()
            #expect(audit.balanced, "\(audit.discrepancies)")
        }
    }

    /// `bidders` providers, spread over `urls`, each with a standing offer above the task's
    /// maximum, bid for task `race` at the same moment. Returns each answer's code and the winner.
    static func bidRace(urls: [String], bidders: Int, price: @escaping @Sendable (Int) -> Int64) async throws -> (
        outcomes: [String: Int], winner: String?
    ) {
        let gate = Gate()
        let outcomes = LockedBox<[String: Int]>([:])
        let winner = LockedBox<String?>(nil)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<bidders {
                group.addTask {
                    let keys = TestMarket.newPeer()
                    let ready = LockedBox(false)
                    do {
                        // 200 handshakes at once on a loaded 2-core machine (other suites run
                        // real CLIs beside this one): the open is given time, the race is not.
                        try await MarketConnection.with(
                            url: urls[index % urls.count], keys: keys, openTimeout: .seconds(90)
                        ) { connection in
                            // Above the task's maximum: the offer alone never matches it.
                            let advertised = try? await connection.ok(
                                .offerAdvertise, AdvertiseBody(price: micro(50), slots: 1))
                            ready.withLock { $0 = true }
                            await gate.wait()
                            guard advertised != nil else {
                                outcomes.withLock { $0["advertise failed", default: 0] += 1 }
                                return
                            }
                            let answer = try await connection.request(
                                .bidPlace, BidBody(taskId: "race", price: price(index)), timeout: .seconds(60))
                            let outcome = answer.errorBody?.code.rawValue ?? answer.type
                            outcomes.withLock { $0[outcome, default: 0] += 1 }
                            if answer.type == "ack" { winner.withLock { $0 = keys.peerID.rawValue } }
                        }
                    } catch {
                        outcomes.withLock { $0["\(error)", default: 0] += 1 }
                        if !ready.withLock({ $0 }) { await gate.wait() }
                    }
                }
            }
            // Every bidder is connected with a standing offer (a failed one ends the group with its error).
            for _ in 0..<6000 where await gate.count() < bidders { try await Task.sleep(for: .milliseconds(20)) }
            #expect(await gate.count() == bidders, "not every bidder got ready")
            await gate.open()
            try await group.waitForAll()
        }
        return (outcomes.withLock { $0 }, winner.withLock { $0 })
    }
}
