import Foundation

/// Runs the built `claude-max-market` executable as a user would, in a chosen `CMM_HOME`.
public struct CLIResult: Sendable {
    public let exitCode: Int32
    /// The raw bytes on stdout (binary output stays intact).
    public let stdoutData: Data
    public let stderr: String

    public var stdout: String { String(decoding: stdoutData, as: UTF8.self) }

    /// Parses stdout as one JSON value; fails when anything else is on stdout.
    public func json() throws -> Any {
        try JSONSerialization.jsonObject(with: stdoutData, options: [.fragmentsAllowed])
    }

    public func jsonObject() throws -> [String: Any] {
        guard let object = try json() as? [String: Any] else {
            throw CLIRunnerError(description: "stdout is not a JSON object: \(stdout)")
        }
        return object
    }
}

public struct CLIRunnerError: Error, CustomStringConvertible {
    public let description: String

    public init(description: String) {
        self.description = description
    }
}

public enum CLIRunner {
    /// The executable built beside the test bundle (`.build/<triple>/debug/claude-max-market`).
    public static var executable: URL {
        if let override = ProcessInfo.processInfo.environment["CMM_TEST_BINARY"] {
            return URL(fileURLWithPath: override)
        }
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if let bundle = Bundle.main.executableURL { directory = bundle.deletingLastPathComponent() }
        for candidate in [directory, directory.deletingLastPathComponent()] {
            let url = candidate.appending(path: "claude-max-market")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return directory.appending(path: "claude-max-market")
    }

    /// The environment a test run starts from: the test's own, minus anything that would make
    /// the tool read the developer's real state or config.
    public static func baseEnvironment(home: URL) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CMM_") }
        environment["CMM_HOME"] = home.path
        environment.removeValue(forKey: "ANTHROPIC_API_KEY")
        return environment
    }

    public static func run(
        _ arguments: [String], home: URL, environment extra: [String: String] = [:], stdin: Data? = nil,
        removing: [String] = []
    ) throws -> CLIResult {
        var environment = baseEnvironment(home: home).merging(extra) { $1 }
        for key in removing { environment.removeValue(forKey: key) }
        return try runProcess(executable, arguments, environment: environment, stdin: stdin)
    }

    /// `run` on a thread of its own, for a test whose process serves the command while it runs
    /// (a loopback upstream): waiting on the concurrency pool would starve that server.
    public static func runAsync(
        _ arguments: [String], home: URL, environment extra: [String: String] = [:], stdin: Data? = nil
    ) async throws -> CLIResult {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(
                    with: Result { try run(arguments, home: home, environment: extra, stdin: stdin) })
            }.start()
        }
    }

    /// Runs `executable` to the end; `started` is told its PID as soon as it runs (a harness that
    /// must stop everything it started when it is interrupted keeps it).
    public static func runProcess(
        _ executable: URL, _ arguments: [String], environment: [String: String], stdin: Data? = nil,
        started: (Int32) -> Void = { _ in }
    ) throws -> CLIResult {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let input = Pipe()
        process.standardInput = input
        try process.run()
        started(process.processIdentifier)
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        // Read both pipes concurrently so that a full stderr pipe cannot block the child.
        let errData = LockedBox(Data())
        let errReader = Thread { errData.value = err.fileHandleForReading.readDataToEndOfFile() }
        errReader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        while !errData.isSet { usleep(1000) }
        return CLIResult(
            exitCode: process.terminationStatus, stdoutData: outData,
            stderr: String(decoding: errData.value, as: UTF8.self))
    }
}

public final class LockedBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    private var assigned = false

    public init(_ value: Value) { stored = value }

    public var value: Value {
        get { lock.withLock { stored } }
        set {
            lock.withLock {
                stored = newValue
                assigned = true
            }
        }
    }

    public var isSet: Bool { lock.withLock { assigned } }

    /// Reads and changes the value in one step (a counter shared by concurrent tasks).
    public func withLock<T>(_ body: (inout Value) -> T) -> T {
        lock.withLock {
            assigned = true
            return body(&stored)
        }
    }
}

extension LockedBox where Value == Int {
    /// Adds one (a counter shared by concurrent tasks).
    public func increment() { withLock { $0 += 1 } }
}

extension LockedBox {
    /// Appends to a list shared by concurrent tasks.
    public func append<Element>(_ element: Element) where Value == [Element] { withLock { $0.append(element) } }
}
