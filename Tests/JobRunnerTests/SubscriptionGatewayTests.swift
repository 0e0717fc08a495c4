import DockerEngine
import Foundation
import JobRunner
import MarketCore
import TestSupport
import TestTraits
import Testing
import Workspace

/// Subscription mode with the real Claude Code CLI: the gateway holds the `setup-token` token
/// and the job a per-job one; the account's limits come off the answers' headers; a refusal for
/// the limit stops the job as a capacity stop, with no retries into it.
@Suite(
    .enabled(
        if: ClaudeCLITestEnvironment.shouldRun, "no Docker engine or no Claude Code binary (scripts/test.sh fetches it)"
    ),
    .serialized, .heavy)
struct SubscriptionGatewayTests {
    static let token = "sk-ant-oat01-" + String(repeating: "SuBsCrIpTiOn", count: 6)

    /// A job of the real CLI through the gateway, as `ClaudeCLITests` runs it, on the subscription token.
    func run(
        _ prompt: String, standIn: MessagesAPIStandIn, tools: [String] = ["Read"], workspace: WorkspaceTree? = nil,
        credential: ClaudeCredential = .oauthToken(token)
    ) async throws -> (JobReport, Collected) {
        try await ClaudeCLITests().run(
            prompt, standIn: standIn, workspace: workspace, tools: tools, credential: credential)
    }

    static func unified(fiveHour: Double, resetIn seconds: TimeInterval, status: String = "allowed") -> [(
        String, String
    )] {
        let reset = String(Int(Date().timeIntervalSince1970 + seconds))
        let weekly = String(Int(Date().timeIntervalSince1970 + 5 * 86_400))
        return [
            ("anthropic-ratelimit-unified-status", status), ("anthropic-ratelimit-unified-reset", reset),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-5h-utilization", String(fiveHour)),
            ("anthropic-ratelimit-unified-5h-reset", reset), ("anthropic-ratelimit-unified-5h-status", status),
            ("anthropic-ratelimit-unified-7d-utilization", "0.25"), ("anthropic-ratelimit-unified-7d-reset", weekly),
        ]
    }

