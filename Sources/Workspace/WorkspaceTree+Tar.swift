import Foundation

/// The workspace's wire form: a POSIX tar archive (ustar, with GNU long-name records for paths
/// over 100 bytes), entries sorted by path, owner 0, time 0: the same tree always gives the same
/// bytes, so their hash names the base a patch applies to. `docs/FORMATS.md` describes it.
extension WorkspaceTree {
    /// The canonical archive; every path gets `prefix` in front (the job container extracts the
    /// workspace as `work/…`).
    public func tar(prefix: String = "") -> Data {
        var writer = TarWriter()
        for entry in entries { writer.append(entry, prefix: prefix) }
        return writer.finish()
    }

    /// What reading an archive left out (only when reading leniently).
    public struct Skipped: Sendable, Equatable {
        public var path: String
        public var reason: String

        public init(path: String, reason: String) {
            self.path = path
            self.reason = reason
        }
    }

    /// Reads an archive from someone else, who may be hostile.
    ///
    /// Strict (a requester's workspace): anything but directories, regular files and links that
    /// stay inside, any bad path, setuid bit or duplicate, and any limit passed fails the whole
    /// archive. Lenient (the tree a job left in its work directory, as busybox `tar -c` writes
    /// it): a leading `./` is taken off, hard links become copies, and FIFOs, devices and links
    /// that escape are left out and listed; limits and paths are still enforced.
    public static func read(tar data: Data, limits: WorkspaceLimits, lenient: Bool = false) throws(WorkspaceError)
        -> (tree: WorkspaceTree, skipped: [Skipped])
    {
        var reader = TarReader(data: data)
        var entries: [WorkspaceEntry] = []
        var files: [String: Data] = [:]
        // What was left out, with its place in the archive, so that the list keeps its order.
        var skipped: [(position: Int, skipped: Skipped)] = []
        var positions: [String: Int] = [:]
        var bytes: Int64 = 0
        var count = 0
        while let header = try reader.next() {
            let position = positions.count + skipped.count
            var path = header.path
            if lenient {
                while path.hasPrefix("./") { path.removeFirst(2) }
                if path == "." || path.isEmpty { continue }
            }
            if path.hasSuffix("/") { path.removeLast() }
            let mode = UInt16(truncatingIfNeeded: header.mode)
            if header.mode & 0o7000 != 0 {
                guard lenient else {
                    throw WorkspaceError(
                        .badEntry,
                        "\(path) has mode \(String(header.mode, radix: 8)): setuid, setgid and sticky bits are not allowed"
                    )
                }
            }
            let entry: WorkspaceEntry
            switch header.type {
            case "0", "\0", "7":
                entry = WorkspaceEntry(path: path, kind: .file(header.contents), mode: mode & 0o777)
                files[path] = header.contents
            case "5":
                entry = WorkspaceEntry(path: path, kind: .directory, mode: mode & 0o777)
            case "2":
                entry = WorkspaceEntry(path: path, kind: .symlink(header.linkName))
            case "1" where lenient:
                var target = header.linkName
                while target.hasPrefix("./") { target.removeFirst(2) }
                guard let contents = files[target] else {
                    skipped.append(
                        (position, Skipped(path: path, reason: "a hard link to \(target), which is not a file")))
                    continue
                }
                entry = WorkspaceEntry(path: path, kind: .file(contents), mode: mode & 0o777)
                files[path] = contents
            case "3", "4", "6":
                guard lenient else {
                    throw WorkspaceError(
                        .badEntry,
                        "\(path.debugDescription) is of tar type \(header.type.debugDescription): only directories, regular files and symbolic links are allowed"
                    )
                }
                skipped.append((position, Skipped(path: path, reason: "a device or FIFO")))
                continue
            default:
                throw WorkspaceError(
                    .badEntry,
                    "\(path.debugDescription) is of tar type \(header.type.debugDescription): only directories, regular files and symbolic links are allowed"
                )
            }
            if entry.kind != .directory { count += 1 }
            bytes += entry.byteCount
            guard count <= limits.maxFiles else {
                throw WorkspaceError(.tooLarge, "the archive holds more than \(limits.maxFiles) files")
            }
            guard bytes <= limits.maxBytes else {
                throw WorkspaceError(.tooLarge, "the archive holds more than \(limits.maxBytes) bytes")
            }
            entries.append(entry)
            positions[path] = position
        }
        guard lenient else { return (try WorkspaceTree(entries: entries), []) }
        // Links are judged once the whole tree is known: one may climb through another.
        let (kept, dropped) = droppingLinksThatEscape(entries)
        for link in dropped {
            skipped.append(
                (
                    positions[link.path] ?? 0,
                    Skipped(path: link.path, reason: "a link that \(link.outcome.refusal ?? "")")
                ))
        }
        return (try WorkspaceTree(entries: kept), skipped.sorted { $0.position < $1.position }.map(\.skipped))
    }
}

