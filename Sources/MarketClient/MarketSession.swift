import Foundation
import Logging
import MarketCore
import MarketCrypto
import MarketProtocol

/// Where a session keeps messages until the market answers them (the participant's database).
public protocol OutboxStorage: Sendable {
    func add(_ item: OutboxItem) throws
    func remove(id: String) throws
    func pending() throws -> [OutboxItem]
}

/// How a session connects and how patient it is.
public struct SessionSettings: Sendable {
    public var url: String
    /// A heartbeat (with the signed audit head) goes out this often, or more often when the
    /// market says it drops providers sooner (a third of its timeout, at least every 250 ms).
    public var heartbeatInterval: Duration = .seconds(20)
    /// An unanswered message is sent again (same id: the market acts once) after this long.
    public var resendAfter: Duration = .seconds(5)
    public var backoffBase: Duration = .milliseconds(200)
    public var backoffMax: Duration = .seconds(10)

    public init(url: String) { self.url = url }
}

/// Refuses frames that would carry a credential this tool knows (or anything shaped like an
/// Anthropic key or token), before they are signed.
public struct CredentialGuard: Sendable {
    let redactor: SecretRedactor

    public init(knownSecrets: [String]) { redactor = SecretRedactor(knownSecrets: knownSecrets) }

    public func check(_ text: String, what: String) throws {
        if redactor.containsSecret(text) {
            throw MarketClientError("refused to send \(what): it would carry a credential")
        }
    }
}