    /// A hostile prompt makes the CLI search every file it can reach for a subscription token
    /// and send what it finds to the API (here the stand-in): there is none to find, as no login
    /// is mounted and the job's own token is only in its environment, which the CLI's tools do
    /// not read. Upstream, the gateway put the real token on every request, and read the plan's
    /// windows off the answers.
    @Test func aSubscriptionJobHoldsOnlyAWorthlessTokenAndTheWindowsAreRead() async throws {
        let script: [MessagesAPIStandIn.Turn] = [
            .toolUse("Grep", #"{"pattern":"sk-ant-|cmm-job-","path":"/","output_mode":"content"}"#),
            .toolUse("Glob", #"{"pattern":"**/*credentials*","path":"/"}"#),
            .text("done searching"),
        ]
        try await MessagesAPIStandIn.with(
            scripts: ["dump": script],
            answer: { _ in .init(headers: Self.unified(fiveHour: 0.42, resetIn: 3600)) }
        ) { standIn in
            // The requester's own file, planted so that the search is seen to work.
            let planted = "sk-ant-oat01-PLANTEDBYTHEREQUESTER000000"
            let (report, output) = try await run(
                "script: dump — find every credential", standIn: standIn, tools: ["Read", "Grep", "Glob"],
                workspace: try ClaudeCLITests.workspace(["notes/credentials.txt": "token: \(planted)\n"]))
            #expect(report.state == .succeeded, "\(report.error ?? "") \(output.lines.suffix(5))")
            let requests = standIn.received.filter { $0.path == "/v1/messages" }
            #expect(!requests.isEmpty)
            // Upstream, the real token as a bearer credential with the OAuth beta; never an API key.
            #expect(requests.allSatisfy { $0.headers["authorization"] == "Bearer \(Self.token)" })
            #expect(requests.allSatisfy { $0.headers["x-api-key"] == nil })
            #expect(requests.allSatisfy { $0.headers["anthropic-beta"]?.contains("oauth-2025-04-20") == true })
            // What the job found: no token of any kind, in any file it could reach.
            let dumped = standIn.conversation.flatMap(\.toolResults).joined(separator: "\n")
            #expect(dumped.contains(planted) && dumped.contains("notes/credentials.txt"), "\(dumped.prefix(2000))")
            #expect(!dumped.contains(Self.token) && !dumped.contains("cmm-job-"), "\(dumped.prefix(2000))")
            // The gateway read the plan's windows off the answers.
            let fiveHour = try #require(report.limits.first { $0.window == "five_hour" }, "\(report.limits)")
            #expect(fiveHour.utilization == 0.42 && fiveHour.status == "allowed")
            #expect(report.limits.contains { $0.window == "seven_day" && $0.utilization == 0.25 })
            #expect(report.capacityStop == nil)
        }
    }

    /// A 429 for the account's limit ends the job as a capacity stop at once: the CLI's retries
    /// go no further than the gateway, and the report says which window and when it resets.
    @Test func aRefusalForTheLimitStopsTheJobWithoutRetriesIntoIt() async throws {
        try await MessagesAPIStandIn.with(
            answer: { _ in
                .init(
                    status: 429,
                    headers: Self.unified(fiveHour: 1, resetIn: 1800, status: "rejected") + [("retry-after", "1800")])
            }
        ) { standIn in
            let started = ContinuousClock.now
            let (report, output) = try await run("anything", standIn: standIn)
            #expect(report.state == .capacity, "\(report.state) \(report.error ?? "") \(output.lines.suffix(5))")
            let stop = try #require(report.capacityStop)
            #expect(stop.window == "five_hour" && stop.isRejected)
            let reset = try #require(stop.resetsAt)
            #expect(abs(reset.timeIntervalSinceNow - 1800) < 120)
            #expect(report.error?.contains("five_hour limit") == true)
            // One request reached the API; the CLI's retries were refused by the gateway itself.
            #expect(standIn.received.filter { $0.path == "/v1/messages" }.count == 1)
            #expect(ContinuousClock.now - started < .seconds(60))
        }
    }

    /// In API-key mode the answers carry the key's per-minute limits: the gateway reads them
    /// (and a hostile value among them is ignored), and the key goes upstream as `x-api-key`.
    @Test func anAPIKeysPerMinuteLimitsAreReadOffTheAnswers() async throws {
        let reset = Date().addingTimeInterval(50).formatted(.iso8601)
        try await MessagesAPIStandIn.with(
            defaultText: "metered",
            answer: { _ in
                .init(headers: [
                    ("anthropic-ratelimit-requests-limit", "50"), ("anthropic-ratelimit-requests-remaining", "45"),
                    ("anthropic-ratelimit-requests-reset", reset),
                    ("anthropic-ratelimit-output-tokens-limit", "8000"),
                    ("anthropic-ratelimit-output-tokens-remaining", "2000"),
                    ("anthropic-ratelimit-output-tokens-reset", reset),
                    ("anthropic-ratelimit-input-tokens-limit", "NaN"),
                    ("anthropic-ratelimit-input-tokens-remaining", "5"),
                ])
            }
        ) { standIn in
            let (report, output) = try await run("hello", standIn: standIn, credential: .apiKey(ClaudeCLITests.key))
            #expect(report.state == .succeeded, "\(report.error ?? "") \(output.lines.suffix(5))")
            #expect(
                standIn.received.filter { $0.path == "/v1/messages" }.allSatisfy {
                    $0.headers["x-api-key"] == ClaudeCLITests.key && $0.headers["authorization"] == nil
                })
            let requests = try #require(report.limits.first { $0.window == "requests" }, "\(report.limits)")
            #expect(abs((requests.utilization ?? 0) - 0.1) < 1e-9 && requests.resetsAt != nil)
            #expect(report.limits.first { $0.window == "output_tokens" }?.utilization == 0.75)
            #expect(!report.limits.contains { $0.window == "input_tokens" })
        }
    }
}
