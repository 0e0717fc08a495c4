import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Applying a patch (from a result, so from someone else) to the requester's directory: what
/// `git apply` applies, checked first as a whole, then written so that a refusal leaves nothing
/// behind and the count reported is what landed.
extension WorkspacePatch {
    /// What applying did.
    public struct Applied: Sendable {
        public var written: [String]
        public var deleted: [String]
    }

    /// One path's change, its sections joined: a change of kind (file to link and back) is a
    /// deletion and an addition of the same path.
    struct PathChange {
        var path: String
        /// The blob id and kind that must be there now; nil for an addition.
        var expected: (id: String, isLink: Bool)?
        /// The sections that make the new contents (the addition's when the kind changes).
        var source: FilePatch
        /// What will be there: nil for a deletion.
        var result: (contents: Data, isLink: Bool, executable: Bool)?
    }

    /// Applies the patch to `directory`. Every change is checked first: its path stays inside
    /// (nothing inside `.git`, no link on the way), what is there now is what the patch was made
    /// against (its blob id), and every link the patch makes lands inside once the whole patch is
    /// applied (resolved as the kernel would, through the links already there); any refusal
    /// changes nothing. New contents are staged in a private directory under `directory`, then
    /// deletions, then renames into place.
    public func apply(to directory: URL) throws(WorkspaceError) -> Applied {
        let root = directory.standardizedFileURL.path
        let disk = DiskView(root: root)
        var changes = try Self.changes(Self.parse(data, maxFiles: 1_000_000).1)
        let byPath = Dictionary(changes.enumerated().map { ($1.path, $0) }) { first, _ in first }
        let deletions = Set(changes.filter { $0.source.isDeleted }.map(\.path))
        var conflicts: [String] = []
        for index in changes.indices {
            let change = changes[index]
            let writes = !change.source.isDeleted
            for ancestor in Self.ancestors(of: change.path) {
                if writes, let other = byPath[ancestor], !changes[other].source.isDeleted {
                    throw WorkspaceError(
                        .conflict, "the patch writes \(change.path) below \(ancestor), which it makes a file or link")
                }
                switch disk.node(at: ancestor) {
                case .absent, .directory: continue
                default:
                    guard writes, deletions.contains(ancestor) else {
                        throw WorkspaceError(
                            .conflict,
                            "\(change.path) lies below \(ancestor), which is not a directory here: refused")
                    }
                }
            }
            let current = disk.node(at: change.path)
            if let expected = change.expected {
                let here: Data?
                switch current {
                case .file where !expected.isLink: here = disk.contents(of: change.path)
                case .link(let target) where expected.isLink: here = Data(target.utf8)
                case .absent:
                    conflicts.append("\(change.path) (missing here)")
                    continue
                default: here = nil
                }
                guard let here, GitObjects.blobID(here) == expected.id else {
                    conflicts.append("\(change.path) (changed since the job was sent)")
                    continue
                }
                if writes { changes[index].result = try Self.newContents(change.source, from: here) }
            } else {
                switch current {
                case .absent: break
                case .directory where disk.holdsOnly(deletions, below: change.path): break
                default:
                    conflicts.append("\(change.path) (exists here; the patch adds it)")
                    continue
                }
                changes[index].result = try Self.newContents(change.source, from: Data())
            }
        }
        if !conflicts.isEmpty {
            throw WorkspaceError(
                .conflict,
                "the directory changed since the job was sent; nothing was applied: "
                    + conflicts.joined(separator: ", "))
        }
        try Self.checkLinks(changes, byPath: byPath, disk: disk)
        return try Self.write(changes, root: root, disk: disk)
    }

    /// Joins each path's sections; `parse` let a path appear twice only as a deletion followed
    /// by an addition.
    static func changes(_ sections: [FilePatch]) -> [PathChange] {
        var changes: [PathChange] = []
        var byPath: [String: Int] = [:]
        for section in sections {
            let expected = section.isNew ? nil : section.oldID.map { ($0, section.oldMode == "120000") }
            if let earlier = byPath[section.path] {
                changes[earlier].source = section
            } else {
                byPath[section.path] = changes.count
                changes.append(PathChange(path: section.path, expected: expected, source: section))
            }
        }
        return changes
    }

