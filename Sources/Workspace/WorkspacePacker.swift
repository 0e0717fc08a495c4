import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Packs a directory into a `WorkspaceTree` for a job: regular files and directories with their
/// permission bits, links as links (never followed). Left out, and said so: `.git`, files git
/// ignores in a git work tree (unless `includeIgnored`), links that point outside the directory,
/// devices, sockets and FIFOs, and names a tree cannot hold (control characters).
public struct WorkspacePacker: Sendable {
    public struct Options: Sendable {
        public var includeIgnored = false
        public var limits = WorkspaceLimits()
        /// Config key names, for the errors that name a limit.
        public var maxBytesKey = "limits.maxWorkspaceBytes"
        public var maxFilesKey = "limits.maxWorkspaceFiles"
        public init(includeIgnored: Bool = false, limits: WorkspaceLimits = WorkspaceLimits()) {
            self.includeIgnored = includeIgnored
            self.limits = limits
        }
    }

    /// Something left out of the workspace, and why.
    public struct LeftOut: Sendable, Equatable, Codable {
        public var path: String
        public var reason: String
    }

    public struct Packed: Sendable {
        public var tree: WorkspaceTree
        public var leftOut: [LeftOut]
        /// Whether git decided what was ignored.
        public var usedGit: Bool

        /// One line per kind of thing left out, for the requester and the approval question.
        public var leftOutSummary: [String] {
            var reasons: [String: [String]] = [:]
            for item in leftOut { reasons[item.reason, default: []].append(item.path) }
            return reasons.keys.sorted().map { reason in
                let paths = reasons[reason]!
                let sample = paths.prefix(3).joined(separator: ", ") + (paths.count > 3 ? ", …" : "")
                return "\(paths.count) \(reason): \(sample)"
            }
        }
    }

    public let options: Options

    public init(options: Options = Options()) {
        self.options = options
    }

    public func pack(_ directory: URL) throws(WorkspaceError) -> Packed {
        let root = directory.standardizedFileURL.path
        var info = stat()
        guard lstat(root, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw WorkspaceError(.io, "\(root) is not a directory")
        }
        let tracked = try options.includeIgnored ? nil : GitFiles.list(in: root)
        var walk = Walk(root: root, allowed: tracked, options: options)
        try walk.visit("")
        // Links are judged against the whole tree, as the kernel would follow them.
        var (entries, dropped) = WorkspaceTree.droppingLinksThatEscape(walk.entries)
        for link in dropped { walk.leftOut.append(LeftOut(path: link.path, reason: link.outcome.leftOutReason)) }
        if tracked != nil {
            // In a git work tree only the directories that hold something sent are kept.
            let needed = Set(entries.filter { $0.kind != .directory }.flatMap { PathBytes.ancestors(of: $0.path) })
            entries.removeAll { $0.kind == .directory && !needed.contains($0.path) }
        }
        let tree = try WorkspaceTree(entries: entries)
        try tree.check(options.limits, maxBytesKey: options.maxBytesKey, maxFilesKey: options.maxFilesKey)
        return Packed(tree: tree, leftOut: walk.leftOut, usedGit: tracked != nil)
    }

    struct Walk {
        let root: String
        let allowed: Set<String>?
        let options: Options
        var entries: [WorkspaceEntry] = []
        var leftOut: [LeftOut] = []
        var files = 0
        var bytes: Int64 = 0

