import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import Participant

// The e2e group: a market job on loopback, every part real — a `market serve` process, a
// `provide` daemon process with a warm pool, the requester in this process — from posting the
// task until the job's first output line reaches the requester, beside a plain `docker run` of
// the same command with the same hardening flags, measured in the same run.

func e2eBenchmarks(runs: Int) async throws {
    let server = try ServerProcess()
    defer { server.stop() }
    let home = server.directory.appending(path: "provider")
    let environment = ToolProcess.environment(home: home)
    func cli(_ arguments: [String]) throws { try ToolProcess.run(arguments, environment: environment) }
    try cli(["terms", "--accept"])
    try cli(["opt-in", "--claude-jobs", "--yes"])
    let settingsList = [
        "market.url=\(server.url)", "approval.mode=policy", "docker.image=\(image)", "docker.warmPool=1",
        "limits.dailyTasks=10000", "limits.weeklyTasks=70000", "limits.monthlyTasks=310000",
        "docker.memory=\(settings.memoryBytes)", "docker.pidsLimit=\(settings.pidsLimit)",
        "docker.tmpfsSize=\(settings.tmpfsBytes)", "docker.cpuShares=\(settings.cpuShares)",
    ]
    try cli(["config"] + settingsList.flatMap { ["--set", $0] })
    try cli(["advertise", "--slots", "1", "--price", "1"])
    let command = ["sh", "-c", "echo ready; cat > /dev/null"]
    let daemon = try await ToolProcess.start(
        ["provide", "--backend", "command", "--"] + command, environment: environment,
        log: server.directory.appending(path: "provide.log"), ready: "offer live")
    defer {
        daemon.terminate()
        daemon.waitUntilExit()
    }
    try await Task.sleep(for: .seconds(2))  // the warm pool fills
    let idleRSS = rssMB(of: daemon.processIdentifier)
    let idleParts = (
        anon: rssMB(of: daemon.processIdentifier, field: "RssAnon:"),
        file: rssMB(of: daemon.processIdentifier, field: "RssFile:")
    )

    let requesterKeys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
    try await mint([requesterKeys.peerID], server.sqlite)
    let database = try StateDatabase(url: server.directory.appending(path: "requester.sqlite"))
    let session = MarketSession(
        keys: requesterKeys, settings: SessionSettings(url: server.url), outbox: Outbox(database: database))
    let runner = Task { await session.run() }
    defer { runner.cancel() }
    try await session.waitUntilConnected(timeout: .seconds(10))
    let requester = Requester(session: session, database: database)

    var market: [Double] = []
    for _ in 0..<runs {
        let first = FirstLine()
        let start = ContinuousClock.now
        let ack = try await requester.post(SubmitOptions(prompt: Data("x\n".utf8), maxPrice: 2_000_000))
        guard let taskId = ack.taskId, ack.state == "assigned" else {
            throw MarketClientError("the task was not matched at once: \(ack)")
        }
        let outcome = try await requester.follow(taskId, accept: true, timeout: .seconds(60)) { update in
            if case .items(let items) = update, items.contains(where: { $0.kind == "line" }) {
                first.mark(ContinuousClock.now)
            }
        }
        guard outcome.state == "settled", let at = first.at else {
            throw MarketClientError("task \(taskId) ended \(outcome.state) without output")
        }
        market.append(seconds(at - start) * 1000)
        try await Task.sleep(for: .milliseconds(1500))  // the pool starts the next container
    }
    var plain: [Double] = []
    for _ in 0..<runs { plain.append(try dockerRunFirstLine(command: ["sh", "-c", "echo ready"])) }
    report(
        Row(
            name: "market job, submit → first event (p50, warm)", ours: median(market), baseline: median(plain),
            unit: "ms", target: 0.5, higherIsBetter: false))
    print(
        String(
            format: "  market p90 %.1f ms, docker run p90 %.1f ms", percentile(market, 0.9), percentile(plain, 0.9)))
    print(
        String(
            format:
                "  daemon RSS: %.1f MB anonymous (its own heap and stacks), %.1f MB file-backed (the executable and the Swift runtime libraries, shared)",
            idleParts.anon, idleParts.file))
    report(
        Row(
            name: "idle provider daemon RSS (budget 40 MB)", ours: idleRSS, baseline: 40, unit: "MB", target: 1.0,
            higherIsBetter: false))
}

func rssMB(of pid: Int32, field: String = "VmRSS:") -> Double {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix(field) } ?? ""
    return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
}

/// `docker run --rm` with the same flags: time until the first line of output is read.
func dockerRunFirstLine(command: [String]) throws -> Double {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["docker", "run", "-i", "--rm"] + hardenedRunFlags() + [image] + command
    let out = Pipe()
    process.standardOutput = out
    process.standardInput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    let start = ContinuousClock.now
    try process.run()
    _ = try out.fileHandleForReading.read(upToCount: 1)
    let elapsed = seconds(ContinuousClock.now - start) * 1000
    process.waitUntilExit()
    return elapsed
}
