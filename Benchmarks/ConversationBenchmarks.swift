import Foundation
import JobRunner
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import Participant
import TestSupport

// The conversation group, with the real Claude Code CLI against a loopback stand-in of the
// Messages API and every market part real (a `market serve` process, a `provide --backend
// claude` daemon process, the requester in this process):
// - submit → first text at the requester with a warm pool, against `claude -p` run cold on
//   this machine against the same stand-in (time to its first text delta);
// - a follow-up's submit → first text against a fresh job's, both cold.

func conversationBenchmarks(runs: Int) async throws {
    guard ClaudeCLITestEnvironment.isAvailable else {
        print(
            "conversation: skipped, no Claude Code binary at \(ClaudeCLITestEnvironment.binaryPath) (scripts/test.sh fetches it)"
        )
        return
    }
    try await ClaudeCLITestEnvironment.ensureImage()
    let count = max(3, min(runs, 7))
    try await MessagesAPIStandIn.with(defaultText: "four") { standIn in
        let server = try ServerProcess()
        defer { server.stop() }
        let requesterKeys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
        try await mint([requesterKeys.peerID], server.sqlite)
        let database = try StateDatabase(url: server.directory.appending(path: "requester.sqlite"))
        let session = MarketSession(
            keys: requesterKeys, settings: SessionSettings(url: server.url), outbox: Outbox(database: database))
        let runner = Task { await session.run() }
        defer { runner.cancel() }
        try await session.waitUntilConnected(timeout: .seconds(10))
        let conversations = ConversationFiles(directory: server.directory.appending(path: "conversations"))
        let requester = Requester(session: session, database: database, conversations: conversations)

        /// Posts and follows one task; seconds from the post to the first text, and the outcome.
        /// Where the time went (assigned, approved) is kept for the breakdown.
        let steps = StepTimes()
        func timed(_ options: SubmitOptions) async throws -> (Double, RequesterOutcome) {
            let first = FirstLine()
            let assigned = FirstLine()
            let approved = FirstLine()
            let start = ContinuousClock.now
            let ack = try await requester.post(options)
            guard let taskId = ack.taskId, ack.state == "assigned" else {
                throw MarketClientError("the task was not matched at once: \(ack)")
            }
            let outcome = try await requester.follow(taskId, accept: true, timeout: .seconds(120)) { update in
                switch update {
                case .assigned: assigned.mark(ContinuousClock.now)
                case .approved: approved.mark(ContinuousClock.now)
                case .items(let items) where items.contains(where: { $0.kind == "delta" || $0.kind == "text" }):
                    first.mark(ContinuousClock.now)
                default: break
                }
            }
            guard outcome.state == "settled", let at = first.at else {
                throw MarketClientError("task \(taskId) ended \(outcome.state) without text")
            }
            steps.add(
                assigned: assigned.at.map { seconds($0 - start) } ?? 0,
                approved: approved.at.map { seconds($0 - start) } ?? 0, text: seconds(at - start))
            return (seconds(at - start), outcome)
        }

        // Warm: the pool's CLI is started and waits for its first message.
        var warm: [Double] = []
        try await withProvider(server: server, standIn: standIn, name: "warm", warmPool: 1) {
            try await Task.sleep(for: .seconds(5))  // the pool's CLI starts
            for _ in 0..<count {
                warm.append(try await timed(SubmitOptions(prompt: Data("2+2?".utf8), maxPrice: 2_000_000)).0)
                try await Task.sleep(for: .seconds(5))  // the pool starts the next CLI
            }
        }
        var direct: [Double] = []
        for index in 0..<count {
            direct.append(try hostFirstText(standIn: standIn, run: server.directory.appending(path: "host-\(index)")))
        }
        print(steps.summary("warm"))
        steps.reset()
        report(
            Row(
                name: "claude market job, submit → first text, warm (vs claude -p cold on the host)",
                ours: median(warm), baseline: median(direct), unit: "s", target: 0.5, higherIsBetter: false))

        // Cold both: a fresh job, then a follow-up of it.
        var fresh: [Double] = []
        var followUps: [Double] = []
        try await withProvider(server: server, standIn: standIn, name: "cold", warmPool: 0) {
            for _ in 0..<count {
                let (seconds, outcome) = try await timed(
                    SubmitOptions(prompt: Data("remember 4".utf8), maxPrice: 2_000_000))
                fresh.append(seconds)
                guard let transcript = outcome.transcript else {
                    throw MarketClientError("task \(outcome.taskId) left no transcript")
                }
                var options = SubmitOptions(prompt: Data("and now?".utf8), maxPrice: 2_000_000)
                options.conversation = (transcript, outcome.taskId)
                followUps.append(try await timed(options).0)
            }
        }
        print(steps.summary("cold, fresh and follow-up"))
        report(
            Row(
                name: "claude follow-up, submit → first text, cold (vs a fresh job, cold)", ours: median(followUps),
                baseline: median(fresh), unit: "s", target: 1.2, higherIsBetter: false))
    }
}

