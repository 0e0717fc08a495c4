import DockerEngine
import Foundation
import Logging
import MarketCore
import Workspace

/// One job to run.
public struct JobRequest: Sendable {
    public var id: String
    public var prompt: Data
    public var backend: JobBackend
    public var sandbox: SandboxSettings
    /// nil: no egress at all (the container has loopback only).
    public var egress: EgressPolicy?
    /// More input after the prompt, sent while the job runs (the interactive sign-in of `login`).
    public var input: AsyncStream<Data>?
    /// What the container is labelled as (`login` for the provider's own sign-in).
    public var kind = "job"
    /// More environment for the container, after the backend's.
    public var environment: [String] = []
    /// `login` only: subscription tokens the job prints on stdout are kept in the report
    /// (`subscriptionTokens`) before its output is redacted like any job's.
    public var keepsSubscriptionTokens = false
    /// A workspace job: the tree unpacked in /work before the command starts, and the change
    /// the job made to it read back afterwards.
    public var workspace: JobWorkspace?
    /// A claude job's conversation: nil for a new one with a fresh session id; one with a
    /// transcript (already checked) continues it.
    public var conversation: ClaudeConversation?
    /// The largest transcript a claude job may hand back (`limits.maxTranscriptBytes`).
    public var maxTranscriptBytes = ClaudeTranscript.defaultMaxBytes

    public init(id: String, prompt: Data, backend: JobBackend, sandbox: SandboxSettings, egress: EgressPolicy?) {
        self.id = id
        self.prompt = prompt
        self.backend = backend
        self.sandbox = sandbox
        self.egress = egress
    }
}

extension JobRequest {
    /// The strings of a job that end up in paths, container names and command lines, checked in
    /// one place before anything is created: a job id, the image, and a claude job's model.
    /// They may come from the network.
    public func validate() throws(MarketError) {
        try WireField.taskID(id)
        try WireField.imageReference(sandbox.image)
        if case .claude(let options) = backend { try WireField.model(options.model) }
    }
}

/// The workspace of a job, checked before it gets here (`WorkspaceTree` holds only what a tree
/// may hold).
public struct JobWorkspace: Sendable {
    public var tree: WorkspaceTree
    /// The largest patch the job may hand back (`limits.maxPatchBytes`).
    public var maxPatchBytes: Int64

    public init(tree: WorkspaceTree, maxPatchBytes: Int64 = 16 << 20) {
        self.tree = tree
        self.maxPatchBytes = maxPatchBytes
    }

}

extension JobRequest {
    /// The entrypoint's line before what the job leaves (its work directory, a claude job's
    /// transcript) comes back on stdout as a tar archive.
    public static let trailerMarker = "cmm-entrypoint: what the job leaves follows as a tar archive (v2)"

    /// A claude job with its conversation settled: a new one gets its session id here.
    func settled() -> JobRequest {
        var request = self
        if case .claude = backend, request.conversation == nil { request.conversation = ClaudeConversation() }
        if let transcript = request.conversation?.transcript {
            request.sandbox.transcriptBytes = Int64(transcript.data.count)
        }
        return request
    }

    /// Whether stdin is an archive and what the job leaves comes back after the marker.
    var archived: Bool { workspace != nil || conversation != nil }

    /// What goes to the container's stdin.
    var stdinData: Data {
        guard archived else { return prompt }
        let tree = workspace?.tree ?? .empty
        guard let conversation else { return tree.jobInput(prompt: prompt) }
        let message = ClaudeOptions.userMessage(prompt, sessionID: conversation.sessionID)
        let files = conversation.transcript.map { [(conversation.transcriptPath, $0.data)] } ?? []
        return tree.jobInput(prompt: message, files: files)
    }
}

/// What came of a workspace job's work directory.
public struct WorkspaceOutcome: Sendable {
    /// The change against the tree the job received (empty when it changed nothing); nil when
    /// it could not be read back (`error` says why).
    public var patch: WorkspacePatch?
    /// What the job left that a patch cannot carry (links pointing outside, FIFOs).
    public var skipped: [WorkspaceTree.Skipped] = []
    public var error: String?
}

/// Something a running job produced, already redacted.
public enum JobOutput: Sendable, Equatable {
    /// A line of output (stdout or stderr), as it will be logged and sent.
    case line(stream: ContainerStream, text: String)
    /// What a claude stdout line meant.
    case event(StreamEvent)
    /// The container was created and started.
    case started(containerID: String)
}

