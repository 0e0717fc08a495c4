import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import HummingbirdWebSocket
import Logging
import MarketCore
import MarketProtocol
import MarketStore
import NIOCore
import NIOWebSocket
import ServiceLifecycle
import Synchronization

/// The market server (`market serve`): the WebSocket hub at `/market`, the read views, `/health`
/// and `/metrics`, and the sweeper that applies timeouts. A `Service`: run it in a
/// `ServiceGroup`, which stops it gracefully on SIGTERM/SIGINT.
public final class MarketServer: Service, Sendable {
    public let configuration: MarketServerConfiguration
    let store: any MarketStore
    let logger: Logger
    let processor: FrameProcessor
    let hub: PeerHub
    let connections = ConnectionRegistry()
    let metrics = MarketMetrics()
    let now: @Sendable () -> Int64
    let startedMs: Int64
    private let nextConnectionID = Atomic<Int>(0)
    let frameLog: FrameLog?
    /// Set when shutdown begins: the dashboard's event streams end.
    let stopping = Atomic<Bool>(false)
    private let onRunning: @Sendable (Int) async -> Void

    /// - Parameters:
    ///   - now: the clock in Unix milliseconds (tests move it by hand).
    ///   - onRunning: called with the bound port once the server listens.
    public init(
        configuration: MarketServerConfiguration, store: any MarketStore, logger: Logger,
        now: @escaping @Sendable () -> Int64 = MarketServer.wallClockMs,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws {
        self.configuration = configuration
        _ = try configuration.rules.validated()
        _ = try configuration.storedPieces.validated()
        self.store = store
        self.logger = logger
        self.now = now
        self.startedMs = now()
        self.onRunning = onRunning
        self.frameLog = try configuration.frameLogPath.map { try FrameLog(path: $0) }
        self.hub = PeerHub(frameRate: configuration.frameRate, frameBurst: configuration.frameBurst)
        self.processor = FrameProcessor(
            store: store, configuration: configuration, metrics: metrics, logger: logger, now: now)
    }

    public static let wallClockMs: @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }

