import NIOCore

/// Which output a piece of container output came from.
public enum ContainerStream: UInt8, Sendable {
    case stdin = 0, stdout = 1, stderr = 2
}

public struct OutputFrame: Sendable, Equatable {
    public var stream: ContainerStream
    public var bytes: [UInt8]
}

/// Decodes the engine's multiplexed stream (attach / logs without a TTY): frames of an 8-byte
/// header `[stream, 0, 0, 0, size: UInt32 big-endian]` and `size` bytes. Frames arrive split
/// across reads, so it buffers.
public struct MultiplexedStreamDecoder: Sendable {
    private var buffer = ByteBuffer()

    public init() {}

    public mutating func decode(_ incoming: ByteBuffer) throws(DockerError) -> [OutputFrame] {
        var incoming = incoming
        buffer.writeBuffer(&incoming)
        var frames: [OutputFrame] = []
        while buffer.readableBytes >= 8 {
            let start = buffer.readerIndex
            guard let kind = buffer.getInteger(at: start, as: UInt8.self),
                let size = buffer.getInteger(at: start + 4, endianness: .big, as: UInt32.self)
            else { break }
            guard let stream = ContainerStream(rawValue: kind) else {
                throw DockerError(.malformed, "multiplexed stream: unknown stream id \(kind)")
            }
            guard buffer.readableBytes >= 8 + Int(size) else { break }
            buffer.moveReaderIndex(forwardBy: 8)
            frames.append(OutputFrame(stream: stream, bytes: buffer.readBytes(length: Int(size))!))
        }
        buffer.discardReadBytes()
        return frames
    }

    /// Bytes left over at the end of the stream (a cut-off frame), if any.
    public var leftover: Int { buffer.readableBytes }
}
