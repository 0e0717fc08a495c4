import AsyncHTTPClient
import Foundation
import Logging
import MarketCore
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// Where the gateway sends what it lets through, and how long it waits.
public struct GatewaySettings: Sendable, Equatable {
    public static let defaultUpstream = URL(string: "https://api.anthropic.com")!

    public var upstream: URL
    /// PEM certificate authorities to trust instead of the system's (a test upstream on loopback).
    public var trustRootsPEM: String?
    /// Connecting, and each wait for more of an answer: a hanging upstream ends in an error.
    public var timeout: Duration
    public var maxRequestBytes: Int

    public init(
        upstream: URL = defaultUpstream, trustRootsPEM: String? = nil, timeout: Duration = .seconds(120),
        maxRequestBytes: Int = 32 << 20
    ) {
        self.upstream = upstream
        self.trustRootsPEM = trustRootsPEM
        self.timeout = timeout
        self.maxRequestBytes = maxRequestBytes
    }
}

/// One request the gateway saw: where it went, for which model, and what was decided. Never a
/// header value or a body.
public struct GatewayDecision: Sendable, Equatable, Codable {
    public var path: String
    public var model: String?
    public var status: Int
    public var forwarded: Bool
    public var reason: String
}

/// The provider's real credential, which only the gateway holds.
public enum GatewayCredential: Sendable, Equatable {
    /// An API key, sent upstream as `x-api-key`.
    case apiKey(String)
    /// A subscription token (`claude setup-token`), sent upstream as `Authorization: Bearer`.
    case oauthToken(String)

    var secret: String {
        switch self {
        case .apiKey(let key), .oauthToken(let key): key
        }
    }
}

/// Why the gateway ended a job: its token budget is used, or the account is at its limit.
public enum GatewayStop: Sendable, Equatable {
    case overBudget
    /// A 429, or a window the API says is `rejected`: the account's limit, not the job's fault.
    case capacity(LimitReading)
}

/// Writes an HTTP response back to the job, part by part, as it arrives.
protocol GatewayResponder: Sendable {
    func head(_ status: HTTPResponseStatus, _ headers: HTTPHeaders) async throws
    func body(_ buffer: ByteBuffer) async throws
    func end() async throws
}

/// The job's only way to the Claude API. The job holds a random per-job token, worthless
/// anywhere else; the gateway checks it, lets through only the Messages API paths Claude Code
/// uses and the models the job was approved for, puts the provider's real key in its place,
/// streams the answer back unchanged, and meters the API's own `usage` numbers against the job's
/// token budget. It reads the account's limits off every answer (`LimitHeaders`), and a refusal
/// for the limit ends the job as a capacity stop instead of retries into the limit. The key (or
/// the subscription token) never enters the container.
public final class ClaudeGateway: Sendable {
    /// What the job presents as its API key (or its subscription token).
    public let token: String
    private let credential: GatewayCredential
    public let models: Set<String>
    public let tokenBudget: Int64
    let settings: GatewaySettings
    let logger: Logger
    private let client: HTTPClient
    private let state = Mutex(State())
    private let stopSignal: AsyncStream<GatewayStop>
    private let stopContinuation: AsyncStream<GatewayStop>.Continuation

    static let paths: Set<String> = ["/v1/messages", "/v1/messages/count_tokens"]

    struct State {
        var usage: [String: ModelUsage] = [:]
        var decisions = DecisionRecord<GatewayDecision>()
        var overBudget = false
        var limits: [String: LimitReading] = [:]
        var capacityStop: LimitReading?
    }

    public convenience init(
        apiKey: String, models: Set<String>, tokenBudget: Int64, settings: GatewaySettings = GatewaySettings(),
        logger: Logger = Logger(label: "gateway")
    ) throws {
        try self.init(
            credential: .apiKey(apiKey), models: models, tokenBudget: tokenBudget, settings: settings, logger: logger)
    }

