import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketCrypto
import Participant
import Synchronization

struct ExecuteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "execute",
        abstract: "Run one job in a hardened container, after consent, limits and approval checks.",
        discussion: """
            The prompt goes to the container on stdin. Output streams live (JSON lines with --json) \
            and is redacted of credentials before it is shown or logged. Ctrl-C stops the container \
            and records the job as cancelled. Exit codes: 0 done, 1 job failed, 3 refused (consent, \
            approval), 4 over a limit (before the start, or stopped as over_budget or output_limit), 124 timed out, \
            130 cancelled.
            """
    )

    enum Backend: String, ExpressibleByArgument, CaseIterable {
        case claude, command
    }

    @Option(name: .long, help: "The prompt text.") var prompt: String?
    @Option(
        name: .customLong("prompt-file"),
        help: ArgumentHelp("Read the prompt from FILE ('-' for stdin).", valueName: "FILE"))
    var promptFile: String?
    @Option(name: .long, help: "claude (Claude Code, headless) or command (any image + command).") var backend:
        Backend = .claude
    @Option(name: .long, help: ArgumentHelp("Image (default: docker.image).", valueName: "IMAGE")) var image: String?
    @Option(name: .long, help: ArgumentHelp("Model (default: claude.model).", valueName: "MODEL")) var model: String?
    @Option(
        name: .customLong("max-turns"), help: ArgumentHelp("--max-turns (default: claude.maxTurns).", valueName: "N"))
    var maxTurns: String?
    @Option(
        name: .long, help: ArgumentHelp("Wall-clock limit in seconds (default: docker.timeoutSeconds).", valueName: "S")
    )
    var timeout: String?
    @Flag(name: .long, help: "Approve without asking (for scripts).") var yes = false
    @Flag(name: .long, help: "Stream JSON lines (one event per line) on stdout.") var json = false
    @Argument(parsing: .postTerminator, help: "With --backend command: the command to run, after --.")
    var command: [String] = []

    static let maxPromptBytes = 16 << 20

    func validate() throws {
        guard (prompt == nil) != (promptFile == nil) else {
            throw ValidationError("give the prompt with exactly one of --prompt TEXT or --prompt-file FILE")
        }
        if backend == .command && command.isEmpty {
            throw ValidationError("--backend command needs the command after --, e.g. -- sh -c 'cat'")
        }
        if backend == .claude && !command.isEmpty {
            throw ValidationError("a command after -- is only for --backend command")
        }
    }

    func run() async throws {
        var flags: [String: String] = [:]
        if let image { flags[ConfigKey.dockerImage.name] = image }
        if let model { flags[ConfigKey.claudeModel.name] = model }
        if let maxTurns { flags[ConfigKey.claudeMaxTurns.name] = maxTurns }
        if let timeout { flags[ConfigKey.dockerTimeoutSeconds.name] = timeout }
        let context = CommandContext(flags: flags)
        let config = try context.config()
        let promptData = try readPrompt()
        let database = try context.database()
        let jobs = JobStore(database: database)

        let consent = try ConsentStore(database: database).current()
        guard consent.termsAccepted, consent.optIn != nil else {
            throw CLIError(
                consent.termsAccepted
                    ? "not opted in: run `claude-max-market opt-in --claude-jobs` first"
                    : "the terms are not accepted: read `claude-max-market terms`, then `terms --accept` and `opt-in --claude-jobs`",
                exitCode: 3)
        }
        let ring = try context.keyRing(database: database, config: config)
        let jobBackend = try makeBackend(config: config, context: context)
        let limits = Limits(config: config)
        let estimatedTokens: Int64 = backend == .claude ? limits.maxTokensPerTask : 0
        let jobID = UUID().uuidString.lowercased()
        let sandbox = SandboxSettings(config: config)
        let allowlist = config.list(.egressAllowlist)
        let egress: EgressPolicy? =
            allowlist.isEmpty ? nil : EgressPolicy(allowlist: allowlist, byteBudget: config.bytes(.egressByteBudget))
        let request = JobRequest(id: jobID, prompt: promptData, backend: jobBackend, sandbox: sandbox, egress: egress)
        let printer = JobOutputPrinter(json: json, jobID: jobID, jobs: jobs, printsLines: backend == .command)
        let approval = Approval(
            jobID: jobID, prompt: promptData, requester: ring.peerID.rawValue, estimatedTokens: estimatedTokens,
            limits: limits,
            backendDescription: backend == .command
                ? "command " + command.joined(separator: " ") : "claude (\(config.text(.claudeModel)))",
            assumeYes: yes)
        let reservation = JobReservation(
            id: jobID, role: "local", backend: backend.rawValue,
            model: backend == .claude ? config.text(.claudeModel) : nil, requester: ring.peerID.rawValue,
            image: sandbox.image, promptBytes: Int64(promptData.count), estimatedTokens: estimatedTokens)
        let reserved = ReservedFlag()

        let report: JobReport
        do {
            report = try await context.withDocker { docker in
                try await ensureImage(docker, image: sandbox.image)
                let executor = JobExecutor(
                    docker: docker, runDirectory: context.paths.runDirectory, owner: context.paths.ownerID)
                return try await CancelOnInterrupt.run { interrupt in
                    try await executor.run(
                        request,
                        whenCreated: { containerID in
                            // The container was created while we ask: approval, then the limits.
                            interrupt.pendingContainer(containerID, docker: docker)
                            // The question waits on the terminal: on a thread of its own, not the pool's.
                            try await Output.onOwnThread {
                                try approval.decide(config: config, database: database, context: context)
                            }
                            do {
                                _ = try jobs.reserve(reservation, limits: limits, actor: context.actor, at: context.now)
                            } catch let error as LimitError {
                                throw CLIError(error.description, exitCode: 4)
                            }
                            reserved.set()
                            try jobs.markRunning(
                                jobID, actor: "runner", at: context.now, details: ["image": sandbox.image])
                            interrupt.started()
                        }
                    ) { printer.handle($0) }
                }
            }
        } catch {
            await printer.finish()
            if reserved.isSet {
                try jobs.finish(
                    jobID, outcome: JobOutcome(state: .failed, error: "\(error)"), actor: "runner", at: context.now)
            }
            throw error
        }
        await printer.finish()
        try record(report, jobID: jobID, jobs: jobs, database: database, context: context)
        printer.summary(report)
        switch report.state {
        case .succeeded: return
        case .failed: throw ExitCode(1)
        case .timedOut: throw ExitCode(124)
        case .cancelled: throw ExitCode(130)
        case .overBudget, .outputLimit: throw ExitCode(4)
        }
    }

    func readPrompt() throws -> Data {
        let data: Data
        if let prompt {
            data = Data(prompt.utf8)
        } else if promptFile == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let contents = FileManager.default.contents(atPath: promptFile!) else {
                throw CLIError("cannot read prompt file \(promptFile!)")
            }
            data = contents
        }
        guard data.count <= Self.maxPromptBytes else {
            throw CLIError("the prompt is \(data.count) bytes; at most \(Self.maxPromptBytes) are allowed")
        }
        return data
    }

    func makeBackend(config: ResolvedConfig, context: CommandContext) throws -> JobBackend {
        guard backend == .claude else { return .command(command) }
        let credential: ClaudeCredential
        switch config.text(.claudeCredentialMode) {
        case "subscription":
            credential = .loginVolume(config.text(.claudeLoginVolume))
        default:
            let file = config.text(.claudeAPIKeyFile)
            let key: String
            if file == "-" {
                key = context.environment["ANTHROPIC_API_KEY"] ?? ""
            } else {
                guard let mode = FilePermissions.mode(of: file), mode & 0o077 == 0 else {
                    throw CLIError("API key file \(file) must exist with mode 0600")
                }
                key =
                    (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(
                        in: .whitespacesAndNewlines) ?? ""
            }
            guard !key.isEmpty else {
                throw CLIError(
                    "no API key: export ANTHROPIC_API_KEY or set claude.apiKeyFile (claude.credentialMode=api-key)",
                    exitCode: 3)
            }
            credential = .apiKey(key)
        }
        return .claude(
            ClaudeOptions(
                model: config.text(.claudeModel), maxTurns: Int(config.integer(.claudeMaxTurns)),
                allowedTools: config.list(.claudeAllowedTools), credential: credential,
                gateway: try Self.gatewaySettings(config: config, environment: context.environment),
                tokenBudget: Limits(config: config).maxTokensPerTask))
    }

    /// Where the gateway forwards. `CMM_TEST_GATEWAY_CA_FILE` (tests only) names a PEM file of
    /// certificate authorities trusted instead of the system's, for a loopback test upstream.
    static func gatewaySettings(config: ResolvedConfig, environment: [String: String]) throws -> GatewaySettings {
        var settings = GatewaySettings(upstream: URL(string: config.text(.claudeAPIBaseURL))!)
        if let file = environment["CMM_TEST_GATEWAY_CA_FILE"], !file.isEmpty {
            guard let pem = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw CLIError("CMM_TEST_GATEWAY_CA_FILE: cannot read \(file)")
            }
            settings.trustRootsPEM = pem
        }
        if let seconds = environment["CMM_TEST_GATEWAY_TIMEOUT"].flatMap(Int.init), seconds > 0 {
            settings.timeout = .seconds(seconds)
        }
        return settings
    }

    /// A missing runner image is pulled, or built from the embedded Dockerfile when the pull fails.
    /// Any other image (`--backend command --image …`) can only be pulled: building the runner's
    /// Dockerfile under its name would run the wrong thing.
    func ensureImage(_ docker: DockerClient, image: String) async throws {
        guard try await docker.inspectImage(image) == nil else { return }
        var options = try DockerPullOptions.parse([])
        options.image = image
        if backend == .claude {
            Output.note("runner image \(image) is not present; pulling it (or building it when the pull fails)")
        } else {
            Output.note("image \(image) is not present; pulling it")
            options.noFallback = true
        }
        try await DockerPullCommand.pull(options)
    }

    func record(_ report: JobReport, jobID: String, jobs: JobStore, database: StateDatabase, context: CommandContext)
        throws
    {
        // In API-key mode the gateway's meter, never what the job printed.
        let total = report.totalUsage
        let state: JobState =
            switch report.state {
            case .succeeded: .succeeded
            case .failed: .failed
            case .timedOut: .timedOut
            case .cancelled: .cancelled
            case .overBudget: .overBudget
            case .outputLimit: .outputLimit
            }
        for notice in report.rateLimits {
            try jobs.recordRateLimit(
                jobID: jobID, window: notice.window, status: notice.status, resetsAt: notice.resetsAt, at: context.now)
        }
        if report.redactions > 0 {
            try database.audit(
                actor: "runner", kind: "job.redacted", details: ["job": jobID, "count": String(report.redactions)],
                at: context.now)
        }
        // One summary per job, with a bounded sample: a job that knocks on a million doors
        // does not write a million rows.
        if !report.egress.isEmpty {
            let allowed = Set(report.egress.filter(\.allowed).map { "\($0.host):\($0.port)" }).sorted()
            let refused = Set(report.egress.filter { !$0.allowed }.map { "\($0.host):\($0.port)" }).sorted()
            try database.audit(
                actor: "egress", kind: "egress.summary",
                details: [
                    "job": jobID, "allowed": String(report.egressCounts.allowed),
                    "refused": String(report.egressCounts.refused), "bytes": String(report.egressBytes),
                    "allowedHosts": allowed.prefix(5).joined(separator: ","),
                    "refusedSample": refused.prefix(5).joined(separator: ","),
                ],
                at: context.now)
        }
        if report.metered {
            let refusals = Set(report.gateway.filter { !$0.forwarded }.map(\.reason)).sorted()
            try database.audit(
                actor: "gateway", kind: "gateway.summary",
                details: [
                    "job": jobID, "forwarded": String(report.gatewayCounts.forwarded),
                    "refused": String(report.gatewayCounts.refused),
                    "tokens": String(total.allTokens),
                    "refusals": refusals.prefix(3).map { String($0.prefix(120)) }.joined(separator: " | "),
                ],
                at: context.now)
        }
        try jobs.finish(
            jobID,
            outcome: JobOutcome(
                state: state, inputTokens: total.inputTokens, outputTokens: total.outputTokens,
                cacheReadTokens: total.cacheReadInputTokens, cacheCreationTokens: total.cacheCreationInputTokens,
                costUSD: total.costUSD, model: report.usage.max { $0.value.outputTokens < $1.value.outputTokens }?.key,
                exitCode: report.exitCode.map(Int64.init),
                error: report.error),
            actor: "runner", at: context.now)
    }
}