public enum JobEndState: String, Sendable, Codable {
    case succeeded, failed
    case timedOut = "timed-out"
    case cancelled
    /// The gateway refused a request because the job had used its token budget.
    case overBudget = "over_budget"
    /// The job printed more than its output limit and was stopped.
    case outputLimit = "output_limit"
    /// The account hit its limit (a 429, or a `rejected` window): the job was stopped, and it is
    /// no fault of the job's or the provider's — the task goes to another provider.
    case capacity
}

/// How a job ended.
public struct JobReport: Sendable {
    public var state: JobEndState
    public var exitCode: Int?
    public var result: ClaudeResult?
    /// Tokens per model: metered by the gateway in API-key mode (`metered`), otherwise what the
    /// job's own result line said.
    public var usage: [String: ModelUsage]
    public var metered = false
    public var gateway: [GatewayDecision] = []
    public var gatewayCounts = (forwarded: 0, refused: 0)
    public var egressCounts = (allowed: 0, refused: 0)
    public var rateLimits: [RateLimitNotice]
    /// Credentials removed from output before it left the runner.
    public var redactions: Int
    public var egress: [EgressDecision]
    public var egressBytes: Int64
    public var error: String?
    public var duration: Duration
    /// The provider's side failed, not the job; `error` says how:
    /// - the container was SIGKILLed from outside the job, not for memory and not by this tool
    ///   (the Docker engine stopped, or someone on this machine killed it). A job cannot do this
    ///   to itself: its command is PID 1 of its own namespace, which ignores a SIGKILL sent from
    ///   inside;
    /// - the engine failed the run (attach, start, the exit code unreadable).
    public var providerFault = false
    /// A workspace job's change, read back from its work directory.
    public var workspace: WorkspaceOutcome?
    /// A claude job's session id, and the transcript it left (checked), or why there is none.
    public var sessionID: String?
    public var transcript: ClaudeTranscript?
    public var transcriptError: String?
    /// The account's limits as the gateway read them off the API's answers (latest per window),
    /// and the refusal that stopped the job, if one did.
    public var limits: [LimitReading] = []
    public var capacityStop: LimitReading?
    /// What `keepsSubscriptionTokens` kept (`sk-ant-oat…` on stdout), for `login` to store.
    public var subscriptionTokens: [String] = []
}

/// Runs jobs in hardened containers: create, attach, start, hand over the prompt on stdin,
/// stream redacted output, enforce the wall-clock timeout, and always remove the container.
public struct JobExecutor: Sendable {
    let docker: DockerClient
    let runDirectory: URL
    let owner: String?
    let logger: Logger

    /// `owner` goes on every container as the `owner` label (see `Labels.owner`).
    public init(docker: DockerClient, runDirectory: URL, owner: String? = nil, logger: Logger = Logger(label: "job")) {
        self.docker = docker
        self.runDirectory = runDirectory
        self.owner = owner
        self.logger = logger
    }

    /// Runs a job in a new container. `whenCreated` runs once the container exists and before it
    /// starts, with its id: the place for the approval question and the limit reservation, so that
    /// creating the container overlaps the provider's decision. If it throws, the container is
    /// removed and nothing ran.
    public func run(
        _ request: JobRequest, whenCreated: @Sendable (String) async throws -> Void = { _ in },
        onOutput: @escaping @Sendable (JobOutput) -> Void
    ) async throws -> JobReport {
        try request.validate()
        let request = request.settled()
        let gateway = try request.backend.makeGateway(logger: logger)
        guard request.egress != nil || gateway != nil else {
            return try await runContainer(
                request, endpoint: nil, gateway: nil, whenCreated: whenCreated, onOutput: onOutput)
        }
        do {
            let report = try await EgressProxy.withProxy(
                directory: runDirectory.appending(path: "egress-\(request.id)"),
                policy: request.egress ?? EgressPolicy(allowlist: [], byteBudget: Self.gatewayOnlyByteBudget),
                gateway: gateway, logger: logger
            ) { proxy in
                try await runContainer(
                    request, endpoint: proxy, gateway: gateway, whenCreated: whenCreated, onOutput: onOutput)
            }
            await gateway?.shutdown()
            return report
        } catch {
            await gateway?.shutdown()
            throw error
        }
    }

