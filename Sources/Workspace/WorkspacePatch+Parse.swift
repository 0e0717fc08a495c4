import Foundation

/// Reading a patch back: from a result, so from someone else, who may be hostile. Every number
/// is bounded before it is used, every line is matched whole, and a hunk is read by the counts
/// its header gives; anything else is refused with the line that was wrong.
extension WorkspacePatch {
    /// One file's part of a patch, read back.
    struct FilePatch {
        var path: String
        var oldMode: String?
        var newMode: String?
        var oldID: String?
        var newID: String?
        var isNew = false
        var isDeleted = false
        var hunks: [Hunk] = []
        var literal: Data?

        struct Hunk {
            var oldStart: Int
            var lines: [(kind: UInt8, text: Data, noNewline: Bool)]
        }

        var kind: FileChange.Kind { isNew ? .added : isDeleted ? .deleted : .modified }
    }

    /// The modes a workspace's files and links can have.
    static let fileModes: Set<String> = ["100644", "100755", "120000"]

    /// The largest line number or count a hunk header may name: far past any file a workspace
    /// holds, far from overflowing.
    static let maxLineNumber = 1 << 30

    /// Reads a patch made by `make` (or by `git diff --binary --full-index` of the same trees); a
    /// patch that is malformed, or names a path that is absolute, climbs out or lies inside
    /// `.git`, is refused whole.
    public init(parsing data: Data, maxFiles: Int = 100_000) throws(WorkspaceError) {
        let (baseHash, patches) = try Self.parse(data, maxFiles: maxFiles)
        self.init(
            data: data, baseHash: baseHash,
            files: patches.map {
                FileChange(
                    path: $0.path, kind: $0.kind,
                    linesAdded: $0.hunks.reduce(0) { $0 + $1.lines.count { $0.kind == UInt8(ascii: "+") } },
                    linesRemoved: $0.hunks.reduce(0) { $0 + $1.lines.count { $0.kind == UInt8(ascii: "-") } },
                    binary: $0.literal != nil)
            })
    }

    static func parse(_ data: Data, maxFiles: Int) throws(WorkspaceError) -> (String, [FilePatch]) {
        var reader = PatchLines(data)
        var baseHash = ""
        var patches: [FilePatch] = []
        var sections: [String: [FileChange.Kind]] = [:]
        while let line = reader.peek() {
            if line.starts(with: Self.headerPrefix.utf8) {
                baseHash = String(decoding: line.dropFirst(Self.headerPrefix.utf8.count), as: UTF8.self)
                reader.advance()
                continue
            }
            let file = try Self.section(&reader)
            // A path appears once, or twice when its kind changes (git writes a deletion, then an
            // addition); anything else could write one path twice.
            let earlier = sections[file.path, default: []]
            guard earlier.isEmpty || (earlier == [.deleted] && file.isNew) else {
                throw WorkspaceError(.badPatch, "the patch names \(file.path) more than once")
            }
            sections[file.path, default: []].append(file.kind)
            patches.append(file)
            guard patches.count <= maxFiles else {
                throw WorkspaceError(.tooLarge, "the patch changes more than \(maxFiles) files")
            }
        }
        return (baseHash, patches)
    }

    /// One `diff --git` section, from its first line to the next section's.
    static func section(_ reader: inout PatchLines) throws(WorkspaceError) -> FilePatch {
        let number = reader.lineNumber
        guard let first = reader.next(), let path = Self.sectionPath(first) else {
            throw WorkspaceError(
                .badPatch, "line \(number) of the patch does not start a file's section (diff --git a/PATH b/PATH)")
        }
        try WorkspaceTree.check(path: path)
        guard !Self.isGitInternal(path) else {
            throw WorkspaceError(.conflict, "the patch changes \(path), inside .git: refused")
        }
        var file = FilePatch(path: path)
        func mode(_ line: Data, after prefix: String) throws(WorkspaceError) -> String {
            let mode = String(decoding: line.dropFirst(prefix.utf8.count), as: UTF8.self)
            guard Self.fileModes.contains(mode) else {
                throw WorkspaceError(
                    .badPatch, "\(path): mode \(mode.prefix(20).debugDescription) is not one of 100644, 100755, 120000")
            }
            return mode
        }
        while let line = reader.peek(), !line.starts(with: "diff --git ".utf8),
            !line.starts(with: Self.headerPrefix.utf8)
        {
            let number = reader.lineNumber
            reader.advance()
            if line.starts(with: "new file mode ".utf8) {
                file.isNew = true
                file.newMode = try mode(line, after: "new file mode ")
            } else if line.starts(with: "deleted file mode ".utf8) {
                file.isDeleted = true
                file.oldMode = try mode(line, after: "deleted file mode ")
            } else if line.starts(with: "old mode ".utf8) {
                file.oldMode = try mode(line, after: "old mode ")
            } else if line.starts(with: "new mode ".utf8) {
                file.newMode = try mode(line, after: "new mode ")
            } else if line.starts(with: "index ".utf8) {
                guard let index = Self.indexLine(line) else {
                    throw WorkspaceError(.badPatch, "\(path): the index line (line \(number)) lacks two full blob ids")
                }
                file.oldID = index.old
                file.newID = index.new
                if let shared = index.mode {
                    file.oldMode = file.oldMode ?? shared
                    file.newMode = file.newMode ?? shared
                }
            } else if line.starts(with: "--- ".utf8) || line.starts(with: "+++ ".utf8) || line.isEmpty {
                continue
            } else if line.elementsEqual("GIT binary patch".utf8) {
                guard file.literal == nil, file.hunks.isEmpty else {
                    throw WorkspaceError(.badPatch, "\(path): a section holds more than one change")
                }
                file.literal = try Self.binary(&reader, path: path, patchBytes: reader.byteCount)
            } else if line.starts(with: "@@ -".utf8) {
                guard file.literal == nil else {
                    throw WorkspaceError(.badPatch, "\(path): a section holds more than one change")
                }
                file.hunks.append(try Self.hunk(header: line, &reader, path: path, number: number))
            } else {
                throw WorkspaceError(
                    .badPatch,
                    "\(path): line \(number) of the patch is not understood: "
                        + String(decoding: line.prefix(60), as: UTF8.self).debugDescription)
            }
        }
        try Self.checkComplete(file)
        return file
    }

