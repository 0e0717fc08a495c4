import Foundation
import GRDB

/// A database write refused because the disk is full, told as such: where, that nothing was
/// changed (the transaction rolled back), and what to do.
public enum DiskFull {
    public static func message(for error: any Error, paths: ParticipantPaths) -> String? {
        guard let error = error as? DatabaseError else { return nil }
        let directory = paths.dataDirectory
        switch error.resultCode {
        case .SQLITE_FULL: break
        case .SQLITE_IOERR where freeBytes(at: directory).map({ $0 < 1 << 20 }) == true: break
        default: return nil
        }
        return "the disk holding \(directory.path) is full (SQLite: \(error.message ?? "database or disk is full")): "
            + "nothing was changed; free some space and run the command again"
    }

    /// Bytes free for an unprivileged writer on the file system holding `url` (or its nearest
    /// existing parent).
    static func freeBytes(at url: URL) -> UInt64? {
        var candidate = url
        while !FileManager.default.fileExists(atPath: candidate.path), candidate.pathComponents.count > 1 {
            candidate.deleteLastPathComponent()
        }
        var stats = statvfs()
        guard statvfs(candidate.path, &stats) == 0 else { return nil }
        return UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
    }
}
