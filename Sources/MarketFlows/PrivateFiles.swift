import Foundation
import MarketCore

/// A directory of one participant's files named by task (or job) id: 0600 files in a 0700
/// directory, written atomically. What `WorkspaceFiles` and `ConversationFiles` keep.
struct PrivateFiles: Sendable {
    let directory: URL

    /// `ID` + `suffix` in the directory; the id is checked first (it names a file).
    func url(_ id: String, _ suffix: String) throws -> URL {
        try WireField.taskID(id)
        return directory.appending(path: id + suffix)
    }

    func write(_ data: Data, to url: URL) throws {
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // No umask: it is the whole process's. The directory is 0700 while the file is tightened.
        try data.write(to: url, options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: url.path)
    }

    /// Why a blob of `id` was refused when it arrived (`ID` + `suffix`), kept for later.
    func saveRefusal(_ reason: String, for id: String, suffix: String) throws {
        try write(Data(reason.utf8), to: try url(id, suffix))
    }

    func refusal(_ id: String, suffix: String) -> String? {
        guard let file = try? url(id, suffix), let data = FileManager.default.contents(atPath: file.path) else {
            return nil
        }
        return String(decoding: data, as: UTF8.self)
    }
}