/// Writes ustar headers (GNU `L` / `K` records for long names and link targets).
struct TarWriter {
    private(set) var data = Data()

    mutating func append(_ entry: WorkspaceEntry, prefix: String) {
        let path = prefix + entry.path
        switch entry.kind {
        case .directory: header(path: path + "/", type: UInt8(ascii: "5"), mode: entry.mode, size: 0)
        case .file(let contents):
            header(path: path, type: UInt8(ascii: "0"), mode: entry.mode, size: contents.count)
            body(contents)
        case .symlink(let target): header(path: path, type: UInt8(ascii: "2"), mode: 0o777, size: 0, link: target)
        }
    }

    /// A regular file that is not part of a tree (the prompt beside the workspace).
    mutating func appendFile(path: String, contents: Data, mode: UInt16 = 0o600) {
        header(path: path, type: UInt8(ascii: "0"), mode: mode, size: contents.count)
        body(contents)
    }

    mutating func appendDirectory(path: String, mode: UInt16 = 0o700) {
        header(path: path.hasSuffix("/") ? path : path + "/", type: UInt8(ascii: "5"), mode: mode, size: 0)
    }

    mutating func finish() -> Data {
        data.append(Data(count: 1024))
        return data
    }

    private mutating func body(_ contents: Data) {
        data.append(contents)
        data.append(Data(count: (512 - contents.count % 512) % 512))
    }

    private mutating func header(path: String, type: UInt8, mode: UInt16, size: Int, link: String = "") {
        let name = Array(path.utf8)
        let linkBytes = Array(link.utf8)
        if name.count > 100 { longRecord(type: UInt8(ascii: "L"), name) }
        if linkBytes.count > 100 { longRecord(type: UInt8(ascii: "K"), linkBytes) }
        data.append(contentsOf: Self.block(name: name, type: type, mode: mode, size: size, link: linkBytes))
    }

    private mutating func longRecord(type: UInt8, _ value: [UInt8]) {
        let contents = Data(value + [0])
        data.append(
            contentsOf: Self.block(name: Array("././@LongLink".utf8), type: type, mode: 0o644, size: contents.count))
        body(contents)
    }

    static func block(name: [UInt8], type: UInt8, mode: UInt16, size: Int, link: [UInt8] = []) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: some Collection<UInt8>, at offset: Int, max: Int) {
            for (index, byte) in bytes.prefix(max).enumerated() { header[offset + index] = byte }
        }
        func octal(_ value: Int, width: Int) -> [UInt8] {
            let digits = String(value, radix: 8)
            return Array((String(repeating: "0", count: Swift.max(0, width - 1 - digits.count)) + digits).utf8)
        }
        put(name, at: 0, max: 100)
        put(octal(Int(mode), width: 8), at: 100, max: 7)
        put(octal(0, width: 8), at: 108, max: 7)
        put(octal(0, width: 8), at: 116, max: 7)
        put(octal(size, width: 12), at: 124, max: 11)
        put(octal(0, width: 12), at: 136, max: 11)
        header[156] = type
        put(link, at: 157, max: 100)
        put(Array("ustar\u{0}00".utf8), at: 257, max: 8)
        for index in 148..<156 { header[index] = UInt8(ascii: " ") }
        let checksum = header.reduce(0) { $0 + Int($1) }
        put(octal(checksum, width: 7) + [0], at: 148, max: 8)
        return header
    }
}

/// Reads tar headers from untrusted bytes: every number, checksum and length is checked, and
/// nothing is read past the data.
struct TarReader {
    struct Header {
        var path: String
        var type: Character
        var mode: Int
        var linkName: String
        var contents: Data
    }

    let data: Data
    var offset: Int

    init(data: Data) {
        self.data = data
        self.offset = data.startIndex
    }

    mutating func next() throws(WorkspaceError) -> Header? {
        var longName: String?
        var longLink: String?
        while true {
            guard offset + 512 <= data.endIndex else {
                if offset == data.endIndex { return nil }
                throw WorkspaceError(.badArchive, "the archive ends inside a header")
            }
            let block = [UInt8](data[offset..<offset + 512])
            offset += 512
            if block.allSatisfy({ $0 == 0 }) { return nil }
            try verifyChecksum(block)
            let size = try number(block, 124, 12, field: "size")
            let type = Character(Unicode.Scalar(block[156]))
            guard size <= data.endIndex - offset else {
                throw WorkspaceError(.badArchive, "an entry claims \(size) bytes, more than the archive holds")
            }
            let contents = data[offset..<offset + size]
            offset += size + (512 - size % 512) % 512
            offset = min(offset, data.endIndex)
            switch type {
            case "L":
                longName = try text(Array(contents), field: "long name")
                continue
            case "K":
                longLink = try text(Array(contents), field: "long link name")
                continue
            case "x":
                let records = try pax(Array(contents))
                if let path = records["path"] { longName = path }
                if let link = records["linkpath"] { longLink = link }
                continue
            case "g":
                continue
            default: break
            }
            var name = try field(block, 0, 100, name: "name")
            let shortLink = try field(block, 157, 100, name: "link name")
            let link = longLink ?? shortLink
            if block[257..<262].elementsEqual("ustar".utf8) {
                let prefix = try field(block, 345, 155, name: "prefix")
                if !prefix.isEmpty { name = prefix + "/" + name }
            }
            return Header(
                path: longName ?? name, type: type, mode: try number(block, 100, 8, field: "mode"),
                linkName: link,
                contents: Data(contents))
        }
    }

