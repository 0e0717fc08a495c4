import Foundation
import Logging
import MarketCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What a job may reach: `host:port` pairs, and how many bytes it may move.
public struct EgressPolicy: Sendable, Equatable {
    /// Normalised entries (see `normalize`); what cannot be normalised is never allowed.
    public var allowlist: Set<String>
    public var byteBudget: Int64

    public init(allowlist: [String], byteBudget: Int64) {
        self.allowlist = Set(allowlist.compactMap(Self.normalize))
        self.byteBudget = byteBudget
    }

    /// True when the normalised `host:port` is on the list.
    public func allows(_ target: EgressTarget) -> Bool { allowlist.contains(target.description) }

    /// The one spelling of a `host:port` that the config stores and the proxy compares and
    /// connects to: ASCII only, lower case, no trailing dot, IP addresses in their canonical
    /// form (IPv6 in brackets), the port as a plain number. nil for anything else.
    public static func normalize(_ text: String) -> String? { EgressTarget(parsing: text)?.description }
}

/// The first decisions of a job in full, and counts of all of them: a job that knocks a million
/// times keeps memory, logs and the audit flat.
struct DecisionRecord<Decision: Sendable>: Sendable {
    /// Decisions kept in full; past this only the counts grow.
    static var kept: Int { 64 }
    private(set) var first: [Decision] = []
    private(set) var passed = 0
    private(set) var refused = 0

    mutating func add(_ decision: Decision, passed: Bool) {
        if passed { self.passed += 1 } else { refused += 1 }
        if first.count < Self.kept { first.append(decision) }
    }
}

/// One decision of the proxy: which host was asked for and whether it was let through.
/// Hosts only; the proxy never looks at or logs the payload.
public struct EgressDecision: Sendable, Equatable, Codable {
    public var host: String
    public var port: Int
    public var allowed: Bool
    public var reason: String

    public init(host: String, port: Int, allowed: Bool, reason: String) {
        self.host = host
        self.port = port
        self.allowed = allowed
        self.reason = reason
    }
}

/// The provider-side endpoint of a job, on a Unix socket: the only way out of its container.
/// The socket's directory is bind-mounted read-only into the container, whose entrypoint bridges
/// `127.0.0.1:3128` to it. HTTP is parsed by SwiftNIO's codec; two things are served:
/// - `CONNECT host:port` to the allowlist (anything else gets `403`), tunnelled byte for byte;
/// - with a `ClaudeGateway`, the Claude API (`ANTHROPIC_BASE_URL` points here).
/// Both share one byte budget; when it is spent, both sides of a tunnel close at once.
public final class EgressProxy: Sendable {
    public let socketPath: String
    public let policy: EgressPolicy
    public let gateway: ClaudeGateway?
    let logger: Logger
    private let state = Mutex(State())

    struct State {
        var bytes: Int64 = 0
        var decisions = DecisionRecord<EgressDecision>()
    }

    init(socketPath: String, policy: EgressPolicy, gateway: ClaudeGateway?, logger: Logger) {
        self.socketPath = socketPath
        self.policy = policy
        self.gateway = gateway
        self.logger = logger
    }

    public var bytesTransferred: Int64 { state.withLock { $0.bytes } }
    /// The first decisions (at most `DecisionRecord.kept`); `counts` has them all.
    public var decisions: [EgressDecision] { state.withLock { $0.decisions.first } }
    public var counts: (allowed: Int, refused: Int) {
        state.withLock { ($0.decisions.passed, $0.decisions.refused) }
    }

    /// The longest socket path used as given (`sun_path` holds 108 bytes with its NUL).
    static let maxSocketPathBytes = 100

