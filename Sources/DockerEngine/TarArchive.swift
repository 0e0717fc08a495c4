import Foundation

/// A minimal POSIX ustar writer for build contexts, made in memory.
///
/// Written here rather than taken from a package: none of the packages available to this
/// project writes tar (compress-nio does gzip, ZIPFoundation does zip), and a build context only
/// needs regular files and directories with modes, which ustar covers in about a page.
public struct TarArchive: Sendable {
    public private(set) var data = Data()
    private var finished = false

    public init() {}

    /// Adds a regular file. `path` is relative (`Dockerfile`, `bin/claude`).
    public mutating func addFile(
        _ path: String, contents: Data, mode: Int = 0o644, modified: Date = Date(timeIntervalSince1970: 0)
    ) throws {
        try appendHeader(path: path, size: contents.count, mode: mode, type: "0", modified: modified)
        data.append(contents)
        let padding = (512 - contents.count % 512) % 512
        data.append(Data(count: padding))
    }

    /// Adds a symbolic link (the target is stored as it is, up to 100 bytes).
    public mutating func addSymlink(_ path: String, target: String) throws {
        guard target.utf8.count <= 100 else { throw TarError(path: target) }
        try appendHeader(
            path: path, size: 0, mode: 0o777, type: "2", modified: Date(timeIntervalSince1970: 0), link: target)
    }

    public mutating func addDirectory(_ path: String, mode: Int = 0o755) throws {
        try appendHeader(
            path: path.hasSuffix("/") ? path : path + "/", size: 0, mode: mode, type: "5",
            modified: Date(timeIntervalSince1970: 0))
    }

    /// Adds a file from disk, keeping its permission bits.
    public mutating func addFile(_ path: String, from url: URL) throws {
        let attributes = try FileManager.default.attributesOfItem(atPath: url.path)
        let mode = (attributes[.posixPermissions] as? Int) ?? 0o644
        try addFile(path, contents: Data(contentsOf: url), mode: mode)
    }

    /// The archive with its two zero end blocks.
    public mutating func finish() -> Data {
        if !finished {
            data.append(Data(count: 1024))
            finished = true
        }
        return data
    }

    private mutating func appendHeader(
        path: String, size: Int, mode: Int, type: Character, modified: Date, link: String = ""
    ) throws {
        precondition(!finished, "the archive is finished")
        var name = Array(path.utf8)
        var prefix: [UInt8] = []
        if name.count > 100 {
            // Split at a slash so that the name fits in 100 bytes and the prefix in 155.
            guard
                let split = name.indices.reversed().first(where: {
                    name[$0] == UInt8(ascii: "/") && $0 <= 155 && name.count - $0 - 1 <= 100
                })
            else { throw TarError(path: path) }
            prefix = Array(name[..<split])
            name = Array(name[(split + 1)...])
        }
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], at offset: Int) {
            for (index, byte) in bytes.enumerated() { header[offset + index] = byte }
        }
        func octal(_ value: Int, width: Int) -> [UInt8] {
            let digits = String(value, radix: 8)
            return Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8) + [0]
        }
        put(name, at: 0)
        put(octal(mode & 0o7777, width: 8), at: 100)
        put(octal(0, width: 8), at: 108)
        put(octal(0, width: 8), at: 116)
        put(octal(size, width: 12), at: 124)
        put(octal(Int(modified.timeIntervalSince1970), width: 12), at: 136)
        put(Array(repeating: UInt8(ascii: " "), count: 8), at: 148)
        header[156] = UInt8(ascii: type.asciiValue.map { Unicode.Scalar($0) } ?? "0")
        put(Array(link.utf8), at: 157)
        put(Array("ustar\u{0}00".utf8), at: 257)
        put(prefix, at: 345)
        let checksum = header.reduce(0) { $0 + Int($1) }
        put(
            Array(
                (String(repeating: "0", count: 6 - String(checksum, radix: 8).count) + String(checksum, radix: 8)).utf8)
                + [0, UInt8(ascii: " ")], at: 148)
        data.append(contentsOf: header)
    }
}

public struct TarError: Error, CustomStringConvertible {
    public let path: String
    public var description: String { "path too long for a tar archive: \(path)" }
}

extension TarArchive {
    /// The build context of a `FROM scratch` image holding a static busybox and its applets:
    /// the small local image of the demo, the fault suite and the tests (nothing to pull).
    public static func busyboxContext(binary: URL, user: String? = "10001:10001") throws -> Data {
        var tar = TarArchive()
        let dockerfile =
            ["FROM scratch", "COPY busybox /bin/busybox", #"RUN ["/bin/busybox", "--install", "-s", "/bin"]"#]
            + (user.map { ["USER \($0)"] } ?? [])
        try tar.addFile("Dockerfile", contents: Data((dockerfile.joined(separator: "\n") + "\n").utf8))
        try tar.addFile("busybox", from: binary)
        return tar.finish()
    }
}