    private func verifyChecksum(_ block: [UInt8]) throws(WorkspaceError) {
        let stored = try number(block, 148, 8, field: "checksum")
        var sum = 0
        for (index, byte) in block.enumerated() { sum += (148..<156).contains(index) ? 32 : Int(byte) }
        guard sum == stored else { throw WorkspaceError(.badArchive, "a header's checksum does not match") }
    }

    private func number(_ block: [UInt8], _ offset: Int, _ length: Int, field: String) throws(WorkspaceError) -> Int {
        let digits = block[offset..<offset + length].prefix { $0 != 0 && $0 != 0x20 }
        let leading = block[offset..<offset + length].drop { $0 == 0x20 }.prefix { $0 != 0 && $0 != 0x20 }
        let text = String(decoding: digits.isEmpty ? leading : digits, as: UTF8.self)
        if text.isEmpty { return 0 }
        guard text.count <= 11, let value = Int(text, radix: 8), value >= 0 else {
            throw WorkspaceError(.badArchive, "a header's \(field) field is not an octal number")
        }
        return value
    }

    private func field(_ block: [UInt8], _ offset: Int, _ length: Int, name: String) throws(WorkspaceError) -> String {
        try text(Array(block[offset..<offset + length].prefix { $0 != 0 }), field: name)
    }

    private func text(_ bytes: [UInt8], field: String) throws(WorkspaceError) -> String {
        let trimmed = bytes.last == 0 ? Array(bytes.prefix { $0 != 0 }) : bytes
        guard let text = String(validating: trimmed, as: UTF8.self) else {
            throw WorkspaceError(.badArchive, "a header's \(field) is not UTF-8")
        }
        return text
    }

    /// PAX records: "LENGTH key=value\n".
    private func pax(_ bytes: [UInt8]) throws(WorkspaceError) -> [String: String] {
        var records: [String: String] = [:]
        var index = 0
        while index < bytes.count {
            // The length is the peer's: compared with what is left, never added to an index.
            guard let space = bytes[index...].firstIndex(of: 0x20), space - index <= 20,
                let length = Int(String(decoding: bytes[index..<space], as: UTF8.self)),
                length >= space - index + 2, length <= bytes.count - index, bytes[index + length - 1] == 0x0a
            else { throw WorkspaceError(.badArchive, "a PAX header is malformed") }
            let record = try text(Array(bytes[(space + 1)..<(index + length - 1)]), field: "PAX record")
            if let equals = record.firstIndex(of: "=") {
                records[String(record[..<equals])] = String(record[record.index(after: equals)...])
            }
            index += length
        }
        return records
    }
}

extension WorkspaceTree {
    /// Where the job container's entrypoint finds the prompt of a workspace job.
    public static let promptPath = "tmp/cmm-input/prompt"

    /// A workspace job's standard input: one archive that the runner's entrypoint unpacks at
    /// `/` — the prompt under `/tmp/cmm-input/` and the tree under `/work/`.
    /// `files` (paths below `/`, made by the provider: a claude job's transcript) go beside
    /// them, each with its directories, private to the job's user.
    public func jobInput(prompt: Data, files: [(path: String, contents: Data)] = []) -> Data {
        var writer = TarWriter()
        writer.appendDirectory(path: "tmp/cmm-input")
        writer.appendFile(path: Self.promptPath, contents: prompt)
        var directories: Set<String> = ["tmp", "tmp/cmm-input"]
        for file in files {
            for directory in PathBytes.ancestors(of: file.path) where directories.insert(directory).inserted {
                writer.append(WorkspaceEntry(path: directory, kind: .directory, mode: 0o700), prefix: "")
            }
            writer.append(WorkspaceEntry(path: file.path, kind: .file(file.contents), mode: 0o600), prefix: "")
        }
        for entry in entries { writer.append(entry, prefix: "work/") }
        return writer.finish()
    }

    /// Bytes of tmpfs the tree takes once unpacked: every file and link rounded up to a page.
    public var unpackedBytes: Int64 {
        entries.reduce(0) { $0 + ($1.byteCount + 4095) / 4096 * 4096 + ($1.kind == .directory ? 4096 : 0) }
    }
}
