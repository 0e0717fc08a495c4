import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// The market as an operator runs it: `market serve` processes, killed and restarted.
@Suite(.serialized) struct ServerProcessTests {
    static let shortWindows = [
        "--acceptance-window", "2s", "--approval-timeout", "2s", "--open-timeout", "3s", "--heartbeat-timeout", "3s",
        "--run-grace", "1s", "--sweep-interval", "200ms", "--holdback-jobs", "0", "--fee-bp", "300",
    ]

    /// One full lifecycle between a requester and whichever provider the market picks.
    static func lifecycle(
        _ id: String, requester: MarketConnection, providers: [MarketConnection]
    ) async throws {
        let posted = try await requester.ok(.taskPost, PostBody(taskId: id, maxPrice: micro(8), timeoutSeconds: 1))
        guard posted.state == "assigned" else { return }
        let assigned = try await requester.next(.taskAssigned, taskId: id).decodeBody(AssignedBody.self)
        guard let provider = providers.first(where: { $0.peerID.rawValue == assigned.provider }) else { return }
        try await requester.ok(.payloadDeliver, SealedBody(taskId: id, sealed: "cGF5bG9hZA=="))
        try await provider.ok(.jobApproved, TaskRefBody(taskId: id))
        try await provider.ok(
            .jobResult, ResultBody(taskId: id, sealed: "cmVzdWx0", resultHash: String(repeating: "e", count: 64)))
        try await requester.ok(.jobAccept, TaskRefBody(taskId: id))
    }

    @Test func sigtermEndsTheServerPromptlyEvenWithAClientThatNeverHangsUp() async throws {
        let home = TemporaryDirectory("cmm-stop")
        let server = try MarketProcess.start(db: "sqlite:" + home.file("m.sqlite").path, home: home.url)
        let notice = try await MarketConnection.with(url: server.url, keys: TestMarket.newPeer()) { connection in
            let started = Date()
            kill(server.pid, SIGTERM)
            let frame = try await connection.next(.error, timeout: .seconds(10))
            while server.process.isRunning && Date().timeIntervalSince(started) < 10 {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(!server.process.isRunning, "market serve still runs 10 s after SIGTERM with a client connected")
            return frame.errorBody?.code.rawValue
        }
        #expect(notice == "unavailable")
        #expect(server.stop() == 0)
    }

    /// `--no-dashboard` as an operator types it: no page, the read views stay.
    @Test func noDashboardServesTheViewsButNoPage() async throws {
        let home = TemporaryDirectory("cmm-no-dashboard")
        let db = "sqlite:" + home.file("market.sqlite").path
        // Processes and plain HTTP, waited for off the concurrency pool.
        let (withPage, without) = try await offPool {
            let plain = try MarketProcess.start(db: db, home: home.url)
            let page = try LoopbackHTTP.get(plain.httpBase + "/")
            let plainExit = plain.stop()
            let server = try MarketProcess.start(db: db, home: home.url, extra: ["--no-dashboard"])
            let statuses = [
                try LoopbackHTTP.get(server.httpBase + "/").status,
                try LoopbackHTTP.get(server.httpBase + "/v1/stats").status, Int(plainExit), Int(server.stop()),
            ]
            return (page, statuses)
        }
        #expect(withPage.status == 200 && String(decoding: withPage.body, as: UTF8.self).contains("<html"))
        #expect(without == [404, 200, 0, 0], "/ and /v1/stats without the dashboard, and both exits")
    }

    @Test func killingTheServerAtRandomPointsLosesNoCredit() async throws {
        let home = TemporaryDirectory("cmm-crash")
        let db = "sqlite:" + home.file("market.sqlite").path
        let requester = TestMarket.newPeer()
        let providers = [TestMarket.newPeer(), TestMarket.newPeer()]
        let mint = try CLIRunner.run(
            ["market", "mint", "--to", requester.peerID.rawValue, "--amount", "1000", "--db", db], home: home.url)
        #expect(mint.exitCode == 0, "\(mint.stderr)")
        var server = try MarketProcess.start(db: db, home: home.url, extra: Self.shortWindows)
        let counter = LockedBox(0)
        var kills = 0
        for round in 0..<10 {
            let victim = server
            let startedBefore = counter.withLock { $0 }
            let killer = Task {
                // Strike once this round has work in flight (a loaded machine may take a while to
                // connect), at a random moment of it.
                for _ in 0..<500 where counter.withLock({ $0 }) == startedBefore {
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...400)))
                kill(victim.pid, SIGKILL)
            }
            let url = server.url
            do {
                try await MarketConnection.with(url: url, keys: providers[0]) { first in
                    try await MarketConnection.with(url: url, keys: providers[1]) { second in
                        try await first.ok(.offerAdvertise, AdvertiseBody(price: micro(5), slots: 2))
                        try await second.ok(.offerAdvertise, AdvertiseBody(price: micro(6), slots: 2))
                        try await MarketConnection.with(url: url, keys: requester) { connection in
                            for index in 0..<40 {
                                let id = "r\(round)-\(index)"
                                counter.withLock { $0 += 1 }
                                try await Self.lifecycle(id, requester: connection, providers: [first, second])
                            }
                        }
                    }
                }
            } catch {
                // The connection died with the server: that is the point.
            }
            killer.cancel()
            server.stop(SIGKILL)
            kills += 1
            server = try MarketProcess.start(db: db, home: home.url, extra: Self.shortWindows)
        }
        // Nobody acts any more: heartbeats stop, offers lapse, every timeout takes its path.
        var open: [[String: Any]] = []
        var finalStates: [String: Int] = [:]
        for _ in 0..<120 {
            try await Task.sleep(for: .milliseconds(500))
            let tasks = try LoopbackHTTP.json(server.httpBase + "/v1/tasks?limit=1000") as! [[String: Any]]
            open = tasks.filter { !["settled", "refunded", "cancelled"].contains($0["state"] as! String) }
            if open.isEmpty && tasks.count > 0 {
                finalStates = Dictionary(grouping: tasks, by: { $0["state"] as! String }).mapValues(\.count)
                break
            }
        }
        #expect(open.isEmpty, "tasks still not final: \(open)")
        // Kills landed mid-lifecycle (refunds after timeouts) and lifecycles completed between them.
        #expect(finalStates["settled", default: 0] > 0 && finalStates["refunded", default: 0] > 0, "\(finalStates)")
        #expect(server.stop(SIGTERM) == 0, "a graceful stop exits 0: \(server.output)")
        let verify = try CLIRunner.run(["market", "verify", "--db", db, "--json"], home: home.url)
        #expect(verify.exitCode == 0, "\(verify.stdout)")
        let audit = try verify.jsonObject()
        #expect((audit["discrepancies"] as? [Any])?.isEmpty == true)
        // Every round had work in flight when its kill came (on a loaded machine one lifecycle
        // may outlast the random delay, so a round may start only one).
        #expect(kills == 10 && counter.withLock { $0 } >= 10, "lifecycles were cut by kills")
        let settled = try CLIRunner.run(["market", "verify", "--db", db], home: home.url)
        #expect(settled.stdout.contains("the books balance"))
    }
}

