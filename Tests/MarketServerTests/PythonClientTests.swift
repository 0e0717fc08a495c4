import Foundation
import MarketCore
import MarketProtocol
import TestSupport
import Testing

/// A client written in Python from docs/PROTOCOL.md alone drives a full lifecycle against a
/// real `market serve`: if the page and the server disagree, this fails.
@Suite(.serialized) struct PythonClientTests {
    static var script: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appending(path: "Interop/market_client.py")
    }

    @Test func anIndependentClientRunsALifecycleFromTheProtocolPage() throws {
        let home = TemporaryDirectory("cmm-python")
        let db = "sqlite:" + home.file("m.sqlite").path
        let server = try MarketProcess.start(db: db, home: home.url)
        defer { server.stop() }
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", Self.script.path, server.url, CLIRunner.executable.path, db, home.path],
            environment: CLIRunner.baseEnvironment(home: home.url))
        #expect(result.exitCode == 0, "python client: \(result.stderr)")
        #expect(result.stdout.contains("LIFECYCLE OK"), "\(result.stdout)")
        let verify = try CLIRunner.run(["market", "verify", "--db", db], home: home.url)
        #expect(verify.exitCode == 0 && verify.stdout.contains("the books balance"))
    }
}

/// The read views against `docs/openapi.yaml`, on a market with a settled lifecycle in it.
@Suite(.serialized) struct OpenAPITests {
    @Test func theServerAnswersAsItsOpenAPISpecSays() async throws {
        let spec = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appending(path: "docs/openapi.yaml")
        let checker = PythonClientTests.script.deletingLastPathComponent().appending(path: "openapi_check.py")
        try await TestMarket.with { market in
            let requester = TestMarket.newPeer()
            let provider = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            try await market.connect(provider) { p in
                try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(2), slots: 2, models: ["claude-sonnet-4-5"]))
                try await market.connect(requester) { r in
                    try await r.ok(.taskPost, PostBody(taskId: "o1", maxPrice: micro(3), model: "claude-sonnet-4-5"))
                    try await p.ok(.jobApproved, TaskRefBody(taskId: "o1"))
                    try await p.ok(
                        .jobResult,
                        ResultBody(taskId: "o1", sealed: "eA==", resultHash: String(repeating: "f", count: 64)))
                    try await r.ok(.jobAccept, TaskRefBody(taskId: "o1"))
                    try await r.ok(.taskPost, PostBody(taskId: "o2", maxPrice: micro(1)))
                }
            }
            let (base, peer) = (market.httpBase, provider.peerID.rawValue)
            // The server answers from this process: the checker is waited for off the pool.
            let result = try await offPool {
                try CLIRunner.runProcess(
                    URL(fileURLWithPath: "/usr/bin/env"), ["python3", checker.path, spec.path, base, peer],
                    environment: ProcessInfo.processInfo.environment)
            }
            #expect(result.exitCode == 0, "\(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("OPENAPI OK"))
        }
    }
}
