import Foundation
import NIOCore
import NIOPosix

/// A container's stdin and demultiplexed output over a hijacked attach connection.
///
/// async-http-client cannot hand over a connection after an HTTP upgrade, and writing to a
/// container's stdin needs exactly that, so this one call speaks HTTP/1.1 on a raw SwiftNIO
/// Unix-socket channel: request, `101 UPGRADED` head, then the raw multiplexed stream.
public struct AttachedContainer: ~Copyable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    public var output: AttachOutput

    /// Writes to the container's stdin.
    public func write(_ bytes: some Sequence<UInt8>) async throws {
        try await outbound.write(ByteBuffer(bytes: Array(bytes)))
    }

    /// Closes stdin (the container sees end of file); output keeps flowing.
    public func closeStdin() {
        outbound.finish()
    }

    /// A writer for stdin that can be handed to another task while this one reads the output.
    public var stdin: StdinWriter { StdinWriter(outbound: outbound) }
}

public struct StdinWriter: Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>

    public func write(_ bytes: some Sequence<UInt8>) async throws {
        try await outbound.write(ByteBuffer(bytes: Array(bytes)))
    }

    public func finish() {
        outbound.finish()
    }
}

/// The container's output frames, in order, until it exits.
public struct AttachOutput: AsyncSequence {
    public typealias Element = OutputFrame
    var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    var leftover: ByteBuffer

    public struct AsyncIterator: AsyncIteratorProtocol {
        var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
        var decoder = MultiplexedStreamDecoder()
        var pending: [OutputFrame] = []
        var leftover: ByteBuffer?

        public mutating func next() async throws -> OutputFrame? {
            while pending.isEmpty {
                if let first = leftover {
                    leftover = nil
                    pending = try decoder.decode(first)
                    continue
                }
                guard let chunk = try await inbound.next() else { return nil }
                pending = try decoder.decode(chunk)
            }
            return pending.removeFirst()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(inbound: inbound, leftover: leftover.readableBytes > 0 ? leftover : nil)
    }
}

extension DockerClient {
    /// Attaches to a container (normally before starting it) and runs `body` with its stdin
    /// and output; the connection is closed when `body` returns or throws.
    public func withAttachedContainer<T: Sendable>(
        _ id: String, stdin: Bool, _ body: (inout AttachedContainer) async throws -> T
    ) async throws -> T {
        let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .connect(unixDomainSocketPath: configuration.socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true))
                    }
                }
        } catch {
            throw DockerError(.unreachable, "cannot reach the Docker engine at \(configuration.socketPath): \(error)")
        }
        let path =
            "/\(configuration.apiVersion)/containers/\(id)/attach?stream=1&stdout=1&stderr=1&stdin=\(stdin ? 1 : 0)"
        let head =
            "POST \(path) HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: head))
            var iterator = inbound.makeAsyncIterator()
            var received = ByteBuffer()
            var headEnd: Int?
            while headEnd == nil {
                guard var chunk = try await iterator.next() else {
                    throw DockerError(.malformed, "attach: the engine closed the connection before answering")
                }
                received.writeBuffer(&chunk)
                headEnd = received.readableBytesView.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound
            }
            let headText = received.readString(length: headEnd! - received.readerIndex) ?? ""
            let statusLine = headText.split(separator: "\r\n").first ?? ""
            let status = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            guard status == 101 || status == 200 else {
                let message = received.readString(length: received.readableBytes) ?? ""
                throw DockerError(
                    status == 404 ? .notFound : .engine, "attach to \(id.prefix(12)): \(statusLine) \(message)",
                    status: status)
            }
            var attached = AttachedContainer(
                outbound: outbound, output: AttachOutput(inbound: iterator, leftover: received))
            return try await body(&attached)
        }
    }
}
