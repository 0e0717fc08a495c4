import Foundation

/// Where sealed or plain bytes come from, read in bounded pieces so memory stays constant.
public protocol ByteSource {
    /// Up to `count` bytes; fewer only at the end; empty at the end.
    mutating func read(upTo count: Int) throws -> Data
}

public protocol ByteSink {
    mutating func write(_ data: Data) throws
}

/// Reads a file descriptor (a file, a pipe, stdin) until end of file.
public struct FileSource: ByteSource {
    let handle: FileHandle

    public init(handle: FileHandle) {
        self.handle = handle
    }

    public mutating func read(upTo count: Int) throws -> Data {
        var result = Data()
        // A pipe may return short reads before the end: keep reading until full or at the end.
        while result.count < count {
            guard let piece = try handle.read(upToCount: count - result.count), !piece.isEmpty else { break }
            result.append(piece)
        }
        return result
    }
}

public struct FileSink: ByteSink {
    let handle: FileHandle

    public init(handle: FileHandle) {
        self.handle = handle
    }

    public mutating func write(_ data: Data) throws {
        try handle.write(contentsOf: data)
    }
}

public struct DataSource: ByteSource {
    let data: Data
    var offset: Int

    public init(_ data: Data) {
        self.data = data
        self.offset = data.startIndex
    }

    public mutating func read(upTo count: Int) throws -> Data {
        let end = min(offset + count, data.endIndex)
        defer { offset = end }
        return data[offset..<end]
    }
}

public struct DataSink: ByteSink {
    public private(set) var data = Data()

    public init() {}

    public mutating func write(_ data: Data) throws {
        self.data.append(data)
    }
}