    /// What a job with the gateway but no egress allowlist may move through it.
    public static let gatewayOnlyByteBudget: Int64 = 256 << 20

    /// Runs a job on a container already started by a `WarmPool`: only the prompt is left to send.
    public func run(
        _ request: JobRequest, on slot: WarmPool.Slot, onOutput: @escaping @Sendable (JobOutput) -> Void
    ) async throws -> JobReport {
        try request.validate()
        var request = request
        request.conversation = slot.conversation
        request = request.settled()
        var report = try await drive(
            containerID: slot.containerID, request: request, startFirst: false, secrets: slot.secrets,
            gateway: slot.proxy?.gateway, preamble: slot.gated ? Data("\n".utf8) : Data(), onOutput: onOutput)
        if let proxy = slot.proxy { report.note(proxy) }
        return report
    }

    func runContainer(
        _ request: JobRequest, endpoint: EgressProxy?, gateway: ClaudeGateway?,
        whenCreated: @Sendable (String) async throws -> Void, onOutput: @escaping @Sendable (JobOutput) -> Void
    ) async throws -> JobReport {
        let prepared = request.backend.prepared(
            gateway: gateway, workspace: request.workspace?.tree, conversation: request.conversation ?? .init())
        let egressDirectory = endpoint?.socketPath.deletingLastPathComponent
        let spec = SandboxPolicy.containerSpec(
            request.sandbox, command: prepared.command, environment: prepared.environment + request.environment,
            labels: Labels.make(kind: request.kind, job: request.id, owner: owner, version: ToolVersion.current),
            egressDirectory: egressDirectory)
        let id = try await docker.createContainer(spec, name: "cmm-job-\(request.id.prefix(36))")
        do {
            try await whenCreated(id)
        } catch {
            let client = docker
            await Task { try? await client.removeContainer(id, force: true) }.value
            throw error
        }
        var report = try await drive(
            containerID: id, request: request, startFirst: true, secrets: prepared.secrets, gateway: gateway,
            onOutput: onOutput)
        if let endpoint { report.note(endpoint) }
        return report
    }