/// The approval of one job: manual mode asks on the terminal (or takes --yes); policy mode
/// applies the approval.* rules. Every decision is audited.
struct Approval: Sendable {
    let jobID: String
    let prompt: Data
    let requester: String
    let estimatedTokens: Int64
    let limits: Limits
    let backendDescription: String
    let assumeYes: Bool

    func decide(config: ResolvedConfig, database: StateDatabase, context: CommandContext) throws {
        func refuse(_ reason: String) throws -> Never {
            try database.audit(
                actor: context.actor, kind: "job.refused", details: ["job": jobID, "reason": reason], at: context.now)
            throw CLIError("job refused: \(reason)", exitCode: 3)
        }
        if config.text(.approvalMode) == "policy" {
            let maxBytes = config.integer(.approvalMaxPromptBytes)
            if Int64(prompt.count) > maxBytes {
                try refuse("the prompt is \(prompt.count) bytes, policy allows \(maxBytes)")
            }
            if config.list(.approvalDeniedRequesters).contains(requester) {
                try refuse("requester \(requester) is denied")
            }
            let allowed = config.list(.approvalAllowedRequesters)
            if !allowed.isEmpty && !allowed.contains(requester) { try refuse("requester \(requester) is not allowed") }
            if estimatedTokens > limits.maxTokensPerTask { try refuse("\(estimatedTokens) tokens exceed the policy") }
            try database.audit(
                actor: "policy", kind: "job.approved", details: ["job": jobID, "mode": "policy"], at: context.now)
            return
        }
        let usage = try JobStore(database: database).usage(at: context.now)
        let text = String(decoding: prompt, as: UTF8.self)
        let shown = text.count > 2000 ? String(text.prefix(2000)) + "… (\(text.count - 2000) more characters)" : text
        let question = """
            Job \(jobID)
              backend:  \(backendDescription)
              image:    \(config.text(.dockerImage))
              prompt:   \(prompt.count) bytes
            \(shown.split(separator: "\n", omittingEmptySubsequences: false).map { "    │ \($0)" }.joined(separator: "\n"))
              limits left today: \(max(0, limits.dailyTasks - usage.day.tasks)) jobs, \(max(0, limits.dailyTokens - usage.day.tokens)) tokens
            Run it?
            """
        guard (try? Output.confirm(question, assumeYes: assumeYes)) == true else {
            try refuse(Output.stdinIsTerminal ? "not approved" : "approval needs a terminal or --yes")
        }
        try database.audit(
            actor: context.actor, kind: "job.approved", details: ["job": jobID, "mode": "manual"], at: context.now)
    }
}

