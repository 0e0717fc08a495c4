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

/// Runs a program to the end; its exit code and output (standard output and error together).
@discardableResult
func run(_ program: String, _ arguments: [String]) throws -> (code: Int32, err: String) {
    let result = try CLIRunner.runProcess(
        URL(fileURLWithPath: "/usr/bin/env"), [program] + arguments, environment: ProcessInfo.processInfo.environment)
    return (result.exitCode, result.stdout + result.stderr)
}

let quick = CommandLine.arguments.contains("--quick")
let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(
    path: "claude-max-market")
let root = FileManager.default.temporaryDirectory.appending(path: "cmm-faults-\(UUID().uuidString.prefix(8))")
try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
let image = "cmm-faults/busybox:latest"

/// Homes whose tool talks to another Docker engine than the default (`DOCKER_HOST`).
let dockerHosts = Box<[String: String]>([:])

func environment(home: URL) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CMM_") }
    environment["CMM_HOME"] = home.path
    if let host = dockerHosts.value[home.path] { environment["DOCKER_HOST"] = host }
    environment.removeValue(forKey: "ANTHROPIC_API_KEY")
    return environment
}

/// Runs the tool to the end; its exit code and output.
@discardableResult
func tool(_ arguments: [String], home: URL, check: Bool = true) throws -> (code: Int32, out: String, err: String) {
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    process.environment = environment(home: home)
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    started.update { $0.append(process.processIdentifier) }
    let errData = Box(Data())
    let reader = Thread { errData.value = err.fileHandleForReading.readDataToEndOfFile() }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !errData.done { usleep(1000) }
    let result = (
        process.terminationStatus, String(decoding: outData, as: UTF8.self),
        String(decoding: errData.value, as: UTF8.self)
    )
    if check && result.0 != 0 {
        throw FaultError("`claude-max-market \(arguments.joined(separator: " "))` exited \(result.0): \(result.2)")
    }
    return result
}

final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    private var isDone = false
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set {
            lock.withLock {
                stored = newValue
                isDone = true
            }
        }
    }
    var done: Bool { lock.withLock { isDone } }

    /// Reads and changes the value in one step (a counter shared by concurrent tasks).
    func update(_ body: (inout T) -> Void) { lock.withLock { body(&stored) } }
}

/// Every process this run started, so that an interrupted run stops them all.
let started = Box<[Int32]>([])

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

    init(_ arguments: [String], home: URL, log: URL) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment(home: home)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        started.update { $0.append(process.processIdentifier) }
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
    var server: Background?

    init(name: String, arguments: [String], db: String? = nil) throws {
        home = root.appending(path: name)
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        self.db = db ?? "sqlite:" + home.appending(path: "market.sqlite").path
        self.arguments = arguments
        try start()
    }

    var url: String { "ws://127.0.0.1:\(port)/market" }

    func start() throws {
        let server = try Background(
            ["market", "serve", "--port", String(port), "--db", db] + arguments, home: home,
            log: home.appending(path: "market-\(UUID().uuidString.prefix(6)).log"))
        try server.waitFor("listening on", seconds: 30)
        if port == 0, let range = server.output.range(of: #":(\d+)/market"#, options: .regularExpression) {
            port = Int(server.output[range].dropFirst().dropLast("/market".count)) ?? 0
        }
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
let finalRefusals = [
    "invalid_state", "not_a_party", "unknown_task", "no_offer", "no_free_slot", "excluded_provider", "price_above_max",
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
        } catch {
            let text = "\(error)"
            if finalRefusals.contains(where: { text.hasPrefix($0) }) { return false }
            try? await Task.sleep(for: .milliseconds(150))
        }
    }
    return false
}

func mint(_ market: Market, _ peer: PeerID, _ amount: Int) throws {
    try tool(
        ["market", "mint", "--db", market.db, "--to", peer.rawValue, "--amount", String(amount)], home: market.home)
}

// MARK: Scenarios