/// A long-lived market connection: reconnects with jittered exponential backoff, sends
/// heartbeats, and keeps every message in the outbox until the market answers its id — resent
/// after a reconnect with the same id, so nothing is done twice and nothing is lost.
public actor MarketSession {
    public struct Hooks: Sendable {
        /// The signed head of the local audit log, sent with each heartbeat.
        public var auditHead: @Sendable () -> String? = { nil }
        /// Runs (in its own task) after each successful handshake and outbox resend.
        public var onConnect: @Sendable (MarketSession) async -> Void = { _ in }
        /// A message was refused before sending (a credential in it); the reason, for the audit log.
        public var onRefusal: @Sendable (_ type: String, _ reason: String) -> Void = { _, _ in }
        /// The connection was lost, or the market could not be reached (once per outage).
        public var onDisconnect: @Sendable (_ reason: String) -> Void = { _ in }
        public init() {}
    }

    public nonisolated let keys: KeyRing
    public nonisolated let settings: SessionSettings
    /// Everything from the market that is not an answer to one of our messages, in order.
    public nonisolated let frames: AsyncStream<Envelope>
    private let framesContinuation: AsyncStream<Envelope>.Continuation
    let storage: (any OutboxStorage)?
    let credentialGuard: CredentialGuard
    let hooks: Hooks
    let logger: Logger
    let clock: @Sendable () -> Int64

    private var connection: MarketConnection?
    private var unanswered: [(item: OutboxItem, sentAt: ContinuousClock.Instant?)] = []
    private var waiters: [String: [CheckedContinuation<Envelope, any Error>]] = [:]
    private var connectWaiters: [CheckedContinuation<Void, Never>] = []
    private var attempt = 0
    public private(set) var connects = 0
    public private(set) var lastError: String?

    public init(
        keys: KeyRing, settings: SessionSettings, outbox: (any OutboxStorage)?, knownSecrets: [String] = [],
        hooks: Hooks = Hooks(), logger: Logger = Logger(label: "cmm.session"),
        clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }
    ) {
        self.keys = keys
        self.settings = settings
        self.storage = outbox
        self.credentialGuard = CredentialGuard(knownSecrets: knownSecrets)
        self.hooks = hooks
        self.logger = logger
        self.clock = clock
        (frames, framesContinuation) = AsyncStream.makeStream(of: Envelope.self)
    }

    public var isConnected: Bool { connection != nil }
    public var outboxCount: Int { unanswered.count }

    /// Gives unanswered messages up to `timeout` to be answered while connected; returns how
    /// many are still waiting (they stay in the outbox for the next connection).
    @discardableResult
    public func drainOutbox(timeout: Duration) async -> Int {
        let deadline = ContinuousClock.now + timeout
        while !unanswered.isEmpty, connection != nil, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return unanswered.count
    }

    // MARK: Running

    /// Connects, serves, and reconnects until the task is cancelled.
    public func run() async {
        reloadOutbox()
        var reported = false
        while !Task.isCancelled {
            let before = connects
            do {
                try await MarketConnection.with(url: settings.url, keys: keys, logger: logger, clock: clock) {
                    connection in
                    try await self.serve(connection)
                }
            } catch {
                lastError = "\(error)"
                logger.debug("market connection ended", metadata: ["error": "\(error)"])
            }
            connection = nil
            if Task.isCancelled { break }
            if connects > before {
                reported = true
                hooks.onDisconnect("lost the connection to \(settings.url) (\(lastError ?? "closed")); reconnecting")
            } else if !reported {
                reported = true
                hooks.onDisconnect("the market at \(settings.url) is unreachable (\(lastError ?? "?")); retrying")
            }
            if Task.isCancelled { break }
            try? await Task.sleep(for: backoff())
        }
        framesContinuation.finish()
        for (_, list) in waiters {
            for waiter in list { waiter.resume(throwing: CancellationError()) }
        }
        waiters = [:]
        for waiter in connectWaiters { waiter.resume() }
        connectWaiters = []
    }

    /// The delay before reconnect attempt `attempt`: exponential, capped, with full jitter on
    /// the upper half so that a restarted market is not hit by every client at once.
    func backoff() -> Duration {
        let base = settings.backoffBase * (1 << min(attempt, 16))
        attempt += 1
        let capped = min(base, settings.backoffMax)
        return capped * Double.random(in: 0.5...1.0)
    }

    private func serve(_ connection: MarketConnection) async throws {
        self.connection = connection
        attempt = 0
        connects += 1
        lastError = nil
        // The first heartbeat goes before anything else: even a one-shot command anchors the
        // audit head, and the market sees a provider alive at once.
        try await connection.send(.heartbeat, HeartbeatBody(auditHead: hooks.auditHead()))
        for waiter in connectWaiters { waiter.resume() }
        connectWaiters = []
        reloadOutbox()
        for index in unanswered.indices { unanswered[index].sentAt = nil }
        try await flush(on: connection)
        let onConnect = hooks.onConnect
        Task { await onConnect(self) }
        let heartbeatInterval = Self.heartbeatInterval(settings.heartbeatInterval, market: connection.heartbeatTimeout)
        let timer = ContinuousClock()
        var lastHeartbeat = timer.now
        var lastReload = timer.now
        while !Task.isCancelled {
            if timer.now - lastHeartbeat >= heartbeatInterval {
                lastHeartbeat = timer.now
                try await connection.send(.heartbeat, HeartbeatBody(auditHead: hooks.auditHead()))
            }
            if timer.now - lastReload >= .seconds(2) {
                lastReload = timer.now
                reloadOutbox()
            }
            try await flush(on: connection)
            guard let frame = try await connection.poll(timeout: min(.milliseconds(500), heartbeatInterval)) else {
                continue
            }
            receive(frame)
        }
    }

    /// The configured interval, shortened to a third of the market's silence timeout.
    static func heartbeatInterval(_ configured: Duration, market timeout: Duration?) -> Duration {
        guard let timeout else { return configured }
        return max(min(configured, timeout / 3), .milliseconds(250))
    }

    /// Sends what is unanswered and due; drops what expired.
    private func flush(on connection: MarketConnection) async throws {
        let now = ContinuousClock.now
        let nowMs = clock()
        var index = 0
        while index < unanswered.count {
            let (item, sentAt) = unanswered[index]
            if let expires = item.expiresMs, expires < nowMs, sentAt == nil {
                unanswered.remove(at: index)
                try? storage?.remove(id: item.id)
                fail(item.id, MarketClientError("\(item.type.rawValue) expired before the market could be reached"))
                continue
            }
            if sentAt == nil || now - sentAt! >= settings.resendAfter {
                unanswered[index].sentAt = now
                try await connection.send(item.type, item.body, id: item.id)
            }
            index += 1
        }
    }

    private func reloadOutbox() {
        guard let storage, let stored = try? storage.pending() else { return }
        let known = Set(unanswered.map(\.item.id))
        for item in stored where !known.contains(item.id) { unanswered.append((item, nil)) }
    }

    private func receive(_ frame: Envelope) {
        guard frame.type == "ack" || frame.type == "error" || frame.type == "pong" else {
            framesContinuation.yield(frame)
            return
        }
        guard let ref = Self.ref(of: frame) else {
            framesContinuation.yield(frame)
            return
        }
        if let error = frame.errorBody, [.rateLimited, .internalError, .unavailable].contains(error.code) {
            // Not acted on: sent again later with the same id.
            return
        }
        if let index = unanswered.firstIndex(where: { $0.item.id == ref }) {
            unanswered.remove(at: index)
            try? storage?.remove(id: ref)
        }
        for waiter in waiters.removeValue(forKey: ref) ?? [] { waiter.resume(returning: frame) }
    }

    static func ref(of frame: Envelope) -> String? {
        struct Ref: Decodable { var ref: String? }
        return (try? JSONDecoder().decode(Ref.self, from: Data(frame.body.utf8)))?.ref
    }

    private func fail(_ id: String, _ error: any Error) {
        for waiter in waiters.removeValue(forKey: id) ?? [] { waiter.resume(throwing: error) }
    }

    // MARK: Sending

    /// Queues a message in the outbox (persisted when the session has storage) and sends it
    /// when connected; returns its id.
    @discardableResult
    public func enqueue(
        _ type: MessageType, _ body: some Encodable & Sendable, id: String = UUID().uuidString.lowercased(),
        expiresMs: Int64? = nil
    ) async throws -> String {
        try prepare(type, body, id: id, expiresMs: expiresMs)
        await transmit(id)
        return id
    }

    private func prepare(_ type: MessageType, _ body: some Encodable, id: String, expiresMs: Int64?) throws {
        let text = try MarketConnection.encode(body)
        do { try credentialGuard.check(text, what: type.rawValue) } catch {
            hooks.onRefusal(type.rawValue, "\(error)")
            throw error
        }
        let item = OutboxItem(id: id, type: type, body: text, createdMs: clock(), expiresMs: expiresMs)
        try storage?.add(item)
        if !unanswered.contains(where: { $0.item.id == id }) { unanswered.append((item, nil)) }
    }

    private func transmit(_ id: String) async {
        guard let connection, let index = unanswered.firstIndex(where: { $0.item.id == id }) else { return }
        let item = unanswered[index].item
        unanswered[index].sentAt = ContinuousClock.now
        // Sent from a task of its own: a caller that is being cancelled (a job handed back on
        // stop) must not cancel the write. A failed write is retried by the serve loop at once.
        let sent = await Task { (try? await connection.send(item.type, item.body, id: id)) != nil }.value
        if !sent, let index = unanswered.firstIndex(where: { $0.item.id == id }) { unanswered[index].sentAt = nil }
    }

    /// Sends now, without the outbox (job events: the market relays them only while the task
    /// runs, and the result that follows carries everything that matters).
    public func sendNow(_ type: MessageType, _ body: some Encodable & Sendable) async throws {
        let text = try MarketConnection.encode(body)
        do { try credentialGuard.check(text, what: type.rawValue) } catch {
            hooks.onRefusal(type.rawValue, "\(error)")
            throw error
        }
        guard let connection else { throw MarketClientError("not connected to the market") }
        try await connection.send(type, text)
    }

    /// Queues and sends a message and waits for the market's answer; an `error` answer throws.
    /// When the market is unreachable the message stays queued (unless it expires) and this
    /// throws after `timeout`.
    @discardableResult
    public func request(
        _ type: MessageType, _ body: some Encodable & Sendable, id: String = UUID().uuidString.lowercased(),
        expiresMs: Int64? = nil, timeout: Duration = .seconds(30)
    ) async throws -> AckBody {
        try prepare(type, body, id: id, expiresMs: expiresMs)
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.fail(
                id,
                MarketClientError(
                    "no answer from the market to \(type.rawValue) within \(timeout)"
                        + (connection == nil
                            ? ": the market at \(settings.url) is unreachable; the message stays queued" : "")
                ))
        }
        defer { timer.cancel() }
        let frame: Envelope = try await withCheckedThrowingContinuation { continuation in
            waiters[id, default: []].append(continuation)
            Task { await self.transmit(id) }
        }
        try frame.throwIfError()
        return try frame.decodeBody(AckBody.self)
    }

    /// Waits until the handshake succeeded (or `timeout` passed: then throws, naming the last error).
    public func waitUntilConnected(timeout: Duration) async throws {
        if connection != nil { return }
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.releaseConnectWaiters()
        }
        defer { timer.cancel() }
        await withCheckedContinuation { connectWaiters.append($0) }
        if connection == nil {
            throw MarketClientError(
                "the market at \(settings.url) is unreachable\(lastError.map { " (\($0))" } ?? "")")
        }
    }

    private func releaseConnectWaiters() {
        for waiter in connectWaiters { waiter.resume() }
        connectWaiters = []
    }
}
