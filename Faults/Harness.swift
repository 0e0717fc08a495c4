import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import TestSupport

// The fault suite (`scripts/faults.sh`): real processes on loopback, faults injected, then the
// guarantees checked — `market verify` passes, every home's audit chain verifies, every task
// ended settled or refunded, no job container is left running, and no credit was lost.

/// Unbuffered: each line shows as soon as it is known, also through a pipe.
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    let text = items.map { "\($0)" }.joined(separator: separator) + terminator
    try? FileHandle.standardOutput.write(contentsOf: Data(text.utf8))
}

struct FaultError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

struct ScenarioResult {
    var name: String
    var faults = 0
    var lifecycles = 0
    var minted: Int64 = 0
    var accounted: Int64 = 0
    var problems: [String] = []
    /// Why the scenario could not run here (never accepted in CI).
    var skipped: String?
    var lost: Int64 { minted - accounted }
    var passed: Bool { problems.isEmpty && lost == 0 }
}

/// A scenario that cannot run on this machine: a skip outside CI, a failure in CI.
struct ScenarioSkipped: Error, CustomStringConvertible {
    let description: String
}

let inCI = ProcessInfo.processInfo.environment["CI"] == "true"
/// In CI, or where `scripts/test.sh` said the services are there (`CMM_REQUIRE_DOCKER`,
/// `CMM_REQUIRE_POSTGRES`), a scenario that cannot run fails instead of being skipped.
let servicesRequired =
    inCI || ["CMM_REQUIRE_DOCKER", "CMM_REQUIRE_POSTGRES"].contains { ProcessInfo.processInfo.environment[$0] == "1" }

/// Runs a program to the end; its exit code and output (standard output and error together).
@discardableResult
func run(_ program: String, _ arguments: [String]) throws -> (code: Int32, err: String) {
    let result = try CLIRunner.runProcess(
        URL(fileURLWithPath: "/usr/bin/env"), [program] + arguments, environment: ProcessInfo.processInfo.environment)
    return (result.exitCode, result.stdout + result.stderr)
}

let quick = CommandLine.arguments.contains("--quick")
/// The `claude-max-market` built beside this program.
let binary = CLIRunner.executable
let root = FileManager.default.temporaryDirectory.appending(path: "cmm-faults-\(UUID().uuidString.prefix(8))")
let image = "cmm-faults/busybox:latest"

/// Homes whose tool talks to another Docker engine than the default (`DOCKER_HOST`).
let dockerHosts = LockedBox<[String: String]>([:])

func environment(home: URL) -> [String: String] {
    var environment = CLIRunner.baseEnvironment(home: home)
    if let host = dockerHosts.value[home.path] { environment["DOCKER_HOST"] = host }
    return environment
}

/// Runs the tool to the end; its exit code and output.
@discardableResult
func tool(_ arguments: [String], home: URL, check: Bool = true) throws -> (code: Int32, out: String, err: String) {
    let result = try CLIRunner.runProcess(
        binary, arguments, environment: environment(home: home),
        started: { pid in started.withLock { $0.append(pid) } })
    if check && result.exitCode != 0 {
        throw FaultError(
            "`claude-max-market \(arguments.joined(separator: " "))` exited \(result.exitCode): \(result.stderr)")
    }
    return (result.exitCode, result.stdout, result.stderr)
}

/// Every process this run started, so that an interrupted run stops them all.
let started = LockedBox<[Int32]>([])

/// On SIGINT or SIGTERM: stop what this run started (the markets, daemons, PostgreSQL) and
/// remove its directory, then exit.
func stopEverythingOnSignals() {
    for signalNumber in [SIGINT, SIGTERM] {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler {
            privateEngine?.remove()
            for pid in started.value { kill(pid, SIGKILL) }
            cluster?.stop()
            try? FileManager.default.removeItem(at: root)
            print("interrupted: stopped \(started.value.count) process(es) this run started")
            exit(130)
        }
        source.resume()
        signalSources.append(source)
    }
}
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []
/// The run's own Docker engine, stopped gracefully on a signal (its containers go with it).
nonisolated(unsafe) var privateEngine: PrivateEngine?

/// A process left running, its output in a log file.
final class Background: @unchecked Sendable {
    let process = Process()
    let log: URL