    /// The start of the short /tmp directory names standing in for `runDirectory`'s: named after
    /// it (FNV-1a of its path), so that what a dead process left can be found again.
    public static func fallbackPrefix(runDirectory: URL) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in runDirectory.standardizedFileURL.path.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return "cmm-egress-\(String(hash, radix: 16))-"
    }

    /// Removes the socket directories a process that died left behind (it had no chance to):
    /// `egress-*` under `runDirectory`, and the short ones under /tmp named after it. A directory
    /// whose socket still answers belongs to a live job and stays. Returns how many went.
    public static func removeStale(runDirectory: URL) -> Int {
        let manager = FileManager.default
        let prefix = fallbackPrefix(runDirectory: runDirectory)
        var candidates: [URL] = []
        for name in (try? manager.contentsOfDirectory(atPath: runDirectory.path)) ?? [] where name.hasPrefix("egress-")
        {
            candidates.append(runDirectory.appending(path: name))
        }
        for name in (try? manager.contentsOfDirectory(atPath: "/tmp")) ?? [] where name.hasPrefix(prefix) {
            candidates.append(URL(fileURLWithPath: "/tmp").appending(path: name))
        }
        var removed = 0
        for directory in candidates where !answers(directory.appending(path: "egress.sock").path) {
            if (try? manager.removeItem(at: directory)) != nil { removed += 1 }
        }
        return removed
    }

    /// Whether something accepts connections on the Unix socket at `path`.
    static func answers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
            buffer[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }

    /// Serves on a socket at `directory/egress.sock` (directory created 0755 so that the
    /// container's user can reach it) while `body` runs; stops and removes the socket after.
    public static func withProxy<T: Sendable>(
        directory: URL, policy: EgressPolicy, gateway: ClaudeGateway? = nil, logger: Logger = Logger(label: "egress"),
        isolation: isolated (any Actor)? = #isolation, _ body: (EgressProxy) async throws -> T
    ) async throws -> T {
        // A Unix socket path holds at most 107 bytes: a deep home (or temporary directory)
        // gets its socket in a short private directory under /tmp instead, removed afterwards.
        var directory = directory
        var fallback: URL?
        if directory.appending(path: "egress.sock").path.utf8.count > maxSocketPathBytes {
            directory = URL(fileURLWithPath: "/tmp").appending(
                path: "\(fallbackPrefix(runDirectory: directory.deletingLastPathComponent()))"
                    + "\(UUID().uuidString.prefix(8).lowercased())")
            fallback = directory
        }
        defer { if let fallback { try? FileManager.default.removeItem(at: fallback) } }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        chmod(directory.path, 0o755)
        let proxy = EgressProxy(
            socketPath: directory.appending(path: "egress.sock").path, policy: policy, gateway: gateway,
            logger: logger)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
                    let encoder = HTTPResponseEncoder()
                    try channel.pipeline.syncOperations.addHandler(decoder)
                    try channel.pipeline.syncOperations.addHandler(encoder)
                    try channel.pipeline.syncOperations.addHandler(
                        EndpointHandler(proxy: proxy, decoder: decoder, encoder: encoder))
                }
            }
            .bind(unixDomainSocketPath: proxy.socketPath, cleanupExistingSocketFile: true).get()
        chmod(proxy.socketPath, 0o666)
        defer { unlink(proxy.socketPath) }
        do {
            let result = try await body(proxy)
            try? await server.close()
            return result
        } catch {
            try? await server.close()
            throw error
        }
    }

    func record(_ decision: EgressDecision) {
        state.withLock { $0.decisions.add(decision, passed: decision.allowed) }
        logger.info(
            "egress \(decision.allowed ? "allowed" : "refused")",
            metadata: [
                "egress.host": "\(decision.host)", "egress.port": "\(decision.port)",
                "egress.reason": "\(decision.reason)",
            ])
    }

    /// Counts bytes against the budget; false once it is spent.
    func spend(_ count: Int) -> Bool {
        state.withLock {
            $0.bytes += Int64(count)
            return $0.bytes <= policy.byteBudget
        }
    }
}