        mutating func visit(_ relative: String) throws(WorkspaceError) {
            let absolute = relative.isEmpty ? root : root + "/" + relative
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: absolute).sorted()
            } catch {
                throw WorkspaceError(.io, "cannot read the directory \(absolute): \(error.localizedDescription)")
            }
            for name in names {
                let path = relative.isEmpty ? name : relative + "/" + name
                if name == ".git" {
                    leftOut.append(LeftOut(path: path, reason: "git internals (.git)"))
                    continue
                }
                if relative.isEmpty, name.utf8.starts(with: WorkspacePatch.stagingPrefix.utf8) {
                    leftOut.append(LeftOut(path: path, reason: "what an interrupted --apply staged"))
                    continue
                }
                do {
                    try WorkspaceTree.check(path: path)
                } catch {
                    leftOut.append(LeftOut(path: path.debugDescription, reason: "names a tree cannot hold"))
                    continue
                }
                var info = stat()
                guard lstat(root + "/" + path, &info) == 0 else {
                    leftOut.append(LeftOut(path: path, reason: "unreadable entries"))
                    continue
                }
                let mode = UInt16(info.st_mode & 0o777)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    entries.append(WorkspaceEntry(path: path, kind: .directory, mode: mode | 0o700))
                    try visit(path)
                case S_IFREG:
                    if let allowed, !allowed.contains(path) {
                        leftOut.append(LeftOut(path: path, reason: "files git ignores"))
                        continue
                    }
                    try count(path, Int64(info.st_size))
                    guard let contents = FileManager.default.contents(atPath: root + "/" + path) else {
                        leftOut.append(LeftOut(path: path, reason: "unreadable entries"))
                        continue
                    }
                    if info.st_mode & 0o7000 != 0 {
                        leftOut.append(LeftOut(path: path, reason: "setuid, setgid or sticky bits dropped"))
                    }
                    entries.append(WorkspaceEntry(path: path, kind: .file(contents), mode: mode | 0o600))
                case S_IFLNK:
                    if let allowed, !allowed.contains(path) {
                        leftOut.append(LeftOut(path: path, reason: "files git ignores"))
                        continue
                    }
                    guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + path),
                        LinkResolver.isPlausible(target)
                    else {
                        leftOut.append(LeftOut(path: path, reason: "links pointing outside the directory"))
                        continue
                    }
                    try count(path, Int64(target.utf8.count))
                    entries.append(WorkspaceEntry(path: path, kind: .symlink(target)))
                case S_IFSOCK: leftOut.append(LeftOut(path: path, reason: "sockets"))
                case S_IFIFO: leftOut.append(LeftOut(path: path, reason: "FIFOs"))
                default: leftOut.append(LeftOut(path: path, reason: "device files"))
                }
            }
        }

        /// Stops as soon as a limit is passed, naming it: nothing is read past it.
        mutating func count(_ path: String, _ size: Int64) throws(WorkspaceError) {
            files += 1
            bytes += size
            if files > options.limits.maxFiles {
                throw WorkspaceError(
                    .tooLarge,
                    "the workspace has more than \(options.limits.maxFiles) files (\(options.maxFilesKey)); leave some out or raise the limit"
                )
            }
            if bytes > options.limits.maxBytes {
                throw WorkspaceError(
                    .tooLarge,
                    "the workspace holds more than \(options.limits.maxBytes) bytes (\(options.maxBytesKey)) at \(path); leave some out or raise the limit"
                )
            }
        }
    }
}

/// The files git would commit in a work tree: tracked ones and untracked ones it does not ignore.
enum GitFiles {
    /// nil when `directory` is not inside a git work tree; throws when it is but git is missing.
    static func list(in directory: String) throws(WorkspaceError) -> Set<String>? {
        guard ancestorWithGit(directory) != nil else { return nil }
        guard let git = executable("git") else {
            throw WorkspaceError(
                .io,
                "\(directory) is in a git work tree, but git is not installed, so the files it ignores are unknown: install git, or send everything with --include-ignored"
            )
        }
        let inside = try run(git, ["-C", directory, "rev-parse", "--is-inside-work-tree"])
        guard String(decoding: inside, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "true" else {
            return nil
        }
        let output = try run(git, ["-C", directory, "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        return Set(output.split(separator: 0).map { String(decoding: $0, as: UTF8.self) })
    }

    static func ancestorWithGit(_ directory: String) -> String? {
        var path = directory
        while true {
            if FileManager.default.fileExists(atPath: path + "/.git") { return path }
            let parent = (path as NSString).deletingLastPathComponent
            if parent == path || parent.isEmpty { return nil }
            path = parent
        }
    }

    static func executable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    static func run(_ executable: String, _ arguments: [String]) throws(WorkspaceError) -> Data {
        do {
            return try ChildProcess.output(URL(fileURLWithPath: executable), arguments)
        } catch {
            throw WorkspaceError(.io, "\(error)")
        }
    }
}
