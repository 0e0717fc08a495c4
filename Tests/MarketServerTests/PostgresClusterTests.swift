import Foundation
import MarketClient
import MarketCore
import TestSupport
import Testing

/// Two `market serve` processes on one PostgreSQL database behave as one market.
@Suite(.serialized, .enabled(if: PostgresTestDatabase.shouldRun)) struct PostgresClusterTests {
    @Test func twoHundredBidsAcrossTwoInstancesMakeOneAssignment() async throws {
        let home = TemporaryDirectory("cmm-pg-race")
        let db = try PostgresTestDatabase.create()
        let requester = TestMarket.newPeer()
        let mint = try CLIRunner.run(
            ["market", "mint", "--to", requester.peerID.rawValue, "--amount", "50", "--db", db], home: home.url)
        #expect(mint.exitCode == 0, "\(mint.stderr)")
        let first = try MarketProcess.start(db: db, home: home.url)
        let second = try MarketProcess.start(db: db, home: home.url)
        defer {
            first.stop()
            second.stop()
        }
        let gate = Gate()
        let outcomes = Locked<[String: Int]>([:])
        let winner = Locked<String?>(nil)
        let bidders = 200
        try await MarketConnection.with(url: first.url, keys: requester) { requesterConnection in
            let ack = try await requesterConnection.ok(.taskPost, PostBody(taskId: "race", maxPrice: micro(20)))
            #expect(ack.state == "open")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<bidders {
                    let url = index % 2 == 0 ? first.url : second.url
                    group.addTask {
                        let keys = TestMarket.newPeer()
                        let ready = Locked(false)
                        do {
                            try await MarketConnection.with(url: url, keys: keys) { connection in
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
                                    .bidPlace, BidBody(taskId: "race", price: micro(10)), timeout: .seconds(60))
                                let outcome = answer.errorBody?.code ?? answer.type
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
                for _ in 0..<3000 where await gate.count() < bidders { try await Task.sleep(for: .milliseconds(20)) }
                #expect(await gate.count() == bidders, "not every bidder got ready")
                await gate.open()
                try await group.waitForAll()
            }
            #expect(outcomes.withLock { $0 } == ["ack": 1, "invalid_state": bidders - 1])
            // The requester is on the first instance; the winning bid may have landed on the second.
            let assigned = try await requesterConnection.next(.taskAssigned, taskId: "race", timeout: .seconds(10))
            #expect(try assigned.decodeBody(AssignedBody.self).provider == winner.withLock { $0 })
        }
        let verify = try CLIRunner.run(["market", "verify", "--db", db, "--json"], home: home.url)
        #expect(verify.exitCode == 0, "\(verify.stdout)")
        let stats = try LoopbackHTTP.json(second.httpBase + "/v1/stats") as! [String: Any]
        #expect((stats["tasks"] as? [String: Int])?["assigned"] == 1)
        #expect(stats["ledgerBalanced"] as? Bool == true)
    }
}
