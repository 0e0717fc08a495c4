import Foundation
import MarketClient
import MarketCore
import MarketProtocol
import TestSupport
import Testing

/// Whether schemathesis (PyPI) is here. Under `scripts/test.sh` (`CMM_REQUIRE_SCHEMATHESIS=1`)
/// or in CI a missing one is a failure, not a skip.
enum SchemathesisEnvironment {
    static var isRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["CI"] == "true" || environment["CMM_REQUIRE_SCHEMATHESIS"] == "1"
    }

    static var isAvailable: Bool {
        (try? CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", "import schemathesis"],
            environment: ProcessInfo.processInfo.environment))?.exitCode == 0
    }

    static var shouldRun: Bool { isAvailable || isRequired }
}

/// The read views against their contract, `docs/openapi.yaml`, checked by schemathesis on a
/// real `market serve` with a few settled lifecycles in its books: every response matches its
/// schema, no 5xx, and methods the views do not have get 405. The event stream (infinite) and
/// the HTML page are left out.
@Suite(.enabled(if: SchemathesisEnvironment.shouldRun, "schemathesis is not installed (scripts/test.sh installs it)"))
struct SchemaTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func theReadViewsKeepTheirContract() async throws {
        try #require(SchemathesisEnvironment.isAvailable, "schemathesis is required here: pip install schemathesis")
        let home = TemporaryDirectory("cmm-schema")
        let db = "sqlite:" + home.file("market.sqlite").path
        let requester = TestMarket.newPeer()
        let provider = TestMarket.newPeer()
        let mint = try await offPool {
            try CLIRunner.run(
                ["market", "mint", "--to", requester.peerID.rawValue, "--amount", "50", "--db", db], home: home.url)
        }
        try #require(mint.exitCode == 0, "\(mint.stderr)")
        let market = try await offPool { try MarketProcess.start(db: db, home: home.url) }
        defer { _ = market.stop() }
        try await MarketConnection.with(url: market.url, keys: provider) { p in
            try await MarketConnection.with(url: market.url, keys: requester) { r in
                _ = try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(2), slots: 2))
                for n in 0..<3 {
                    _ = try await r.ok(.taskPost, PostBody(taskId: "schema-\(n)", maxPrice: micro(3)))
                    _ = try await p.ok(.jobApproved, TaskRefBody(taskId: "schema-\(n)"))
                    _ = try await p.ok(
                        .jobResult,
                        ResultBody(
                            taskId: "schema-\(n)", sealed: "eA==", resultHash: String(repeating: "c", count: 64)))
                    _ = try await r.ok(.jobAccept, TaskRefBody(taskId: "schema-\(n)"))
                }
                _ = try await r.ok(.taskPost, PostBody(taskId: "schema-open", maxPrice: micro(1)))
            }
        }
        let schema = Self.repository.appending(path: "docs/openapi.yaml").path
        let base = market.httpBase
        // Run in the test's own directory: schemathesis keeps a cache where it runs.
        let workDirectory = home.url.path
        let result = try await offPool {
            try CLIRunner.runProcess(
                URL(fileURLWithPath: "/bin/sh"),
                [
                    "-c", #"cd "$1" && shift && exec python3 -m schemathesis.cli "$@""#, "schemathesis", workDirectory,
                    "run", schema, "--url", base, "--exclude-path", "/v1/events", "--exclude-path", "/", "--checks",
                    "all", "--max-examples", "40", "--generation-deterministic",
                ],
                environment: ProcessInfo.processInfo.environment.merging(["NO_COLOR": "1"]) { $1 })
        }
        #expect(result.exitCode == 0, "schemathesis found failures:\n\(result.stdout.suffix(6000))\(result.stderr)")
        #expect(result.stdout.contains("passed"), "\(result.stdout.suffix(2000))")
    }
}
