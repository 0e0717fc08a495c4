import Crypto
import Foundation

/// One entry of a workspace: a directory, a regular file or a symbolic link, at a relative
/// path ("src/main.swift"), with its permission bits. Nothing else is ever represented: no
/// devices, sockets, FIFOs, hard links, owners or times.
public struct WorkspaceEntry: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case directory
        case file(Data)
        /// A link kept as a link; its target is relative and stays inside the tree.
        case symlink(String)
    }

    public var path: String
    public var kind: Kind
    /// Permission bits only (0o777 at most: no setuid, setgid or sticky bit).
    public var mode: UInt16

    public init(path: String, kind: Kind, mode: UInt16? = nil) {
        self.path = path
        self.kind = kind
        switch kind {
        case .directory: self.mode = mode ?? 0o755
        case .file: self.mode = mode ?? 0o644
        case .symlink: self.mode = 0o777
        }
    }

    public var isExecutable: Bool { mode & 0o100 != 0 }

    public var byteCount: Int64 {
        switch kind {
        case .file(let data): Int64(data.count)
        case .symlink(let target): Int64(target.utf8.count)
        case .directory: 0
        }
    }
}

/// Limits a workspace must fit in: checked while packing, and again on the provider while
/// reading an archive from the network, before anything is written.
public struct WorkspaceLimits: Sendable, Equatable {
    public var maxBytes: Int64
    public var maxFiles: Int

    public init(maxBytes: Int64 = 64 << 20, maxFiles: Int = 20_000) {
        self.maxBytes = maxBytes
        self.maxFiles = maxFiles
    }

    /// The longest path and path component accepted (Linux's PATH_MAX and NAME_MAX).
    public static let maxPathBytes = 4096
    public static let maxNameBytes = 255
}

/// A workspace: entries sorted by path, every path checked (relative, no `.` or `..`, no
/// control characters, nothing below a file or a link), every link's target inside the tree.
/// Made by `WorkspacePacker` from a directory, or read from a tar archive by `init(tar:limits:)`.
public struct WorkspaceTree: Sendable, Equatable {
    public private(set) var entries: [WorkspaceEntry]

    /// Checks and sorts the entries; throws naming the first bad one.
    public init(entries: [WorkspaceEntry]) throws(WorkspaceError) {
        var byPath: [[UInt8]: WorkspaceEntry.Kind] = [:]
        // Two names the filesystem tells apart but Swift's strings do not (`é` precomposed and
        // decomposed) are refused as one: every table of paths above this one is keyed by text.
        var names = Set<String>()
        for entry in entries {
            try Self.check(path: entry.path)
            guard byPath[PathBytes.key(entry.path)] == nil, names.insert(entry.path).inserted else {
                throw WorkspaceError(.badEntry, "\(entry.path) appears twice (or in two Unicode forms)")
            }
            guard entry.mode & ~0o777 == 0 else {
                throw WorkspaceError(
                    .badEntry,
                    "\(entry.path) has mode \(String(entry.mode, radix: 8)): setuid, setgid and sticky bits are not allowed"
                )
            }
            byPath[PathBytes.key(entry.path)] = entry.kind
        }
        var resolver = LinkResolver(entries: entries)
        for entry in entries {
            for parent in PathBytes.ancestors(of: entry.path) {
                if let kind = byPath[PathBytes.key(parent)], kind != .directory {
                    throw WorkspaceError(.badEntry, "\(entry.path) lies below \(parent), which is not a directory")
                }
            }
            if case .symlink(let target) = entry.kind,
                let refusal = resolver.resolve(link: entry.path, target: target).refusal
            {
                throw WorkspaceError(.badEntry, "the link \(entry.path) -> \(target) \(refusal)")
            }
        }
        self.entries = entries.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
    }

    public static let empty = try! WorkspaceTree(entries: [])

    /// Regular files and links: what a patch is made of (directories are implied by them).
    public var files: [WorkspaceEntry] { entries.filter { $0.kind != .directory } }

    public var fileCount: Int { entries.count { $0.kind != .directory } }
    public var byteCount: Int64 { entries.reduce(0) { $0 + $1.byteCount } }

    /// The names at the top of the tree, for a person to recognise it.
    public var topLevelNames: [String] {
        entries.filter { !$0.path.contains("/") }.map { $0.kind == .directory ? $0.path + "/" : $0.path }
    }

    public subscript(path: String) -> WorkspaceEntry? {
        entries.first { $0.path == path }
    }