/// SIGKILL of the market server at random points of many lifecycles, each time started again.
func marketKilled() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "market server SIGKILLed mid-lifecycle (SQLite)")
    let market = try Market(name: "killed", arguments: marketTimeouts)
    defer { market.stop() }
    try await sharedBooks(&result, instances: [market], lifecycles: quick ? 40 : 100, faults: quick ? 3 : 10) { _ in
        market.kill9()
        try market.start()
    }
    return result
}

/// A provider daemon killed mid-job: the requester is refunded, the provider blamed, and when it
/// comes back its container is gone and its books are whole.
func providerKilled() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "provider daemon SIGKILLed mid-job")
    let market = try Market(
        name: "provider",
        arguments: [
            "--heartbeat-timeout", "3s", "--open-timeout", "6s", "--run-grace", "1s", "--sweep-interval", "200ms",
        ])
    defer { market.stop() }
    let provider = root.appending(path: "provider-home")
    let requester = root.appending(path: "requester-home")
    try tool(["terms", "--accept"], home: provider)
    try tool(["opt-in", "--claude-jobs", "--yes"], home: provider)
    try tool(
        [
            "config", "--set", "market.url=\(market.url)", "--set", "approval.mode=policy", "--set",
            "docker.image=\(image)", "--set", "docker.warmPool=1",
        ], home: provider)
    try tool(["advertise", "--slots", "1", "--price", "2"], home: provider)
    try tool(["config", "--set", "market.url=\(market.url)"], home: requester)
    let keys = try JSONSerialization.jsonObject(
        with: Data(try tool(["keys", "show", "--json"], home: requester).out.utf8))
    let requesterID = try PeerID(validating: (keys as! [String: Any])["peerId"] as! String)
    try mint(market, requesterID, 20)
    result.minted = 20 * Credits.scale
    let daemon = try Background(
        ["provide", "--backend", "command", "--", "sh", "-c", "echo working; sleep 120"], home: provider,
        log: root.appending(path: "provide.log"))
    try daemon.waitFor("offer live", seconds: 30)
    let submit = try Background(
        ["submit", "--prompt", "a long job", "--max-price", "5", "--wait", "--json"], home: requester,
        log: root.appending(path: "submit.log"))
    try daemon.waitFor("approved and started", seconds: 30)
    try submit.waitFor("working", seconds: 30)
    daemon.stop(SIGKILL)
    result.faults = 1
    result.lifecycles = 1
    let deadline = Date().addingTimeInterval(60)
    while submit.process.isRunning && Date() < deadline { usleep(100_000) }
    if !submit.output.contains("\"state\":\"refunded\"") {
        result.problems.append("the requester was not refunded: \(submit.output.suffix(400))")
    }
    submit.stop(SIGKILL)
    // The provider comes back: its dead job's container and its old warm container go.
    let again = try Background(
        ["provide", "--backend", "command", "--", "cat"], home: provider, log: root.appending(path: "provide-2.log"))
    try again.waitFor("offer live", seconds: 30)
    again.stop()
    let owner = ParticipantPaths(environment: ["CMM_HOME": provider.path]).ownerID
    let left = try await DockerClient.withClient(configuration: .init(socketPath: dockerSocket)) { docker in
        try await docker.listContainers(labels: ["\(Labels.owner)=\(owner)"], all: false)
    }
    if !left.isEmpty { result.problems.append("\(left.count) container(s) of the provider still running") }
    try market.waitUntilAllFinal(seconds: 20)
    for home in [provider, requester] {
        let audit = try tool(["audit", "--verify"], home: home, check: false)
        if audit.code != 0 { result.problems.append("audit --verify in \(home.lastPathComponent): \(audit.out)") }
    }
    let books = try market.verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
    return result
}

