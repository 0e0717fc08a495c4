import Foundation

/// The change a job made to its workspace, as a git diff with binary patches (`git apply`
/// reads it; so does `WorkspacePatch.apply`). Every file carries full blob ids on its `index`
/// line, so applying checks each file it touches is still what the job started from, and the
/// header names the whole base tree's hash.
public struct WorkspacePatch: Sendable, Equatable {
    /// One changed file, for the diffstat.
    public struct FileChange: Sendable, Equatable, Codable {
        public enum Kind: String, Sendable, Codable { case added, modified, deleted }
        public var path: String
        public var kind: Kind
        public var linesAdded: Int
        public var linesRemoved: Int
        public var binary: Bool
    }

    /// The patch's bytes: the header, then one `diff --git` section per file.
    public var data: Data
    public var baseHash: String
    public var files: [FileChange]

    public var isEmpty: Bool { files.isEmpty }

    static let headerPrefix = "# claude-max-market workspace patch; base "

    /// The change from `base` (what the job received) to `result` (what it left). Paths under
    /// `.git` are not part of a workspace and are left out.
    public static func make(base: WorkspaceTree, result: WorkspaceTree) -> WorkspacePatch {
        let baseHash = base.baseHash
        var text = Data((headerPrefix + baseHash + "\n").utf8)
        var changes: [FileChange] = []
        let old = Dictionary(uniqueKeysWithValues: base.files.map { ($0.path, $0) })
        let new = Dictionary(
            uniqueKeysWithValues: result.files.filter { !isGitInternal($0.path) }.map { ($0.path, $0) })
        for path in Set(old.keys).union(new.keys).sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            let before = old[path]
            let after = new[path]
            if let before, let after, before.gitMode != after.gitMode, before.isSymlink != after.isSymlink {
                // A file that became a link (or back): git writes a deletion and an addition.
                changes.append(section(path: path, before: before, after: nil, into: &text))
                changes.append(section(path: path, before: nil, after: after, into: &text))
            } else if before != after {
                changes.append(section(path: path, before: before, after: after, into: &text))
            }
        }
        return WorkspacePatch(data: text, baseHash: baseHash, files: changes)
    }

    static func isGitInternal(_ path: String) -> Bool {
        PathBytes.components(path).contains(where: PathBytes.isDotGit)
    }

    private static func section(path: String, before: WorkspaceEntry?, after: WorkspaceEntry?, into text: inout Data)
        -> FileChange
    {
        func line(_ string: String) { text.append(Data((string + "\n").utf8)) }
        let oldContents = before?.contents ?? Data()
        let newContents = after?.contents ?? Data()
        let oldID = before == nil ? GitObjects.zeroID : GitObjects.blobID(oldContents)
        let newID = after == nil ? GitObjects.zeroID : GitObjects.blobID(newContents)
        line("diff --git a/\(path) b/\(path)")
        let kind: FileChange.Kind
        if let after, before == nil {
            kind = .added
            line("new file mode \(after.gitMode)")
            line("index \(oldID)..\(newID)")
        } else if let before, after == nil {
            kind = .deleted
            line("deleted file mode \(before.gitMode)")
            line("index \(oldID)..\(newID)")
        } else {
            kind = .modified
            let oldMode = before?.gitMode ?? ""
            let newMode = after?.gitMode ?? ""
            if oldMode != newMode {
                line("old mode \(oldMode)")
                line("new mode \(newMode)")
            }
            // A change of mode alone names its blob too (git apply takes the line), so that every
            // section says what it was made against.
            line("index \(oldID)..\(newID)" + (oldMode == newMode ? " \(newMode)" : ""))
            if oldContents == newContents {
                return FileChange(path: path, kind: kind, linesAdded: 0, linesRemoved: 0, binary: false)
            }
        }
        let binary = !(isText(oldContents) && isText(newContents))
        if binary {
            line("GIT binary patch")
            line("literal \(newContents.count)")
            for encoded in GitObjects.base85Lines(GitObjects.zlibStored(newContents)) { line(encoded) }
            line("")
            return FileChange(path: path, kind: kind, linesAdded: 0, linesRemoved: 0, binary: true)
        }
        line(before == nil ? "--- /dev/null" : "--- a/\(path)")
        line(after == nil ? "+++ /dev/null" : "+++ b/\(path)")
        let (hunks, added, removed) = UnifiedHunks.render(old: oldContents, new: newContents)
        text.append(hunks)
        return FileChange(path: path, kind: kind, linesAdded: added, linesRemoved: removed, binary: false)
    }

    /// Text as git sees it, and valid UTF-8 (so the patch stays readable).
    static func isText(_ data: Data) -> Bool {
        !data.prefix(8000).contains(0) && String(validating: [UInt8](data), as: UTF8.self) != nil
    }

    /// ` path | 3 ++-` lines and a total, as `git diff --stat` prints them.
    public var diffstat: String {
        if files.isEmpty { return "no changes" }
        let width = files.map(\.path.count).max() ?? 0
        var lines = files.map { change -> String in
            let padded = change.path.padding(toLength: width, withPad: " ", startingAt: 0)
            if change.binary { return " \(padded) | Bin (\(change.kind.rawValue))" }
            let total = change.linesAdded + change.linesRemoved
            let bar =
                String(repeating: "+", count: min(change.linesAdded, 40))
                + String(repeating: "-", count: min(change.linesRemoved, 40))
            return " \(padded) | \(total) \(bar)"
        }
        let added = files.reduce(0) { $0 + $1.linesAdded }
        let removed = files.reduce(0) { $0 + $1.linesRemoved }
        lines.append(
            " \(files.count) file\(files.count == 1 ? "" : "s") changed, \(added) insertion\(added == 1 ? "" : "s")(+), \(removed) deletion\(removed == 1 ? "" : "s")(-)"
        )
        return lines.joined(separator: "\n")
    }
}

