import DockerEngine
import Foundation
import JobRunner
import Logging
import MarketCore
import TestSupport
import Testing

/// A claude job in API-key mode, in a real container: the stand-in `claude` calls
/// `$ANTHROPIC_BASE_URL` the way Claude Code does, through the container's bridge to the
/// provider's gateway, which forwards to a loopback HTTPS upstream.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct GatewayJobTests {
    let runDirectory = TemporaryDirectory("cmm-gateway-run")

    struct Outcome {
        var report: JobReport
        var lines: [String]
        var inspect: String
        var logs: String
    }

    func run(_ prompt: String, upstream: TestUpstream, budget: Int64) async throws -> Outcome {
        try await TestRunnerImage.ensureBuilt()
        let logs = LockedBox<[String]>([])
        let logger = Logger(label: "test-job") { _ in CollectingLogHandler(records: logs) }
        return try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            let executor = JobExecutor(docker: docker, runDirectory: runDirectory.url, logger: logger)
            let collected = Collected()
            let options = ClaudeOptions(
                model: "claude-test", maxTurns: 1, allowedTools: [], credential: .apiKey(GatewayTests.realKey),
                gateway: GatewaySettings(upstream: upstream.url, trustRootsPEM: upstream.caPEM, timeout: .seconds(10)),
                tokenBudget: budget)
            let job = JobRequest(
                id: UUID().uuidString.lowercased(), prompt: Data(prompt.utf8), backend: .claude(options),
                sandbox: JobExecutorTests.settings, egress: nil)
            let inspected = LockedBox("")
            let report = try await executor.run(
                job,
                whenCreated: { id in
                    let json = try await docker.inspectContainerJSON(id)
                    let data = try JSONSerialization.data(withJSONObject: json)
                    inspected.withLock { $0 = String(decoding: data, as: UTF8.self) }
                }
            ) { collected.add($0) }
            return Outcome(
                report: report, lines: collected.lines, inspect: inspected.withLock { $0 },
                logs: logs.withLock { $0 }.joined(separator: "\n"))
        }
    }

    @Test func theJobNeverHoldsTheKeyAndItsUsageIsMeteredByTheGateway() async throws {
        try await TestUpstream.with { upstream in
            let outcome = try await run("call the api 2", upstream: upstream, budget: 1_000_000)
            let text = outcome.lines.joined(separator: "\n")
            // The job dumped its environment and /proc/self/environ: its token, never the key.
            #expect(text.contains("environ: ") && text.contains("ANTHROPIC_API_KEY=cmm-job-"), "\(text)")
            #expect(text.contains("ANTHROPIC_BASE_URL=http://127.0.0.1:3128"))
            for haystack in [text, outcome.inspect, outcome.logs] {
                #expect(!haystack.contains(GatewayTests.realKey) && !haystack.contains("REALKEY"))
            }
            #expect(outcome.inspect.contains("cmm-job-"), "the inspection was read")
            #expect(outcome.report.redactions == 0, "nothing to redact: the key was never there")
            #expect(outcome.lines.filter { $0.contains("api: hello from upstream") }.count == 2, "\(text)")
            #expect(upstream.received.count == 2)
            #expect(upstream.received.allSatisfy { $0.apiKey == GatewayTests.realKey })
            // The meter counts what the upstream said, not the result line the job printed.
            let report = outcome.report
            #expect(report.metered)
            #expect(report.state == .succeeded, "\(report.error ?? "")")
            let usage = report.usage["claude-test"]
            #expect(usage?.inputTokens == Int64(TestUpstream.usageStart.input) * 2)
            #expect(usage?.outputTokens == Int64(TestUpstream.finalOutput) * 2)
            #expect(report.totalUsage.outputTokens == Int64(TestUpstream.finalOutput) * 2)
            #expect(report.result?.total.outputTokens != report.totalUsage.outputTokens, "the printed numbers differ")
            #expect(report.gatewayCounts.forwarded == 2)
        }
    }

    @Test func theBudgetCutOffEndsTheJob() async throws {
        try await TestUpstream.with { upstream in
            let outcome = try await run(
                "call the api 5", upstream: upstream, budget: TestUpstream.tokensPerAnswer + 5)
            #expect(outcome.report.state == .overBudget, "\(outcome.lines)")
            #expect(outcome.report.error?.contains("tokens") == true)
            #expect(upstream.received.count == 2, "the third request was refused")
            #expect(outcome.report.gatewayCounts.refused >= 1)
        }
    }
}