    /// The contents a section makes of `old`, held to the section's new blob id.
    static func newContents(_ file: FilePatch, from old: Data) throws(WorkspaceError) -> (
        contents: Data, isLink: Bool, executable: Bool
    ) {
        var contents = file.isNew ? Data() : old
        if let literal = file.literal {
            contents = literal
        } else if !file.hunks.isEmpty {
            contents = try Self.applyHunks(file.hunks, to: contents, path: file.path)
        }
        guard GitObjects.blobID(contents) == file.newID else {
            throw WorkspaceError(.badPatch, "\(file.path): the patched contents do not match the patch's blob id")
        }
        let mode = file.newMode ?? "100644"
        return (contents, mode == "120000", mode == "100755")
    }

    /// Every link the patch makes must land inside, and outside `.git`, in the tree as it will
    /// be: the patch's own entries over what the directory holds now.
    static func checkLinks(_ changes: [PathChange], byPath: [String: Int], disk: DiskView) throws(WorkspaceError) {
        let implied = Set(changes.filter { $0.result != nil }.flatMap { Self.ancestors(of: $0.path) })
        var resolver = LinkResolver { path in
            if let index = byPath[path] {
                guard let result = changes[index].result else { return .absent }
                return result.isLink ? .link(String(decoding: result.contents, as: UTF8.self)) : .file
            }
            if implied.contains(path) { return .directory }
            // Nothing is below what the patch deletes or makes a file or link.
            if Self.ancestors(of: path).contains(where: { byPath[$0] != nil }) { return .absent }
            return disk.node(at: path).pathNode
        }
        for change in changes {
            guard let result = change.result, result.isLink else { continue }
            let target = String(decoding: result.contents, as: UTF8.self)
            if let refusal = resolver.resolve(link: change.path, target: target).refusal {
                throw WorkspaceError(
                    .conflict,
                    "the patch makes \(change.path) a link that \(refusal) (\(target.debugDescription)): refused")
            }
        }
    }

    /// Stages, deletes, renames. Nothing the directory holds is touched until every new file is
    /// staged; after that, what is reported is what landed.
    static func write(_ changes: [PathChange], root: String, disk: DiskView) throws(WorkspaceError) -> Applied {
        let staging = root + "/.cmm-apply-" + UUID().uuidString.prefix(8)
        guard mkdir(staging, 0o700) == 0 else {
            throw WorkspaceError(.io, "cannot make a staging directory in \(root): \(String(cString: strerror(errno)))")
        }
        defer { Self.removeStaging(staging) }
        var staged: [(temporary: String, change: PathChange)] = []
        for (number, change) in changes.enumerated() {
            guard let result = change.result else { continue }
            let temporary = staging + "/\(number)"
            if result.isLink {
                guard symlink(String(decoding: result.contents, as: UTF8.self), temporary) == 0 else {
                    throw WorkspaceError(
                        .io, "cannot make the link \(change.path): \(String(cString: strerror(errno)))")
                }
            } else {
                guard FileManager.default.createFile(atPath: temporary, contents: result.contents) else {
                    throw WorkspaceError(.io, "cannot write \(change.path)")
                }
                chmod(temporary, result.executable ? 0o755 : 0o644)
            }
            staged.append((temporary, change))
        }
        var applied = Applied(written: [], deleted: [])
        var failures: [String] = []
        var needed = Set<String>()
        for item in staged { needed.formUnion(Self.ancestors(of: item.change.path)) }
        for change in changes where change.source.isDeleted {
            if unlink(root + "/" + change.path) == 0 {
                applied.deleted.append(change.path)
            } else {
                failures.append("\(change.path) (not deleted: \(String(cString: strerror(errno))))")
            }
        }
        // Directories the deletions emptied go, as git removes them, unless something new
        // lands below them; a directory that a file or link replaces goes whole (it held only
        // what the patch deleted, and empty directories).
        for change in changes where change.source.isDeleted {
            for ancestor in Self.ancestors(of: change.path).reversed() where !needed.contains(ancestor) {
                if rmdir(root + "/" + ancestor) != 0 { break }
            }
        }
        for item in staged where disk.node(at: item.change.path) == .directory {
            disk.removeEmptyDirectories(item.change.path)
        }
        for item in staged {
            let target = root + "/" + item.change.path
            do throws(WorkspaceError) {
                try Self.makeDirectories(for: item.change.path, root: root)
                guard rename(item.temporary, target) == 0 else {
                    throw WorkspaceError(.io, String(cString: strerror(errno)))
                }
                applied.written.append(item.change.path)
            } catch {
                failures.append("\(item.change.path) (not written: \(error.message))")
            }
        }
        if !failures.isEmpty {
            throw WorkspaceError(
                .io,
                "applied in part: \(applied.written.count) written, \(applied.deleted.count) deleted; "
                    + failures.joined(separator: ", "))
        }
        return applied
    }