/// `market resolve` on a real dispute, as the operator runs it against the market's file.
@Suite(.serialized) struct ResolveCommandTests {
    @Test func theOperatorDecidesADisputeForTheRequester() async throws {
        let directory = TemporaryDirectory("cmm-resolve")
        let requester = TestMarket.newPeer()
        let provider = TestMarket.newPeer()
        try await TestMarket.with(directory: directory) { market in
            try await market.mint(requester.peerID, 10)
            try await market.connect(provider) { p in
                try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(4), slots: 1))
                try await market.connect(requester) { r in
                    try await r.ok(.taskPost, PostBody(taskId: "rz", maxPrice: micro(4)))
                    try await p.ok(.jobApproved, TaskRefBody(taskId: "rz"))
                    try await p.ok(
                        .jobResult,
                        ResultBody(taskId: "rz", sealed: "eA==", resultHash: String(repeating: "9", count: 64)))
                    try await r.ok(.jobDispute, ReasonBody(taskId: "rz", reason: "no answer in it"))
                }
            }
        }
        let db = "sqlite:" + directory.file("market.sqlite").path
        let bad = try CLIRunner.run(
            ["market", "resolve", "--task-id", "rz", "--for", "nobody", "--memo", "x", "--db", db], home: directory.url)
        #expect(bad.exitCode != 0 && bad.stderr.contains("must be provider or requester"))
        let missing = try CLIRunner.run(
            ["market", "resolve", "--task-id", "zz", "--for", "requester", "--memo", "x", "--db", db],
            home: directory.url)
        #expect(missing.exitCode == 1 && missing.stderr.contains("no task zz"), "\(missing.stderr)")
        let resolved = try CLIRunner.run(
            ["market", "resolve", "--task-id", "rz", "--for", "requester", "--memo", "empty result", "--db", db],
            home: directory.url)
        #expect(resolved.exitCode == 0 && resolved.stdout.contains("task rz is refunded"), "\(resolved.stderr)")
        let again = try CLIRunner.run(
            ["market", "resolve", "--task-id", "rz", "--for", "provider", "--memo", "twice", "--db", db],
            home: directory.url)
        #expect(
            again.exitCode == 1 && again.stderr.contains("not allowed while task rz is refunded"), "\(again.stderr)")
        let verify = try CLIRunner.run(["market", "verify", "--db", db, "--json"], home: directory.url)
        #expect(verify.exitCode == 0)
        let store = try SQLiteMarketStore(path: directory.file("market.sqlite").path)
        let (balance, record) = try await store.read {
            await (try $0.balance(.peer(requester.peerID)), try $0.peer(provider.peerID))
        }
        try await store.close()
        #expect(balance == (try Credits(whole: 10)), "everything in escrow went back")
        #expect(record?.reputation.failures == 1, "a ruling for the requester counts against the provider")
    }
}
