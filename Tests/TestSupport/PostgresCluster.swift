import Foundation

/// A throwaway PostgreSQL cluster of Debian's `postgresql` in a directory of its own, run as the
/// `postgres` user when this runs as root, listening on a free loopback port, stopped by its
/// postmaster's PID. Shared by the fault suite (which restarts it under load) and the benchmarks.
public final class PostgresCluster: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible {
        case notInstalled
        case notPermitted(String)
        case initdb(String)
        case didNotStart(String)

        public var description: String {
            switch self {
            case .notInstalled:
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb; scripts/test.sh installs it)"
            case .notPermitted(let detail): "cannot hand a directory to the postgres user (run as root): \(detail)"
            case .initdb(let output): "initdb failed: \(output.suffix(300))"
            case .didNotStart(let log): "PostgreSQL did not start: \(log.suffix(500))"
            }
        }
    }

    public let directory: URL
    public let bin: String
    public let port: Int
    private let settings: [String]
    private let lock = NSLock()
    private var postmaster: Process?

    /// The newest installed server's `bin` directory, or nil.
    public static func binDirectory() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        guard let newest = versions.max(by: { $0.compare($1, options: .numeric) == .orderedAscending }) else {
            return nil
        }
        let bin = "\(root)/\(newest)/bin"
        return FileManager.default.isExecutableFile(atPath: "\(bin)/initdb") ? bin : nil
    }

    /// Makes the cluster in `directory` (created) and starts it with `settings` (`-c` pairs).
    public init(directory: URL, settings: [String] = ["fsync=off", "max_connections=200"]) throws {
        guard let bin = Self.binDirectory() else { throw Failure.notInstalled }
        self.bin = bin
        self.directory = directory
        self.settings = settings
        port = try LoopbackSocket.freePort()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if getuid() == 0 {
            let chown = try Self.run(["chown", "postgres", directory.path])
            guard chown.exitCode == 0 else { throw Failure.notPermitted(chown.stderr) }
        }
        let initdb = try Self.run(
            Self.asPostgres + ["\(bin)/initdb", "-D", dataDirectory, "-A", "trust", "-U", "postgres"])
        guard initdb.exitCode == 0 else { throw Failure.initdb(initdb.stdout + initdb.stderr) }
        try start()
    }

    var dataDirectory: String { directory.appending(path: "data").path }
    public var log: URL { directory.appending(path: "postgres.log") }

    public func url(_ database: String) -> String { "postgres://postgres@127.0.0.1:\(port)/\(database)" }

    /// Starts the postmaster (again, after `stop`) and waits until it answers.
    public func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            Self.asPostgres + [
                "\(bin)/postgres", "-D", dataDirectory, "-k", directory.path, "-h", "127.0.0.1", "-p", String(port),
            ] + settings.flatMap { ["-c", $0] }
        if !FileManager.default.fileExists(atPath: log.path) {
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        }
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        lock.withLock { postmaster = process }
        for _ in 0..<200 {
            if (try? psql("SELECT 1")) == "1" { return }
            guard process.isRunning else { break }
            usleep(100_000)
        }
        stop()
        throw Failure.didNotStart((try? String(contentsOf: log, encoding: .utf8)) ?? "")
    }

    /// Stops the postmaster by its own PID, a fast shutdown (sessions are cut off); the data stays.
    public func stop() {
        let pidFile = directory.appending(path: "data/postmaster.pid")
        if let text = try? String(contentsOf: pidFile, encoding: .utf8),
            let pid = Int32(text.split(separator: "\n").first ?? "")
        {
            kill(pid, SIGINT)
            let deadline = Date().addingTimeInterval(30)
            while kill(pid, 0) == 0 && Date() < deadline { usleep(50_000) }
        }
        lock.withLock { postmaster }?.waitUntilExit()
        lock.withLock { postmaster = nil }
    }

    /// Stops it and removes its directory.
    public func remove() {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Runs one statement with `psql`; its output, trimmed.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try Self.run(["psql", url(database), "-qAtc", sql])
        guard result.exitCode == 0 else { throw CLIRunnerError(description: "psql \(sql): \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    public func createDatabase(_ name: String) throws -> String {
        try psql("CREATE DATABASE \(name)")
        return url(name)
    }

    static var asPostgres: [String] { getuid() == 0 ? ["runuser", "-u", "postgres", "--"] : [] }

    static func run(_ arguments: [String]) throws -> CLIResult {
        try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), arguments, environment: ProcessInfo.processInfo.environment)
    }
}
