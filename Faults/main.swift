import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import Participant

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
    var lost: Int64 { minted - accounted }
    var passed: Bool { problems.isEmpty && lost == 0 }
}

let quick = CommandLine.arguments.contains("--quick")
let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(
    path: "claude-max-market")
let root = FileManager.default.temporaryDirectory.appending(path: "cmm-faults-\(UUID().uuidString.prefix(8))")
try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: root) }
let image = "cmm-faults/busybox:latest"

func environment(home: URL) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CMM_") }
    environment["CMM_HOME"] = home.path
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

    init(name: String, arguments: [String]) throws {
        home = root.appending(path: name)
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        db = "sqlite:" + home.appending(path: "market.sqlite").path
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

    /// Tasks not yet settled, refunded or cancelled, by state.
    func unfinished() throws -> [String: Int] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(port)/v1/stats"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard let stats = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let tasks = stats["tasks"] as? [String: Int]
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
func lifecycle(url: String, requester: KeyRing, provider: KeyRing, id: String) async -> Bool {
    for _ in 0..<120 {
        do {
            try await MarketConnection.with(url: url, keys: provider) { p in
                try await MarketConnection.with(url: url, keys: requester) { r in
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
    let market = try Market(
        name: "killed",
        arguments: [
            "--approval-timeout", "4s", "--acceptance-window", "3s", "--open-timeout", "6s", "--heartbeat-timeout",
            "30s", "--run-grace", "2s", "--sweep-interval", "200ms",
        ])
    defer { market.stop() }
    let sealing = try SealingKeySet.generate(at: Date())
    let pairs = (0..<4).map { _ in (KeyRing.inMemory(sealing: sealing), KeyRing.inMemory(sealing: sealing)) }
    for (requester, _) in pairs {
        try mint(market, requester.peerID, 1000)
        result.minted += 1000 * Credits.scale
    }
    let total = quick ? 40 : 100
    let kills = quick ? 3 : 10
    let url = market.url
    let done = Box(0)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, (requester, provider)) in pairs.enumerated() {
            group.addTask {
                for n in 0..<(total / pairs.count) {
                    _ = await lifecycle(url: url, requester: requester, provider: provider, id: "k\(index)-\(n)")
                    done.update { $0 += 1 }
                }
            }
        }
        group.addTask {
            for kill in 0..<kills {
                // Spread over the run: wait until a share of the lifecycles passed, then at random.
                let due = (kill + 1) * total / (kills + 1)
                let wait = ContinuousClock.now + .seconds(120)
                while done.value < due && ContinuousClock.now < wait { try await Task.sleep(for: .milliseconds(20)) }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...150)))
                market.kill9()
                try market.start()
            }
        }
        try await group.waitForAll()
    }
    result.faults = kills
    result.lifecycles = total
    try market.waitUntilAllFinal(seconds: 30)
    let books = try market.verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
    if books.minted != result.minted { result.problems.append("minted \(books.minted), expected \(result.minted)") }
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

var dockerSocket: String {
    let host = ProcessInfo.processInfo.environment["DOCKER_HOST"] ?? ""
    return host.hasPrefix("unix://") ? String(host.dropFirst(7)) : "/var/run/docker.sock"
}

func ensureImage() async throws {
    try await DockerClient.withClient(configuration: .init(socketPath: dockerSocket)) { docker in
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
]
for (name, scenario) in scenarios {
    let started = ContinuousClock.now
    do {
        let result = try await scenario()
        results.append(result)
    } catch {
        var failed = ScenarioResult(name: name)
        failed.problems.append("\(error)")
        results.append(failed)
    }
    print(
        String(
            format: "  %@ %@ (%.1f s)", results.last!.passed ? "pass" : "FAIL", name,
            (ContinuousClock.now - started).inSeconds))
    for problem in results.last!.problems { print("      \(problem)") }
}

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
                result.lost / Credits.scale, result.passed ? "pass" : "FAIL"))
}
let lost = results.map(\.lost).reduce(0, +)
print(
    "credits lost in all: \(Credits(micro: lost)); scenarios passed: \(results.filter(\.passed).count) of \(results.count)"
)
exit(results.allSatisfy(\.passed) ? 0 : 1)
