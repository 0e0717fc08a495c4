import DockerEngine
import Foundation
import JobRunner
import Logging
import MarketCore
import MarketCrypto
import Participant
import Synchronization
import Workspace

/// Why a job did not run: the CLI turns each into its exit code, the provider daemon into a
/// `job.rejected` with the reason.
public struct JobRefusal: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case consent, approval, limits }
    public let kind: Kind
    public let reason: String
    public init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }
    public var description: String { reason }
}

/// Whose job the pipeline runs: this participant's own (`execute`) or a market requester's.
/// Recorded by its raw value in the job history (`usage --by role`).
public enum JobRole: String, Sendable {
    case local, market
}

/// One job, as the pipeline runs it: a local `execute` or a market job.
public struct PipelineJob: Sendable {
    public var id: String
    public var role: JobRole
    public var prompt: Data
    public var backend: JobBackend
    /// The peer the job is run for (this participant for a local job).
    public var requester: String
    /// For a market job: the task id and the price, shown in the approval question.
    public var taskID: String?
    public var price: Credits?
    /// A workspace job's tree (already read as hostile input where it came from the network),
    /// and what the requester's packing left out, for the approval question.
    public var workspace: WorkspaceTree?
    public var workspaceLeftOut: [String] = []
    /// A claude job that continues a conversation: its transcript, already checked.
    public var conversation: ClaudeTranscript?

    public init(
        id: String, role: JobRole, prompt: Data, backend: JobBackend, requester: String, taskID: String? = nil,
        price: Credits? = nil, workspace: WorkspaceTree? = nil
    ) {
        self.workspace = workspace
        self.id = id
        self.role = role
        self.prompt = prompt
        self.backend = backend
        self.requester = requester
        self.taskID = taskID
        self.price = price
    }

    public var backendDescription: String {
        switch backend {
        case .command(let command): "command " + command.joined(separator: " ")
        case .claude(let options): "claude (\(options.model))"
        }
    }

    var model: String? {
        if case .claude(let options) = backend { return options.model }
        return nil
    }
}

/// What the approval question shows, for a person to decide on.
public struct ApprovalQuestion: Sendable {
    public var text: String
    public var jobID: String
}

/// The one path every job takes, local or from the market: consent → approval → limits
/// reservation → sandboxed run (cold, or on a warm-pool container) → metered usage → audit.
/// The CLI only parses and renders around it; the provider daemon calls the same `run`.
public struct JobPipeline: Sendable {
    public let database: StateDatabase
    public let config: ResolvedConfig
    public let paths: ParticipantPaths
    public let docker: DockerClient
    public let actor: String
    let logger: Logger

    public init(
        database: StateDatabase, config: ResolvedConfig, paths: ParticipantPaths, docker: DockerClient,
        actor: String = "user", logger: Logger = Logger(label: "cmm.pipeline")
    ) {
        self.database = database
        self.config = config
        self.paths = paths
        self.docker = docker
        self.actor = actor
        self.logger = logger
    }

    /// Hooks around the run, for the caller's terminal or its market messages.
    public struct Hooks: Sendable {
        /// Manual approval: asked with the question; true runs the job. Without a person to
        /// ask, refuse (return false).
        public var ask: @Sendable (ApprovalQuestion) async throws -> Bool = { _ in false }
        /// The container exists (cold run) before the approval is asked.
        public var created: @Sendable (String) -> Void = { _ in }
        /// Approved and reserved: the job is about to start.
        public var approved: @Sendable () async throws -> Void = {}
        public var output: @Sendable (JobOutput) -> Void = { _ in }
        public init() {}
    }

    var limits: Limits { Limits(config: config) }
    var now: Date { Date() }

