import Foundation
import MarketCore
import TestSupport

/// Participants distrust the market (#32, point 7): a hostile stand-in market
/// (`Fuzz/hostile_market.py`) relays `provide` and `submit --wait` to a real market and sends
/// them mutated frames of every kind besides. Both must stay up or stop with a clear error (never
/// a signal), write nothing outside their homes, and the real books must balance.
func hostileMarket(_ result: inout ScenarioResult) async throws {
    let target =
        ProcessInfo.processInfo.environment["CMM_HOSTILE_FRAMES"].flatMap(Int.init) ?? (quick ? 1_500 : 10_000)
    let market = try Market(name: "hostile", arguments: marketTimeouts)
    defer { market.stop() }
    let proxy = try HostileProxy(upstream: "ws://127.0.0.1:\(market.port)", mutations: target)
    defer { proxy.stop() }
    let url = "ws://127.0.0.1:\(proxy.port)/market"

    let provider = root.appending(path: "hostile-provider")
    let requester = root.appending(path: "hostile-requester")
    // Where the processes run, and a workspace sent without --apply: neither may change.
    let cwd = root.appending(path: "hostile-cwd")
    let workspace = root.appending(path: "hostile-workspace")
    try FileManager.default.createDirectory(at: cwd, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
    try Data("print('hello')\n".utf8).write(to: workspace.appending(path: "main.py"))
    let workspaceBefore = try digest(of: [workspace])

    try tool(["terms", "--accept"], home: provider)
    try tool(["opt-in", "--claude-jobs", "--yes"], home: provider)
    try tool(
        [
            "config", "--set", "market.url=\(market.url)", "--set", "approval.mode=policy", "--set",
            "docker.image=\(image)",
        ], home: provider)
    // Set up through the real market; from here on both sides talk through the hostile one.
    try tool(["advertise", "--slots", "2", "--price", "1"], home: provider)
    try tool(["config", "--set", "market.url=\(url)"], home: provider)
    // Many short jobs: the provider's own daily limit is not what this scenario is about.
    try tool(
        [
            "config", "--set", "limits.dailyTasks=10000", "--set", "limits.weeklyTasks=70000", "--set",
            "limits.monthlyTasks=310000",
        ], home: provider)
    try tool(["config", "--set", "market.url=\(url)"], home: requester)
    let requesterID = try peerID(of: requester)
    try mint(market, requesterID, 1_000)
    result.minted = 1_000 * Credits.scale

    // `cat` echoes what the job is given: the prompt, and a workspace job's archive.
    var daemon = try Background(
        ["provide", "--backend", "command", "--", "cat"], home: provider,
        log: root.appending(path: "hostile-provide-0.log"), directory: cwd)
    var daemons = 1
    var submits = 0
    var progress = (mutations: 0, submits: 0)
    let deadline = Date().addingTimeInterval(quick ? 240 : 900)
    while proxy.mutations < target && Date() < deadline {
        // Twenty jobs in a row that drew no hostile frame: the stand-in is not in the way.
        if proxy.mutations > progress.mutations {
            progress = (proxy.mutations, submits)
        } else if submits - progress.submits >= 20 {
            result.problems.append("twenty jobs drew no hostile frame (\(proxy.mutations) sent)")
            break
        }
        if !daemon.process.isRunning {
            judge(daemon, "provide", into: &result)
            daemons += 1
            daemon = try Background(
                ["provide", "--backend", "command", "--", "cat"], home: provider,
                log: root.appending(path: "hostile-provide-\(daemons).log"), directory: cwd)
        }
        submits += 1
        var arguments = [
            "submit", "--prompt", "hostile market job \(submits)", "--max-price", "2", "--timeout", "30", "--wait",
            "--wait-timeout", "20s", "--json",
        ]
        if submits % 2 == 0 { arguments += ["--dir", workspace.path] }
        let submit = try Background(
            arguments, home: requester, log: root.appending(path: "hostile-submit-\(submits).log"), directory: cwd)
        submit.process.waitUntilExit()
        judge(submit, "submit \(submits)", into: &result)
    }
    if proxy.mutations < target {
        result.problems.append("only \(proxy.mutations) of \(target) mutated frames were sent in time")
    }
    result.faults = proxy.mutations
    result.lifecycles = submits
    // The market is honest again: a last job must go through.
    let last = try tool(
        ["submit", "--prompt", "after the storm", "--max-price", "2", "--wait", "--wait-timeout", "60s", "--json"],
        home: requester, check: false)
    if last.code != 0 || !last.out.contains("\"state\":\"settled\"") {
        result.problems.append("a job after the hostile frames did not settle: \(last.err.suffix(400))")
    }
    daemon.stop()
    judge(daemon, "provide", into: &result)
    proxy.stop()

    if let left = try? FileManager.default.contentsOfDirectory(atPath: cwd.path), !left.isEmpty {
        result.problems.append("written outside the homes, in the processes' directory: \(left)")
    }
    if try digest(of: [workspace]) != workspaceBefore {
        result.problems.append("the workspace sent without --apply changed")
    }
    try await finish(&result, market: market, homes: [provider, requester], provider: provider, socket: dockerSocket)
}

/// A process under attack may stop, with a clear error; it may not die of a signal, nor exit
/// non-zero without saying why.
func judge(_ process: Background, _ name: String, into result: inout ScenarioResult) {
    guard !process.process.isRunning else { return }
    let output = process.output
    if process.process.terminationReason == .uncaughtSignal {
        result.problems.append(
            "\(name) died of signal \(process.process.terminationStatus): \(output.suffix(600))")
    } else if process.process.terminationStatus != 0 && !output.lowercased().contains("error")
        && !output.contains("\"type\":\"finished\"")
    {
        result.problems.append(
            "\(name) exited \(process.process.terminationStatus) without saying why: \(output.suffix(600))")
    }
}

/// `Fuzz/hostile_market.py`, started on a free loopback port; its counts are read from the
/// stats file it rewrites as it goes.
final class HostileProxy: @unchecked Sendable {
    let process = Process()
    let port: Int
    let stats: URL

    init(upstream: String, mutations: Int) throws {
        let directory = root.appending(path: "hostile-proxy")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let portFile = directory.appending(path: "port.json")
        stats = directory.appending(path: "stats.json")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appending(path: "Fuzz/hostile_market.py")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", script.path, "--upstream", upstream, "--port-file", portFile.path, "--stats", stats.path,
            "--mutations", String(mutations), "--seed", String(Int.random(in: 1...1_000_000)),
        ]
        let log = directory.appending(path: "proxy.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let pid = process.processIdentifier
        started.withLock { $0.append(pid) }
        // The port, once the proxy says it listens (a file it writes whole).
        let deadline = Date().addingTimeInterval(30)
        var found: Int?
        while found == nil && Date() < deadline && process.isRunning {
            if let data = try? Data(contentsOf: portFile),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            {
                found = object["port"] as? Int
            } else {
                usleep(50_000)
            }
        }
        guard let found else {
            throw FaultError(
                "the hostile market did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        }
        port = found
    }

    var mutations: Int {
        guard let data = try? Data(contentsOf: stats),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return 0 }
        return object["mutations"] as? Int ?? 0
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