extension WorkspaceEntry {
    var contents: Data {
        switch kind {
        case .file(let data): data
        case .symlink(let target): Data(target.utf8)
        case .directory: Data()
        }
    }

    var isSymlink: Bool {
        if case .symlink = kind { return true }
        return false
    }

    var gitMode: String {
        if isSymlink { return "120000" }
        return isExecutable ? "100755" : "100644"
    }
}

/// Unified-diff hunks with three lines of context, and git's "\ No newline at end of file".
enum UnifiedHunks {
    static let context = 3

    static func lines(_ data: Data) -> (lines: [Data], finalNewline: Bool) {
        if data.isEmpty { return ([], true) }
        var lines = data.split(separator: 0x0a, omittingEmptySubsequences: false).map { Data($0) }
        let finalNewline = data.last == 0x0a
        if finalNewline { lines.removeLast() }
        return (lines, finalNewline)
    }

    static func render(old: Data, new: Data) -> (Data, added: Int, removed: Int) {
        let (a, aFinal) = lines(old)
        let (b, bFinal) = lines(new)
        // The last line differs when only its newline does.
        var aKeys = a.map { Key(data: $0, last: false) }
        var bKeys = b.map { Key(data: $0, last: false) }
        if !aKeys.isEmpty && !aFinal { aKeys[aKeys.count - 1].last = true }
        if !bKeys.isEmpty && !bFinal { bKeys[bKeys.count - 1].last = true }
        let operations = LineDiff.diff(aKeys, bKeys)
        var output = Data()
        var added = 0
        var removed = 0
        let changed = operations.indices.filter {
            if case .equal = operations[$0] { return false }
            return true
        }
        guard !changed.isEmpty else { return (output, 0, 0) }
        // Group changes whose context overlaps.
        var groups: [(Int, Int)] = []
        for index in changed {
            let start = max(0, index - context)
            let end = min(operations.count - 1, index + context)
            if let last = groups.last, start <= last.1 + 1 {
                groups[groups.count - 1].1 = end
            } else {
                groups.append((start, end))
            }
        }
        for (start, end) in groups {
            var oldStart = 0
            var newStart = 0
            // Position of the hunk: the old and new line numbers at `start`.
            for operation in operations[..<start] {
                switch operation {
                case .equal: oldStart += 1; newStart += 1
                case .delete: oldStart += 1
                case .insert: newStart += 1
                }
            }
            var body = Data()
            var oldCount = 0
            var newCount = 0
            func emit(_ prefix: String, _ line: Data, noNewline: Bool) {
                body.append(Data(prefix.utf8))
                body.append(line)
                body.append(0x0a)
                if noNewline { body.append(Data("\\ No newline at end of file\n".utf8)) }
            }
            for operation in operations[start...end] {
                switch operation {
                case .equal(let o, _):
                    emit(" ", a[o], noNewline: aKeys[o].last)
                    oldCount += 1
                    newCount += 1
                case .delete(let o):
                    emit("-", a[o], noNewline: aKeys[o].last)
                    oldCount += 1
                    removed += 1
                case .insert(let n):
                    emit("+", b[n], noNewline: bKeys[n].last)
                    newCount += 1
                    added += 1
                }
            }
            let oldRange =
                oldCount == 0 ? "\(oldStart),0" : oldCount == 1 ? "\(oldStart + 1)" : "\(oldStart + 1),\(oldCount)"
            let newRange =
                newCount == 0 ? "\(newStart),0" : newCount == 1 ? "\(newStart + 1)" : "\(newStart + 1),\(newCount)"
            output.append(Data("@@ -\(oldRange) +\(newRange) @@\n".utf8))
            output.append(body)
        }
        return (output, added, removed)
    }

    struct Key: Hashable {
        var data: Data
        var last: Bool
    }
}