    /// Runs the job; a refusal (consent, approval, limits) throws `JobRefusal` with nothing run.
    /// With a `pool` the job takes a started container when one is ready.
    public func run(_ job: PipelineJob, pool: WarmPool? = nil, hooks: Hooks) async throws -> JobReport {
        try checkConsent(job)
        let jobs = JobStore(database: database)
        let sandbox = SandboxSettings(config: config)
        let allowlist = config.list(.egressAllowlist)
        let egress: EgressPolicy? =
            allowlist.isEmpty ? nil : EgressPolicy(allowlist: allowlist, byteBudget: config.bytes(.egressByteBudget))
        var request = JobRequest(id: job.id, prompt: job.prompt, backend: job.backend, sandbox: sandbox, egress: egress)
        if let tree = job.workspace {
            try checkWorkspace(tree)
            request.workspace = JobWorkspace(tree: tree, maxPatchBytes: config.bytes(.maxPatchBytes))
            request.sandbox.workspaceBytes = tree.unpackedBytes
            if case .claude(var options) = job.backend {
                options.workspaceTools = config.list(.claudeWorkspaceTools)
                request.backend = .claude(options)
            }
        }
        request.maxTranscriptBytes = config.bytes(.maxTranscriptBytes)
        if let transcript = job.conversation {
            guard case .claude = job.backend else {
                throw JobRefusal(.approval, "only a claude job can continue a conversation")
            }
            request.conversation = ClaudeConversation(continuing: transcript)
        }
        let estimatedTokens: Int64 = job.model == nil ? 0 : limits.maxTokensPerTask
        let reservation = JobReservation(
            id: job.id, role: job.role.rawValue, backend: job.backend.name, model: job.model, requester: job.requester,
            image: sandbox.image, promptBytes: Int64(job.prompt.count), estimatedTokens: estimatedTokens)
        let reserved = ReservedFlag()
        let admit: @Sendable () async throws -> Void = {
            try await decide(job, estimatedTokens: estimatedTokens, ask: hooks.ask)
            do {
                _ = try jobs.reserve(reservation, limits: limits, actor: actor, at: now)
            } catch let error as LimitError {
                throw JobRefusal(.limits, error.description)
            }
            reserved.set()
            try await hooks.approved()
            try jobs.markRunning(job.id, actor: "runner", at: now, details: ["image": sandbox.image])
        }
        let executor = JobExecutor(docker: docker, runDirectory: paths.runDirectory, owner: paths.ownerID)
        let report: JobReport
        do {
            try request.validate()
            // A warm container waits for a prompt alone, under a new session: a workspace job
            // and a follow-up start cold.
            if let pool, job.workspace == nil, job.conversation == nil, let slot = await pool.take() {
                do {
                    try await admit()
                } catch {
                    // The container was never given a job: it goes, and the pool makes another.
                    let docker = self.docker
                    await Task { try? await docker.removeContainer(slot.containerID, force: true) }.value
                    await pool.release(slot)
                    throw error
                }
                do {
                    report = try await executor.run(request, on: slot, onOutput: hooks.output)
                    await pool.release(slot)
                } catch is WarmContainerGone {
                    // It died while the job was being approved: nothing ran, the job runs cold.
                    await pool.release(slot)
                    logger.warning("warm container gone before the hand-over; running the job cold")
                    report = try await executor.run(
                        request, whenCreated: { hooks.created($0) }, onOutput: hooks.output)
                } catch {
                    await pool.release(slot)
                    throw error
                }
            } else {
                report = try await executor.run(
                    request,
                    whenCreated: { containerID in
                        hooks.created(containerID)
                        try await admit()
                    }, onOutput: hooks.output)
            }
        } catch {
            if reserved.isSet {
                try? jobs.finish(
                    job.id, outcome: JobOutcome(state: .failed, error: "\(error)"), actor: "runner", at: now)
            }
            throw error
        }
        try record(report, jobID: job.id)
        return report
    }

    /// The provider's own limits on a workspace, whatever the requester's were.
    func checkWorkspace(_ tree: WorkspaceTree) throws {
        do {
            try tree.check(
                WorkspaceLimits(
                    maxBytes: config.bytes(.maxWorkspaceBytes), maxFiles: Int(config.integer(.maxWorkspaceFiles))),
                maxBytesKey: ConfigKey.maxWorkspaceBytes.name, maxFilesKey: ConfigKey.maxWorkspaceFiles.name)
        } catch {
            throw JobRefusal(.limits, "\(error)")
        }
    }

    func checkConsent(_ job: PipelineJob) throws {
        let consent = try ConsentStore(database: database).current()
        guard consent.termsAccepted else {
            throw JobRefusal(
                .consent,
                "the terms are not accepted: read `claude-max-market terms`, then `terms --accept` and `opt-in --claude-jobs`"
            )
        }
        guard consent.optIn != nil else {
            throw JobRefusal(.consent, "not opted in: run `claude-max-market opt-in --claude-jobs` first")
        }
        if job.role == .market, case .claude(let options) = job.backend, case .oauthToken = options.credential,
            !config.boolean(.marketAllowSubscriptionLogin)
        {
            throw JobRefusal(
                .consent,
                "market jobs on a subscription login are off (market.allowSubscriptionLogin=false): read `terms` first")
        }
    }

