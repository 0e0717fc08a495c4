import Foundation

/// A short child process whose standard output is wanted (git, busybox, ldd, claude --version):
/// stderr is dropped, and a non-zero exit is an error naming the command.
public enum ChildProcess {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func output(_ executable: URL, _ arguments: [String]) throws(Failure) -> Data {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        let command = ([executable.lastPathComponent] + arguments).joined(separator: " ")
        do {
            try process.run()
        } catch {
            throw Failure(description: "could not run \(command): \(error.localizedDescription)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "\(command) exited \(process.terminationStatus)")
        }
        return data
    }
}
