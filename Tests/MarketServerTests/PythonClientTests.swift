import Foundation
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