/// A client whose clock is ten minutes off is refused at once, with the reason.
func clockSkew() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "client clock 10 minutes off")
    let market = try Market(name: "skew", arguments: [])
    defer { market.stop() }
    let keys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
    for offset: Int64 in [600_000, -600_000] {
        result.faults += 1
        let started = ContinuousClock.now
        do {
            try await MarketConnection.with(
                url: market.url, keys: keys, clock: { Int64(Date().timeIntervalSince1970 * 1000) + offset }
            ) { _ in }
            result.problems.append("a clock \(offset / 60_000) min off was accepted")
        } catch {
            let elapsed = ContinuousClock.now - started
            if !"\(error)".contains("timestamp") {
                result.problems.append("refused without naming the clock: \(error)")
            }
            if elapsed > .seconds(5) { result.problems.append("the refusal took \(elapsed)") }
        }
    }
    return result
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
    started.update { $0.append(process.processIdentifier) }
}

/// A throwaway PostgreSQL cluster this run owns: started, stopped and started again by its PID.
final class PostgresCluster: @unchecked Sendable {
    let directory = root.appending(path: "postgres")
    let bin: String
    let port: Int
    var runner: Process?

    init() throws {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.sorted(by: { $0.compare($1, options: .numeric) == .orderedAscending }).last
        else { throw ScenarioSkipped(description: "PostgreSQL is not installed (scripts/faults.sh installs it)") }
        bin = "/usr/lib/postgresql/\(version)/bin"
        port = try LoopbackSocket.freePort()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        guard try run("chown", ["postgres", directory.path]).code == 0 else {
            throw ScenarioSkipped(description: "cannot hand a directory to the postgres user (run as root)")
        }
        let initdb = try run(
            "runuser",
            [
                "-u", "postgres", "--", "\(bin)/initdb", "-D", directory.appending(path: "data").path, "-A",
                "trust", "-U", "postgres",
            ])
        guard initdb.code == 0 else { throw ScenarioSkipped(description: "initdb failed: \(initdb.err.suffix(300))") }
        try start()
    }

    func url(_ database: String) -> String { "postgres://postgres@127.0.0.1:\(port)/\(database)" }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "runuser", "-u", "postgres", "--", "\(bin)/postgres", "-D", directory.appending(path: "data").path, "-k",
            directory.path, "-h", "127.0.0.1", "-p", String(port), "-c", "fsync=off", "-c", "max_connections=200",
        ]
        let log = directory.appending(path: "postgres.log")
        try launch(process, appendingTo: log)
        runner = process
        for _ in 0..<100 {
            if try run("psql", [url("postgres"), "-qAtc", "SELECT 1"]).code == 0 { return }
            usleep(100_000)
        }
        throw FaultError(
            "PostgreSQL did not start: \((try? String(contentsOf: log, encoding: .utf8))?.suffix(500) ?? "")")
    }

    /// Stops the postmaster by its own PID (fast shutdown: sessions are cut off).
    func stop() {
        let pidFile = directory.appending(path: "data/postmaster.pid")
        if let text = try? String(contentsOf: pidFile, encoding: .utf8),
            let pid = Int32(text.split(separator: "\n").first ?? "")
        {
            kill(pid, SIGINT)
            let deadline = Date().addingTimeInterval(30)
            while kill(pid, 0) == 0 && Date() < deadline { usleep(50_000) }
        }
        runner?.waitUntilExit()
        runner = nil
    }

    func createDatabase(_ name: String) throws -> String {
        let created = try run("psql", [url("postgres"), "-qAtc", "CREATE DATABASE \(name)"])
        guard created.code == 0 else { throw FaultError("CREATE DATABASE \(name): \(created.err)") }
        return url(name)
    }
}

