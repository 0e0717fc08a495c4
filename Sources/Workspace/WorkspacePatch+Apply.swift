import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reading a patch back (from a result, so from someone else) and applying it to a directory.
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
    }

    /// Reads a patch made by `make`; a patch that is malformed, or names a path that is absolute,
    /// climbs out or lies inside `.git`, is refused whole.
    public init(parsing data: Data, maxFiles: Int = 100_000) throws(WorkspaceError) {
        let (baseHash, patches) = try Self.parse(data, maxFiles: maxFiles)
        self.init(
            data: data, baseHash: baseHash,
            files: patches.map {
                FileChange(
                    path: $0.path, kind: $0.isNew ? .added : $0.isDeleted ? .deleted : .modified,
                    linesAdded: $0.hunks.reduce(0) { $0 + $1.lines.count { $0.kind == UInt8(ascii: "+") } },
                    linesRemoved: $0.hunks.reduce(0) { $0 + $1.lines.count { $0.kind == UInt8(ascii: "-") } },
                    binary: $0.literal != nil)
            })
    }

    static func parse(_ data: Data, maxFiles: Int) throws(WorkspaceError) -> (String, [FilePatch]) {
        var lines = data.split(separator: 0x0a, omittingEmptySubsequences: false).map { Data($0) }
        if lines.last?.isEmpty == true { lines.removeLast() }
        var baseHash = ""
        var patches: [FilePatch] = []
        var index = 0
        func text(_ line: Data) -> String { String(decoding: line, as: UTF8.self) }
        while index < lines.count {
            let line = text(lines[index])
            if line.hasPrefix(Self.headerPrefix) {
                baseHash = String(line.dropFirst(Self.headerPrefix.count))
                index += 1
                continue
            }
            guard line.hasPrefix("diff --git a/") else {
                throw WorkspaceError(.badPatch, "line \(index + 1) of the patch is not part of a file's section")
            }
            let rest = line.dropFirst("diff --git a/".count)
            let half = (rest.utf8.count - 3) / 2
            let path = String(decoding: rest.utf8.prefix(half), as: UTF8.self)
            guard rest.utf8.count >= 3, rest == path + " b/" + path else {
                throw WorkspaceError(
                    .badPatch, "line \(index + 1) names two different paths (renames are not made here)")
            }
            try WorkspaceTree.check(path: path)
            guard !Self.isGitInternal(path) else {
                throw WorkspaceError(.conflict, "the patch changes \(path), inside .git: refused")
            }
            var file = FilePatch(path: path)
            index += 1
            while index < lines.count, !text(lines[index]).hasPrefix("diff --git ") {
                let line = text(lines[index])
                index += 1
                if line.hasPrefix("new file mode ") {
                    file.isNew = true
                    file.newMode = String(line.dropFirst(14))
                } else if line.hasPrefix("deleted file mode ") {
                    file.isDeleted = true
                    file.oldMode = String(line.dropFirst(18))
                } else if line.hasPrefix("old mode ") {
                    file.oldMode = String(line.dropFirst(9))
                } else if line.hasPrefix("new mode ") {
                    file.newMode = String(line.dropFirst(9))
                } else if line.hasPrefix("index ") {
                    let ids = line.dropFirst(6).split(separator: " ")[0].split(
                        separator: ".", omittingEmptySubsequences: true)
                    guard ids.count == 2, ids.allSatisfy({ $0.count == 40 && $0.allSatisfy(\.isHexDigit) }) else {
                        throw WorkspaceError(.badPatch, "\(path): the index line lacks full blob ids")
                    }
                    file.oldID = String(ids[0])
                    file.newID = String(ids[1])
                    if file.oldMode == nil, let mode = line.split(separator: " ").dropFirst(2).first {
                        file.oldMode = String(mode)
                        file.newMode = String(mode)
                    }
                } else if line.hasPrefix("--- ") || line.hasPrefix("+++ ") {
                    continue
                } else if line == "GIT binary patch" {
                    guard index < lines.count, text(lines[index]).hasPrefix("literal "),
                        let size = Int(text(lines[index]).dropFirst(8)), size >= 0
                    else { throw WorkspaceError(.badPatch, "\(path): only literal binary patches are read") }
                    index += 1
                    var encoded: [Substring] = []
                    while index < lines.count, !lines[index].isEmpty {
                        encoded.append(Substring(text(lines[index])))
                        index += 1
                    }
                    index += 1
                    // A reverse hunk may follow; it is not needed.
                    if index < lines.count,
                        text(lines[index]).hasPrefix("literal ") || text(lines[index]).hasPrefix("delta ")
                    {
                        index += 1
                        while index < lines.count, !lines[index].isEmpty { index += 1 }
                        index += 1
                    }
                    file.literal = try GitObjects.unzlibStored(
                        GitObjects.decodeBase85(lines: encoded), expectedSize: size)
                } else if line.hasPrefix("@@ -") {
                    let header = line.split(separator: " ")
                    guard header.count >= 3, let start = Int(header[1].dropFirst().split(separator: ",")[0]) else {
                        throw WorkspaceError(.badPatch, "\(path): a hunk header is malformed")
                    }
                    var hunk = FilePatch.Hunk(oldStart: start, lines: [])
                    while index < lines.count, let first = lines[index].first,
                        first == UInt8(ascii: " ") || first == UInt8(ascii: "-") || first == UInt8(ascii: "+")
                            || first == UInt8(ascii: "\\")
                    {
                        if first == UInt8(ascii: "\\") {
                            if !hunk.lines.isEmpty { hunk.lines[hunk.lines.count - 1].noNewline = true }
                        } else {
                            hunk.lines.append((first, Data(lines[index].dropFirst()), false))
                        }
                        index += 1
                    }
                    file.hunks.append(hunk)
                } else if line.isEmpty {
                    continue
                } else {
                    throw WorkspaceError(
                        .badPatch, "\(path): a line of the patch is not understood: \(line.prefix(60))")
                }
            }
            patches.append(file)
            guard patches.count <= maxFiles else {
                throw WorkspaceError(.tooLarge, "the patch changes more than \(maxFiles) files")
            }
        }
        return (baseHash, patches)
    }

    /// What applying did.
    public struct Applied: Sendable {
        public var written: [String]
        public var deleted: [String]
    }

    /// Applies the patch to `directory`. Every file is checked first: its path stays inside
    /// (no `..`, nothing inside `.git`, no link on the way), and what is there now is what the
    /// patch was made against (its blob id); any refusal changes nothing. Then new contents are
    /// written beside their files and renamed into place.
    public func apply(to directory: URL) throws(WorkspaceError) -> Applied {
        let root = directory.standardizedFileURL.path
        let (_, patches) = try Self.parse(data, maxFiles: 1_000_000)
        struct Planned {
            var path: String
            var contents: Data?
            var symlink: Bool
            var executable: Bool
        }
        var plan: [Planned] = []
        var conflicts: [String] = []
        for file in patches {
            let absolute = root + "/" + file.path
            try Self.checkAncestors(of: file.path, root: root)
            var info = stat()
            let exists = lstat(absolute, &info) == 0
            let current: Data?
            if exists {
                switch info.st_mode & S_IFMT {
                case S_IFREG: current = FileManager.default.contents(atPath: absolute)
                case S_IFLNK:
                    current = (try? FileManager.default.destinationOfSymbolicLink(atPath: absolute)).map {
                        Data($0.utf8)
                    }
                default: throw WorkspaceError(.conflict, "\(file.path) is neither a file nor a link here: refused")
                }
            } else {
                current = nil
            }
            if file.isNew {
                if exists { conflicts.append("\(file.path) (exists here; the patch adds it)") }
            } else if current == nil {
                conflicts.append("\(file.path) (missing here)")
                continue
            } else if let oldID = file.oldID, GitObjects.blobID(current!) != oldID {
                conflicts.append("\(file.path) (changed since the job was sent)")
                continue
            }
            if file.isDeleted {
                plan.append(Planned(path: file.path, contents: nil, symlink: false, executable: false))
                continue
            }
            let mode = file.newMode ?? file.oldMode ?? "100644"
            guard ["100644", "100755", "120000"].contains(mode) else {
                throw WorkspaceError(.badPatch, "\(file.path): mode \(mode) is not a file or link mode")
            }
            var contents = current ?? Data()
            if let literal = file.literal {
                contents = literal
            } else if !file.hunks.isEmpty {
                contents = try Self.applyHunks(file.hunks, to: contents, path: file.path)
            }
            if let newID = file.newID, GitObjects.blobID(contents) != newID {
                throw WorkspaceError(.badPatch, "\(file.path): the patched contents do not match the patch's blob id")
            }
            if mode == "120000" {
                let target = String(decoding: contents, as: UTF8.self)
                guard WorkspaceTree.resolve(link: file.path, target: target) != nil else {
                    throw WorkspaceError(
                        .conflict, "the patch makes \(file.path) a link pointing outside (\(target)): refused")
                }
            }
            plan.append(
                Planned(path: file.path, contents: contents, symlink: mode == "120000", executable: mode == "100755"))
        }
        if !conflicts.isEmpty {
            throw WorkspaceError(
                .conflict,
                "the directory changed since the job was sent; nothing was applied: "
                    + conflicts.joined(separator: ", "))
        }
        // Phase one: everything new is written beside its place; a failure removes it all.
        var staged: [(temporary: String, path: String)] = []
        var created: [String] = []
        do {
            for item in plan {
                guard let contents = item.contents else { continue }
                let absolute = root + "/" + item.path
                let parent = (absolute as NSString).deletingLastPathComponent
                created += try Self.makeDirectories(parent, root: root)
                let temporary = parent + "/.cmm-apply-\(UUID().uuidString.prefix(8))"
                if item.symlink {
                    guard symlink(String(decoding: contents, as: UTF8.self), temporary) == 0 else {
                        throw WorkspaceError(
                            .io, "cannot make the link \(item.path): \(String(cString: strerror(errno)))")
                    }
                } else {
                    guard FileManager.default.createFile(atPath: temporary, contents: contents) else {
                        throw WorkspaceError(.io, "cannot write \(item.path)")
                    }
                    chmod(temporary, item.executable ? 0o755 : 0o644)
                }
                staged.append((temporary, absolute))
            }
        } catch {
            for item in staged { unlink(item.temporary) }
            for directory in created.reversed() { rmdir(directory) }
            throw error as! WorkspaceError
        }
        // Phase two: renames and removals, which do not fail for want of space.
        for item in staged { rename(item.temporary, item.path) }
        var deleted: [String] = []
        for item in plan where item.contents == nil {
            unlink(root + "/" + item.path)
            deleted.append(item.path)
        }
        return Applied(written: plan.filter { $0.contents != nil }.map(\.path), deleted: deleted)
    }

    /// Every directory on the way to `path` must be a real directory inside `root`, not a link.
    static func checkAncestors(of path: String, root: String) throws(WorkspaceError) {
        var current = root
        for component in path.split(separator: "/").dropLast() {
            current += "/" + component
            var info = stat()
            if lstat(current, &info) != 0 { return }  // made when applying
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw WorkspaceError(
                    .conflict,
                    "\(path) lies below \(current.dropFirst(root.count + 1)), which is not a directory here: refused")
            }
        }
    }

    static func makeDirectories(_ directory: String, root: String) throws(WorkspaceError) -> [String] {
        var created: [String] = []
        var current = root
        for component in directory.dropFirst(root.count).split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) == 0 {
                created.append(current)
            } else if errno != EEXIST {
                throw WorkspaceError(.io, "cannot make the directory \(current): \(String(cString: strerror(errno)))")
            }
        }
        return created
    }

    static func applyHunks(_ hunks: [FilePatch.Hunk], to old: Data, path: String) throws(WorkspaceError) -> Data {
        let (lines, finalNewline) = UnifiedHunks.lines(old)
        var output: [(Data, Bool)] = []
        var position = 0
        for hunk in hunks {
            let start = max(0, hunk.oldStart - (hunk.lines.contains { $0.kind != UInt8(ascii: "+") } ? 1 : 0))
            guard start >= position, start <= lines.count else {
                throw WorkspaceError(.badPatch, "\(path): a hunk does not fit the file")
            }
            while position < start {
                output.append((lines[position], true))
                position += 1
            }
            for line in hunk.lines {
                switch line.kind {
                case UInt8(ascii: "+"):
                    output.append((line.text, !line.noNewline))
                default:
                    guard position < lines.count, lines[position] == line.text else {
                        throw WorkspaceError(.conflict, "\(path): the file does not match the patch's context")
                    }
                    if line.kind == UInt8(ascii: " ") { output.append((line.text, !line.noNewline)) }
                    position += 1
                }
            }
        }
        while position < lines.count {
            output.append((lines[position], position < lines.count - 1 || finalNewline))
            position += 1
        }
        var data = Data()
        for (line, newline) in output {
            data.append(line)
            if newline { data.append(0x0a) }
        }
        return data
    }
}