    public init(
        credential: GatewayCredential, models: Set<String>, tokenBudget: Int64,
        settings: GatewaySettings = GatewaySettings(), logger: Logger = Logger(label: "gateway")
    ) throws {
        var generator = SystemRandomNumberGenerator()
        // Shaped like neither an API key nor a subscription token, and worth nothing outside this gateway.
        token = "cmm-job-" + (0..<32).map { _ in String(format: "%02x", generator.next() as UInt8) }.joined()
        self.credential = credential
        self.models = models
        self.tokenBudget = tokenBudget
        self.settings = settings
        self.logger = logger
        var tls = TLSConfiguration.makeClientConfiguration()
        if let pem = settings.trustRootsPEM {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8)))
        }
        let seconds = Int64(settings.timeout.inSeconds.rounded(.up))
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(min(seconds, 10)), read: .seconds(seconds)))
        configuration.decompression = .disabled
        // An upstream that refuses connections is an answer now, not after retries.
        configuration.connectionPool.retryConnectionEstablishment = false
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        (stopSignal, stopContinuation) = AsyncStream.makeStream(
            of: GatewayStop.self, bufferingPolicy: .bufferingOldest(1))
    }

    /// Closes the connections to the upstream. Call once the job is over. The client winds down
    /// in the background: a connection an upstream left hanging must not hold up the job's end.
    public func shutdown() async {
        stopContinuation.finish()
        let client = self.client
        Task { try? await client.shutdown() }
    }

    /// Tokens metered per model, from the API's own `usage` fields.
    public var usage: [String: ModelUsage] { state.withLock { $0.usage } }
    public var tokensUsed: Int64 { state.withLock { Self.total($0.usage) } }
    public var isOverBudget: Bool { state.withLock { $0.overBudget } }
    public var decisions: [GatewayDecision] { state.withLock { $0.decisions.first } }
    public var counts: (forwarded: Int, refused: Int) {
        state.withLock { ($0.decisions.passed, $0.decisions.refused) }
    }

    /// The latest reading of each of the account's windows this gateway saw.
    public var limits: [LimitReading] { state.withLock { $0.limits.values.sorted { $0.window < $1.window } } }
    /// The refusal for the account's limit that ended the job, if one did.
    public var capacityStop: LimitReading? { state.withLock { $0.capacityStop } }

    /// Returns once the job must end (its budget is used, or the account is at its limit); nil
    /// when the gateway shut down.
    public func waitForStop() async -> GatewayStop? {
        for await stop in stopSignal { return stop }
        return nil
    }

    /// Returns true once a request was refused for the budget; false when the gateway shut down.
    public func waitUntilOverBudget() async -> Bool { await waitForStop() == .overBudget }

    /// Input (with cache reads and writes) and output tokens: what the budget counts.
    static func total(_ usage: [String: ModelUsage]) -> Int64 {
        usage.values.reduce(0) { $0.saturatingAdd($1.allTokens) }
    }

    private func record(_ decision: GatewayDecision) {
        state.withLock { $0.decisions.add(decision, passed: decision.forwarded) }
        logger.info(
            "gateway \(decision.forwarded ? "forwarded" : "refused")",
            metadata: [
                "gateway.path": "\(decision.path)", "gateway.model": "\(decision.model ?? "-")",
                "gateway.status": "\(decision.status)", "gateway.reason": "\(decision.reason)",
            ])
    }

    /// The token the request presents: `x-api-key`, or `Authorization: Bearer`.
    static func presentedToken(_ headers: HTTPHeaders) -> String? {
        if let key = headers.first(name: "x-api-key") { return key }
        if let authorization = headers.first(name: "authorization"), authorization.lowercased().hasPrefix("bearer ") {
            return String(authorization.dropFirst(7))
        }
        return nil
    }

    /// Compares in time that depends only on the length.
    static func same(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        return zip(x, y).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// `/v1/messages?beta=true` or `http://127.0.0.1:3128/v1/messages` → path and query.
    static func split(_ uri: String) -> (path: String, query: String?) {
        var target = Substring(uri)
        if target.hasPrefix("http://"), let slash = target.dropFirst(7).firstIndex(of: "/") {
            target = target[slash...]
        }
        guard let mark = target.firstIndex(of: "?") else { return (String(target), nil) }
        return (String(target[..<mark]), String(target[target.index(after: mark)...]))
    }

    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade",
    ]

    func serve(_ head: HTTPRequestHead, body: ByteBuffer, to out: some GatewayResponder) async throws {
        let (path, query) = Self.split(head.uri)
        let shownPath = WireField.printable(String(path.prefix(200)))
        func refuse(_ status: HTTPResponseStatus, _ type: String, _ message: String, model: String? = nil)
            async throws
        {
            record(
                GatewayDecision(
                    path: shownPath, model: model.map { WireField.printable(String($0.prefix(100))) },
                    status: Int(status.code), forwarded: false, reason: message))
            let json = try JSONSerialization.data(
                withJSONObject: [
                    "type": "error", "error": ["type": type, "message": "claude-max-market: " + message],
                ],
                options: [.sortedKeys])
            try await out.head(
                status, HTTPHeaders([("content-type", "application/json"), ("content-length", "\(json.count)")]))
            try await out.body(ByteBuffer(bytes: json))
            try await out.end()
        }
        guard head.method == .POST, Self.paths.contains(path), query == nil || query == "beta=true" else {
            try await refuse(
                .notFound, "not_found_error",
                "the gateway forwards only POST /v1/messages and /v1/messages/count_tokens, not \(head.method.rawValue) \(shownPath)"
            )
            return
        }
        guard let presented = Self.presentedToken(head.headers), Self.same(presented, token) else {
            try await refuse(.unauthorized, "authentication_error", "this gateway accepts only the job's own token")
            return
        }
        guard var request = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any],
            let model = request["model"] as? String
        else {
            try await refuse(
                .badRequest, "invalid_request_error", "the body is not a Messages API request with a model")
            return
        }
        guard models.contains(model) else {
            try await refuse(
                .forbidden, "permission_error",
                "model \(WireField.printable(String(model.prefix(100)))) is not approved for this job (approved: \(models.sorted().joined(separator: ", ")))",
                model: model)
            return
        }
        if let stop = capacityStop {
            // Once the account is at its limit, nothing more goes upstream: no retries into it.
            let until = stop.resetsAt.map { " until \($0.formatted(.iso8601))" } ?? ""
            try await refuse(
                .tooManyRequests, "rate_limit_error",
                "the provider's account is at its \(stop.window) limit\(until); the job is handed back", model: model)
            return
        }
        var forwardedBody = body
        let metered = path == "/v1/messages"
        if metered {
            let used = tokensUsed
            guard used < tokenBudget else {
                state.withLock { $0.overBudget = true }
                try await refuse(
                    .forbidden, "permission_error",
                    "the job has used \(used) of its \(tokenBudget) tokens; no further requests are forwarded",
                    model: model)
                stopContinuation.yield(.overBudget)
                return
            }
            // The answer may not run past the budget: its output is capped at what is left.
            let remaining = tokenBudget - used
            if let maxTokens = request["max_tokens"] as? Int, Int64(maxTokens) > remaining {
                request["max_tokens"] = Int(remaining)
                forwardedBody = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: request))
            }
        }
        var upstream = HTTPClientRequest(url: settings.upstream.absoluteString + path + (query.map { "?" + $0 } ?? ""))
        upstream.method = .POST
        for (name, value) in head.headers {
            let lower = name.lowercased()
            guard !Self.hopByHop.contains(lower),
                !["host", "content-length", "x-api-key", "authorization", "accept-encoding"].contains(lower)
            else { continue }
            upstream.headers.add(name: name, value: value)
        }
        switch credential {
        case .apiKey(let key):
            upstream.headers.replaceOrAdd(name: "x-api-key", value: key)
        case .oauthToken(let token):
            upstream.headers.replaceOrAdd(name: "authorization", value: "Bearer \(token)")
            // The API takes a subscription token only with the OAuth beta, which the CLI sends.
            let betas = upstream.headers[canonicalForm: "anthropic-beta"].map(String.init)
            if !betas.contains(Self.oauthBeta) {
                upstream.headers.replaceOrAdd(
                    name: "anthropic-beta", value: (betas + [Self.oauthBeta]).joined(separator: ","))
            }
        }
        upstream.body = .bytes(forwardedBody)
        let response: HTTPClientResponse
        do {
            response = try await client.execute(
                upstream, timeout: .seconds(Int64(settings.timeout.inSeconds.rounded(.up))))
        } catch {
            let timedOut =
                (error as? HTTPClientError) == .deadlineExceeded || (error as? HTTPClientError) == .readTimeout
                || (error as? HTTPClientError) == .connectTimeout
            try await refuse(
                timedOut ? .gatewayTimeout : .badGateway, "api_error",
                timedOut
                    ? "the API at \(settings.upstream.host ?? "?") did not answer within \(settings.timeout)"
                    : "the API at \(settings.upstream.host ?? "?") could not be reached: \(Self.describe(error))",
                model: model)
            return
        }
        record(
            GatewayDecision(
                path: shownPath, model: model, status: Int(response.status.code), forwarded: true, reason: "forwarded"))
        observe(response)
        var headers = HTTPHeaders()
        for (name, value) in response.headers where !Self.hopByHop.contains(name.lowercased()) {
            headers.add(name: name, value: value)
        }
        try await out.head(response.status, headers)
        var meter = UsageMeter(
            model: model,
            eventStream: response.headers.first(name: "content-type")?.hasPrefix("text/event-stream") == true)
        do {
            for try await chunk in response.body {
                if metered { apply(meter.feed(chunk)) }
                try await out.body(chunk)
            }
            if metered { apply(meter.finish()) }
        } catch {
            if metered { apply(meter.finish()) }
            logger.warning("gateway: the answer broke off", metadata: ["gateway.error": "\(Self.describe(error))"])
            throw error
        }
        try await out.end()
    }

    static let oauthBeta = "oauth-2025-04-20"

    /// The account's limits as this answer states them; a refusal for the limit stops the job.
    private func observe(_ response: HTTPClientResponse) {
        let outcome = LimitHeaders.read(
            response.headers.map { (name: $0.name.lowercased(), value: $0.value) }, status: Int(response.status.code),
            now: Date())
        for problem in outcome.ignored {
            logger.warning("gateway: a limit header was ignored", metadata: ["gateway.header": "\(problem)"])
        }
        guard !outcome.readings.isEmpty else { return }
        let (stop, leftOut): (LimitReading?, [String]) = state.withLock { state in
            let (admitted, leftOut) = LimitHeaders.admitted(outcome.readings, keeping: Set(state.limits.keys))
            for reading in admitted { state.limits[reading.window] = reading }
            guard outcome.refused, state.capacityStop == nil else { return (nil, leftOut) }
            state.capacityStop = outcome.readings.first { $0.isRejected && $0.window != "overloaded" }
            return (state.capacityStop, leftOut)
        }
        if !leftOut.isEmpty {
            logger.warning(
                "gateway: limit windows past those kept were ignored",
                metadata: [
                    "gateway.windows": "\(leftOut.count)",
                    "gateway.max_model_windows": "\(LimitHeaders.maxModelWindows)",
                ])
        }
        if let stop {
            logger.notice(
                "gateway: the account is at its limit", metadata: ["gateway.window": "\(stop.window)"])
            stopContinuation.yield(.capacity(stop))
        }
    }

    private func apply(_ delta: (model: String, usage: ModelUsage)?) {
        guard let delta else { return }
        state.withLock {
            $0.usage[delta.model, default: ModelUsage()] = $0.usage[delta.model, default: ModelUsage()] + delta.usage
        }
    }

    static func describe(_ error: any Error) -> String {
        WireField.printable(String(String(describing: error).prefix(200)))
    }
}