    /// Attaches (and starts, for a cold container), hands over the prompt, streams redacted
    /// output under the wall-clock limit, and always removes the container.
    func drive(
        containerID id: String, request: JobRequest, startFirst: Bool, secrets: [String], gateway: ClaudeGateway?,
        preamble: Data = Data(), onOutput: @escaping @Sendable (JobOutput) -> Void
    ) async throws -> JobReport {
        let clock = ContinuousClock()
        let started = clock.now
        let collector = OutputCollector(
            redactor: SecretRedactor(knownSecrets: secrets), parsesClaude: request.backend.name == "claude",
            maxBytes: request.sandbox.maxOutputBytes,
            trailer: request.archived
                ? (
                    JobRequest.trailerMarker,
                    (request.sandbox.workTmpfsBytes + request.sandbox.tmpTmpfsBytes) * 2 + (1 << 20)
                )
                : nil, onOutput: onOutput)
        collector.keepsTokens = request.keepsSubscriptionTokens
        let input = request.stdinData
        var state = JobEndState.failed
        var exitCode: Int?
        var providerFault = false
        var failure: String?
        var gone: WarmContainerGone?
        let docker = self.docker
        do {
            let outcome = try await withThrowingTaskGroup(of: JobEndState?.self) { group in
                group.addTask {
                    try await docker.withAttachedContainer(id, stdin: true) { attached in
                        if startFirst {
                            try await docker.startContainer(id)
                        } else if try await docker.inspectContainer(id).State.Running != true {
                            // A warm container that died after it was handed out: attached to,
                            // it would wait for a start that never comes. Once attached, a death
                            // ends the attachment, so this check leaves no gap.
                            throw WarmContainerGone()
                        }
                        onOutput(.started(containerID: id))
                        let stdin = attached.stdin
                        return try await withThrowingTaskGroup(of: Void.self) { writers in
                            writers.addTask {
                                if !preamble.isEmpty { try await stdin.write(preamble) }
                                try await stdin.write(input)
                                if let input = request.input {
                                    for await chunk in input { try await stdin.write(chunk) }
                                }
                                stdin.finish()
                            }
                            for try await frame in attached.output {
                                // Past the limit nothing more is read, kept or written: the job is stopped.
                                guard collector.add(frame) else {
                                    writers.cancelAll()
                                    return .outputLimit
                                }
                            }
                            writers.cancelAll()
                            return nil
                        }
                    }
                }
                group.addTask {
                    try await Task.sleep(for: request.sandbox.timeout)
                    return .timedOut
                }
                if let gateway {
                    group.addTask {
                        // Once a request was refused for the budget, or the account is at its limit, the job is over.
                        switch await gateway.waitForStop() {
                        case .overBudget: return .overBudget
                        case .capacity: return .capacity
                        case nil:
                            try await Task.sleep(for: .seconds(86_400 * 365))
                            return nil
                        }
                    }
                }
                let finished = try await group.next()!
                group.cancelAll()
                return finished
            }
            collector.flush()
            if outcome == .outputLimit {
                state = .outputLimit
                failure =
                    "the job printed more than \(request.sandbox.maxOutputBytes) bytes (docker.maxOutput) and was stopped; the rest of its output was dropped"
            } else if outcome == .overBudget, let gateway {
                state = .overBudget
                failure =
                    "the job used \(gateway.tokensUsed) of its \(gateway.tokenBudget) tokens; the gateway refused its next request and the job was stopped"
            } else if outcome == .capacity, let stop = gateway?.capacityStop {
                state = .capacity
                failure = Self.capacityMessage(stop)
            } else if outcome == nil {
                do {
                    exitCode = try await docker.waitContainer(id)
                } catch let error as DockerError where error.code == .notFound {
                    throw DockerError(
                        .notFound, "the container was removed before its exit code was read (by `clean`?)")
                }
                state = collector.succeeded(exitCode: exitCode!) ? .succeeded : .failed
                if state == .failed { failure = collector.failureReason(exitCode: exitCode!) }
                if exitCode == 137, (try? await docker.inspectContainer(id).State.OOMKilled) != true {
                    providerFault = true
                    failure =
                        "the job's container was killed from outside the job (SIGKILL, not for memory): the Docker engine stopped, or it was killed on the provider's machine"
                }
            } else {
                state = .timedOut
                failure = "the job ran past its \(request.sandbox.timeout) wall-clock limit and was killed"
            }
        } catch is CancellationError {
            state = .cancelled
            failure = "cancelled"
        } catch let error as WarmContainerGone {
            // Nothing ran: the container goes below, and the caller can run the job cold instead.
            gone = error
        } catch {
            if Task.isCancelled {
                state = .cancelled
                failure = "cancelled"
            } else {
                // Nothing the job did ends here: the engine (or the warm container) failed it.
                providerFault = true
                failure = "\(error)"
            }
        }
        // Unstructured on purpose: the removal must run even when this task was cancelled.
        await Task { try? await docker.removeContainer(id, force: true) }.value
        if let gone { throw gone }
        var report = JobReport(
            state: state, exitCode: exitCode, result: collector.parser.result,
            usage: collector.parser.result?.usage ?? [:], rateLimits: collector.parser.rateLimits,
            redactions: collector.redactions, egress: [], egressBytes: 0, error: failure, duration: clock.now - started)
        report.providerFault = providerFault
        if request.archived, state != .cancelled, state != .timedOut {
            collector.readLeftBehind(request, into: &report, redactor: SecretRedactor(knownSecrets: secrets))
        }
        report.sessionID = request.conversation?.sessionID
        report.subscriptionTokens = collector.tokens
        if let gateway {
            // The API's own numbers, not what the job printed.
            report.usage = gateway.usage
            report.metered = true
            report.gateway = gateway.decisions
            report.gatewayCounts = gateway.counts
            report.limits = gateway.limits
            report.capacityStop = gateway.capacityStop
        }
        return report
    }

    /// "the account is at its five_hour limit; it resets at 2026-12-02T15:40:00Z"
    public static func capacityMessage(_ stop: LimitReading) -> String {
        "the provider's account is at its \(stop.window) limit"
            + (stop.resetsAt.map { "; it resets at \($0.formatted(.iso8601))" } ?? "")
    }
}