    /// What every section must say: both blob ids (so applying can tell whether the file is
    /// still the one the job started from), and the modes on both sides.
    static func checkComplete(_ file: FilePatch) throws(WorkspaceError) {
        let path = file.path
        guard let oldID = file.oldID, let newID = file.newID else {
            throw WorkspaceError(.badPatch, "\(path): the section has no index line naming the old and new blob ids")
        }
        guard !(file.isNew && file.isDeleted) else {
            throw WorkspaceError(.badPatch, "\(path): the section both adds and deletes the file")
        }
        if file.isNew {
            guard oldID == GitObjects.zeroID, file.newMode != nil else {
                throw WorkspaceError(.badPatch, "\(path): a new file needs a mode and no old blob id")
            }
        } else if file.isDeleted {
            guard newID == GitObjects.zeroID, oldID != GitObjects.zeroID, file.oldMode != nil else {
                throw WorkspaceError(.badPatch, "\(path): a deleted file needs its mode and its old blob id")
            }
        } else {
            guard oldID != GitObjects.zeroID, newID != GitObjects.zeroID, file.oldMode != nil, file.newMode != nil
            else {
                throw WorkspaceError(.badPatch, "\(path): a changed file needs its modes and both blob ids")
            }
        }
    }

    /// `diff --git a/PATH b/PATH`, the same path twice (renames are not made here).
    static func sectionPath(_ line: Data) -> String? {
        let prefix = "diff --git a/".utf8
        guard line.starts(with: prefix) else { return nil }
        let rest = [UInt8](line.dropFirst(prefix.count))
        let separator = Array(" b/".utf8)
        guard rest.count > separator.count, (rest.count - separator.count) % 2 == 0 else { return nil }
        let half = (rest.count - separator.count) / 2
        guard rest[half..<half + separator.count].elementsEqual(separator),
            rest[..<half].elementsEqual(rest[(half + separator.count)...])
        else { return nil }
        return String(validating: rest[..<half], as: UTF8.self)
    }

    /// `index OLD..NEW` or `index OLD..NEW MODE`, with full 40-digit ids.
    static func indexLine(_ line: Data) -> (old: String, new: String, mode: String?)? {
        let text = String(decoding: line.dropFirst("index ".utf8.count), as: UTF8.self)
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else { return nil }
        let ids = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        guard ids.count == 3, ids[1].isEmpty,
            [ids[0], ids[2]].allSatisfy({ $0.utf8.count == 40 && $0.utf8.allSatisfy(Self.isLowerHex) })
        else { return nil }
        let mode = parts.count == 2 ? String(parts[1]) : nil
        if let mode, !Self.fileModes.contains(mode) { return nil }
        return (String(ids[0]), String(ids[2]), mode)
    }

    static func isLowerHex(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }

    /// A hunk: `@@ -OLD[,COUNT] +NEW[,COUNT] @@[ heading]`, then exactly the lines its counts
    /// name (`\ No newline at end of file` marks the line before it).
    static func hunk(header: Data, _ reader: inout PatchLines, path: String, number: Int) throws(WorkspaceError)
        -> FilePatch.Hunk
    {
        guard let ranges = Self.hunkRanges(header) else {
            throw WorkspaceError(.badPatch, "\(path): the hunk header on line \(number) is malformed")
        }
        var hunk = FilePatch.Hunk(oldStart: ranges.oldStart, lines: [])
        var oldLeft = ranges.oldCount
        var newLeft = ranges.newCount
        while oldLeft > 0 || newLeft > 0 {
            guard let line = reader.next() else {
                throw WorkspaceError(.badPatch, "\(path): the hunk on line \(number) is cut short")
            }
            // An empty line is a context line whose space an editor took off, as git reads it.
            let kind = line.first ?? UInt8(ascii: " ")
            switch kind {
            case UInt8(ascii: " "):
                oldLeft -= 1
                newLeft -= 1
            case UInt8(ascii: "-"): oldLeft -= 1
            case UInt8(ascii: "+"): newLeft -= 1
            case UInt8(ascii: "\\"):
                if !hunk.lines.isEmpty { hunk.lines[hunk.lines.count - 1].noNewline = true }
                continue
            default:
                throw WorkspaceError(
                    .badPatch, "\(path): the hunk on line \(number) has fewer lines than its header says")
            }
            guard oldLeft >= 0, newLeft >= 0 else {
                throw WorkspaceError(
                    .badPatch, "\(path): the hunk on line \(number) has more lines than its header says")
            }
            hunk.lines.append((kind, Data(line.dropFirst()), false))
        }
        if let marker = reader.peek(), marker.first == UInt8(ascii: "\\") {
            reader.advance()
            if !hunk.lines.isEmpty { hunk.lines[hunk.lines.count - 1].noNewline = true }
        }
        return hunk
    }

    /// The numbers of a hunk header, each bounded.
    static func hunkRanges(_ header: Data) -> (oldStart: Int, oldCount: Int, newStart: Int, newCount: Int)? {
        let fields = String(decoding: header, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 4, fields[0] == "@@", fields[3] == "@@",
            fields[1].first == "-", fields[2].first == "+",
            let old = Self.range(fields[1].dropFirst()), let new = Self.range(fields[2].dropFirst())
        else { return nil }
        return (old.start, old.count, new.start, new.count)
    }

    /// `START` or `START,COUNT`: plain decimal digits, no sign, at most `maxLineNumber`.
    static func range(_ text: Substring) -> (start: Int, count: Int)? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else { return nil }
        guard let start = Self.decimal(parts[0].utf8) else { return nil }
        guard parts.count == 2 else { return (start, 1) }
        guard let count = Self.decimal(parts[1].utf8) else { return nil }
        return (start, count)
    }

    /// Plain decimal digits, no sign, at most `maxLineNumber`.
    static func decimal(_ digits: some Collection<UInt8>) -> Int? {
        guard !digits.isEmpty, digits.count <= 10 else { return nil }
        var value = 0
        for digit in digits {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
            value = value * 10 + Int(digit - UInt8(ascii: "0"))
        }
        return value <= Self.maxLineNumber ? value : nil
    }

    /// `literal SIZE` and its base85 lines up to an empty line; a reverse hunk after it is
    /// skipped. The size is a claim: it is held to the patch's own length before anything is
    /// made of that size.
    static func binary(_ reader: inout PatchLines, path: String, patchBytes: Int) throws(WorkspaceError) -> Data {
        guard let line = reader.next(), line.starts(with: "literal ".utf8),
            let size = Self.decimal(line.dropFirst(8))
        else { throw WorkspaceError(.badPatch, "\(path): only literal binary patches are read") }
        guard size <= patchBytes else {
            throw WorkspaceError(
                .badPatch, "\(path): a binary patch claims \(size) bytes, more than the patch could carry")
        }
        var encoded: [Substring] = []
        while let line = reader.next(), !line.isEmpty {
            encoded.append(Substring(String(decoding: line, as: UTF8.self)))
        }
        if let next = reader.peek(), next.starts(with: "literal ".utf8) || next.starts(with: "delta ".utf8) {
            while let line = reader.next(), !line.isEmpty {}
        }
        return try GitObjects.unzlibStored(GitObjects.decodeBase85(lines: encoded), expectedSize: size)
    }
}

/// A patch's lines, one at a time, numbered from 1 for the errors.
struct PatchLines {
    private let lines: [Data]
    private var index = 0
    let byteCount: Int

    init(_ data: Data) {
        var lines = data.split(separator: 0x0a, omittingEmptySubsequences: false)
        if lines.last?.isEmpty == true { lines.removeLast() }
        self.lines = lines
        self.byteCount = data.count
    }

    var lineNumber: Int { index + 1 }

    func peek() -> Data? { index < lines.count ? lines[index] : nil }

    mutating func advance() { index += 1 }

    mutating func next() -> Data? {
        defer { if index < lines.count { index += 1 } }
        return peek()
    }
}