    static func removeStaging(_ staging: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: staging)) ?? [] {
            unlink(staging + "/" + name)
        }
        rmdir(staging)
    }

    /// "a", "a/b" for "a/b/c": the directories on the way, shortest first.
    static func ancestors(of path: String) -> [String] {
        var ancestors: [String] = []
        var index = path.startIndex
        while let slash = path[index...].firstIndex(of: "/") {
            ancestors.append(String(path[..<slash]))
            index = path.index(after: slash)
        }
        return ancestors
    }

    static func makeDirectories(for path: String, root: String) throws(WorkspaceError) {
        for ancestor in Self.ancestors(of: path) {
            let absolute = root + "/" + ancestor
            if mkdir(absolute, 0o755) != 0, errno != EEXIST {
                throw WorkspaceError(
                    .io, "cannot make the directory \(ancestor): \(String(cString: strerror(errno)))")
            }
        }
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

/// The requester's directory as applying sees it: a path is looked at only through real
/// directories (`lstat` on each one on the way), so no link already there is ever followed.
final class DiskView {
    enum Node: Equatable {
        case absent
        case directory
        case file
        case link(String)
        /// A FIFO, a device or a socket: nothing a patch may replace.
        case other

        var pathNode: PathNode {
            switch self {
            case .absent: .absent
            case .directory: .directory
            case .file, .other: .file
            case .link(let target): .link(target)
            }
        }
    }

    let root: String
    private var nodes: [String: Node] = [:]

    init(root: String) {
        self.root = root
    }

    func node(at path: String) -> Node {
        if let known = nodes[path] { return known }
        var node = Node.absent
        if WorkspacePatch.ancestors(of: path).allSatisfy({ self.node(at: $0) == .directory }) {
            var info = stat()
            if lstat(root + "/" + path, &info) == 0 {
                switch info.st_mode & S_IFMT {
                case S_IFDIR: node = .directory
                case S_IFREG: node = .file
                case S_IFLNK:
                    node =
                        (try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + path)).map {
                            .link($0)
                        } ?? .other
                default: node = .other
                }
            }
        }
        nodes[path] = node
        return node
    }

    func contents(of path: String) -> Data? {
        FileManager.default.contents(atPath: root + "/" + path)
    }

    /// Whether everything below the directory `path` that is not a directory is in `paths`
    /// (what the patch deletes): it stops at the first thing that is not.
    func holdsOnly(_ paths: Set<String>, below path: String) -> Bool {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root + "/" + path) else { return false }
        for name in names {
            let child = path + "/" + name
            switch node(at: child) {
            case .directory: if !holdsOnly(paths, below: child) { return false }
            default: if !paths.contains(child) { return false }
            }
        }
        return true
    }

    /// Removes the directory `path` and the empty directories below it, deepest first.
    func removeEmptyDirectories(_ path: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/" + path)) ?? [] {
            var info = stat()
            if lstat(root + "/" + path + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
                removeEmptyDirectories(path + "/" + name)
            }
        }
        rmdir(root + "/" + path)
    }
}