/// The books' guarantees after many lifecycles on `instances` sharing one database, while
/// `fault` is injected `count` times, spread over the run.
func sharedBooks(
    _ result: inout ScenarioResult, instances: [Market], lifecycles total: Int, faults count: Int,
    fault: @escaping @Sendable (Int) async throws -> Void
) async throws {
    let sealing = try SealingKeySet.generate(at: Date())
    let pairs = (0..<4).map { _ in (KeyRing.inMemory(sealing: sealing), KeyRing.inMemory(sealing: sealing)) }
    for (requester, _) in pairs {
        try mint(instances[0], requester.peerID, 1000)
        result.minted += 1000 * Credits.scale
    }
    let urls = instances.map(\.url)
    let done = Box(0)
    let prefix = UUID().uuidString.prefix(4)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, (requester, provider)) in pairs.enumerated() {
            group.addTask {
                for n in 0..<(total / pairs.count) {
                    _ = await lifecycle(
                        urls: urls, requester: requester, provider: provider, id: "\(prefix)\(index)-\(n)")
                    done.update { $0 += 1 }
                }
            }
        }
        group.addTask {
            for index in 0..<count {
                let due = (index + 1) * total / (count + 1)
                let wait = ContinuousClock.now + .seconds(120)
                while done.value < due && ContinuousClock.now < wait { try await Task.sleep(for: .milliseconds(20)) }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...150)))
                try await fault(index)
            }
        }
        try await group.waitForAll()
    }
    result.faults = count
    result.lifecycles = total
    try instances[0].waitUntilAllFinal(seconds: 40)
    let books = try instances[0].verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
    if books.minted != result.minted { result.problems.append("minted \(books.minted), expected \(result.minted)") }
}

let marketTimeouts = [
    "--approval-timeout", "4s", "--acceptance-window", "3s", "--open-timeout", "6s", "--heartbeat-timeout", "30s",
    "--run-grace", "2s", "--sweep-interval", "200ms",
]

/// `sharedBooks` on two instances of one market on a new PostgreSQL database; both must still
/// run at the end.
func twoInstances(
    _ result: inout ScenarioResult, cluster: PostgresCluster, database: String, faults: (quick: Int, full: Int),
    fault: @escaping @Sendable (_ index: Int, _ instances: [Market]) async throws -> Void
) async throws {
    let db = try cluster.createDatabase(database)
    var instances: [Market] = []
    defer { for market in instances { market.stop() } }
    for name in ["a", "b"] {
        instances.append(try Market(name: "\(database)-\(name)", arguments: marketTimeouts, db: db))
    }
    let both = instances
    try await sharedBooks(
        &result, instances: both, lifecycles: quick ? 40 : 100, faults: quick ? faults.quick : faults.full
    ) { try await fault($0, both) }
    for market in both where market.server?.process.isRunning != true {
        result.problems.append("\(market.home.lastPathComponent) is not running at the end")
    }
}

/// Two `market serve` instances on one PostgreSQL database; one of them SIGKILLed again and
/// again mid-lifecycle and started again, while the other goes on.
func twoInstancesOneKilled(_ cluster: PostgresCluster) async throws -> ScenarioResult {
    var result = ScenarioResult(name: "one of two instances SIGKILLed (PostgreSQL)")
    try await twoInstances(&result, cluster: cluster, database: "faults_two", faults: (2, 6)) { index, instances in
        let victim = instances[index % 2]
        victim.kill9()
        try victim.start()
    }
    return result
}

/// PostgreSQL itself stopped (fast shutdown) and started again under load: the market
/// processes stay up, reconnect, and the books balance.
func postgresRestarted(_ cluster: PostgresCluster) async throws -> ScenarioResult {
    var result = ScenarioResult(name: "PostgreSQL restarted under load")
    try await twoInstances(&result, cluster: cluster, database: "faults_restart", faults: (1, 3)) { _, _ in
        cluster.stop()
        try await Task.sleep(for: .milliseconds(500))
        try cluster.start()
    }
    return result
}

/// A Docker engine of this run's own (its socket, data and state under the run's directory), so
/// that it can be stopped and started again without touching the machine's engine.
final class PrivateEngine: @unchecked Sendable {
    let directory = root.appending(path: "engine")
    var socket: String { directory.appending(path: "d.sock").path }
    var host: String { "unix://\(socket)" }
    var process: Process?