    /// Throws when the tree is over `limits`, naming the limit.
    public func check(_ limits: WorkspaceLimits, maxBytesKey: String, maxFilesKey: String) throws(WorkspaceError) {
        if fileCount > limits.maxFiles {
            throw WorkspaceError(
                .tooLarge, "the workspace has \(fileCount) files; \(maxFilesKey) allows \(limits.maxFiles)")
        }
        if byteCount > limits.maxBytes {
            throw WorkspaceError(
                .tooLarge, "the workspace holds \(byteCount) bytes; \(maxBytesKey) allows \(limits.maxBytes)")
        }
    }

    /// SHA-256 of the canonical archive: the base a patch is made against.
    public var baseHash: String {
        "sha256:" + SHA256.hash(data: tar()).map { String(format: "%02x", $0) }.joined()
    }

    /// A relative path: no empty, `.` or `..` component, no leading slash, no control
    /// characters, within Linux's length limits.
    public static func check(path: String) throws(WorkspaceError) {
        guard !path.isEmpty, !path.hasPrefix("/") else {
            throw WorkspaceError(.badPath, "\(path.debugDescription) is not a relative path")
        }
        guard path.utf8.count <= WorkspaceLimits.maxPathBytes else {
            throw WorkspaceError(.badPath, "\(path.prefix(80))… is longer than \(WorkspaceLimits.maxPathBytes) bytes")
        }
        guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw WorkspaceError(.badPath, "\(path.debugDescription) contains a control character")
        }
        for component in PathBytes.components(path) {
            guard !component.isEmpty, !PathBytes.isDot(component), !PathBytes.isDotDot(component) else {
                throw WorkspaceError(.badPath, "\(path.debugDescription) has an empty, . or .. component")
            }
            guard component.utf8.count <= WorkspaceLimits.maxNameBytes else {
                throw WorkspaceError(.badPath, "\(path.debugDescription) has a name longer than 255 bytes")
            }
        }
    }
}

/// What was wrong with a workspace, an archive or a patch.
public struct WorkspaceError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// A path that is absolute, climbs out, or is otherwise not allowed.
        case badPath = "bad_path"
        /// An entry that is not allowed (a duplicate, a setuid bit, a link that escapes, a device).
        case badEntry = "bad_entry"
        /// The archive's bytes are not a well-formed tar archive.
        case badArchive = "bad_archive"
        /// Over a limit.
        case tooLarge = "too_large"
        /// A patch that cannot be read or applied.
        case badPatch = "bad_patch"
        /// Applying would change something it must not, or the directory changed since it was sent.
        case conflict
        /// Reading or writing the directory failed.
        case io
        /// Applying stopped part way: what landed and what did not is in the message.
        case partial
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// SHA-256 of a file, read in pieces (a wheel or a binary of hundreds of MB).
public enum FileDigest {
    public static func sha256(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256(of url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

extension WorkspaceTree {
    /// The entries below `directory`, with that prefix taken off: a job's work directory out of
    /// everything it left. A link that pointed inside the whole tree but leads out of the
    /// directory is left out and listed, like any other link that escapes.
    public func subtree(under directory: String) -> (tree: WorkspaceTree, skipped: [Skipped]) {
        let prefix = Array((directory + "/").utf8)
        let below = entries.filter { PathBytes.hasPrefix($0.path, directory + "/") }.map { entry in
            var entry = entry
            entry.path = String(decoding: Array(entry.path.utf8).dropFirst(prefix.count), as: UTF8.self)
            return entry
        }
        let (kept, dropped) = Self.droppingLinksThatEscape(below)
        // Every path was checked as part of the whole tree and keeps its shape below it.
        return (
            (try? WorkspaceTree(entries: kept)) ?? .empty,
            dropped.map { Skipped(path: $0.path, reason: "a link that \($0.outcome.refusal ?? "")") }
        )
    }
}

extension WorkspaceTree {
    /// Writes the tree into `directory` (which must exist and be empty): what a follow-up
    /// starts from when it applies the earlier patch to the workspace that was sent.
    public func write(into directory: URL) throws {
        let manager = FileManager.default
        for entry in entries {
            let url = directory.appending(path: entry.path)
            switch entry.kind {
            case .directory:
                try manager.createDirectory(at: url, withIntermediateDirectories: true)
            case .file(let data):
                try manager.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try data.write(to: url)
            case .symlink(let target):
                try manager.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try manager.createSymbolicLink(atPath: url.path, withDestinationPath: target)
            }
        }
        // Modes last, deepest first: a read-only directory is filled before it is closed.
        for entry in entries.reversed() {
            if case .symlink = entry.kind { continue }
            try manager.setAttributes(
                [.posixPermissions: Int(entry.mode)], ofItemAtPath: directory.appending(path: entry.path).path)
        }
    }
}