/// One connection from the job: reads an HTTP request with NIO's decoder, then either turns into
/// a tunnel (CONNECT) or hands the request to the gateway.
final class EndpointHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let proxy: EgressProxy
    let decoder: ByteToMessageHandler<HTTPRequestDecoder>
    let encoder: HTTPResponseEncoder

    enum Phase {
        case idle
        case collecting(HTTPRequestHead, ByteBuffer)
        case busy
        case ignoring
    }

    private var phase = Phase.idle
    /// Parts of the next request that arrived while an answer was still being written (a
    /// client may send it once the answer's last byte arrived, before `.end` was written).
    private var pending: [HTTPServerRequestPart] = []
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// The answer is complete: take up what the client already sent.
    func becameIdle() {
        phase = .idle
        guard let context else { return }
        while !pending.isEmpty {
            if case .busy = phase { return }
            handle(context, pending.removeFirst())
        }
    }

    init(proxy: EgressProxy, decoder: ByteToMessageHandler<HTTPRequestDecoder>, encoder: HTTPResponseEncoder) {
        self.proxy = proxy
        self.decoder = decoder
        self.encoder = encoder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .busy = phase {
            guard pending.count < 1024 else {
                respond(context, .badRequest, "too many requests sent ahead", close: true)
                return
            }
            pending.append(part)
            return
        }
        handle(context, part)
    }

    private func handle(_ context: ChannelHandlerContext, _ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head):
            guard case .idle = phase else { return }
            if head.method == .CONNECT {
                phase = .busy
                connect(context, head)
            } else if proxy.gateway == nil {
                phase = .ignoring
                let target = WireField.printable(String(head.uri.prefix(200)))
                proxy.record(EgressDecision(host: target, port: 0, allowed: false, reason: "not a CONNECT request"))
                respond(context, .methodNotAllowed, "only CONNECT to allowed hosts", close: true)
            } else {
                phase = .collecting(head, context.channel.allocator.buffer(capacity: 0))
            }
        case .body(var chunk):
            guard case .collecting(let head, var body) = phase else { return }
            guard body.readableBytes + chunk.readableBytes <= proxy.gateway?.settings.maxRequestBytes ?? 0 else {
                phase = .ignoring
                respond(context, .payloadTooLarge, "the request body is over the gateway's limit", close: true)
                return
            }
            body.writeBuffer(&chunk)
            phase = .collecting(head, body)
        case .end:
            guard case .collecting(let head, let body) = phase, let gateway = proxy.gateway else { return }
            // The API's traffic counts against the job's byte budget, as a tunnel's does.
            guard proxy.spend(body.readableBytes) else {
                phase = .ignoring
                proxy.record(EgressDecision(host: "gateway", port: 0, allowed: false, reason: "byte budget spent"))
                respond(context, .forbidden, "byte budget spent (egress.byteBudget)", close: true)
                return
            }
            phase = .busy
            let channel = context.channel
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let keepAlive = head.isKeepAlive
            // Ready for the next request before the last byte of this answer leaves: a client
            // that sends it at once must find the connection idle.
            let responder = ChannelResponder(channel: channel, spend: proxy.spend) { handler.value.becameIdle() }
            Task {
                do {
                    try await gateway.serve(head, body: body, to: responder)
                    if !keepAlive { try? await channel.close() }
                } catch {
                    channel.close(promise: nil)
                }
            }
        }
    }

    /// A request NIO's parser cannot read (control characters, a bad request line, …) is
    /// refused with 400 and the connection closed; the job is never left waiting.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError else {
            context.close(promise: nil)
            return
        }
        proxy.record(EgressDecision(host: "?", port: 0, allowed: false, reason: "malformed HTTP request"))
        if case .busy = phase {
            context.close(promise: nil)
        } else {
            phase = .ignoring
            respond(context, .badRequest, "malformed HTTP request", close: true)
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ text: String, close: Bool) {
        var headers = HTTPHeaders([("content-length", "\(text.utf8.count)"), ("content-type", "text/plain")])
        if close { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    private func connect(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        guard let target = EgressTarget(parsing: head.uri) else {
            proxy.record(
                EgressDecision(
                    host: WireField.printable(String(head.uri.prefix(200))), port: 0, allowed: false,
                    reason: "not a host:port that can be normalised"))
            respond(context, .badRequest, "CONNECT needs host:port", close: true)
            return
        }
        guard proxy.policy.allows(target) else {
            proxy.record(
                EgressDecision(host: target.host, port: target.port, allowed: false, reason: "not on the allowlist"))
            respond(context, .forbidden, "not on the allowlist", close: true)
            return
        }
        guard proxy.bytesTransferred < proxy.policy.byteBudget else {
            proxy.record(
                EgressDecision(host: target.host, port: target.port, allowed: false, reason: "byte budget spent"))
            respond(context, .forbidden, "byte budget spent", close: true)
            return
        }
        let proxy = self.proxy
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        // Nothing is read from the target until the tunnel is joined: a server that speaks first
        // (its greeting can arrive with the connection) would otherwise lose it to the pipeline's end.
        ClientBootstrap(group: context.eventLoop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.autoRead, value: false)
            .connectTimeout(.seconds(10))
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                let context = bound.value
                switch result {
                case .failure:
                    proxy.record(
                        EgressDecision(
                            host: target.host, port: target.port, allowed: true, reason: "allowed; upstream unreachable"
                        ))
                    handler.value.respond(context, .badGateway, "upstream unreachable", close: true)
                case .success(let upstream):
                    proxy.record(
                        EgressDecision(host: target.host, port: target.port, allowed: true, reason: "on the allowlist"))
                    handler.value.glue(context, to: upstream)
                }
            }
    }

    /// Answers 200, then takes HTTP out of the pipeline: from here on bytes flow both ways,
    /// counted against the budget. The 200 is written after the encoder is gone: a 2xx answer
    /// to CONNECT carries no Content-Length or Transfer-Encoding (RFC 9110, 9.3.6), which the
    /// encoder would add.
    private func glue(_ context: ChannelHandlerContext, to upstream: Channel) {
        let (local, remote) = GlueHandler.matchedPair(spend: proxy.spend)
        let pipeline = context.pipeline
        do {
            try pipeline.syncOperations.addHandler(local)
            try upstream.pipeline.syncOperations.addHandler(remote)
        } catch {
            context.close(promise: nil)
            upstream.close(promise: nil)
            return
        }
        pipeline.syncOperations.removeHandler(encoder, promise: nil)
        context.writeAndFlush(
            NIOAny(ByteBuffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n")), promise: nil)
        // Bytes the client sent right after its CONNECT go first, then the rest; this handler
        // leaves before the decoder, which hands what it still holds to the next handler.
        let early = pending.compactMap { part -> ByteBuffer? in
            if case .body(let bytes) = part { return bytes }
            return nil
        }
        pending = []
        pipeline.syncOperations.removeHandler(self, promise: nil)
        for bytes in early {
            guard proxy.spend(bytes.readableBytes) else {
                context.close(promise: nil)
                upstream.close(promise: nil)
                return
            }
            upstream.write(bytes, promise: nil)
        }
        if !early.isEmpty { upstream.flush() }
        pipeline.syncOperations.removeHandler(decoder, promise: nil)
        // The target's bytes flow from here, after the 200.
        try? upstream.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
    }
}

/// Writes the gateway's answer to the job's connection, waiting on each write (back-pressure).
struct ChannelResponder: GatewayResponder {
    let channel: Channel
    /// Counts the answer's bytes against the job's byte budget; false once it is spent.
    let spend: @Sendable (Int) -> Bool
    /// Runs on the channel's event loop just before the end of the answer is written.
    let beforeEnd: @Sendable () -> Void

    struct BudgetSpent: Error {}

    func head(_ status: HTTPResponseStatus, _ headers: HTTPHeaders) async throws {
        try await channel.writeAndFlush(
            HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)))
    }

    /// Waits only when the job reads slower than the answer arrives; otherwise writes on.
    func body(_ buffer: ByteBuffer) async throws {
        // Past the budget the answer is cut off and the connection closed.
        guard spend(buffer.readableBytes) else { throw BudgetSpent() }
        let part = HTTPServerResponsePart.body(.byteBuffer(buffer))
        if channel.isWritable {
            channel.writeAndFlush(part, promise: nil)
        } else {
            try await channel.writeAndFlush(part)
        }
    }

    func end() async throws {
        let channel = self.channel
        let beforeEnd = self.beforeEnd
        try await channel.eventLoop.flatSubmit {
            beforeEnd()
            return channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        }.get()
    }
}

/// Joins two channels on one event loop: what one reads, the other writes, with back-pressure
/// and half-closure passed on. Every byte is counted; once the budget is spent, both close at once.
final class GlueHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private let spend: @Sendable (Int) -> Bool

    private init(spend: @escaping @Sendable (Int) -> Bool) { self.spend = spend }

    static func matchedPair(spend: @escaping @Sendable (Int) -> Bool) -> (GlueHandler, GlueHandler) {
        let first = GlueHandler(spend: spend)
        let second = GlueHandler(spend: spend)
        first.partner = second
        second.partner = first
        return (first, second)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard spend(buffer.readableBytes) else {
            context.close(promise: nil)
            partner?.context?.close(promise: nil)
            return
        }
        // Flushed at once: bytes the HTTP decoder hands on when it leaves come without a
        // read-complete, and a tunnel carries few, large reads.
        partner?.context?.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) { partner?.context?.flush() }

    func channelInactive(context: ChannelHandlerContext) { partner?.context?.close(promise: nil) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            partner?.context?.close(mode: .output, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        partner?.context?.close(promise: nil)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let partner, partner.pendingRead {
            partner.pendingRead = false
            partner.context?.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