    /// Manual mode asks (through `ask`); policy mode applies the approval.* rules. Audited either way.
    func decide(_ job: PipelineJob, estimatedTokens: Int64, ask: @Sendable (ApprovalQuestion) async throws -> Bool)
        async throws
    {
        func refuse(_ reason: String) throws -> Never {
            try database.audit(
                actor: actor, kind: "job.refused", details: ["job": job.id, "reason": reason], at: now)
            throw JobRefusal(.approval, "job refused: \(reason)")
        }
        if config.text(.approvalMode) == "policy" {
            let maxBytes = config.integer(.approvalMaxPromptBytes)
            if Int64(job.prompt.count) > maxBytes {
                try refuse("the prompt is \(job.prompt.count) bytes, policy allows \(maxBytes)")
            }
            if config.list(.approvalDeniedRequesters).contains(job.requester) {
                try refuse("requester \(job.requester) is denied")
            }
            let allowed = config.list(.approvalAllowedRequesters)
            if !allowed.isEmpty && !allowed.contains(job.requester) {
                try refuse("requester \(job.requester) is not allowed")
            }
            if estimatedTokens > limits.maxTokensPerTask { try refuse("\(estimatedTokens) tokens exceed the policy") }
            var details = ["job": job.id, "mode": "policy"]
            if let tree = job.workspace {
                // What a person would have been shown: the workspace's size and top-level names.
                details["workspace"] =
                    "\(tree.fileCount) files, \(tree.byteCount) bytes: "
                    + tree.topLevelNames.prefix(8).joined(separator: " ")
            }
            if let transcript = job.conversation { details["conversation"] = transcript.sessionID }
            try database.audit(actor: "policy", kind: "job.approved", details: details, at: now)
            return
        }
        let usage = try JobStore(database: database).usage(at: now)
        // The prompt and the names are the requester's: shown to the person asked, never obeyed
        // by their terminal.
        let text = TerminalText.escaped(String(decoding: job.prompt, as: UTF8.self))
        let shown = text.count > 2000 ? String(text.prefix(2000)) + "… (\(text.count - 2000) more characters)" : text
        var header = "Job \(job.id)"
        if let task = job.taskID {
            header += "\n  market task: \(task) from \(TerminalText.line(job.requester))"
            if let price = job.price { header += " at \(price)" }
        }
        var workspaceLines = ""
        if let tree = job.workspace {
            let names = tree.topLevelNames.map(TerminalText.line)
            workspaceLines =
                "\n  workspace: \(tree.fileCount) files, \(tree.byteCount) bytes: "
                + names.prefix(8).joined(separator: " ") + (names.count > 8 ? " … (\(names.count - 8) more)" : "")
                + "\n  tools:    \(config.list(.claudeWorkspaceTools).joined(separator: ", ")) (changes only in /work)"
            for line in job.workspaceLeftOut.prefix(5) {
                workspaceLines += "\n  left out by the requester: \(TerminalText.line(line))"
            }
        }
        if let transcript = job.conversation {
            workspaceLines +=
                "\n  continues: conversation \(TerminalText.line(transcript.sessionID)) (\(transcript.turns.count) turns, \(transcript.data.count) bytes)"
        }
        let question = """
            \(header)
              backend:  \(job.backendDescription)
              image:    \(config.text(.dockerImage))
              prompt:   \(job.prompt.count) bytes\(workspaceLines)
            \(shown.split(separator: "\n", omittingEmptySubsequences: false).map { "    │ \($0)" }.joined(separator: "\n"))
              limits left today: \(max(0, limits.dailyTasks - usage.day.tasks)) jobs, \(max(0, limits.dailyTokens - usage.day.tokens)) tokens
            Run it?
            """
        let approved: Bool
        do {
            approved = try await ask(ApprovalQuestion(text: question, jobID: job.id))
        } catch let refusal as JobRefusal {
            try refuse(refusal.reason)  // no one to ask (no terminal), said by the caller
        } catch {
            approved = false
        }
        guard approved else { try refuse("not approved") }
        try database.audit(actor: actor, kind: "job.approved", details: ["job": job.id, "mode": "manual"], at: now)
    }

    /// The job's record, audit summaries and usage: in API-key mode the gateway's meter, never
    /// what the job printed.
    func record(_ report: JobReport, jobID: String) throws {
        let jobs = JobStore(database: database)
        let total = report.totalUsage
        let state: JobState =
            switch report.state {
            case .succeeded: .succeeded
            case .failed: .failed
            case .timedOut: .timedOut
            case .cancelled: .cancelled
            case .overBudget: .overBudget
            case .outputLimit: .outputLimit
            case .capacity: .capacity
            }
        // The account's windows as the gateway read them off the API's answers (not what the job
        // printed, which is the job's to forge): what the provider's offer follows.
        try AccountLimitStore(database: database).record(report.limits)
        if let stop = report.capacityStop {
            try database.audit(
                actor: "gateway", kind: "capacity.stop",
                details: [
                    "job": jobID, "window": stop.window,
                    "resetsAt": stop.resetsAt.map { $0.formatted(.iso8601) } ?? "unknown",
                ],
                at: now)
        }
        for notice in report.rateLimits {
            try jobs.recordRateLimit(
                jobID: jobID, window: notice.window, status: notice.status, resetsAt: notice.resetsAt, at: now)
        }
        if report.redactions > 0 {
            try database.audit(
                actor: "runner", kind: "job.redacted", details: ["job": jobID, "count": String(report.redactions)],
                at: now)
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
                at: now)
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
                at: now)
        }
        try jobs.finish(
            jobID,
            outcome: JobOutcome(
                state: state, inputTokens: total.inputTokens, outputTokens: total.outputTokens,
                cacheReadTokens: total.cacheReadInputTokens, cacheCreationTokens: total.cacheCreationInputTokens,
                costUSD: total.costUSD, model: report.usage.max { $0.value.outputTokens < $1.value.outputTokens }?.key,
                exitCode: report.exitCode.map(Int64.init),
                error: report.error),
            actor: "runner", at: now)
    }
}