/// Reads the API's own usage numbers out of an answer as it streams through: the `usage` of
/// `message_start` and `message_delta` events, or of a whole JSON answer. Returns what changed
/// since the last call, so that the gateway's totals are current while a long answer streams.
struct UsageMeter {
    var model: String
    let eventStream: Bool
    private var line: [UInt8] = []
    private var whole: [UInt8] = []
    private var current = ModelUsage()
    private var applied = ModelUsage()
    static let maxWholeBytes = 16 << 20

    init(model: String, eventStream: Bool) {
        self.model = model
        self.eventStream = eventStream
    }

    /// Usage events are short: a longer line is not one, and is skipped without being kept.
    static let maxEventBytes = 64 << 10

    mutating func feed(_ buffer: ByteBuffer) -> (model: String, usage: ModelUsage)? {
        if !eventStream {
            if whole.count + buffer.readableBytes <= Self.maxWholeBytes { whole += buffer.readableBytesView }
            return nil
        }
        var rest = buffer.readableBytesView[...]
        while let newline = rest.firstIndex(of: UInt8(ascii: "\n")) {
            keep(rest[..<newline])
            event(line)
            line.removeAll(keepingCapacity: true)
            rest = rest[(newline + 1)...]
        }
        keep(rest)
        return delta()
    }