    init() throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try start()
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "dockerd", "--host", host, "--data-root", directory.appending(path: "data").path, "--exec-root",
            directory.appending(path: "exec").path, "--pidfile", directory.appending(path: "d.pid").path,
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--shutdown-timeout", "2",
        ]
        let log = directory.appending(path: "dockerd.log")
        do { try launch(process, appendingTo: log) } catch {
            throw ScenarioSkipped(description: "cannot start dockerd: \(error)")
        }
        self.process = process
        for _ in 0..<120 {
            if try run("curl", ["-sf", "--unix-socket", socket, "http://d/_ping"]).code == 0 { return }
            guard process.isRunning else { break }
            usleep(250_000)
        }
        throw FaultError(
            "a private dockerd did not start: \((try? String(contentsOf: log, encoding: .utf8))?.suffix(600) ?? "")")
    }

    /// SIGTERM and wait: the engine stops its containers (2 s grace) and exits.
    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(40)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        self.process = nil
    }

    /// Stops the engine and removes what it left (mounts under its directories).
    func remove() {
        stop()
        _ = try? run("sh", ["-c", "grep -o ' \(directory.path)[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"])
    }
}

/// A provider home and a requester home on `market`, the provider opted in with a policy.
func participants(_ name: String, market: Market, settings: [String]) throws -> (provider: URL, requester: URL) {
    let provider = root.appending(path: "\(name)-provider")
    let requester = root.appending(path: "\(name)-requester")
    try tool(["terms", "--accept"], home: provider)
    try tool(["opt-in", "--claude-jobs", "--yes"], home: provider)
    try tool(
        ["config", "--set", "market.url=\(market.url)", "--set", "approval.mode=policy"]
            + settings.flatMap { ["--set", $0] }, home: provider)
    try tool(["advertise", "--slots", "1", "--price", "2"], home: provider)
    try tool(["config", "--set", "market.url=\(market.url)"], home: requester)
    try mint(market, try peerID(of: requester), 20)
    return (provider, requester)
}

/// `submit --wait --json` of `prompt` in the background, once `daemon`'s offer is live.
func submitWhenLive(_ prompt: String, daemon: Background, requester: URL, log: String) throws -> Background {
    try daemon.waitFor("offer live", seconds: 30)
    return try Background(
        ["submit", "--prompt", prompt, "--max-price", "5", "--wait", "--json"], home: requester,
        log: root.appending(path: log))
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

/// The Docker engine stopped and started again while a job runs in it: the job fails and the
/// requester is refunded; the daemon stays up, and once the engine is back its next job runs.
func engineRestarted() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "Docker engine restarted mid-job")
    let engine = try PrivateEngine()
    privateEngine = engine
    defer {
        engine.remove()
        privateEngine = nil
    }
    try await ensureImage(socket: engine.socket)
    let market = try Market(
        name: "engine",
        arguments: [
            "--open-timeout", "6s", "--run-grace", "1s", "--acceptance-window", "3s", "--sweep-interval", "200ms",
        ])
    defer { market.stop() }
    let (provider, requester) = try participants(
        "engine", market: market, settings: ["docker.image=\(image)", "docker.warmPool=1"])
    dockerHosts.update { $0[provider.path] = engine.host }
    result.minted = 20 * Credits.scale
    let daemon = try Background(
        [
            "provide", "--backend", "command", "--", "sh", "-c",
            "p=$(cat); echo \"working on $p\"; case \"$p\" in *first*) sleep 30;; esac",
        ], home: provider,
        log: root.appending(path: "engine-provide.log"))
    defer { daemon.stop() }
    let submit = try submitWhenLive("the first", daemon: daemon, requester: requester, log: "engine-submit.log")
    try submit.waitFor("working on the first", seconds: 30)
    engine.stop()
    try await Task.sleep(for: .seconds(1))
    try engine.start()
    result.faults = 1
    let deadline = Date().addingTimeInterval(60)
    while submit.process.isRunning && Date() < deadline { usleep(100_000) }
    submit.stop(SIGKILL)
    // The job was killed with the engine: the provider's side failed, not the job, so the
    // provider reports it (job.failed) and the requester is refunded.
    if !submit.output.contains("\"state\":\"refunded\"") {
        result.problems.append("the requester was not refunded: \(submit.output.suffix(400))")
    }
    if !daemon.output.contains("killed from outside the job") {
        result.problems.append("the daemon did not say why the job failed: \(daemon.output.suffix(400))")
    }
    if !daemon.process.isRunning { result.problems.append("the provider daemon exited: \(daemon.output.suffix(400))") }

    // The engine is back: the next job runs (a fresh container, the pool refilled).
    let second = try tool(
        ["submit", "--prompt", "the second", "--max-price", "5", "--wait", "--json"], home: requester, check: false)
    if !second.out.contains("working on the second") || !second.out.contains("\"state\":\"settled\"") {
        result.problems.append("the job after the restart: \(second.out.suffix(300)) \(second.err.suffix(300))")
    }
    result.lifecycles = 2
    daemon.stop()
    try await finish(&result, market: market, homes: [provider, requester], provider: provider, socket: engine.socket)
    return result
}