final class ReservedFlag: Sendable {
    private let value = Atomic(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

extension SandboxSettings {
    /// The job container's limits from the participant's config.
    public init(config: ResolvedConfig) {
        self.init(
            image: config.text(.dockerImage), memoryBytes: config.bytes(.dockerMemory),
            cpuShares: config.integer(.dockerCPUShares), pidsLimit: config.integer(.dockerPidsLimit),
            tmpfsBytes: config.bytes(.dockerTmpfsSize), timeout: .seconds(config.integer(.dockerTimeoutSeconds)),
            nanoCPUs: config.hundredths(.dockerCPUs) * 10_000_000, maxOutputBytes: config.bytes(.dockerMaxOutput))
    }
}

/// The `claude` backend as configured: the credential mode, the gateway, the model and tools.
public enum ClaudeBackendFactory {
    public static func make(config: ResolvedConfig, environment: [String: String]) throws -> JobBackend {
        let credential: ClaudeCredential
        switch config.text(.claudeCredentialMode) {
        case "subscription":
            guard let token = try oauthToken(config: config, environment: environment) else {
                throw JobRefusal(
                    .consent,
                    "no subscription token: run `claude-max-market login`, export CLAUDE_CODE_OAUTH_TOKEN, or set claude.oauthTokenFile (claude.credentialMode=subscription)"
                )
            }
            credential = .oauthToken(token)
        default:
            guard let key = try apiKey(config: config, environment: environment) else {
                throw JobRefusal(
                    .consent,
                    "no API key: export ANTHROPIC_API_KEY or set claude.apiKeyFile (claude.credentialMode=api-key)")
            }
            credential = .apiKey(key)
        }
        return .claude(
            ClaudeOptions(
                model: config.text(.claudeModel), maxTurns: Int(config.integer(.claudeMaxTurns)),
                allowedTools: config.list(.claudeAllowedTools), credential: credential,
                gateway: try gatewaySettings(config: config, environment: environment),
                tokenBudget: Limits(config: config).maxTokensPerTask))
    }

    /// The API key from the 0600 file or the environment; nil when there is none.
    public static func apiKey(config: ResolvedConfig, environment: [String: String]) throws -> String? {
        try secret(file: config.text(.claudeAPIKeyFile), variable: "ANTHROPIC_API_KEY", what: "API key", environment)
    }

    /// The subscription token (`claude setup-token`) from the 0600 file or the environment.
    public static func oauthToken(config: ResolvedConfig, environment: [String: String]) throws -> String? {
        try secret(
            file: config.text(.claudeOAuthTokenFile), variable: "CLAUDE_CODE_OAUTH_TOKEN", what: "subscription token",
            environment)
    }

    static func secret(file: String, variable: String, what: String, _ environment: [String: String]) throws
        -> String?
    {
        let value: String
        if file == "-" {
            value = environment[variable] ?? ""
        } else {
            guard let mode = FilePermissions.mode(of: file), mode & 0o077 == 0 else {
                throw JobRefusal(.consent, "\(what) file \(file) must exist with mode 0600")
            }
            value =
                (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                ?? ""
        }
        return value.isEmpty ? nil : value
    }

    /// Where the gateway forwards. `CMM_TEST_GATEWAY_CA_FILE` (tests only) names a PEM file of
    /// certificate authorities trusted instead of the system's, for a loopback test upstream.
    public static func gatewaySettings(config: ResolvedConfig, environment: [String: String]) throws
        -> GatewaySettings
    {
        var settings = GatewaySettings(upstream: URL(string: config.text(.claudeAPIBaseURL))!)
        if let file = environment["CMM_TEST_GATEWAY_CA_FILE"], !file.isEmpty {
            guard let pem = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw JobRefusal(.consent, "CMM_TEST_GATEWAY_CA_FILE: cannot read \(file)")
            }
            settings.trustRootsPEM = pem
        }
        if let seconds = environment["CMM_TEST_GATEWAY_TIMEOUT"].flatMap(Int.init), seconds > 0 {
            settings.timeout = .seconds(seconds)
        }
        return settings
    }
}
