import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import TestSupport

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

/// The Docker engine stopped and started again while a job runs in it: the job fails and the
/// requester is refunded; the daemon stays up, and once the engine is back its next job runs.
func engineRestarted(_ result: inout ScenarioResult) async throws {
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
    dockerHosts.withLock { $0[provider.path] = engine.host }
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
}

/// The egress proxy's socket removed while a job uses it: the job's next request fails, the
/// job still ends and settles, the daemon stays up, and the next job has a working way out.
func egressSocketRemoved(_ result: inout ScenarioResult) async throws {
    let context = root.appending(path: "runner-image")
    try FileManager.default.createDirectory(at: context, withIntermediateDirectories: true)
    let dockerfile = try TestRunnerImage.makeContext(in: context)
    try tool(
        ["docker:build", "--tag", TestRunnerImage.name, "--file", dockerfile.path],
        home: root.appending(path: "builder"))
    // Something on loopback for the job to reach through the proxy: it reads a line and answers
    // "pong". It reads first: a shell that answered and exited at once made socat's write of the
    // job's "ping" fail (EPIPE) on a loaded machine, and the connection closed before the answer.
    let port = try LoopbackSocket.freePort()
    let echo = Process()
    echo.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    echo.arguments = ["socat", "TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "SYSTEM:read line; echo pong"]
    echo.standardOutput = FileHandle.nullDevice
    echo.standardError = FileHandle.nullDevice
    try echo.run()
    started.withLock { $0.append(echo.processIdentifier) }
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
}

/// The participant's disk fills up: every command that would write fails with a clear error
/// and changes nothing; reads still work; a message queued before stays queued and goes out
/// once space returns.
func diskFull(_ result: inout ScenarioResult) async throws {
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
}