/// The egress proxy's socket removed while a job uses it: the job's next request fails, the
/// job still ends and settles, the daemon stays up, and the next job has a working way out.
func egressSocketRemoved() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "egress proxy socket removed mid-job")
    let context = root.appending(path: "runner-image")
    try FileManager.default.createDirectory(at: context, withIntermediateDirectories: true)
    let dockerfile = try TestRunnerImage.makeContext(in: context)
    try tool(
        ["docker:build", "--tag", TestRunnerImage.name, "--file", dockerfile.path],
        home: root.appending(path: "builder"))
    // Something on loopback for the job to reach through the proxy: it answers "pong".
    let port = try LoopbackSocket.freePort()
    let echo = Process()
    echo.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    echo.arguments = ["socat", "TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo pong"]
    echo.standardOutput = FileHandle.nullDevice
    echo.standardError = FileHandle.nullDevice
    try echo.run()
    started.update { $0.append(echo.processIdentifier) }
    defer {
        kill(echo.processIdentifier, SIGKILL)
        echo.waitUntilExit()
    }
    let market = try Market(name: "egress", arguments: ["--sweep-interval", "200ms"])
    defer { market.stop() }
    // Short socket paths (the run directory is shallow) and no warm pool: one proxy, the job's.
    let (provider, requester) = try participants(
        "egress", market: market,
        settings: ["docker.image=\(TestRunnerImage.name)", "docker.warmPool=0", "egress.allowlist=127.0.0.1:\(port)"])
    result.minted = 20 * Credits.scale
    let ask = "echo ping | socat -t 5 -T 5 - PROXY:127.0.0.1:127.0.0.1:\(port),proxyport=3128 2>&1 | head -1"
    let daemon = try Background(
        [
            "provide", "--backend", "command", "--", "sh", "-c",
            "echo \"first: $(\(ask))\"; sleep 4; echo \"second: $(\(ask))\"",
        ],
        home: provider, log: root.appending(path: "egress-provide.log"))
    defer { daemon.stop() }
    let submit = try submitWhenLive("go", daemon: daemon, requester: requester, log: "egress-submit.log")
    try submit.waitFor("first: ", seconds: 60)
    let sockets = try run(
        "sh",
        [
            "-c",
            "find \(provider.path)/run /tmp -maxdepth 3 -name egress.sock -newer \(root.path) "
                + "\\( -path '\(provider.path)/*' -o -path '/tmp/cmm-egress-*' \\) -print -delete",
        ])
    result.faults = 1
    if sockets.code != 0 || !sockets.err.contains("egress.sock") {
        result.problems.append("could not find and remove the job's socket: \(sockets.err)")
    }
    let deadline = Date().addingTimeInterval(60)
    while submit.process.isRunning && Date() < deadline { usleep(100_000) }
    submit.stop(SIGKILL)
    let output = submit.output
    if !output.contains("first: pong") {
        result.problems.append("the job never reached its target: \(output.suffix(300))")
    }
    if output.contains("second: pong") { result.problems.append("the job still got out after its socket was removed") }
    if !output.contains("\"state\":\"settled\"") {
        result.problems.append("the job did not settle: \(output.suffix(300))")
    }
    if !daemon.process.isRunning { result.problems.append("the provider daemon exited: \(daemon.output.suffix(400))") }
    let next = try tool(
        ["submit", "--prompt", "again", "--max-price", "5", "--wait", "--json"], home: requester, check: false)
    if !next.out.contains("second: pong") {
        result.problems.append("the next job had no working egress: \(next.out.suffix(300)) \(next.err.suffix(200))")
    }
    result.lifecycles = 2
    daemon.stop()
    try await finish(&result, market: market, homes: [provider, requester], provider: provider, socket: dockerSocket)
    return result
}

