import Foundation
import MarketClient
import MarketCore
import MarketProtocol
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
        let bidders = 200
        try await MarketConnection.with(url: first.url, keys: requester) { requesterConnection in
            let ack = try await requesterConnection.ok(.taskPost, PostBody(taskId: "race", maxPrice: micro(20)))
            #expect(ack.state == "open")
            let (outcomes, winner) = try await RaceTests.bidRace(urls: [first.url, second.url], bidders: bidders) { _ in
                micro(10)
            }
            #expect(outcomes == ["ack": 1, "invalid_state": bidders - 1])
            // The requester is on the first instance; the winning bid may have landed on the second.
            let assigned = try await requesterConnection.next(.taskAssigned, taskId: "race", timeout: .seconds(10))
            #expect(try assigned.decodeBody(AssignedBody.self).provider == winner)
        }
        let verify = try CLIRunner.run(["market", "verify", "--db", db, "--json"], home: home.url)
        #expect(verify.exitCode == 0, "\(verify.stdout)")
        let stats = try LoopbackHTTP.json(second.httpBase + "/v1/stats") as! [String: Any]
        #expect((stats["tasks"] as? [String: Int])?["assigned"] == 1)
        #expect(stats["ledgerBalanced"] as? Bool == true)
    }
}
