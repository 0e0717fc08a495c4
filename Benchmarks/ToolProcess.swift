import Foundation
import MarketClient

/// The tool's binary beside the benchmarks', run as a user would: one command to its end, or a
/// daemon (`provide`) with its output in a log, for the e2e and conversation groups.
enum ToolProcess {
    static var binary: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(
            path: "claude-max-market")
    }

    /// This environment without the caller's `CMM_` settings, with `CMM_HOME` set.
    static func environment(home: URL) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CMM_") }
        environment["CMM_HOME"] = home.path
        return environment
    }

    /// Runs one command; throws when it fails.
    static func run(_ arguments: [String], environment: [String: String]) throws {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw MarketClientError("`claude-max-market \(arguments.joined(separator: " "))` failed")
        }
    }

    /// Starts a daemon writing to `log`, and waits (30 s at most) until the log says `ready`.
    static func start(_ arguments: [String], environment: [String: String], log: URL, ready: String) async throws
        -> Process
    {
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let daemon = Process()
        daemon.executableURL = binary
        daemon.arguments = arguments
        daemon.environment = environment
        let handle = try FileHandle(forWritingTo: log)
        daemon.standardOutput = handle
        daemon.standardError = handle
        try daemon.run()
        func text() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        for _ in 0..<600 where !text().contains(ready) { try await Task.sleep(for: .milliseconds(50)) }
        guard text().contains(ready) else {
            daemon.terminate()
            daemon.waitUntilExit()
            throw MarketClientError("`claude-max-market \(arguments.joined(separator: " "))` did not start: \(text())")
        }
        return daemon
    }
}