    /// The process's stdout and stderr go to `log`; it runs in `directory` when one is given.
    init(_ arguments: [String], home: URL, log: URL, directory: URL? = nil) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment(home: home)
        if let directory { process.currentDirectoryURL = directory }
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        started.withLock { $0.append(process.processIdentifier) }
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    func waitFor(_ text: String, seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if output.contains(text) { return }
            guard process.isRunning else { break }
            usleep(50_000)
        }
        throw FaultError("no '\(text)' within \(seconds) s: \(output.suffix(2000))")
    }

    func stop(_ signal: Int32 = SIGTERM) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(40)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// A `market serve` process that can be killed and started again on the same port and books.
final class Market: @unchecked Sendable {
    let db: String
    let home: URL
    let arguments: [String]
    var port = 0
    var server: MarketProcess?

    init(name: String, arguments: [String], db: String? = nil) throws {
        home = root.appending(path: name)
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        self.db = db ?? "sqlite:" + home.appending(path: "market.sqlite").path
        self.arguments = arguments
        try start()
    }

    var url: String { "ws://127.0.0.1:\(port)/market" }

    /// Starts `market serve --json` (again on the same port after the first time); the port is
    /// the one the process itself reports on stdout once it listens.
    func start() throws {
        let server = try MarketProcess.start(
            db: db, home: home, port: port, extra: arguments,
            logFile: home.appending(path: "market-\(UUID().uuidString.prefix(6)).log"))
        started.withLock { $0.append(server.pid) }
        if port == 0 { port = server.port }
        self.server = server
    }

    func kill9() { server?.stop(SIGKILL) }
    func stop() { server?.stop() }

    /// `market verify --json`: the books' totals, and whether they balance.
    func verify() throws -> (minted: Int64, accounted: Int64, balanced: Bool, detail: String) {
        let result = try tool(["market", "verify", "--db", db, "--json"], home: home, check: false)
        guard let object = try JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any] else {
            throw FaultError("market verify printed no JSON: \(result.err)")
        }
        func micro(_ key: String) -> Int64 {
            if let value = object[key] as? Int64 { return value }
            if let value = object[key] as? Int { return Int64(value) }
            if let nested = object[key] as? [String: Any], let value = nested["micro"] as? Int { return Int64(value) }
            return Int64(String(describing: object[key] ?? "0").filter(\.isNumber)) ?? -1
        }
        return (micro("minted"), micro("accountsTotal"), result.code == 0, result.out)
    }

    /// A read view of the market, as JSON.
    func get(_ path: String) throws -> Any {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(port)\(path)"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return try JSONSerialization.jsonObject(with: data)
    }

    /// Tasks not yet settled, refunded or cancelled, by state.
    func unfinished() throws -> [String: Int] {
        guard let stats = try? get("/v1/stats") as? [String: Any], let tasks = stats["tasks"] as? [String: Int]
        else { throw FaultError("no stats from the market") }
        return tasks.filter {
            ["open", "assigned", "running", "delivered", "disputed"].contains($0.key) && $0.value > 0
        }
    }

    func waitUntilAllFinal(seconds: Double) throws {
        let deadline = Date().addingTimeInterval(seconds)
        var left: [String: Int] = [:]
        while Date() < deadline {
            left = (try? unfinished()) ?? ["unknown": 1]
            if left.isEmpty { return }
            usleep(200_000)
        }
        throw FaultError("tasks still unfinished after \(seconds) s: \(left)")
    }
}

/// The codes with which the market refuses a message for good (the task took another path).
let finalRefusals: [MarketError.Code] = [
    .invalidState, .notAParty, .unknownTask, .noOffer, .noFreeSlot, .excludedProvider, .priceAboveMax,
]

