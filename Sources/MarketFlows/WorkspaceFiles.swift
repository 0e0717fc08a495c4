import Foundation
import MarketCore

/// A requester's workspace jobs on disk: the archive that was sent (`TASK.tar`, with what
/// packing left out beside it), to seal again if the task moves to another provider and to tell
/// what changed before a patch is applied; and the patch that came back (`TASK.diff`), for
/// `result --apply` later, or why it was refused (`TASK.diff.refused`). Files 0600 in a 0700
/// directory.
public struct WorkspaceFiles: Sendable {
    public let directory: URL
    let files: PrivateFiles

    public init(directory: URL) {
        self.directory = directory
        files = PrivateFiles(directory: directory)
    }

    public func save(_ archive: Data, leftOut: [String], directory: String? = nil, for taskId: String) throws {
        try files.write(archive, to: try files.url(taskId, ".tar"))
        try files.write(try JSONEncoder().encode(leftOut), to: try files.url(taskId, ".left-out.json"))
        if let directory { try files.write(Data(directory.utf8), to: try files.url(taskId, ".dir")) }
    }

    /// The directory a task's workspace was packed from.
    public func directory(_ taskId: String) throws -> String? {
        (try? Data(contentsOf: try files.url(taskId, ".dir"))).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The archive sent for a task, or nil when it had no workspace.
    public func load(_ taskId: String) throws -> (archive: Data, leftOut: [String])? {
        let archive = try files.url(taskId, ".tar")
        guard FileManager.default.fileExists(atPath: archive.path) else { return nil }
        let leftOut =
            (try? Data(contentsOf: try files.url(taskId, ".left-out.json")))
            .flatMap { try? JSONDecoder().decode([String].self, from: $0) } ?? []
        return (try Data(contentsOf: archive), leftOut)
    }

    public func savePatch(_ patch: Data, for taskId: String) throws {
        try files.write(patch, to: try files.url(taskId, ".diff"))
    }

    /// The patch came and was refused (it did not match the result, or does not parse): why.
    public func savePatchRefusal(_ reason: String, for taskId: String) throws {
        try files.saveRefusal(reason, for: taskId, suffix: ".diff.refused")
    }

    public func patchRefusal(_ taskId: String) -> String? { files.refusal(taskId, suffix: ".diff.refused") }

    public func patch(_ taskId: String) throws -> Data? {
        let file = try files.url(taskId, ".diff")
        return FileManager.default.fileExists(atPath: file.path) ? try Data(contentsOf: file) : nil
    }
}
