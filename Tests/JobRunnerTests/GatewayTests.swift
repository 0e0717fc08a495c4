import AsyncHTTPClient
import Foundation
import JobRunner
import Logging
import MarketCore
import NIOCore
import NIOHTTP1
import NIOPosix
import TestSupport
import Testing

/// Collects every log record, message and metadata, to search them for secrets.
struct CollectingLogHandler: LogHandler {
    let records: LockedBox<[String]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        records.withLock {
            $0.append("\(event.message) \(metadata.merging(event.metadata ?? [:]) { $1 })")
        }
    }

    func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        records.withLock { $0.append("\(message) \(self.metadata.merging(metadata ?? [:]) { $1 })") }
    }
}

/// An answer from the gateway, with when its first body byte arrived.
struct GatewayAnswer {
    var status: Int
    var text: String
    var firstByte: Duration?
    var total: Duration
}

/// The gateway and the egress endpoint on their Unix socket, without Docker: requests go
/// straight to the socket, as the container's bridge would send them.
@Suite(.serialized)
struct GatewayTests {
    static let realKey = "sk-ant-api03-REALKEY-\(UUID().uuidString)-never-in-the-job"
    let runDirectory = TemporaryDirectory("cmm-gateway")

    func withGateway<T: Sendable>(
        _ upstream: TestUpstream, budget: Int64 = 1_000_000, timeout: Duration = .seconds(10),
        upstreamURL: URL? = nil, egress: EgressPolicy = EgressPolicy(allowlist: [], byteBudget: 1 << 30),
        logs: LockedBox<[String]> = LockedBox([]),
        _ body: @Sendable (EgressProxy, ClaudeGateway, HTTPClient) async throws -> T
    ) async throws -> T {
        let logger = Logger(label: "test-gateway") { _ in CollectingLogHandler(records: logs) }
        let gateway = try ClaudeGateway(
            apiKey: Self.realKey, models: ["claude-test", "slow", "hang"], tokenBudget: budget,
            settings: GatewaySettings(
                upstream: upstreamURL ?? upstream.url, trustRootsPEM: upstream.caPEM, timeout: timeout),
            logger: logger)
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            let result = try await EgressProxy.withProxy(
                directory: runDirectory.url.appending(path: UUID().uuidString.prefix(8).description), policy: egress,
                gateway: gateway, logger: logger
            ) { proxy in try await body(proxy, gateway, client) }
            try await client.shutdown()
            await gateway.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            await gateway.shutdown()
            throw error
        }
    }

    static func post(
        _ client: HTTPClient, _ proxy: EgressProxy, path: String = "/v1/messages?beta=true", method: HTTPMethod = .POST,
        headers: [(String, String)], body: String, onFirstChunk: @Sendable () -> Void = {}
    ) async throws -> GatewayAnswer {
        let socket = proxy.socketPath.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        var request = HTTPClientRequest(url: "http+unix://\(socket)\(path)")
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(string: body))
        let clock = ContinuousClock()
        let start = clock.now
        let response = try await client.execute(request, timeout: .seconds(30))
        var text = ""
        var firstByte: Duration?
        for try await chunk in response.body {
            if firstByte == nil {
                firstByte = clock.now - start
                onFirstChunk()
            }
            text += String(buffer: chunk)
        }
        return GatewayAnswer(
            status: Int(response.status.code), text: text, firstByte: firstByte, total: clock.now - start)
    }

    static func messages(model: String = "claude-test", stream: Bool = true, maxTokens: Int = 100) -> String {
        #"{"model":"\#(model)","max_tokens":\#(maxTokens),"stream":\#(stream),"messages":[{"role":"user","content":"hi"}]}"#
    }

    static func headers(_ token: String) -> [(String, String)] {
        [("x-api-key", token), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]
    }

    @Test func forwardsWithTheRealKeyAndMetersTheAPIsOwnUsage() async throws {
        try await TestUpstream.with { upstream in
            let logs = LockedBox<[String]>([])
            try await withGateway(upstream, logs: logs) { proxy, gateway, client in
                let streamed = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages())
                #expect(streamed.status == 200)
                #expect(streamed.text.contains("hello from upstream"))
                #expect(streamed.text.contains(#""type":"message_stop""#), "streamed unchanged")
                let whole = try await Self.post(
                    client, proxy, path: "/v1/messages", headers: Self.headers(gateway.token),
                    body: Self.messages(stream: false))
                #expect(whole.status == 200 && whole.text.contains(#""usage""#))
                // Count tokens is forwarded but is not usage.
                let counted = try await Self.post(
                    client, proxy, path: "/v1/messages/count_tokens", headers: Self.headers(gateway.token),
                    body: Self.messages())
                #expect(counted.status == 200)
                #expect(upstream.received.map(\.apiKey) == Array(repeating: Self.realKey, count: 3))
                let usage = gateway.usage["claude-test"]
                #expect(usage?.inputTokens == Int64(TestUpstream.usageStart.input) * 2)
                #expect(usage?.cacheReadInputTokens == Int64(TestUpstream.usageStart.cacheRead) * 2)
                #expect(usage?.cacheCreationInputTokens == Int64(TestUpstream.usageStart.cacheWrite) * 2)
                #expect(usage?.outputTokens == Int64(TestUpstream.finalOutput) * 2)
                #expect(gateway.tokensUsed == TestUpstream.tokensPerAnswer * 2)
                #expect(gateway.counts.forwarded == 3 && gateway.counts.refused == 0)
            }
            let text = logs.withLock { $0 }.joined(separator: "\n")
            #expect(text.contains("forwarded"), "decisions are logged")
            #expect(!text.contains(Self.realKey) && !text.contains("REALKEY"))
        }
    }

    /// Answers that each name 300 new weekly windows leave the gateway with the plan's two
    /// windows and no more than `LimitHeaders.maxModelWindows` of the models' own.
    @Test func theGatewayKeepsABoundedSetOfLimitWindows() async throws {
        let answerHeaders: @Sendable (Int) -> [(String, String)] = { answer in
            [
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.1"),
                ("anthropic-ratelimit-unified-7d-utilization", "0.2"),
            ] + (0..<300).map { ("anthropic-ratelimit-unified-7d_a\(answer)x\($0)-utilization", "0.3") }
        }
        try await TestUpstream.with(answerHeaders: answerHeaders) { upstream in
            let logs = LockedBox<[String]>([])
            try await withGateway(upstream, logs: logs) { proxy, gateway, client in
                for _ in 0..<3 {
                    let answer = try await Self.post(
                        client, proxy, path: "/v1/messages", headers: Self.headers(gateway.token),
                        body: Self.messages(stream: false))
                    #expect(answer.status == 200)
                }
                let windows = gateway.limits.map(\.window)
                #expect(windows.count == 2 + LimitHeaders.maxModelWindows, "\(windows)")
                #expect(windows.contains("five_hour") && windows.contains("seven_day"))
                #expect(windows.allSatisfy { !$0.hasPrefix("seven_day_a1") && !$0.hasPrefix("seven_day_a2") })
            }
            #expect(logs.withLock { $0 }.contains { $0.contains("limit windows past those kept were ignored") })
        }
    }

    @Test func refusesWhatIsNotTheJobsOwnMessagesRequest() async throws {
        try await TestUpstream.with { upstream in
            let logs = LockedBox<[String]>([])
            try await withGateway(upstream, logs: logs) { proxy, gateway, client in
                let cases: [(String, HTTPMethod, [(String, String)], String, Int, String)] = [
                    ("/v1/messages", .POST, Self.headers("cmm-job-wrong"), Self.messages(), 401, "token"),
                    ("/v1/messages", .POST, [("content-type", "application/json")], Self.messages(), 401, "token"),
                    ("/v1/messages", .POST, Self.headers(Self.realKey), Self.messages(), 401, "token"),
                    ("/v1/complete", .POST, Self.headers(gateway.token), Self.messages(), 404, "forwards only"),
                    ("/v1/models", .GET, Self.headers(gateway.token), "", 404, "forwards only"),
                    ("/v1/messages?x=1", .POST, Self.headers(gateway.token), Self.messages(), 404, "forwards only"),
                    (
                        "/v1/messages", .POST, Self.headers(gateway.token), Self.messages(model: "claude-opus-4-1"),
                        403,
                        "not approved"
                    ),
                    ("/v1/messages", .POST, Self.headers(gateway.token), "{not json", 400, "not a Messages API"),
                ]
                for (path, method, headers, body, status, reason) in cases {
                    let answer = try await Self.post(
                        client, proxy, path: path, method: method, headers: headers, body: body)
                    #expect(answer.status == status, "\(method) \(path): \(answer.text)")
                    #expect(answer.text.contains(reason), "\(answer.text)")
                    #expect(answer.text.contains(#""type":"error""#), "an API-shaped error")
                }
                #expect(upstream.received.isEmpty, "nothing refused reached the upstream")
                #expect(gateway.counts.refused == cases.count)
                #expect(gateway.decisions.allSatisfy { !$0.forwarded })
            }
            let text = logs.withLock { $0 }.joined(separator: "\n")
            #expect(text.contains("refused"))
            #expect(!text.contains("REALKEY"))
        }
    }

    /// The upstream sends its first event and holds the rest back until the client has read that
    /// first byte (or 30 s have passed): a gateway that buffered the answer would hold the first
    /// byte back too, and the upstream would time out. However busy the machine, only streaming
    /// passes.
    @Test func anAnswerStreamsThroughAsItArrives() async throws {
        try await TestUpstream.with(pause: .seconds(30)) { upstream in
            try await withGateway(upstream) { proxy, gateway, client in
                let answer = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages(model: "slow"),
                    onFirstChunk: { upstream.release() })
                #expect(answer.status == 200)
                #expect(upstream.releasedInTime, "the first byte reached the client only after the upstream gave up")
                #expect(answer.total < .seconds(25), "\(answer.total)")
                #expect(answer.text.contains("hello from upstream"))
            }
        }
    }

    @Test func theBudgetCapsTheAnswerAndThenRefuses() async throws {
        try await TestUpstream.with { upstream in
            let budget = TestUpstream.tokensPerAnswer + 10
            try await withGateway(upstream, budget: budget) { proxy, gateway, client in
                let first = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages(maxTokens: 1000))
                #expect(first.status == 200)
                #expect(upstream.received.last?.maxTokens == Int(budget), "output capped at the budget")
                let second = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages(maxTokens: 1000))
                #expect(second.status == 200)
                #expect(upstream.received.last?.maxTokens == 10, "capped at what was left")
                #expect(!gateway.isOverBudget)
                let third = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages())
                #expect(third.status == 403)
                #expect(third.text.contains("of its \(budget) tokens"), "\(third.text)")
                #expect(upstream.received.count == 2)
                #expect(gateway.isOverBudget)
                #expect(await gateway.waitUntilOverBudget())
            }
        }
    }

    /// The API's traffic shares the job's egress byte budget with its tunnels: an answer that
    /// runs past it is cut off, and the next request is refused before it reaches the upstream.
    @Test func theGatewaySharesTheByteBudget() async throws {
        try await TestUpstream.with { upstream in
            // Room for the request (about 110 bytes) but not for the whole answer (about 600).
            let egress = EgressPolicy(allowlist: [], byteBudget: 300)
            try await withGateway(upstream, egress: egress) { proxy, gateway, client in
                let first = try? await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages())
                #expect(first?.text.contains("message_stop") != true, "the answer was cut off at the budget")
                #expect(proxy.bytesTransferred > 300)
                let second = try? await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages())
                #expect(second == nil || second?.status == 403, "\(String(describing: second?.text))")
                #expect(upstream.received.count == 1, "the second request never left")
            }
        }
    }

    @Test func aHangingOrMissingUpstreamGivesAClearErrorInTime() async throws {
        try await TestUpstream.with { upstream in
            try await withGateway(upstream, timeout: .seconds(2)) { proxy, gateway, client in
                let hanging = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages(model: "hang"))
                #expect(hanging.status == 504, "\(hanging.text)")
                #expect(hanging.text.contains("did not answer within"))
                // A 2 s timeout; a loaded machine adds some, but nothing like the client's 30 s.
                #expect(hanging.total < .seconds(25))
            }
            let closed = try LocalRegistry.freePort()
            try await withGateway(upstream, upstreamURL: URL(string: "https://127.0.0.1:\(closed)")!) {
                proxy, gateway, client in
                let down = try await Self.post(
                    client, proxy, headers: Self.headers(gateway.token), body: Self.messages())
                #expect(down.status == 502, "\(down.text)")
                #expect(down.text.contains("could not be reached"))
                #expect(!down.text.contains("REALKEY"))
            }
        }
    }
}