/// One lifecycle that survives the market being killed: every message has a fixed id, so a
/// resend after a reconnect is the same message (the market acts once); a refusal for good
/// (the task moved on while the market was down) ends it, and the sweeps finish the task.
/// With several URLs (instances of one market), each attempt connects each party to one of them
/// at random, so that most lifecycles cross instances.
func lifecycle(urls: [String], requester: KeyRing, provider: KeyRing, id: String) async -> Bool {
    for _ in 0..<120 {
        do {
            try await MarketConnection.with(url: urls.randomElement()!, keys: provider) { p in
                try await MarketConnection.with(url: urls.randomElement()!, keys: requester) { r in
                    try await p.request(.offerAdvertise, AdvertiseBody(price: 1_000_000, slots: 4), id: "\(id)-o")
                        .throwIfError()
                    let posted = try await r.request(
                        .taskPost, PostBody(taskId: id, maxPrice: 2_000_000, timeoutSeconds: 5), id: "\(id)-m1")
                    try posted.throwIfError()
                    try await p.request(.jobApproved, TaskRefBody(taskId: id), id: "\(id)-m2").throwIfError()
                    try await p.request(
                        .jobResult,
                        ResultBody(taskId: id, sealed: "eA==", resultHash: String(repeating: "c", count: 64)),
                        id: "\(id)-m3"
                    ).throwIfError()
                    try await r.request(.jobAccept, TaskRefBody(taskId: id), id: "\(id)-m4").throwIfError()
                }
            }
            return true
        } catch let refusal as MarketError where finalRefusals.contains(refusal.code) {
            return false
        } catch {
            try? await Task.sleep(for: .milliseconds(150))
        }
    }
    return false
}

func mint(_ market: Market, _ peer: PeerID, _ amount: Int) throws {
    try tool(
        ["market", "mint", "--db", market.db, "--to", peer.rawValue, "--amount", String(amount)], home: market.home)
}

/// Starts `process` with its output appended to `log`, and remembers it (an interrupted run
/// stops it).
func launch(_ process: Process, appendingTo log: URL) throws {
    if !FileManager.default.fileExists(atPath: log.path) {
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    }
    let handle = try FileHandle(forWritingTo: log)
    try handle.seekToEnd()
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    started.withLock { $0.append(process.processIdentifier) }
}

func peerID(of home: URL) throws -> PeerID {
    let keys = try JSONSerialization.jsonObject(with: Data(try tool(["keys", "show", "--json"], home: home).out.utf8))
    return try PeerID(validating: (keys as? [String: Any])?["peerId"] as? String ?? "")
}

/// The number of entries `audit --verify` found intact.
func auditEntries(_ home: URL) throws -> Int {
    let out = try tool(["audit", "--verify"], home: home, check: false).out
    guard let range = out.range(of: #"\d+ entries"#, options: .regularExpression) else { return -1 }
    return Int(out[range].prefix { $0.isNumber }) ?? -1
}

/// The bytes of these files (directories: every file in them), to see that nothing changed.
func digest(of urls: [URL]) throws -> [String: Data] {
    var files: [String: Data] = [:]
    for url in urls {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else { continue }
        if isDirectory.boolValue {
            for name in try FileManager.default.contentsOfDirectory(atPath: url.path) {
                files[url.appending(path: name).path] = try Data(contentsOf: url.appending(path: name))
            }
        } else {
            files[url.path] = try Data(contentsOf: url)
        }
    }
    return files
}

nonisolated var dockerSocket: String {
    let host = ProcessInfo.processInfo.environment["DOCKER_HOST"] ?? ""
    return host.hasPrefix("unix://") ? String(host.dropFirst(7)) : "/var/run/docker.sock"
}

func ensureImage(socket: String? = nil) async throws {
    try await DockerClient.withClient(configuration: .init(socketPath: socket ?? dockerSocket)) { docker in
        if try await docker.inspectImage(image) != nil { return }
        _ = try await docker.buildImage(
            context: try TarArchive.busyboxContext(binary: URL(fileURLWithPath: "/bin/busybox")), tags: [image],
            labels: Labels.make(kind: "test-image", version: ToolVersion.current))
    }
}

/// The checks every scenario with a provider ends with: no container of the provider left
/// running, every task final, every audit chain intact, the books balanced.
func finish(
    _ result: inout ScenarioResult, market: Market, homes: [URL], provider: URL, socket: String
) async throws {
    let owner = ParticipantPaths(environment: ["CMM_HOME": provider.path]).ownerID
    let left = try await DockerClient.withClient(configuration: .init(socketPath: socket)) { docker in
        try await docker.listContainers(labels: ["\(Labels.owner)=\(owner)"], all: false)
    }
    if !left.isEmpty { result.problems.append("\(left.count) container(s) of the provider still running") }
    try market.waitUntilAllFinal(seconds: 30)
    for home in homes {
        let audit = try tool(["audit", "--verify"], home: home, check: false)
        if audit.code != 0 { result.problems.append("audit --verify in \(home.lastPathComponent): \(audit.out)") }
    }
    let books = try market.verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
}
