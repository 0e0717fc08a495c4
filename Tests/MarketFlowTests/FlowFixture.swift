import DockerEngine
import Foundation
import MarketCore
import TestSupport
import Testing

/// One market loop on this machine, every part real: a `market serve` process (with a frame
/// capture), participants in homes of their own, `provide` daemons as background processes,
/// and the Docker engine. Every process it starts is stopped by its PID when the test ends.
final class Flow: @unchecked Sendable {
    static let image = "cmm-test/flow:latest"
    let directory: TemporaryDirectory
    private(set) var market: MarketProcess
    let db: String
    let marketArguments: [String]
    private var daemons: [Daemon] = []
    private let lock = NSLock()

    var frameLog: URL { directory.file("frames.log") }
    var url: String { market.url }

    private init(market: MarketProcess, directory: TemporaryDirectory, db: String, marketArguments: [String]) {
        self.market = market
        self.directory = directory
        self.db = db
        self.marketArguments = marketArguments
    }

    /// Everything here waits off the concurrency pool: the tests run beside others that serve
    /// markets in-process, and a blocked pool thread would starve them.
    static func start(marketArguments: [String] = [], port: Int = 0) async throws -> Flow {
        let directory = TemporaryDirectory("cmm-flow")
        let db = "sqlite:" + directory.file("market.sqlite").path
        let market = try await offPool {
            try MarketProcess.start(
                db: db, home: directory.file("operator"), port: port,
                extra: ["--frame-log", directory.file("frames.log").path] + marketArguments)
        }
        return Flow(market: market, directory: directory, db: db, marketArguments: marketArguments)
    }

    deinit { stopAll() }

    /// Daemons get SIGTERM first, so that they remove their containers; what is still running
    /// 5 s later is killed.
    func stopAll() {
        let running = lock.withLock { daemons }.filter { $0.process.isRunning }
        for daemon in running { kill(daemon.pid, SIGTERM) }
        for daemon in running { daemon.stop(SIGTERM, timeout: 5) }
        market.stop()
    }

    func stopMarket() async throws {
        let market = self.market
        _ = try await offPool { market.stop() }
    }

    /// Stops the market (SIGTERM) and starts it again on the same port and database.
    func restartMarket() async throws {
        let (port, db, home, extra) = (
            market.port, db, directory.file("operator"), ["--frame-log", frameLog.path] + marketArguments
        )
        try await stopMarket()
        let started = try await offPool { try MarketProcess.start(db: db, home: home, port: port, extra: extra) }
        lock.withLock { market = started }
    }

    func home(_ name: String) -> URL { directory.file(name) }

    @discardableResult
    func cli(_ home: URL, _ arguments: [String], environment: [String: String] = [:], expect code: Int32? = 0)
        async throws -> CLIResult
    {
        let result = try await CLIRunner.runAsync(arguments, home: home, environment: environment)
        if let code, result.exitCode != code {
            throw CLIRunnerError(
                description:
                    "`\(arguments.joined(separator: " "))` exited \(result.exitCode), not \(code): \(result.stderr) \(result.stdout)"
            )
        }
        return result
    }

    func peerID(_ home: URL) async throws -> String {
        try await cli(home, ["keys", "show", "--json"]).jsonObject()["peerId"] as! String
    }

    /// A provider home: terms, opt-in, policy approval, the test image, and its offer.
    func provider(_ name: String, price: String = "2", slots: Int = 1, settings: [String] = []) async throws -> URL {
        let home = self.home(name)
        try await cli(home, ["terms", "--accept"])
        try await cli(home, ["opt-in", "--claude-jobs", "--yes"])
        var set = [
            "market.url=\(url)", "approval.mode=policy", "docker.image=\(Self.image)", "docker.timeoutSeconds=60",
        ]
        set += settings
        try await cli(home, ["config"] + set.flatMap { ["--set", $0] })
        try await cli(home, ["advertise", "--slots", String(slots), "--price", price])
        return home
    }

    /// A requester home with `credits` minted to it.
    func requester(_ name: String, credits: String = "20") async throws -> URL {
        let home = self.home(name)
        try await cli(home, ["config", "--set", "market.url=\(url)"])
        let id = try await peerID(home)
        try await cli(self.home("operator"), ["market", "mint", "--db", db, "--to", id, "--amount", credits])
        return home
    }

