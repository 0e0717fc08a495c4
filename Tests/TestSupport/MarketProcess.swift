import Foundation

/// A `claude-max-market market serve` process on a free loopback port, as an operator runs it.
/// The test that starts one stops it (by its PID), also when the test fails.
public final class MarketProcess: @unchecked Sendable {
    public let process: Process
    public let port: Int
    private let log: LockedBox<Data>
    private let logFile: URL?
    /// Signalled when the stderr pipe reaches its end (nil: stderr goes to `logFile`).
    private let stderrEnded: DispatchSemaphore?

    public var url: String { "ws://127.0.0.1:\(port)/market" }
    public var httpBase: String { "http://127.0.0.1:\(port)" }
    public var pid: Int32 { process.processIdentifier }
    /// What the server wrote on stderr so far.
    public var output: String { Self.said(logFile: logFile, log: log) }

    private static func said(logFile: URL?, log: LockedBox<Data>) -> String {
        if let logFile { return (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }
        return String(decoding: log.value, as: UTF8.self)
    }

    private init(process: Process, port: Int, log: LockedBox<Data>, logFile: URL?, stderrEnded: DispatchSemaphore?) {
        self.process = process
        self.port = port
        self.log = log
        self.logFile = logFile
        self.stderrEnded = stderrEnded
    }

    /// Starts `market serve --json --port 0 --db DB EXTRA…` and waits for the one JSON line it
    /// prints on stdout once it listens: the port comes from the process itself. Its stderr is
    /// kept in memory, or appended to `logFile` (a long benchmark or fault run); `environment`
    /// is added to the test's own.
    public static func start(
        db: String, home: URL, port: Int = 0, extra: [String] = [], environment: [String: String] = [:],
        logFile: URL? = nil, timeout: TimeInterval = 30
    ) throws -> MarketProcess {
        let process = Process()
        process.executableURL = CLIRunner.executable
        process.arguments = ["market", "serve", "--json", "--port", String(port), "--db", db] + extra
        process.environment = CLIRunner.baseEnvironment(home: home).merging(environment) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardInput = FileHandle.nullDevice
        let log = LockedBox(Data())
        var stderrEnded: DispatchSemaphore?
        if let logFile {
            if !FileManager.default.fileExists(atPath: logFile.path) {
                _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
            }
            let handle = try FileHandle(forWritingTo: logFile)
            try handle.seekToEnd()
            process.standardError = handle
        } else {
            let err = Pipe()
            process.standardError = err
            let ended = DispatchSemaphore(value: 0)
            stderrEnded = ended
            err.fileHandleForReading.readabilityHandler = { handle in
                let chunk = handle.availableData
                if chunk.isEmpty {
                    handle.readabilityHandler = nil
                    ended.signal()
                } else {
                    log.withLock { $0.append(chunk) }
                }
            }
        }
        let listening = ListeningLine()
        out.fileHandleForReading.readabilityHandler = { handle in
            let chunk = handle.availableData
            if chunk.isEmpty { listening.end() } else { listening.add(chunk) }
        }
        try process.run()
        if let port = listening.wait(timeout: timeout) {
            return MarketProcess(process: process, port: port, log: log, logFile: logFile, stderrEnded: stderrEnded)
        }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        throw CLIRunnerError(
            description: "market serve did not start: \(said(logFile: logFile, log: log).suffix(4000))")
    }

    /// Sends `signal` and waits for the process to end; returns its exit status.
    @discardableResult
    public func stop(_ signal: Int32 = SIGTERM, timeout: TimeInterval = 30) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        // What it wrote last (its "market stopped") is read before `output` is: the pipe's reader
        // runs on its own and was seen to lag the process's exit.
        if stderrEnded?.wait(timeout: .now() + 5) == .success { stderrEnded?.signal() }  // for a later stop
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// GET over loopback with curl (Foundation on Linux has no URL loading without FoundationNetworking).
/// The time limit is generous: with the real-CLI suites beside it, a loaded 2-core machine has
/// taken more than 10 s to answer a read view.
public enum LoopbackHTTP {
    public static func get(_ url: String) throws -> (status: Int, body: Data) {
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"), ["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}", url],
            environment: ProcessInfo.processInfo.environment)
        guard result.exitCode == 0 else { throw CLIRunnerError(description: "curl \(url): \(result.stderr)") }
        var lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let status = Int(lines.removeLast()) ?? 0
        return (status, Data(lines.joined(separator: "\n").utf8))
    }

    /// The response's header lines, lowercased, off the concurrency pool.
    public static func headers(_ url: String) async throws -> [String] {
        try await offPool {
            let result = try CLIRunner.runProcess(
                URL(fileURLWithPath: "/usr/bin/env"),
                ["curl", "-sS", "--max-time", "60", "-D", "-", "-o", "/dev/null", url],
                environment: ProcessInfo.processInfo.environment)
            guard result.exitCode == 0 else { throw CLIRunnerError(description: "curl \(url): \(result.stderr)") }
            return result.stdout.lowercased().split(separator: "\r\n").map(String.init)
        }
    }

    public static func json(_ url: String) throws -> Any {
        try JSONSerialization.jsonObject(with: try get(url).body, options: [.fragmentsAllowed])
    }
}

/// Runs blocking work (a child process, a wait, a `curl`) on a thread of its own. A test whose
/// process also serves a market in-process must not block the concurrency pool's few threads:
/// the server's handlers need them, and every test runs beside others.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

extension LoopbackHTTP {
    /// `get`, off the concurrency pool.
    public static func fetch(_ url: String) async throws -> (status: Int, body: Data) {
        try await offPool { try get(url) }
    }

    /// `json`, off the concurrency pool.
    public static func fetchJSON(_ url: String) async throws -> Any {
        let body = try await fetch(url).body
        return try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
    }
}

/// The first line of `market serve --json`'s stdout, `{"url", "port", "http"}`: signalled as it
/// arrives, or when stdout closes without it.
final class ListeningLine: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer = Data()
    private var port: Int?
    private let arrived = DispatchSemaphore(value: 0)
    private var signalled = false

    func add(_ chunk: Data) {
        lock.lock()
        defer { lock.unlock() }
        guard !signalled else { return }
        buffer += chunk
        guard let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) else { return }
        struct Listening: Decodable { var port: Int }
        port = (try? JSONDecoder().decode(Listening.self, from: buffer[..<newline]))?.port
        signal()
    }

    func end() {
        lock.lock()
        defer { lock.unlock() }
        signal()
    }

    private func signal() {
        guard !signalled else { return }
        signalled = true
        arrived.signal()
    }

    /// The port, or nil when the process said nothing usable within `timeout` seconds.
    func wait(timeout: TimeInterval) -> Int? {
        guard arrived.wait(timeout: .now() + timeout) == .success else { return nil }
        lock.lock()
        defer { lock.unlock() }
        return port
    }
}