    public func run() async throws {
        try await processor.loadNonceCount()
        var server: HTTPServerBuilder = .http1WebSocketUpgrade(
            webSocketRouter: makeRouter(),
            configuration: .init(ws: .init(maxFrameSize: configuration.limits.maxFrameBytes * 4, autoPing: .disabled)))
        if let certificate = configuration.tlsCertificatePath, let key = configuration.tlsKeyPath {
            let tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            server = try .tls(server, tlsConfiguration: tls)
        }
        let application = Application(
            router: makeRouter(),
            server: server,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { [onRunning] channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
        // The HTTP server runs in a group of its own, so that on shutdown the market first tells
        // every peer why and closes their connections, and only then stops listening.
        let listener = ServiceGroup(
            configuration: .init(services: [.init(service: application)], gracefulShutdownSignals: [], logger: logger))
        // Detached: the listener must not see this service's graceful shutdown (a task-local),
        // only the trigger below. Cancelling this service still cancels it.
        let listening = Task.detached { try await listener.run() }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await listening.value
                } onCancel: {
                    listening.cancel()
                }
            }
            // A sweep interval can be long: the loop's sleep ends at once on shutdown.
            group.addTask { await cancelWhenGracefulShutdown { await self.sweepLoop() } }
            if let relay = self.store as? any MarketRelay {
                group.addTask {
                    do {
                        try await cancelWhenGracefulShutdown {
                            try await relay.listen { peer, text in self.hub.send(text, to: peer) }
                        }
                    } catch {
                        if !Task.isShuttingDownGracefully {
                            self.logger.error("relay listener stopped", metadata: ["error": "\(error)"])
                        }
                    }
                }
            }
            try await gracefulShutdown()
            self.stopping.store(true, ordering: .relaxed)
            // Tell every peer why its connection ends, then close every connection (a client that
            // never hangs up must not keep the server from stopping).
            self.hub.broadcastAll(
                ServerFrames.error(
                    MarketError(.unavailable, "the market is shutting down; reconnect later"), ref: nil,
                    nowMs: self.now()))
            self.connections.closeAll(reason: "the market is shutting down")
            await self.connections.waitUntilEmpty(timeout: .seconds(5))
            await listener.triggerGracefulShutdown()
        }
    }

    // MARK: Sweeping

    private func sweepLoop() async {
        var rounds = 0
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await Task.sleep(for: .milliseconds(configuration.sweepIntervalMs))
            rounds += 1
            await sweepOnce(purge: rounds % 60 == 0)
        }
    }

    /// One sweep now: timeouts, silent providers; with `purge`, expired nonces and message ids.
    public func sweepOnce(purge: Bool = false) async {
        do {
            for (peer, text) in try await processor.sweep(purge: purge) { await deliver(text, to: peer) }
        } catch is CancellationError {
            // Shutting down.
        } catch {
            logger.error("sweep failed", metadata: ["error": "\(error)"])
        }
    }

    /// To the peer's connections here, or through the relay to another instance.
    func deliver(_ text: String, to peer: PeerID) async {
        if hub.send(text, to: peer) { return }
        guard let relay = store as? any MarketRelay else { return }
        do { try await relay.publish(text, to: peer) } catch {
            logger.warning("relay failed", metadata: ["peer.id": "\(peer)", "error": "\(error)"])
        }
    }

    // MARK: Routes

    func makeRouter() -> Router<BasicWebSocketRequestContext> {
        let router = Router(context: BasicWebSocketRequestContext.self)
        router.add(middleware: ReadOnlyViews(paths: Self.readPaths, dashboard: configuration.dashboard))
        router.ws("/market") { inbound, outbound, _ in
            await self.serveConnection(inbound: inbound, outbound: outbound)
        }
        router.get("/health") { _, _ -> Response in
            let view = MarketViews.HealthView(
                status: "ok", version: ToolVersion.current, backend: self.store.backendName,
                uptimeSeconds: (self.now() - self.startedMs) / 1000, connections: self.hub.authenticatedConnections)
            return Self.json(view)
        }
        router.get("/metrics") { _, _ -> Response in
            self.metrics.connections(self.hub.authenticatedConnections)
            self.metrics.committed(self.processor.commits.committed)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(string: self.metrics.exposition())))
        }
        router.get("/v1/flow") { _, _ -> Response in
            let nowMs = self.now()
            return Self.json(try await self.store.read { try await MarketViews.flow(in: $0, nowMs: nowMs) })
        }
        router.get("/v1/providers") { _, _ -> Response in
            let rules = self.configuration.rules
            let nowMs = self.now()
            return Self.json(
                try await self.store.read { try await MarketViews.providers(in: $0, rules: rules, nowMs: nowMs) })
        }
        if configuration.dashboard {
            router.get("/") { request, _ -> Response in
                let order =
                    Dashboard.ProviderOrder(rawValue: request.uri.queryParameters.get("sort") ?? "") ?? .reputation
                return Self.html(Dashboard.page(try await self.dashboardSnapshot(), order: order))
            }
            router.get("/dashboard/content") { request, _ -> Response in
                let order =
                    Dashboard.ProviderOrder(rawValue: request.uri.queryParameters.get("sort") ?? "") ?? .reputation
                return Self.html(Dashboard.content(try await self.dashboardSnapshot(), order: order))
            }
        }
        router.get("/v1/events") { _, _ -> Response in
            Response(
                status: .ok,
                headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                body: ResponseBody { writer in
                    try await self.streamChanges(to: &writer)
                    try await writer.finish(nil)
                })
        }
        router.get("/v1/stats") { _, _ -> Response in
            Self.json(try await self.stats())
        }
        router.get("/v1/offers") { _, _ -> Response in
            let rules = self.configuration.rules
            let nowMs = self.now()
            return Self.json(
                try await self.store.read { try await MarketViews.offers(in: $0, rules: rules, nowMs: nowMs) })
        }
        router.get("/v1/tasks") { request, _ -> Response in
            let stateText = request.uri.queryParameters.get("state")
            let state = stateText.flatMap(TaskState.init(rawValue:))
            if let stateText, state == nil {
                return Self.problem(
                    .badRequest,
                    "state '\(WireField.printable(stateText))' is not one of "
                        + TaskState.allCases.map(\.rawValue).joined(separator: ", "))
            }
            let limitText = request.uri.queryParameters.get("limit") ?? "100"
            guard let limit = Int(limitText), (1...1000).contains(limit) else {
                return Self.problem(.badRequest, "limit '\(WireField.printable(limitText))' must be 1…1000")
            }
            let tasks = try await self.store.read {
                try await $0.tasks(state: state, limit: limit).map(MarketViews.task)
            }
            return Self.json(tasks)
        }
        router.get("/v1/peers/:id") { _, context -> Response in
            let text = context.parameters.get("id") ?? ""
            guard let peer = try? PeerID(validating: text) else {
                return Self.problem(.badRequest, PeerIDError(text: WireField.printable(text)).description)
            }
            let rules = self.configuration.rules
            let nowMs = self.now()
            guard
                let view = try await self.store.read({
                    try await MarketViews.peer(peer, in: $0, rules: rules, nowMs: nowMs)
                })
            else { return Self.problem(.notFound, "no peer \(peer) has connected to this market") }
            return Self.json(view)
        }
        return router
    }

    /// Everything the dashboard shows, in one read.
    public func dashboardSnapshot() async throws -> DashboardSnapshot {
        try await readWithServerFacts { tx, book, backend, connections, uptime, nowMs in
            try await DashboardSnapshot.read(
                in: tx, book: book, backend: backend, connections: connections, uptimeSeconds: uptime, nowMs: nowMs)
        }
    }

    /// A read of the store beside what only the server knows: its backend, live connections, uptime.
    func readWithServerFacts<T: Sendable>(
        _ body: @escaping @Sendable (any MarketTransaction, MarketBook, String, Int, Int64, Int64) async throws -> T
    ) async throws -> T {
        let book = processor.book
        let backend = store.backendName
        let connections = hub.authenticatedConnections
        let nowMs = now()
        let uptime = (nowMs - startedMs) / 1000
        return try await store.read { try await body($0, book, backend, connections, uptime, nowMs) }
    }

    /// Server-sent events: `update` whenever the market changed (checked four times a second),
    /// a comment every 15 s to keep the connection open; ends when the server stops.
    func streamChanges(to writer: inout any ResponseBodyWriter) async throws {
        try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
        var last = -1
        var quiet = 0
        while !Task.isCancelled && !stopping.load(ordering: .relaxed) {
            let current = processor.changes.load(ordering: .relaxed) &* 1000 &+ hub.authenticatedConnections
            if current != last {
                last = current
                quiet = 0
                try await writer.write(ByteBuffer(string: "event: update\ndata: \(current)\n\n"))
            } else if quiet >= 60 {
                quiet = 0
                try await writer.write(ByteBuffer(string: ": still here\n\n"))
            }
            try await Task.sleep(for: .milliseconds(250))
            quiet += 1
        }
    }

    static func html(_ text: String) -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    public func stats() async throws -> MarketViews.StatsView {
        try await readWithServerFacts { tx, book, backend, connections, uptime, nowMs in
            try await MarketViews.stats(
                in: tx, book: book, backend: backend, connections: connections, uptimeSeconds: uptime, nowMs: nowMs)
        }
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        // Peer-written text (dispute reasons, key documents) is in these answers: never sniffed as HTML.
        return Response(
            status: status, headers: [.contentType: "application/json", .xContentTypeOptions: "nosniff"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func problem(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(["error": message], status: status)
    }

    // MARK: Connections

    enum Outbound: Sendable {
        case text(String)
        case close(WebSocketErrorCode, String)
    }

    /// One WebSocket connection: a reader that assembles and processes frames, a writer that
    /// sends replies and messages from other peers in order.
    func serveConnection(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        let connectionID = nextConnectionID.add(1, ordering: .relaxed).newValue
        let (stream, continuation) = AsyncStream<Outbound>.makeStream(bufferingPolicy: .bufferingOldest(8192))
        let overflowed = Atomic<Bool>(false)
        let send: @Sendable (String) -> Void = { text in
            if case .dropped = continuation.yield(.text(text)) { overflowed.store(true, ordering: .relaxed) }
        }
        var peer: PeerID?
        connections.add(connectionID) { reason in continuation.yield(Outbound.close(.goingAway, reason)) }
        defer { connections.remove(connectionID) }
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await item in stream {
                    do {
                        switch item {
                        case .text(let text):
                            self.frameLog?.write("out", text)
                            try await outbound.write(.text(text))
                        case .close(let code, let reason):
                            try await outbound.close(code, reason: reason)
                            return
                        }
                    } catch { return }
                }
            }
            var session = SessionState.awaitingHello
            var bucket = TokenBucket(rate: configuration.frameRate, burst: configuration.frameBurst, nowMs: now())
            var preAuthFrames = 0
            var assembler = MessageAssembler(limit: configuration.limits.maxFrameBytes)
            do {
                for try await frame in inbound {
                    guard let message = assembler.add(frame) else { continue }
                    let text: String
                    switch message {
                    case .text(let received):
                        text = received
                        frameLog?.write("in", text)
                    case .tooLarge(let size):
                        metrics.error(MarketError.Code.frameTooLarge.rawValue)
                        send(
                            ServerFrames.error(
                                MarketError(
                                    .frameTooLarge,
                                    "a frame of \(size) bytes or more is over the limit of \(configuration.limits.maxFrameBytes)"
                                ),
                                ref: nil, nowMs: now()))
                        continue
                    case .binary:
                        send(
                            ServerFrames.error(
                                MarketError(.malformed, "frames are JSON text, not binary"), ref: nil, nowMs: now()))
                        continue
                    }
                    if peer == nil {
                        preAuthFrames += 1
                        if preAuthFrames > configuration.preAuthFrames {
                            continuation.yield(.close(.policyViolation, "too many frames before auth"))
                            break
                        }
                    }
                    // Before auth the connection's own budget; after, the peer's, shared by all its connections.
                    let allowed = peer.map { hub.takeToken($0, nowMs: now()) } ?? bucket.take(nowMs: now())
                    guard allowed else {
                        metrics.error(MarketError.Code.rateLimited.rawValue)
                        // Name the refused message when it parses, so that its sender can resend it.
                        let ref = try? JSONDecoder().decode(Envelope.self, from: Data(text.utf8)).id
                        send(
                            ServerFrames.error(
                                MarketError(
                                    .rateLimited, "more than \(Int(configuration.frameRate)) frames a second: slow down"
                                ),
                                ref: ref, nowMs: now()))
                        continue
                    }
                    let started = ContinuousClock.now
                    let output = await processor.process(text, session: &session)
                    metrics.frameDuration(nanoseconds: (ContinuousClock.now - started).nanosecondsClamped)
                    // Registered before the auth ack leaves: a peer that acts on the ack must already
                    // receive what is sent to it.
                    if let authenticated = output.authenticated {
                        peer = authenticated
                        hub.add(authenticated, .init(id: connectionID, send: send))
                    }
                    for reply in output.replies { send(reply) }
                    for (target, text) in output.outgoing { await deliver(text, to: target) }
                    if output.close {
                        continuation.yield(.close(.policyViolation, "authentication failed"))
                        break
                    }
                    if overflowed.load(ordering: .relaxed) {
                        continuation.yield(.close(.policyViolation, "the connection reads too slowly"))
                        break
                    }
                }
            } catch {
                logger.debug("connection ended", metadata: ["error": "\(error)"])
            }
            if let peer { hub.remove(peer, connectionID: connectionID) }
            continuation.finish()
        }
    }
}

