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
        Self.removeStaleStaging(in: root)
        let disk = DiskView(root: root)
        var changes = try Self.changes(Self.parse(data, maxFiles: 1_000_000).1)
        try Self.checkDepth(changes)
        let byPath = Dictionary(changes.enumerated().map { (PathBytes.key($1.path), $0) }) { first, _ in first }
        let deletions = Set(changes.filter { $0.source.isDeleted }.map { PathBytes.key($0.path) })
        var conflicts: [String] = []
        for index in changes.indices {
            let change = changes[index]
            let writes = !change.source.isDeleted
            for ancestor in PathBytes.ancestors(of: change.path) {
                if writes, let other = byPath[PathBytes.key(ancestor)], !changes[other].source.isDeleted {
                    throw WorkspaceError(
                        .conflict, "the patch writes \(change.path) below \(ancestor), which it makes a file or link")
                }
                switch disk.node(at: ancestor) {
                case .absent, .directory: continue
                default:
                    guard writes, deletions.contains(PathBytes.key(ancestor)) else {
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
        let overlay = Overlay(changes: changes, byPath: byPath, disk: disk)
        // One resolver for the tree as it will be: what the patch's links resolve through is
        // resolved once for the directory's links too.
        var resolver = LinkResolver(lookup: overlay.node)
        try Self.checkLinks(changes, resolver: &resolver)
        try Self.checkExistingLinks(disk: disk, overlay: overlay, resolver: &resolver)
        return try Self.write(changes, root: root, disk: disk)
    }

    /// The most path bytes, summed over every directory on the way to every path, that one
    /// patch may make the applier look at: a hundred times what a large real patch needs, and a
    /// bound on the work of checking paths thousands of components deep.
    static let maxPathWork = 256 << 20

    static func checkDepth(_ changes: [PathChange]) throws(WorkspaceError) {
        var work = 0
        for change in changes {
            let bytes = change.path.utf8.count
            work += bytes * (change.path.utf8.count { $0 == PathBytes.slash } + 1)
            guard work <= maxPathWork else {
                throw WorkspaceError(
                    .tooLarge, "the patch's paths are too many and too deep to check (at \(change.path.prefix(80)))")
            }
        }
    }

    /// Joins each path's sections; `parse` let a path appear twice only as a deletion followed
    /// by an addition.
    static func changes(_ sections: [FilePatch]) -> [PathChange] {
        var changes: [PathChange] = []
        var byPath: [[UInt8]: Int] = [:]
        for section in sections {
            let expected = section.isNew ? nil : section.oldID.map { ($0, section.oldMode == "120000") }
            if let earlier = byPath[PathBytes.key(section.path)] {
                changes[earlier].source = section
            } else {
                byPath[PathBytes.key(section.path)] = changes.count
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
    static func checkLinks(_ changes: [PathChange], resolver: inout LinkResolver) throws(WorkspaceError) {
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

    /// A link the directory already holds may climb through what the patch makes (a link `a`
    /// made `.`, so that `a/x/../..` goes one level higher than before): every one of them that
    /// lands inside now must still land inside once the patch is applied.
    static func checkExistingLinks(disk: DiskView, overlay: Overlay, resolver after: inout LinkResolver)
        throws(WorkspaceError)
    {
        var before = LinkResolver { disk.node(at: $0).pathNode }
        for (path, target) in try disk.links() where overlay.keepsDiskEntry(path) {
            guard before.resolve(link: path, target: target).refusal == nil else { continue }
            if let refusal = after.resolve(link: path, target: target).refusal {
                throw WorkspaceError(
                    .conflict,
                    "the patch would make the link \(path) here (\(target.debugDescription)), which lands inside now, a link that \(refusal): refused"
                )
            }
        }
    }

    /// Stages, deletes, renames. Nothing the directory holds is touched until every new file is
    /// staged; after that, what is reported is what landed. Before each deletion, directory and
    /// rename the kernel's own view is asked (`realpath` of the parent, `lstat` of what `mkdir`
    /// found): a directory that resolves elsewhere than its path says (a link, a name that folds
    /// to another on a case-insensitive volume) stops the apply there.
    static func write(_ changes: [PathChange], root: String, disk: DiskView) throws(WorkspaceError) -> Applied {
        guard let rootReal = DiskView.realPath(root) else {
            throw WorkspaceError(.io, "cannot resolve \(root): \(String(cString: strerror(errno)))")
        }
        let staging = root + "/" + stagingPrefix + UUID().uuidString.prefix(8)
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
        var failure: String?
        func stop(_ path: String, _ why: String) { failure = failure ?? "\(path) (\(why))" }
        /// The kernel's word that `path`'s directory is where the path says it is.
        func parentIsWhereItSays(_ path: String) -> Bool {
            let expected = PathBytes.parent(path).map { rootReal + "/" + $0 } ?? rootReal
            return DiskView.realPath(PathBytes.parent(path).map { root + "/" + $0 } ?? root)?.utf8.elementsEqual(
                expected.utf8) == true
        }
        var needed = Set<[UInt8]>()
        for item in staged { needed.formUnion(PathBytes.ancestors(of: item.change.path).map(PathBytes.key)) }
        for change in changes where change.source.isDeleted && failure == nil {
            guard parentIsWhereItSays(change.path) else {
                stop(change.path, "its directory does not resolve to itself here")
                break
            }
            if unlink(root + "/" + change.path) == 0 {
                applied.deleted.append(change.path)
            } else {
                stop(change.path, "not deleted: \(String(cString: strerror(errno)))")
            }
        }
        // Directories the deletions emptied go, as git removes them, unless something new
        // lands below them; a directory that a file or link replaces goes whole (it held only
        // what the patch deleted, and empty directories).
        for change in changes where change.source.isDeleted && failure == nil {
            for ancestor in PathBytes.ancestors(of: change.path).reversed()
            where !needed.contains(PathBytes.key(ancestor)) {
                if rmdir(root + "/" + ancestor) != 0 { break }
            }
        }
        for item in staged where failure == nil && disk.node(at: item.change.path) == .directory {
            disk.removeEmptyDirectories(item.change.path)
        }
        for item in staged where failure == nil {
            do throws(WorkspaceError) {
                try Self.makeDirectories(for: item.change.path, root: root)
                guard parentIsWhereItSays(item.change.path) else {
                    throw WorkspaceError(.conflict, "its directory does not resolve to itself here")
                }
                guard rename(item.temporary, root + "/" + item.change.path) == 0 else {
                    throw WorkspaceError(.io, "not written: " + String(cString: strerror(errno)))
                }
                applied.written.append(item.change.path)
            } catch {
                stop(item.change.path, error.message)
            }
        }
        if let failure {
            throw WorkspaceError(
                .partial,
                "applied in part, then stopped at \(failure); written: "
                    + (applied.written.isEmpty ? "none" : applied.written.joined(separator: ", "))
                    + "; deleted: " + (applied.deleted.isEmpty ? "none" : applied.deleted.joined(separator: ", ")))
        }
        return applied
    }

    /// The name of the directory new contents are staged in, under the directory applied to.
    static let stagingPrefix = ".cmm-apply-"

    static func removeStaging(_ staging: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: staging)) ?? [] {
            unlink(staging + "/" + name)
        }
        rmdir(staging)
    }

    /// What an apply stopped by a kill left: its staging directories (they are this tool's own,
    /// and would otherwise go out with the next workspace).
    static func removeStaleStaging(in root: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        where name.utf8.starts(with: stagingPrefix.utf8) {
            var info = stat()
            guard lstat(root + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { continue }
            removeStaging(root + "/" + name)
        }
    }

    /// Makes the directories on the way to `path`; one that is there already must be a real
    /// directory (`lstat`), never a link `mkdir` would have followed.
    static func makeDirectories(for path: String, root: String) throws(WorkspaceError) {
        for ancestor in PathBytes.ancestors(of: path) {
            let absolute = root + "/" + ancestor
            if mkdir(absolute, 0o755) != 0 {
                guard errno == EEXIST else {
                    throw WorkspaceError(
                        .io, "cannot make the directory \(ancestor): \(String(cString: strerror(errno)))")
                }
                var info = stat()
                guard lstat(absolute, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                    throw WorkspaceError(.conflict, "\(ancestor) is not a directory here")
                }
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
/// directories (`lstat` of its parent first), so no link already there is ever followed.
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
    private var nodes: [[UInt8]: Node] = [:]

    init(root: String) {
        self.root = root
    }

    /// Each directory is looked at once, through its parent, so a path thousands of components
    /// deep costs its length, not its length squared.
    func node(at path: String) -> Node {
        let key = PathBytes.key(path)
        if let known = nodes[key] { return known }
        var node = Node.absent
        if PathBytes.parent(path).map({ self.node(at: $0) == .directory }) ?? true {
            var info = stat()
            if lstat(root + "/" + path, &info) == 0 {
                switch info.st_mode & S_IFMT {
                case S_IFDIR: node = .directory
                case S_IFREG: node = .file
                case S_IFLNK: node = Self.linkTarget(root + "/" + path).map { .link($0) } ?? .other
                default: node = .other
                }
            }
        }
        nodes[key] = node
        return node
    }

    /// A link's target as its bytes say (read as UTF-8, a byte that is not becomes U+FFFD: the
    /// slashes and dots that decide where it leads are kept).
    static func linkTarget(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &buffer, buffer.count)
        guard count >= 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    func contents(of path: String) -> Data? {
        FileManager.default.contents(atPath: root + "/" + path)
    }

    /// Whether everything below the directory `path` that is not a directory is in `paths`
    /// (what the patch deletes): it stops at the first thing that is not.
    func holdsOnly(_ paths: Set<[UInt8]>, below path: String) -> Bool {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root + "/" + path) else { return false }
        for name in names {
            let child = path + "/" + name
            switch node(at: child) {
            case .directory: if !holdsOnly(paths, below: child) { return false }
            default: if !paths.contains(PathBytes.key(child)) { return false }
            }
        }
        return true
    }

    /// The most entries `links()` looks at before it refuses: far past any real work tree.
    static let maxEntries = 2_000_000

    /// Every link the directory holds (outside `.git`), with its target, links not followed.
    func links() throws(WorkspaceError) -> [(path: String, target: String)] {
        var found: [(path: String, target: String)] = []
        var pending = [""]
        var seen = 0
        while let directory = pending.popLast() {
            let absolute = directory.isEmpty ? root : root + "/" + directory
            for name in (try? FileManager.default.contentsOfDirectory(atPath: absolute)) ?? [] {
                seen += 1
                guard seen <= Self.maxEntries else {
                    throw WorkspaceError(
                        .tooLarge, "\(root) holds more than \(Self.maxEntries) entries: its links cannot all be checked"
                    )
                }
                let path = directory.isEmpty ? name : directory + "/" + name
                if PathBytes.isDotGit(name) || name.utf8.starts(with: WorkspacePatch.stagingPrefix.utf8) { continue }
                var info = stat()
                guard lstat(root + "/" + path, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFDIR: pending.append(path)
                case S_IFLNK: if let target = Self.linkTarget(root + "/" + path) { found.append((path, target)) }
                default: continue
                }
            }
        }
        return found
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

/// The tree as it will be once the patch is applied: the patch's entries over the directory's.
final class Overlay {
    private let changes: [WorkspacePatch.PathChange]
    private let byPath: [[UInt8]: Int]
    private let disk: DiskView
    /// The directories the patch's new entries lie in.
    private let implied: Set<[UInt8]>
    private var below: [[UInt8]: Bool] = [:]

    init(changes: [WorkspacePatch.PathChange], byPath: [[UInt8]: Int], disk: DiskView) {
        self.changes = changes
        self.byPath = byPath
        self.disk = disk
        var implied = Set<[UInt8]>()
        for change in changes where change.result != nil {
            var path = change.path
            while let parent = PathBytes.parent(path), implied.insert(PathBytes.key(parent)).inserted { path = parent }
        }
        self.implied = implied
    }

    func node(_ path: String) -> PathNode {
        let key = PathBytes.key(path)
        if let index = byPath[key] {
            guard let result = changes[index].result else { return .absent }
            return result.isLink ? .link(String(decoding: result.contents, as: UTF8.self)) : .file
        }
        if implied.contains(key) { return .directory }
        if isBelowAPatchEntry(path) { return .absent }
        return disk.node(at: path).pathNode
    }

    /// Whether an entry the directory holds at `path` stays as it is.
    func keepsDiskEntry(_ path: String) -> Bool {
        byPath[PathBytes.key(path)] == nil && !isBelowAPatchEntry(path)
    }

    /// Nothing is below what the patch deletes or makes a file or link.
    private func isBelowAPatchEntry(_ path: String) -> Bool {
        guard let parent = PathBytes.parent(path) else { return false }
        let key = PathBytes.key(parent)
        if let known = below[key] { return known }
        let value = byPath[key] != nil || isBelowAPatchEntry(parent)
        below[key] = value
        return value
    }
}