/// A `provide --backend claude` daemon process on `server` for the duration of `body`.
func withProvider(
    server: ServerProcess, standIn: MessagesAPIStandIn, name: String, warmPool: Int,
    _ body: () async throws -> Void
) async throws {
    let home = server.directory.appending(path: "provider-\(name)")
    var environment = ToolProcess.environment(home: home)
    environment["ANTHROPIC_API_KEY"] = "sk-ant-api03-" + String(repeating: "BenchKey", count: 8)
    func cli(_ arguments: [String]) throws { try ToolProcess.run(arguments, environment: environment) }
    try cli(["terms", "--accept"])
    try cli(["opt-in", "--claude-jobs", "--yes"])
    let settings = [
        "market.url=\(server.url)", "approval.mode=policy", "docker.image=\(ClaudeCLITestEnvironment.image)",
        "docker.warmPool=\(warmPool)", "claude.apiBaseURL=\(standIn.url)", "limits.dailyTasks=10000",
        "limits.weeklyTasks=70000", "limits.monthlyTasks=310000", "limits.dailyTokens=100000000",
        "limits.maxTokensPerTask=1000000", "docker.memory=1g", "docker.pidsLimit=256",
    ]
    try cli(["config"] + settings.flatMap { ["--set", $0] })
    try cli(["advertise", "--slots", "1", "--price", "1"])
    let log = home.appending(path: "provide.log")
    let daemon = try await ToolProcess.start(
        ["provide", "--backend", "claude"], environment: environment, log: log, ready: "offer live")
    defer {
        daemon.terminate()
        daemon.waitUntilExit()
    }
    func daemonLog() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
    do {
        try await body()
    } catch {
        print("  provider log: \(daemonLog().suffix(2000))")
        throw error
    }
}

/// `claude -p` started cold on this machine against the stand-in: seconds to its first text delta.
func hostFirstText(standIn: MessagesAPIStandIn, run: URL) throws -> Double {
    try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: ClaudeCLITestEnvironment.binaryPath)
    process.arguments = [
        "-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages", "--max-turns", "2",
        "--model", "claude-sonnet-4-6",
    ]
    process.environment = [
        "PATH": "/usr/bin:/bin", "HOME": run.path, "CLAUDE_CONFIG_DIR": run.path, "ANTHROPIC_BASE_URL": standIn.url,
        "ANTHROPIC_API_KEY": "sk-ant-api03-direct", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    ]
    process.currentDirectoryURL = run
    let out = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardInput = input
    process.standardError = FileHandle.nullDevice
    let start = ContinuousClock.now
    try process.run()
    input.fileHandleForWriting.write(Data("2+2?".utf8))
    try input.fileHandleForWriting.close()
    var seen = ""
    var elapsed: Double?
    while elapsed == nil {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        seen += String(decoding: chunk, as: UTF8.self)
        if seen.contains("text_delta") { elapsed = seconds(ContinuousClock.now - start) }
    }
    _ = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard let elapsed else { throw MarketClientError("claude -p on the host gave no text: \(seen.suffix(500))") }
    return elapsed
}

/// Where one market job's time went: until assigned, approved, and the first text (seconds).
struct StepTime {
    var assigned: Double
    var approved: Double
    var text: Double
}

/// The step times of the jobs so far; `summary` prints their medians.
typealias StepTimes = LockedBox<[StepTime]>

extension LockedBox where Value == [StepTime] {
    convenience init() { self.init([]) }

    func add(assigned: Double, approved: Double, text: Double) {
        withLock { $0.append(StepTime(assigned: assigned, approved: approved, text: text)) }
    }

    func reset() { value = [] }

    func summary(_ label: String) -> String {
        let rows = value
        return String(
            format: "  %@: assigned after %.3f s, approved after %.3f s, first text after %.3f s (medians)",
            label, median(rows.map(\.assigned)), median(rows.map(\.approved)), median(rows.map(\.text)))
    }
}