/// Collates fragmented WebSocket frames into messages, dropping (and reporting) any message
/// over the limit without buffering it.
struct MessageAssembler {
    enum Message {
        case text(String)
        case binary
        case tooLarge(Int)
    }

    let limit: Int
    private var buffer: ByteBuffer?
    private var size = 0
    private var discarding = false
    private var isBinary = false

    init(limit: Int) { self.limit = limit }

    mutating func add(_ frame: WebSocketDataFrame) -> Message? {
        switch frame.opcode {
        case .text, .binary:
            buffer = nil
            size = 0
            discarding = false
            isBinary = frame.opcode == .binary
        case .continuation:
            break
        }
        size += frame.data.readableBytes
        if size > limit { discarding = true }
        if !discarding && !isBinary {
            var data = frame.data
            if buffer == nil { buffer = data } else { buffer!.writeBuffer(&data) }
        }
        guard frame.fin else { return nil }
        defer {
            buffer = nil
            discarding = false
        }
        if isBinary { return .binary }
        if discarding { return .tooLarge(size) }
        return .text(String(buffer: buffer ?? ByteBuffer()))
    }
}

extension Duration {
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// The `--frame-log` capture: every frame in and out, one per line.
final class FrameLog: Sendable {
    private let handle: Mutex<FileHandle>

    init(path: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
            else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        self.handle = Mutex(handle)
    }

    func write(_ direction: String, _ text: String) {
        let line = Data((direction + "\t" + text.replacingOccurrences(of: "\n", with: "\\n") + "\n").utf8)
        handle.withLock { try? $0.write(contentsOf: line) }
    }
}