/// The participant's disk fills up: every command that would write fails with a clear error
/// and changes nothing; reads still work; a message queued before stays queued and goes out
/// once space returns.
func diskFull() async throws -> ScenarioResult {
    var result = ScenarioResult(name: "participant's disk full (home on an 8 MB tmpfs)")
    let disk = root.appending(path: "small-disk")
    try FileManager.default.createDirectory(at: disk, withIntermediateDirectories: true)
    let mounted = try run("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", disk.path])
    guard mounted.code == 0 else { throw ScenarioSkipped(description: "cannot mount a tmpfs: \(mounted.err)") }
    defer { _ = try? run("umount", ["-l", disk.path]) }
    let market = try Market(name: "disk", arguments: [])
    defer { market.stop() }
    let home = disk.appending(path: "home")
    try tool(["terms", "--accept"], home: home)
    try tool(["opt-in", "--claude-jobs", "--yes"], home: home)
    try tool(["config", "--set", "market.url=\(market.url)"], home: home)
    let peer = try peerID(of: home)

    // The market is away: the offer waits in the outbox.
    market.stop()
    let queued = try tool(["advertise", "--slots", "3", "--price", "7"], home: home, check: false)
    if queued.code != 75 { result.problems.append("advertise with the market away exited \(queued.code), not 75") }
    let entriesBefore = try auditEntries(home)
    let filesBefore = try digest(of: [home.appending(path: "config.json"), home.appending(path: "keys")])

    // Fill the disk to the last block.
    let filler = disk.appending(path: "filler")
    _ = FileManager.default.createFile(atPath: filler.path, contents: nil)
    let handle = try FileHandle(forWritingTo: filler)
    for size in [1 << 20, 4096, 512] {
        let chunk = Data(count: size)
        while (try? handle.write(contentsOf: chunk)) != nil {}
    }
    try? handle.close()
    result.faults = 1

    let writers = [
        ["advertise", "--slots", "2", "--price", "3"], ["withdraw"], ["config", "--set", "limits.concurrentJobs=2"],
        ["keys", "rotate"], ["opt-out", "--yes"], ["bid", "--task-id", "t-full", "--price", "1"],
    ]
    for command in writers {
        let answer = try tool(command, home: home, check: false)
        let clear = answer.err.contains("is full") || answer.err.contains("No space left on device")
        if answer.code == 0 || answer.code > 128 || !clear {
            result.problems.append(
                "`\(command.joined(separator: " "))` on a full disk exited \(answer.code): \(answer.err.suffix(300))")
        }
    }
    // Nothing changed, and reading still works with the disk full.
    let verified = try tool(["audit", "--verify"], home: home, check: false)
    if verified.code != 0 { result.problems.append("audit --verify on a full disk: \(verified.err)") }
    if try auditEntries(home) != entriesBefore { result.problems.append("the audit log changed on a full disk") }
    if try digest(of: [home.appending(path: "config.json"), home.appending(path: "keys")]) != filesBefore {
        result.problems.append("the config or the keys changed on a full disk")
    }
    let status = try tool(["status", "--json"], home: home, check: false)
    let outbox =
        ((try? JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])?["market"]
        as? [String: Any])?["outbox"] as? Int
    if outbox != 1 {
        result.problems.append("status on a full disk: outbox \(outbox.map(String.init) ?? "?"), expected 1")
    }

    // Space returns, the market comes back: the queued offer goes out, once.
    try FileManager.default.removeItem(at: filler)
    try market.start()
    let synced = try tool(["market", "sync", "--json"], home: home, check: false)
    if synced.code != 0 { result.problems.append("market sync exited \(synced.code): \(synced.err)") }
    let offers = try market.get("/v1/offers") as? [[String: Any]] ?? []
    let mine = offers.filter { $0["provider"] as? String == peer.rawValue }
    if mine.count != 1 || mine.first?["slots"] as? Int != 3 || mine.first?["price"] as? Int != 7_000_000 {
        result.problems.append("the queued offer did not reach the market: \(mine)")
    }
    if try tool(["audit", "--verify"], home: home, check: false).code != 0 {
        result.problems.append("audit --verify after the disk recovered")
    }
    result.lifecycles = 1
    let books = try market.verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
    return result
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

