import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// What a job may reach: `host:port` pairs, and how many bytes it may move.
public struct EgressPolicy: Sendable, Equatable {
    public var allowlist: Set<String>
    public var byteBudget: Int64

    public init(allowlist: [String], byteBudget: Int64) {
        self.allowlist = Set(allowlist.map { $0.lowercased() })
        self.byteBudget = byteBudget
    }

    public func allows(host: String, port: Int) -> Bool {
        allowlist.contains("\(host.lowercased()):\(port)")
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

/// An allowlisting HTTP CONNECT proxy on a Unix socket: the only way out of a job container.
/// The socket's directory is bind-mounted read-only into the container, whose entrypoint
/// bridges `127.0.0.1:3128` to it. Anything not on the allowlist gets `403`.
public final class EgressProxy: Sendable {
    public let socketPath: String
    public let policy: EgressPolicy
    let logger: Logger
    private let state = NIOLockedValueBox(State())

    struct State {
        var bytes: Int64 = 0
        var decisions: [EgressDecision] = []
    }

    init(socketPath: String, policy: EgressPolicy, logger: Logger) {
        self.socketPath = socketPath
        self.policy = policy
        self.logger = logger
    }

    public var bytesTransferred: Int64 { state.withLockedValue { $0.bytes } }
    public var decisions: [EgressDecision] { state.withLockedValue { $0.decisions } }

    /// Serves on a socket at `directory/egress.sock` (directory created 0755 so that the
    /// container's user can reach it) while `body` runs; stops and removes the socket after.
    public static func withProxy<T: Sendable>(
        directory: URL, policy: EgressPolicy, logger: Logger = Logger(label: "egress"),
        isolation: isolated (any Actor)? = #isolation, _ body: (EgressProxy) async throws -> T
    ) async throws -> T {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        chmod(directory.path, 0o755)
        let proxy = EgressProxy(
            socketPath: directory.appending(path: "egress.sock").path, policy: policy, logger: logger)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(unixDomainSocketPath: proxy.socketPath, cleanupExistingSocketFile: true) { child in
                child.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: child, configuration: .init(isOutboundHalfClosureEnabled: true))
                }
            }
        chmod(proxy.socketPath, 0o666)
        defer { unlink(proxy.socketPath) }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await server.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { connections in
                        for try await connection in inbound {
                            connections.addTask { await proxy.handle(connection) }
                        }
                    }
                }
            }
            do {
                let result = try await body(proxy)
                group.cancelAll()
                try? await server.channel.close()
                return result
            } catch {
                group.cancelAll()
                try? await server.channel.close()
                throw error
            }
        }
    }

    private func record(_ decision: EgressDecision) {
        state.withLockedValue { $0.decisions.append(decision) }
        logger.info(
            "egress \(decision.allowed ? "allowed" : "refused")",
            metadata: [
                "egress.host": "\(decision.host)", "egress.port": "\(decision.port)",
                "egress.reason": "\(decision.reason)",
            ])
    }

    /// Counts bytes against the budget; false once it is spent.
    private func spend(_ count: Int) -> Bool {
        state.withLockedValue {
            $0.bytes += Int64(count)
            return $0.bytes <= policy.byteBudget
        }
    }

    struct BudgetExceeded: Error {}

    func handle(_ client: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        try? await client.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var received = ByteBuffer()
            var headEnd: Int?
            while headEnd == nil {
                guard var chunk = try await iterator.next() else { return }
                received.writeBuffer(&chunk)
                headEnd = received.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound
                if headEnd == nil && received.readableBytes > 8192 {
                    try await outbound.write(
                        ByteBuffer(string: "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n"))
                    return
                }
            }
            let head = received.readString(length: headEnd! - received.readerIndex) ?? ""
            let requestLine = head.split(separator: "\r\n").first.map(String.init) ?? ""
            let parts = requestLine.split(separator: " ")
            guard parts.count == 3, parts[0] == "CONNECT", let target = Self.splitTarget(String(parts[1])) else {
                record(
                    EgressDecision(
                        host: parts.count > 1 ? String(parts[1].prefix(200)) : "?", port: 0, allowed: false,
                        reason: "not a CONNECT request"))
                try await outbound.write(
                    ByteBuffer(string: "HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n"))
                return
            }
            guard policy.allows(host: target.host, port: target.port) else {
                record(
                    EgressDecision(host: target.host, port: target.port, allowed: false, reason: "not on the allowlist")
                )
                try await outbound.write(
                    ByteBuffer(string: "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
                return
            }
            guard bytesTransferred < policy.byteBudget else {
                record(
                    EgressDecision(host: target.host, port: target.port, allowed: false, reason: "byte budget spent"))
                try await outbound.write(
                    ByteBuffer(string: "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
                return
            }
            let upstream: NIOAsyncChannel<ByteBuffer, ByteBuffer>
            do {
                upstream = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                    .connectTimeout(.seconds(10))
                    .connect(host: target.host, port: target.port) { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                                wrappingChannelSynchronously: channel,
                                configuration: .init(isOutboundHalfClosureEnabled: true))
                        }
                    }
            } catch {
                record(
                    EgressDecision(
                        host: target.host, port: target.port, allowed: true, reason: "allowed; upstream unreachable"))
                try await outbound.write(ByteBuffer(string: "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n"))
                return
            }
            record(EgressDecision(host: target.host, port: target.port, allowed: true, reason: "on the allowlist"))
            try await outbound.write(ByteBuffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n"))
            try await upstream.executeThenClose { upstreamInbound, upstreamOutbound in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for try await chunk in upstreamInbound {
                            guard self.spend(chunk.readableBytes) else { throw BudgetExceeded() }
                            try await outbound.write(chunk)
                        }
                        outbound.finish()
                    }
                    if received.readableBytes > 0 {
                        guard spend(received.readableBytes) else { throw BudgetExceeded() }
                        try await upstreamOutbound.write(received)
                    }
                    while let chunk = try await iterator.next() {
                        guard spend(chunk.readableBytes) else { throw BudgetExceeded() }
                        try await upstreamOutbound.write(chunk)
                    }
                    upstreamOutbound.finish()
                    try await group.waitForAll()
                }
            }
        }
    }

    static func splitTarget(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, host.count <= 253 else { return nil }
        return (host, port)
    }
}
