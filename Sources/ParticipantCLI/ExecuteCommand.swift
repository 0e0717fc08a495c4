import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import Logging
import MarketCore
import MarketCrypto
import MarketFlows
import Participant
import ServiceLifecycle
import Synchronization
import Workspace

struct ExecuteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "execute",
        abstract: "Run one job in a hardened container, after consent, limits and approval checks.",
        discussion: """
            The prompt goes to the container on stdin. Output streams live (JSON lines with --json) \
            and is redacted of credentials before it is shown or logged. Ctrl-C stops the container \
            and records the job as cancelled. A claude job's conversation is kept in this home; \
            --follow-up JOB_ID continues it in a new container (with --dir, the directory as it is \
            now). Exit codes: 0 done, 1 job failed, 3 refused (consent, \
            approval), 4 over a limit (before the start, or stopped as over_budget or output_limit), 124 timed out, \
            130 cancelled.
            """
    )

    @Option(name: .long, help: "The prompt text.") var prompt: String?
    @Option(
        name: .customLong("prompt-file"),
        help: ArgumentHelp("Read the prompt from FILE ('-' for stdin).", valueName: "FILE"))
    var promptFile: String?
    @Option(name: .long, help: "claude (Claude Code, headless) or command (any image + command).") var backend:
        BackendChoice = .claude
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
    @OptionGroup var workspace: WorkspaceArguments
    @Option(
        name: .customLong("follow-up"),
        help: ArgumentHelp("Continue the conversation of an earlier claude job of this home.", valueName: "JOB_ID"))
    var followUp: String?
    @Argument(parsing: .postTerminator, help: "With --backend command: the command to run, after --.")
    var command: [String] = []

    static let maxPromptBytes = 16 << 20

    func validate() throws {
        if prompt != nil && promptFile != nil {
            throw ValidationError("give the prompt with one of --prompt TEXT or --prompt-file FILE, not both")
        }
        if backend == .claude && prompt == nil && promptFile == nil {
            throw ValidationError("--backend claude needs a prompt: --prompt TEXT or --prompt-file FILE")
        }
        try backend.check(command: command)
        try workspace.validate()
        if let followUp {
            guard backend == .claude else { throw ValidationError("--follow-up needs --backend claude") }
            do { try WireField.taskID(followUp) } catch { throw ValidationError("--follow-up: \(error.message)") }
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
        let ring = try context.keyRing(database: database, config: config)
        let jobBackend = try backend.jobBackend(command: command, config: config, environment: context.environment)
        let jobID = UUID().uuidString.lowercased()
        let packed = try workspace.pack(config: config)
        if let packed, let directory = workspace.directory, !json {
            WorkspaceReport.packed(packed, directory: directory)
        }
        var pipelineJob = PipelineJob(
            id: jobID, role: .local, prompt: promptData, backend: jobBackend, requester: ring.peerID.rawValue,
            workspace: packed?.tree)
        pipelineJob.workspaceLeftOut = packed?.leftOutSummary ?? []
        if let followUp {
            let earlier = try FollowUp.load(
                followUp, paths: context.paths, withWorkspace: false, limits: WorkspaceLimits())
            pipelineJob.conversation = earlier.transcript
            if !json {
                Output.note(
                    "continues the conversation of job \(followUp) (\(earlier.transcript.turns.count) turns)")
            }
        }
        let job = pipelineJob
        let printer = JobOutputPrinter(json: json, jobID: jobID, jobs: jobs, printsLines: backend == .command)
        let assumeYes = yes
        let image = SandboxSettings(config: config).image

        let report: JobReport
        do {
            report = try await context.withDocker { docker in
                try await ensureImage(docker, image: image)
                let pipeline = JobPipeline(
                    database: database, config: config, paths: context.paths, docker: docker, actor: context.actor)
                return try await CancelOnInterrupt.run { interrupt in
                    var hooks = JobPipeline.Hooks()
                    // The container is created while we ask: approval, then the limits.
                    hooks.created = { interrupt.pendingContainer($0, docker: docker) }
                    // The question waits on the terminal: on a thread of its own, not the pool's.
                    hooks.ask = { question in
                        guard assumeYes || Output.stdinIsTerminal else {
                            throw JobRefusal(.approval, "approval needs a terminal or --yes")
                        }
                        return try await Output.onOwnThread { try Output.confirm(question.text, assumeYes: assumeYes) }
                    }
                    hooks.approved = { interrupt.started() }
                    hooks.output = { printer.handle($0) }
                    return try await pipeline.run(job, hooks: hooks)
                }
            }
        } catch let refusal as JobRefusal {
            await printer.finish()
            throw CLIError(refusal.reason, exitCode: refusal.kind == .limits ? 4 : 3)
        } catch {
            await printer.finish()
            throw error
        }
        await printer.finish()
        if let transcript = report.transcript {
            try ConversationFiles(directory: context.paths.conversationsDirectory).save(
                transcript, for: jobID, parent: followUp)
        }
        printer.summary(report)
        if let outcome = report.workspace {
            printer.workspace(outcome)
            if let patch = outcome.patch {
                try WorkspaceReport.handle(patch: patch, arguments: workspace, base: packed?.tree, json: json)
            } else if let error = outcome.error {
                Output.note("no patch: \(TerminalText.line(error))")
            }
        }
        switch report.state {
        case .succeeded: return
        case .failed: throw ExitCode(1)
        case .timedOut: throw ExitCode(124)
        case .cancelled: throw ExitCode(130)
        case .overBudget, .outputLimit: throw ExitCode(4)
        case .capacity:
            let reset = report.capacityStop?.resetsAt.map { " It resets at \($0.formatted(.iso8601))." } ?? ""
            Output.note(
                "the account is at its \(report.capacityStop?.window ?? "") limit; the job was stopped.\(reset)")
            throw ExitCode(4)
        }
    }

    func readPrompt() throws -> Data {
        // A command job without a prompt runs with empty input.
        let data = try PromptInput.read(text: prompt, file: promptFile) ?? Data()
        guard data.count <= Self.maxPromptBytes else {
            throw CLIError("the prompt is \(data.count) bytes; at most \(Self.maxPromptBytes) are allowed")
        }
        return data
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
}

/// Runs `body` as the one service of a `ServiceGroup` that SIGINT shuts down, the shape of every
/// long-lived process of this tool: Ctrl-C cancels the job (its container is stopped) instead of
/// killing us. Before the job starts (while the approval question is open, when reading the
/// terminal cannot be interrupted) Ctrl-C removes the created container and exits at once.
enum CancelOnInterrupt {
    final class State: Sendable {
        private let container = Mutex<(id: String, docker: DockerClient)?>(nil)

        func pendingContainer(_ id: String, docker: DockerClient) { container.withLock { $0 = (id, docker) } }
        func started() { container.withLock { $0 = nil } }
        var pending: (id: String, docker: DockerClient)? { container.withLock { $0 } }
    }

    /// The job as a service: it ends when the job does; a graceful shutdown (SIGINT) cancels it.
    struct JobService<T: Sendable>: Service {
        let state: State
        let body: @Sendable (State) async throws -> T
        let result = Slot<T>()

        final class Slot<Value: Sendable>: Sendable {
            let value = Mutex<Value?>(nil)
        }

        func run() async throws {
            let job = Task { try await body(state) }
            try await withGracefulShutdownHandler {
                let value = try await job.value
                result.value.withLock { $0 = value }
            } onGracefulShutdown: { [state] in
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
                job.cancel()
            }
        }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable (State) async throws -> T) async throws -> T {
        let service = JobService(state: State(), body: body)
        var logger = Logger(label: "cmm.execute")
        logger.logLevel = .warning
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigint], logger: logger))
        try await group.run()
        guard let value = service.result.value.withLock({ $0 }) else { throw CancellationError() }
        return value
    }
}