// MARK: Main

print("claude-max-market fault suite\(quick ? " (quick)" : "") — real processes on loopback")
var results: [ScenarioResult] = []
let scenarios: [(String, () async throws -> ScenarioResult)] = [
    ("market server SIGKILLed mid-lifecycle (SQLite)", marketKilled),
    (
        "provider daemon SIGKILLed mid-job",
        {
            try await ensureImage(); return try await providerKilled()
        }
    ),
    ("client clock 10 minutes off", clockSkew),
    ("participant's disk full", diskFull),
    ("Docker engine restarted mid-job", engineRestarted),
    ("egress proxy socket removed mid-job", egressSocketRemoved),
    ("one of two instances SIGKILLed (PostgreSQL)", { try await twoInstancesOneKilled(try postgres()) }),
    ("PostgreSQL restarted under load", { try await postgresRestarted(try postgres()) }),
]

/// The run's PostgreSQL cluster, started on first use and stopped at the end.
nonisolated(unsafe) var cluster: PostgresCluster?
func postgres() throws -> PostgresCluster {
    if let cluster { return cluster }
    cluster = try PostgresCluster()
    return cluster!
}
stopEverythingOnSignals()

/// `--only TEXT`: the scenarios whose name contains TEXT.
let only = CommandLine.arguments.firstIndex(of: "--only").flatMap {
    $0 + 1 < CommandLine.arguments.count ? CommandLine.arguments[$0 + 1] : nil
}
for (name, scenario) in scenarios where only.map({ name.localizedCaseInsensitiveContains($0) }) ?? true {
    let started = ContinuousClock.now
    do {
        let result = try await scenario()
        results.append(result)
    } catch let skip as ScenarioSkipped {
        var skipped = ScenarioResult(name: name)
        if inCI { skipped.problems.append("cannot run in CI: \(skip)") } else { skipped.skipped = "\(skip)" }
        results.append(skipped)
    } catch {
        var failed = ScenarioResult(name: name)
        failed.problems.append("\(error)")
        results.append(failed)
    }
    let verdict = results.last!.skipped != nil ? "skip" : results.last!.passed ? "pass" : "FAIL"
    print(
        String(
            format: "  %@ %@ (%.1f s)", verdict, name,
            (ContinuousClock.now - started).inSeconds))
    for problem in results.last!.problems { print("      \(problem)") }
    if let reason = results.last!.skipped { print("      skipped: \(reason)") }
}

cluster?.stop()

print("")
print(
    "scenario".padding(toLength: 50, withPad: " ", startingAt: 0)
        + " faults  lifecycles  minted      accounted   lost  result"
)
for result in results {
    print(
        result.name.padding(toLength: 50, withPad: " ", startingAt: 0)
            + String(
                format: " %6d  %10d  %-10@  %-10@  %4lld  %@", result.faults, result.lifecycles,
                Credits(micro: result.minted).description, Credits(micro: result.accounted).description,
                result.lost / Credits.scale,
                result.skipped != nil ? "skip" : result.passed ? "pass" : "FAIL"))
}
let lost = results.map(\.lost).reduce(0, +)
let skips = results.filter { $0.skipped != nil }.count
print(
    "credits lost in all: \(Credits(micro: lost)); scenarios passed: "
        + "\(results.filter { $0.passed && $0.skipped == nil }.count) of \(results.count)"
        + (skips > 0 ? " (\(skips) skipped)" : "")
)
if results.allSatisfy(\.passed) {
    try? FileManager.default.removeItem(at: root)
    exit(0)
}
print("the logs of this run are kept in \(root.path)")
exit(1)
