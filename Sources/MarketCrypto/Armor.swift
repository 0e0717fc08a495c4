import Foundation

/// ASCII armor for sealed files: base64 in 64-column lines between BEGIN/END markers.
/// Streaming in both directions, so armored files keep constant memory too.
public enum Armor {
    public static let begin = "-----BEGIN CLAUDE-MAX-MARKET SEALED MESSAGE-----"
    public static let end = "-----END CLAUDE-MAX-MARKET SEALED MESSAGE-----"
    static let lineBytes = 48
}

/// Encodes everything written to it; call `finish()` once at the end.
public struct ArmorWriter<Sink: ByteSink>: ByteSink {
    public private(set) var sink: Sink
    var pending = Data()
    var started = false

    public init(sink: Sink) {
        self.sink = sink
    }

    public mutating func write(_ data: Data) throws {
        if !started {
            try sink.write(Data((Armor.begin + "\n").utf8))
            started = true
        }
        pending.append(data)
        let whole = pending.count - pending.count % Armor.lineBytes
        guard whole > 0 else { return }
        var output = Data()
        var offset = pending.startIndex
        while offset < pending.startIndex + whole {
            output.append(Data(pending[offset..<offset + Armor.lineBytes].base64EncodedString().utf8))
            output.append(0x0a)
            offset += Armor.lineBytes
        }
        pending = Data(pending[offset...])
        try sink.write(output)
    }

    public mutating func finish() throws {
        if !started { try sink.write(Data((Armor.begin + "\n").utf8)) }
        if !pending.isEmpty { try sink.write(Data((pending.base64EncodedString() + "\n").utf8)) }
        pending = Data()
        try sink.write(Data((Armor.end + "\n").utf8))
    }
}

/// Decodes an armored stream: checks the markers and yields the binary bytes.
public struct ArmorReader<Source: ByteSource>: ByteSource {
    var source: Source
    var text = Data()
    var decoded = Data()
    var sawEnd = false
    var sourceDone = false

    /// `prefix` is whatever was already read from `source` to detect the armor.
    public init(source: Source, prefix: Data) throws(SealError) {
        self.source = source
        text = prefix
    }

    public mutating func read(upTo count: Int) throws -> Data {
        while decoded.count < count, !sawEnd {
            try decodeLines()
            if decoded.count >= count || sawEnd { break }
            if sourceDone { throw SealError(.truncated, "the armored input ends without its END line (truncated)") }
            let more = try source.read(upTo: 65_536)
            if more.isEmpty { sourceDone = true } else { text.append(more) }
        }
        if sawEnd { try checkNothingFollows() }
        if decoded.count <= count {
            defer { decoded = Data() }
            return decoded
        }
        let piece = Data(decoded.prefix(count))
        decoded = Data(decoded.dropFirst(count))
        return piece
    }

    private mutating func checkNothingFollows() throws {
        while !sourceDone {
            let more = try source.read(upTo: 65_536)
            if more.isEmpty { sourceDone = true }
            guard more.allSatisfy({ $0 == 0x0a || $0 == 0x0d || $0 == 0x20 }) else {
                throw SealError(.trailingData, "data follows the armor's END line: trailing garbage")
            }
        }
    }

    /// Decodes every complete line in `text`, then drops them in one step (no per-line copies).
    private mutating func decodeLines() throws {
        var cursor = text.startIndex
        defer { text = Data(text[cursor...]) }
        while cursor < text.endIndex {
            let newline = text[cursor...].firstIndex(of: 0x0a) ?? (sourceDone ? text.endIndex : nil)
            guard let newline else { return }
            let line = String(decoding: text[cursor..<newline], as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            cursor = newline < text.endIndex ? newline + 1 : text.endIndex
            if line.isEmpty || line == Armor.begin { continue }
            if line == Armor.end {
                sawEnd = true
                let rest = text[cursor...]
                if !rest.allSatisfy({ $0 == 0x0a || $0 == 0x0d || $0 == 0x20 }) {
                    throw SealError(.trailingData, "data follows the armor's END line: trailing garbage")
                }
                return
            }
            guard let bytes = Data(base64Encoded: line) else {
                throw SealError(.tampered, "the armored input has a line that is not base64: it was altered")
            }
            decoded.append(bytes)
        }
    }
}

extension Armor {
    /// Reads the first bytes of `source`; returns them and whether they start an armored message.
    public static func detect(_ source: inout some ByteSource) throws -> (prefix: Data, armored: Bool) {
        let prefix = try source.read(upTo: begin.utf8.count)
        return (prefix, prefix == Data(begin.utf8))
    }
}

/// A source that first yields bytes already read, then the rest of `base`.
public struct PrefixedSource<Base: ByteSource>: ByteSource {
    var prefix: Data
    var base: Base

    public init(prefix: Data, base: Base) {
        self.prefix = prefix
        self.base = base
    }

    public mutating func read(upTo count: Int) throws -> Data {
        var output = Data()
        if !prefix.isEmpty {
            output = Data(prefix.prefix(count))
            prefix = Data(prefix.dropFirst(output.count))
        }
        if output.count < count { output.append(try base.read(upTo: count - output.count)) }
        return output
    }
}