/// A warm container was no longer running when its job was to be handed over (the Docker
/// engine restarted, or it was killed on the provider's machine). Nothing of the job ran, and
/// the container is removed; run the job cold instead.
public struct WarmContainerGone: Error, CustomStringConvertible {
    public var description: String {
        "the warm container had stopped before the job was handed to it (the Docker engine restarted, or it was killed on the provider's machine)"
    }
}

extension JobReport {
    /// What the job used: the gateway's meter in API-key mode, otherwise the job's own result line.
    public var totalUsage: ModelUsage {
        metered ? usage.values.reduce(ModelUsage(), +) : result?.total ?? ModelUsage()
    }

    /// Takes the egress figures of the job's endpoint.
    mutating func note(_ endpoint: EgressProxy) {
        egress = endpoint.decisions
        egressBytes = endpoint.bytesTransferred
        egressCounts = endpoint.counts
    }
}

/// Splits frames into lines per stream, redacts them, parses claude's stdout. Memory stays
/// flat whatever a job prints: a line longer than `maxLineBytes` is cut into pieces, and past
/// `maxBytes` of output nothing more is taken.
final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private let redactor: SecretRedactor
    private let parsesClaude: Bool
    private let onOutput: @Sendable (JobOutput) -> Void
    private let maxBytes: Int64
    private var partial: [ContainerStream: [UInt8]] = [:]
    private var total: Int64 = 0
    /// A workspace job's work directory, after the marker line on stdout (bounded).
    private let trailerMarker: [UInt8]?
    private let maxTrailerBytes: Int64
    private var trailer: Data?
    private var trailerOverflow = false
    private(set) var parser = StreamJSONParser()
    private(set) var redactions = 0
    /// `sk-ant-oat…` tokens seen on stdout, when the request keeps them (`login`).
    var keepsTokens = false
    private(set) var tokens: [String] = []
    static let maxLineBytes = 64 << 10

    init(
        redactor: SecretRedactor, parsesClaude: Bool, maxBytes: Int64 = .max,
        trailer: (marker: String, maxBytes: Int64)? = nil, onOutput: @escaping @Sendable (JobOutput) -> Void
    ) {
        self.trailerMarker = trailer.map { Array($0.marker.utf8) }
        self.maxTrailerBytes = trailer?.maxBytes ?? 0
        self.redactor = redactor
        self.parsesClaude = parsesClaude
        self.maxBytes = maxBytes
        self.onOutput = onOutput
    }

    /// Takes a frame; false once the job's output has gone past its limit (the frame is dropped).
    func add(_ frame: OutputFrame) -> Bool {
        lock.withLock {
            if frame.stream == .stdout, trailer != nil {
                appendTrailer(frame.bytes[...])
                return true
            }
            total += Int64(frame.bytes.count)
            guard total <= maxBytes else { return false }
            var buffer = partial[frame.stream, default: []]
            buffer.append(contentsOf: frame.bytes)
            var start = buffer.startIndex
            while let newline = buffer[start...].firstIndex(of: 0x0a) {
                if frame.stream == .stdout, let trailerMarker,
                    buffer[start..<newline].reversed().starts(with: trailerMarker.reversed())
                {
                    // The command has ended; what follows is its work directory, not output. A
                    // last line without its newline ends just before the marker.
                    if newline - start > trailerMarker.count {
                        emit(frame.stream, Array(buffer[start..<(newline - trailerMarker.count)]))
                    }
                    trailer = Data()
                    total -= Int64(buffer.endIndex - newline - 1)
                    appendTrailer(buffer[(newline + 1)...])
                    partial[frame.stream] = []
                    return true
                }
                emit(frame.stream, Array(buffer[start..<newline]))
                start = newline + 1
            }
            while buffer.endIndex - start >= Self.maxLineBytes {
                emit(frame.stream, Array(buffer[start..<start + Self.maxLineBytes]))
                start += Self.maxLineBytes
            }
            partial[frame.stream] = Array(buffer[start...])
            return true
        }
    }

    private func appendTrailer(_ bytes: ArraySlice<UInt8>) {
        guard !trailerOverflow else { return }
        if Int64(trailer!.count + bytes.count) > maxTrailerBytes {
            trailerOverflow = true
            trailer = Data()
        } else {
            trailer!.append(contentsOf: bytes)
        }
    }

    /// Reads back what the job left (as hostile input: the job wrote it): a workspace job's
    /// work directory becomes its patch, a claude job's transcript is checked.
    func readLeftBehind(_ request: JobRequest, into report: inout JobReport, redactor: SecretRedactor) {
        lock.withLock {
            func fail(_ reason: String) {
                if request.workspace != nil { report.workspace = WorkspaceOutcome(error: reason) }
                if request.conversation != nil { report.transcriptError = reason }
            }
            guard let trailer else { return fail("what the job left did not come back (the container ended early)") }
            if trailerOverflow {
                return fail("what the job left came back larger than \(maxTrailerBytes) bytes and was dropped")
            }
            let left: WorkspaceTree
            let skipped: [WorkspaceTree.Skipped]
            do {
                (left, skipped) = try WorkspaceTree.read(
                    tar: trailer,
                    limits: WorkspaceLimits(
                        maxBytes: request.sandbox.workTmpfsBytes + request.sandbox.tmpTmpfsBytes,
                        maxFiles: (request.workspace?.tree.fileCount ?? 0) + 100_000),
                    lenient: true)
            } catch {
                return fail("what the job left could not be read back: \(error)")
            }
            if let workspace = request.workspace {
                let (tree, outside) = left.subtree(under: "work")
                let inWork = skipped.compactMap { item -> WorkspaceTree.Skipped? in
                    guard item.path.hasPrefix("work/") else { return nil }
                    return WorkspaceTree.Skipped(path: String(item.path.dropFirst(5)), reason: item.reason)
                }
                report.workspace = Self.outcome(workspace, tree: tree, skipped: inWork + outside)
            }
            if let conversation = request.conversation {
                guard case .file(let data) = left[conversation.transcriptPath]?.kind else {
                    report.transcriptError = "the job left no transcript of session \(conversation.sessionID)"
                    return
                }
                let (clean, count) = redactor.redact(String(decoding: data, as: UTF8.self))
                redactions += count
                do {
                    report.transcript = try ClaudeTranscript(
                        checking: Data(clean.utf8), sessionID: conversation.sessionID,
                        maxBytes: request.maxTranscriptBytes)
                } catch {
                    report.transcriptError = "the job's transcript was not kept: \(error)"
                }
            }
        }
    }

    /// The patch of a workspace job's work directory against the tree it received.
    static func outcome(_ workspace: JobWorkspace, tree: WorkspaceTree, skipped: [WorkspaceTree.Skipped])
        -> WorkspaceOutcome
    {
        let patch = WorkspacePatch.make(base: workspace.tree, result: tree)
        guard Int64(patch.data.count) <= workspace.maxPatchBytes else {
            return WorkspaceOutcome(
                skipped: skipped,
                error: "the patch is \(patch.data.count) bytes; limits.maxPatchBytes allows \(workspace.maxPatchBytes)")
        }
        return WorkspaceOutcome(patch: patch, skipped: skipped)
    }

    func flush() {
        lock.withLock {
            for (stream, bytes) in partial where !bytes.isEmpty { emit(stream, bytes) }
            partial = [:]
        }
    }

    private func emit(_ stream: ContainerStream, _ bytes: [UInt8]) {
        if keepsTokens, stream == .stdout {
            tokens += SecretRedactor.anthropicShaped(in: String(decoding: bytes, as: UTF8.self)).filter {
                $0.hasPrefix("sk-ant-oat")
            }
        }
        let (text, count) = redactor.redact(String(decoding: bytes, as: UTF8.self))
        redactions += count
        onOutput(.line(stream: stream, text: text))
        if parsesClaude && stream == .stdout {
            for event in parser.parse(line: text) { onOutput(.event(event)) }
        }
    }

    func succeeded(exitCode: Int) -> Bool {
        lock.withLock {
            if parsesClaude, let result = parser.result { return !result.isError }
            return exitCode == 0
        }
    }

    func failureReason(exitCode: Int) -> String {
        lock.withLock {
            if let result = parser.result, result.isError {
                return result.errors.first ?? result.text ?? "claude reported \(result.subtype)"
            }
            if parsesClaude && parser.result == nil { return "claude exited \(exitCode) without a result line" }
            return "exit code \(exitCode)"
        }
    }
}

extension String {
    var deletingLastPathComponent: String { (self as NSString).deletingLastPathComponent }
}
