import Foundation
import TestSupport
import Testing

/// `execute` in API-key mode as a provider runs it, against the loopback upstream: the usage it
/// records is the gateway's, and the key is in no file of the participant's home.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct GatewayCommandTests {
    let home = TemporaryDirectory("cmm-gateway-home")

    func environment(_ upstream: TestUpstream) -> [String: String] {
        [
            "CMM_DOCKER_IMAGE": TestRunnerImage.name, "ANTHROPIC_API_KEY": GatewayTests.realKey,
            "CMM_CLAUDE_APIBASEURL": upstream.url.absoluteString, "CMM_CLAUDE_MODEL": "claude-test",
            "CMM_TEST_GATEWAY_CA_FILE": upstream.directory.url.appending(path: "ca.pem").path,
            "CMM_TEST_GATEWAY_TIMEOUT": "20", "CMM_DOCKER_TIMEOUTSECONDS": "60",
        ]
    }

    /// Every file under `directory` that contains `needle` (bytes, any file type).
    static func files(under directory: URL, containing needle: String) -> [String] {
        let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil)
        var hits: [String] = []
        while let url = walker?.nextObject() as? URL {
            guard let data = try? Data(contentsOf: url), data.range(of: Data(needle.utf8)) != nil else { continue }
            hits.append(url.path)
        }
        return hits
    }

    @Test func usageIsMeteredAndTheKeyIsInNoFile() async throws {
        try await TestRunnerImage.ensureBuilt()
        try await TestUpstream.with { upstream in
            let environment = environment(upstream)
            func run(_ arguments: [String]) async throws -> CLIResult {
                try await CLIRunner.runAsync(arguments, home: home.url, environment: environment)
            }
            #expect(try await run(["terms", "--accept"]).exitCode == 0)
            #expect(try await run(["opt-in", "--claude-jobs", "--yes"]).exitCode == 0)
            let job = try await run(["execute", "--prompt", "call the api 2", "--yes", "--json"])
            #expect(job.exitCode == 0, "\(job.stderr)")
            #expect(!job.stdout.contains(GatewayTests.realKey) && !job.stderr.contains(GatewayTests.realKey))
            let usage = try await run(["usage", "--format", "json", "--by", "model"]).jsonObject()
            let total = try #require(usage["total"] as? [String: Any])
            #expect(total["inputTokens"] as? Int == TestUpstream.usageStart.input * 2, "\(total)")
            #expect(total["outputTokens"] as? Int == TestUpstream.finalOutput * 2)
            let audit = try await run(["audit", "--format", "json"]).stdout
            #expect(audit.contains("gateway.summary"))
            #expect(try await run(["audit", "--verify"]).exitCode == 0)

            // Over the per-job budget: the gateway refuses, the job ends as over_budget (exit 4).
            #expect(try await run(["config", "--set", "limits.maxTokensPerTask=30"]).exitCode == 0)
            let over = try await run(["execute", "--prompt", "call the api 5", "--yes"])
            #expect(over.exitCode == 4, "\(over.stderr) \(over.stdout)")
            #expect(over.stderr.contains("over_budget") && over.stderr.contains("tokens"), "\(over.stderr)")
            #expect(upstream.received.count == 2 + 2)

            _ = try await run(["config", "--export"])
            #expect(Self.files(under: home.url, containing: GatewayTests.realKey).isEmpty)
            #expect(Self.files(under: home.url, containing: "REALKEY").isEmpty)
        }
    }

    /// `execute` whose answer is a 429 for the account's limit: the job is stopped at once, the
    /// command says the account is at its limit and when it resets (exit 4), the window is kept
    /// for `status`, and the CLI's retries never reach the API.
    @Test func aJobAtTheAccountsLimitExitsFourAndSaysWhenItResets() async throws {
        try await TestRunnerImage.ensureBuilt()
        let reset = Int(Date().timeIntervalSince1970) + 1800
        try await MessagesAPIStandIn.with(
            answer: { _ in
                .init(
                    status: 429,
                    headers: [
                        ("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-remaining", "0"),
                        (
                            "anthropic-ratelimit-requests-reset",
                            Date(timeIntervalSince1970: Double(reset)).formatted(.iso8601)
                        ),
                        ("retry-after", "1800"),
                    ])
            }
        ) { standIn in
            let environment = [
                "CMM_DOCKER_IMAGE": TestRunnerImage.name, "ANTHROPIC_API_KEY": GatewayTests.realKey,
                "CMM_CLAUDE_APIBASEURL": standIn.url, "CMM_CLAUDE_MODEL": "claude-test",
                "CMM_DOCKER_TIMEOUTSECONDS": "60",
            ]
            func run(_ arguments: [String]) async throws -> CLIResult {
                try await CLIRunner.runAsync(arguments, home: home.url, environment: environment)
            }
            #expect(try await run(["terms", "--accept"]).exitCode == 0)
            #expect(try await run(["opt-in", "--claude-jobs", "--yes"]).exitCode == 0)
            let job = try await run(["execute", "--prompt", "call the api 3", "--yes"])
            #expect(job.exitCode == 4, "\(job.stderr) \(job.stdout)")
            let when = Date(timeIntervalSince1970: Double(reset)).formatted(.iso8601)
            #expect(
                job.stderr.contains("the account is at its requests limit") && job.stderr.contains(when),
                "\(job.stderr)")
            #expect(standIn.received.filter { $0.path == "/v1/messages" }.count == 1)
            let status = try await run(["status", "--json"]).jsonObject()
            let capacity = try #require(status["capacity"] as? [String: Any])
            #expect(capacity["pausedFor"] as? String == "requests", "\(capacity)")
            let audit = try await run(["audit", "--format", "json"]).stdout
            #expect(audit.contains("capacity.stop"))
        }
    }
}