final class ReservedFlag: Sendable {
    private let value = Atomic(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// Prints a job's output as it arrives and writes every line to the job's event log, in
/// batches written off the output path (`JobEventWriter`), and at least every 100 ms.
final class JobOutputPrinter: @unchecked Sendable {
    let json: Bool
    let jobID: String
    let jobs: JobStore
    private let lock = NSLock()
    private let writer: JobEventWriter
    private var flusher: Task<Void, Never>?
    /// People see claude's parsed events; a command backend's lines are shown as they are.
    let printsLines: Bool

    init(json: Bool, jobID: String, jobs: JobStore, printsLines: Bool) {
        self.printsLines = printsLines
        self.json = json
        self.jobID = jobID
        self.jobs = jobs
        self.writer = JobEventWriter(jobs: jobs)
    }

    struct Line: Encodable {
        var job: String
        var type: String
        var stream: String?
        var text: String?
    }

    /// Stops the timer and writes the rest.
    func finish() async {
        lock.withLock { flusher?.cancel() }
        await writer.finish()
    }

    private func record(_ stream: String, _ kind: String, _ line: String) {
        writer.append(NewJobEvent(jobID: jobID, stream: stream, kind: kind, line: line, at: Date()))
        if flusher == nil {
            let writer = self.writer
            flusher = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(100))
                    writer.flushSoon()
                }
            }
        }
    }

    func handle(_ output: JobOutput) {
        lock.withLock {
            switch output {
            case .started(let id):
                record("system", "started", "container \(id.prefix(12))")
                emit(Line(job: jobID, type: "started", text: "container \(id.prefix(12))"), human: nil)
            case .line(let stream, let text):
                let name = stream == .stderr ? "stderr" : "stdout"
                record(name, "line", text)
                if !json && stream == .stderr {
                    Output.note(text)
                } else {
                    emit(Line(job: jobID, type: "line", stream: name, text: text), human: printsLines ? text : nil)
                }
            case .event(let event):
                switch event {
                case .text(let text): emit(nil, human: text)
                case .toolUse(let name): emit(nil, human: "[tool: \(name)]")
                case .rateLimit(let notice): emit(nil, human: "[rate limit \(notice.window): \(notice.status)]")
                case .notJSON(let line): emit(nil, human: "[not JSON] \(line)")
                default: break
                }
            }
        }
    }

    private func emit(_ line: Line?, human: String?) {
        if json, let line {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if let data = try? encoder.encode(line) { Output.stdout(data + Data("\n".utf8)) }
        } else if !json, let human {
            Output.line(human)
        }
    }

    func summary(_ report: JobReport) {
        let total = report.totalUsage
        let seconds = report.duration.inSeconds
        if json {
            struct Summary: Encodable {
                var job: String
                var type = "result"
                var state: String
                var exitCode: Int?
                var inputTokens: Int64
                var outputTokens: Int64
                var costUSD: Double
                var seconds: Double
                var redactions: Int
                var error: String?
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let data = try? encoder.encode(
                Summary(
                    job: jobID, state: report.state.rawValue, exitCode: report.exitCode, inputTokens: total.inputTokens,
                    outputTokens: total.outputTokens, costUSD: total.costUSD, seconds: seconds,
                    redactions: report.redactions, error: report.error))
            {
                Output.stdout(data + Data("\n".utf8))
            }
            return
        }
        Output.note(
            String(
                format: "job %@ %@ in %.1f s — %lld in / %lld out tokens%@%@", jobID, report.state.rawValue, seconds,
                total.inputTokens, total.outputTokens,
                report.redactions > 0 ? ", \(report.redactions) secrets redacted" : "",
                report.error.map { " — \($0)" } ?? ""))
    }
}

/// Runs `body` in a task that SIGINT cancels (Ctrl-C stops the container instead of killing us).
/// Before the job starts (while the approval question is open, when reading the terminal cannot
/// be interrupted) Ctrl-C removes the created container and exits at once.
enum CancelOnInterrupt {
    final class State: Sendable {
        private let container = Mutex<(id: String, docker: DockerClient)?>(nil)

        func pendingContainer(_ id: String, docker: DockerClient) { container.withLock { $0 = (id, docker) } }
        func started() { container.withLock { $0 = nil } }
        var pending: (id: String, docker: DockerClient)? { container.withLock { $0 } }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable (State) async throws -> T) async throws -> T {
        let state = State()
        let task = Task { try await body(state) }
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT)
        source.setEventHandler {
            if let (id, docker) = state.pending {
                Output.note("\ninterrupted before the job started: removing its container")
                // The removal, then the exit, without blocking a thread to wait for it.
                Task.detached {
                    try? await docker.removeContainer(id, force: true)
                    exit(130)
                }
                return
            }
            Output.note("interrupted: stopping the container")
            task.cancel()
        }
        source.resume()
        defer {
            source.cancel()
            signal(SIGINT, SIG_DFL)
        }
        return try await task.value
    }
}
