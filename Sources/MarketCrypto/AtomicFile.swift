import Foundation

/// Writes a file so that a crash leaves either the old or the new content, never a mix:
/// a temp file in the same directory, fsync, then rename over the target.
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL, permissions: Int = 0o600) throws {
        let directory = url.deletingLastPathComponent()
        let temp = directory.appending(path: ".\(url.lastPathComponent).\(UUID().uuidString).tmp")
        let fd = open(temp.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(permissions))
        guard fd >= 0 else { throw POSIXFileError(operation: "create", path: temp.path) }
        var ok = false
        defer {
            if !ok { unlink(temp.path) }
        }
        do {
            try data.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Foundation.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                    guard written > 0 else { throw POSIXFileError(operation: "write", path: temp.path) }
                    offset += written
                }
            }
            fchmod(fd, mode_t(permissions))
            guard fsync(fd) == 0 else { throw POSIXFileError(operation: "fsync", path: temp.path) }
            close(fd)
        } catch {
            close(fd)
            throw error
        }
        guard rename(temp.path, url.path) == 0 else { throw POSIXFileError(operation: "rename", path: url.path) }
        ok = true
        // The rename itself is durable only once the directory is.
        let directoryFD = open(directory.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw POSIXFileError(operation: "open", path: directory.path) }
        defer { close(directoryFD) }
        guard fsync(directoryFD) == 0 else { throw POSIXFileError(operation: "fsync", path: directory.path) }
    }
}

public struct POSIXFileError: Error, CustomStringConvertible {
    public let operation: String
    public let path: String
    public let code: Int32

    public init(operation: String, path: String, code: Int32 = errno) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    public var description: String { "cannot \(operation) \(path): \(String(cString: strerror(code)))" }
}