    private mutating func keep(_ bytes: ByteBufferView.SubSequence) {
        if line.count + bytes.count <= Self.maxEventBytes {
            line += bytes
        } else {
            line = Array("-".utf8)  // too long to be a usage event: marked so that it never parses
        }
    }

    mutating func finish() -> (model: String, usage: ModelUsage)? {
        if eventStream {
            event(line)
            line = []
        } else if let object = try? JSONSerialization.jsonObject(with: Data(whole)) as? [String: Any] {
            if let name = object["model"] as? String { model = name }
            if let usage = object["usage"] as? [String: Any] { merge(usage) }
        }
        return delta()
    }

    private mutating func event(_ bytes: [UInt8]) {
        guard bytes.starts(with: Array("data:".utf8)),
            let object = try? JSONSerialization.jsonObject(with: Data(bytes.dropFirst(5))) as? [String: Any]
        else { return }
        switch object["type"] as? String {
        case "message_start":
            guard let message = object["message"] as? [String: Any] else { return }
            if let name = message["model"] as? String { model = name }
            if let usage = message["usage"] as? [String: Any] { merge(usage) }
        case "message_delta":
            if let usage = object["usage"] as? [String: Any] { merge(usage) }
        default: break
        }
    }

    /// The API reports running totals: a later number replaces an earlier one.
    private mutating func merge(_ usage: [String: Any]) {
        func value(_ key: String) -> Int64? { (usage[key] as? NSNumber).map { max(0, $0.int64Value) } }
        if let tokens = value("input_tokens") { current.inputTokens = tokens }
        if let tokens = value("output_tokens") { current.outputTokens = tokens }
        if let tokens = value("cache_read_input_tokens") { current.cacheReadInputTokens = tokens }
        if let tokens = value("cache_creation_input_tokens") { current.cacheCreationInputTokens = tokens }
    }

    private mutating func delta() -> (model: String, usage: ModelUsage)? {
        guard current != applied else { return nil }
        var change = ModelUsage()
        change.inputTokens = current.inputTokens - applied.inputTokens
        change.outputTokens = current.outputTokens - applied.outputTokens
        change.cacheReadInputTokens = current.cacheReadInputTokens - applied.cacheReadInputTokens
        change.cacheCreationInputTokens = current.cacheCreationInputTokens - applied.cacheCreationInputTokens
        applied = current
        return (model, change)
    }
}