    /// `provide --backend command -- COMMAND…` in the background, up once its offer is live.
    func provide(_ home: URL, command: [String], environment: [String: String] = [:], extra: [String] = [])
        async throws -> Daemon
    {
        let daemon = try Daemon(
            arguments: ["provide", "--backend", "command"] + extra + ["--"] + command, home: home,
            environment: environment, log: home.appending(path: "provide.log"))
        lock.withLock { daemons.append(daemon) }
        try await daemon.waitFor("offer live", timeout: 30)
        return daemon
    }

    func get(_ path: String) async throws -> Any {
        let url = market.httpBase + path
        let body = try await offPool { try LoopbackHTTP.get(url).body }
        return try JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed])
    }

    func tasks(state: String) async throws -> [[String: Any]] {
        try await get("/v1/tasks?state=\(state)") as! [[String: Any]]
    }

    func balance(_ home: URL) async throws -> [String: Any] {
        try await cli(home, ["balance", "--json"]).jsonObject()
    }

    /// Every byte the market keeps: its database files and the capture of every frame.
    func marketBytes() throws -> Data {
        var data = Data()
        for name in ["market.sqlite", "market.sqlite-wal", "frames.log"] {
            if let bytes = FileManager.default.contents(atPath: directory.file(name).path) { data += bytes }
        }
        return data
    }

    func homeBytes(_ home: URL) throws -> Data {
        var data = Data()
        let files = FileManager.default.enumerator(at: home, includingPropertiesForKeys: nil)
        while let file = files?.nextObject() as? URL {
            if let bytes = FileManager.default.contents(atPath: file.path) { data += bytes }
        }
        return data
    }

    func marketBytesAsync() async throws -> Data { try await offPool { try self.marketBytes() } }

    static func ensureImage() async throws {
        try await DockerClient.withClient(
            configuration: DockerClient.Configuration(socketPath: DockerTestEnvironment.socketPath)
        ) { docker in
            if try await docker.inspectImage(image) != nil { return }
            _ = try await docker.buildImage(
                context: try TarArchive.busyboxContext(binary: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath)),
                tags: [image],
                labels: Labels.make(kind: "test-image", version: ToolVersion.current))
        }
    }
}

/// A long-running CLI process (`provide`, `submit --wait`) with its output in a log file.
final class Daemon: @unchecked Sendable {
    let process = Process()
    let log: URL

    init(
        arguments: [String], home: URL, environment: [String: String] = [:], log: URL,
        executable: URL = CLIRunner.executable, prefix: [String] = []
    ) throws {
        self.log = log
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = executable
        process.arguments = prefix + arguments
        process.environment = CLIRunner.baseEnvironment(home: home).merging(environment) { $1 }
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
    var pid: Int32 { process.processIdentifier }

    func count(_ text: String) -> Int { output.components(separatedBy: text).count - 1 }

    /// Waits until the log holds `text` `times` times.
    func waitFor(_ text: String, times: Int = 1, timeout: TimeInterval) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if count(text) >= times { return }
            if !process.isRunning && count(text) < times {
                throw CLIRunnerError(description: "the process ended before '\(text)': \(output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CLIRunnerError(description: "no '\(text)' within \(timeout) s: \(output)")
    }

    /// Waits for the process to end; its exit status.
    @discardableResult
    func wait(timeout: TimeInterval) async throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        guard !process.isRunning else {
            throw CLIRunnerError(description: "still running after \(timeout) s: \(output)")
        }
        return process.terminationStatus
    }

    /// `stop`, waited for off the concurrency pool.
    func stopAsync(_ signal: Int32 = SIGTERM) async {
        _ = try? await offPool { self.stop(signal) }
    }

    func stop(_ signal: Int32 = SIGTERM, timeout: TimeInterval = 40) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit { stop(SIGKILL) }
}

/// Occurrences of `needle` in `haystack`.
func occurrences(of needle: String, in haystack: Data) -> Int {
    let pattern = Data(needle.utf8)
    var count = 0
    var start = haystack.startIndex
    while let range = haystack.range(of: pattern, in: start..<haystack.endIndex) {
        count += 1
        start = range.upperBound
    }
    return count
}

/// JSON lines printed by `--json` commands.
func jsonLines(_ text: String) -> [[String: Any]] {
    text.split(separator: "\n").compactMap {
        (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
    }
}

func requiresDocker() -> Bool { DockerTestEnvironment.shouldRun }
