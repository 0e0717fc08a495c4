import DockerEngine
import Foundation
import JobRunner
import Logging
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import Synchronization
import Workspace

extension Outbox: OutboxStorage {}

/// What the daemon reports as it works: one line each, for the terminal or a log.
public struct ProviderEvent: Sendable {
    public var taskId: String?
    public var message: String
    public init(taskId: String?, message: String) {
        self.taskId = taskId
        self.message = message
    }
}

/// The provider daemon (`provide`): keeps the offer live, bids per policy, takes sealed
/// payloads, asks for approval (or applies `approval.mode=policy`), runs each job through the
/// same `JobPipeline` as `execute`, streams sealed events, and sends the signed result with the
/// usage the gateway metered. Opting out withdraws the offer and refuses new jobs at once; a
/// stop finishes running jobs for a while, then hands the rest back.
public actor ProviderDaemon {
    public struct Settings: Sendable {
        public var autoBid = true
        /// How long `stop()` lets running jobs finish before handing them back.
        public var drainTimeout: Duration = .seconds(30)
        public var consentPoll: Duration = .seconds(1)
        /// How long a payload waits for the rest of its workspace before the job is handed back
        /// (`job.rejected`, no fault of the provider's): a requester that never sends every piece
        /// must not run the provider into the approval timeout, which would count as its failure.
        public var workspaceWait: Duration = .seconds(120)
        /// The clock capacity follows, and how the daemon waits for a window's reset (tests
        /// give their own: nothing sleeps for hours).
        public var now: @Sendable () -> Date = { Date() }
        public var sleepUntil: @Sendable (Date) async throws -> Void = { date in
            try await Task.sleep(for: .milliseconds(max(0, Int64((date.timeIntervalSinceNow * 1000).rounded(.up)))))
        }
        public init() {}
    }

    struct Assignment: Sendable {
        var requester: PublicKeyDocument
        var price: Int64
    }

    let session: MarketSession
    /// The pipeline as started; each job (and each limits check) uses the config as it is then,
    /// so `limits …` or `config --set approval.…` from another terminal apply to the next job.
    let basePipeline: JobPipeline
    let reloadConfig: @Sendable () -> ResolvedConfig?
    var pipeline: JobPipeline {
        guard let config = reloadConfig() else { return basePipeline }
        return JobPipeline(
            database: basePipeline.database, config: config, paths: basePipeline.paths, docker: basePipeline.docker,
            actor: basePipeline.actor)
    }
    let backend: JobBackend
    let pool: WarmPool?
    let settings: Settings
    let ask: @Sendable (ApprovalQuestion) async throws -> Bool
    let report: @Sendable (ProviderEvent) -> Void
    let tasks: MarketTaskStore
    /// The provider's own credentials (and anything shaped like one) never leave in an event
    /// or a result, whatever the job printed.
    let redactor: SecretRedactor
    var keys: KeyRing { session.keys }

    var offer: AdvertiseBody?
    /// Each won task's machine: what is done for each of its frames and for how its job ended.
    private var machines: [String: ProviderTaskMachine] = [:]
    /// The requester's verified key document and the price, per won task: what its frames are
    /// checked against and its results sealed to.
    private var assignments: [String: Assignment] = [:]
    var running: [String: Task<Void, Never>] = [:]
    /// Pieces of a requester's blobs (workspace, conversation) as they arrive.
    private var inputPieces: [String: [BlobChunkBody.Blob: SealedBlob.Assembler]] = [:]
    var optedOut = false
    var stopping = false
    /// Why the offer is paused for the account's capacity, and until when; nil while it is not.
    var capacityPause: CapacityPause?
    /// Wakes the daemon at the reset of the window that paused the offer.
    var capacityTimer: Task<Void, Never>?
    /// Why the offer is off the market while the limits allow no other job, or nil.
    private var pausedForLimits: String?
    public private(set) var finishedJobs = 0

    public init(
        session: MarketSession, pipeline: JobPipeline, backend: JobBackend, pool: WarmPool?,
        offer: AdvertiseBody?, settings: Settings = Settings(), knownSecrets: [String] = [],
        reloadConfig: @escaping @Sendable () -> ResolvedConfig? = { nil },
        ask: @escaping @Sendable (ApprovalQuestion) async throws -> Bool,
        report: @escaping @Sendable (ProviderEvent) -> Void
    ) {
        self.session = session
        self.basePipeline = pipeline
        self.reloadConfig = reloadConfig
        self.backend = backend
        self.pool = pool
        self.offer = offer
        self.settings = settings
        self.ask = ask
        self.report = report
        self.tasks = MarketTaskStore(database: pipeline.database)
        self.redactor = SecretRedactor(knownSecrets: knownSecrets)
    }

    var nowMs: Int64 { Date().unixMilliseconds }
    var database: StateDatabase { basePipeline.database }

    func note(_ message: String, task: String? = nil) { report(ProviderEvent(taskId: task, message: message)) }

    func audit(_ kind: String, _ details: [String: String]) {
        _ = try? database.audit(actor: "provider", kind: kind, details: details, at: Date())
    }

    // MARK: Running

    /// Handles the market's frames until the session ends; watches consent meanwhile.
    public func run() async {
        optedOut = !((try? ConsentStore(database: database).current().optIn) != nil)
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.watchConsent() }
            for await frame in session.frames {
                await handle(frame)
            }
            group.cancelAll()
        }
    }

    /// Called on every (re)connection: the offer goes out again, unless opted out or stopping.
    public func connected() async {
        // The offer as last saved: an `advertise` from another terminal changes it.
        if let saved = try? OfferStore(database: database).load() { offer = saved }
        // The workspaces this provider takes, from its config as it is now: the book matches
        // only tasks that fit them.
        let config = reloadConfig() ?? basePipeline.config
        offer?.maxWorkspaceBytes = config.bytes(.maxWorkspaceBytes)
        offer?.maxWorkspaceFiles = config.integer(.maxWorkspaceFiles)
        // The account's capacity: a window past its share pauses the offer until its reset.
        followCapacity(config: config)
        offer?.pausedUntilMs = capacityPause.map { $0.until.unixMilliseconds }
        offer?.pausedFor = capacityPause?.window
        guard let offer, !optedOut, !stopping else { return }
        if let block = limitsBlock() {
            pausedForLimits = block
            note("offer held back: \(block)")
            return
        }
        do {
            let ack = try await session.request(.offerAdvertise, offer, timeout: .seconds(15))
            if let pause = capacityPause {
                note(
                    "offer paused in the book until \(Matching.time(pause.until.unixMilliseconds)) (\(pause.window)): capacity returns then"
                )
            } else {
                note(
                    "offer live: \(offer.slots) slot(s) at \(Credits(micro: offer.price)) (\(ack.note ?? "advertised"))"
                )
            }
        } catch {
            note("could not advertise: \(error)")
        }
    }

    /// Why the limits allow no further job now (a day's, week's or month's jobs or tokens), or
    /// nil. Jobs running at once are the market's business (the offer's slots), not a reason.
    func limitsBlock() -> String? {
        guard var usage = try? JobStore(database: database).usage(at: Date()) else { return nil }
        usage.running = 0
        let limits = Limits(config: reloadConfig() ?? basePipeline.config)
        let tokens: Int64 = backend.name == "claude" ? limits.maxTokensPerTask : 0
        return limits.violation(adding: tokens, to: usage)?.description
    }

    /// Withdraws the offer when the limits are reached and puts it back when they allow a job.
    private func watchLimits() async {
        guard !optedOut, !stopping, offer != nil else { return }
        let block = limitsBlock()
        if let block, pausedForLimits == nil {
            pausedForLimits = block
            note("limits reached (\(block)): offer withdrawn until they allow another job")
            _ = try? await session.request(.offerWithdraw, EmptyBody(), timeout: .seconds(10))
        } else if block == nil, pausedForLimits != nil {
            pausedForLimits = nil
            await connected()
        }
    }

    private func watchConsent() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: settings.consentPoll)
            await watchLimits()
            let opted = (try? ConsentStore(database: database).current().optIn) != nil
            if !opted && !optedOut {
                optedOut = true
                note("opted out: withdrawing the offer and refusing new jobs")
                audit("provider.opted-out", ["peerId": keys.peerID.rawValue])
                _ = try? await session.request(.offerWithdraw, EmptyBody(), timeout: .seconds(10))
            } else if opted && optedOut && !stopping {
                optedOut = false
                await connected()
            }
        }
    }

    /// SIGTERM: withdraw, let running jobs finish for `drainTimeout`, then hand back the rest
    /// (`job.failed`, so the market re-opens them for another provider at once).
    public func stop() async {
        stopping = true
        capacityTimer?.cancel()
        _ = try? await session.request(.offerWithdraw, EmptyBody(), timeout: .seconds(5))
        let deadline = ContinuousClock.now + settings.drainTimeout
        while !running.isEmpty && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
        for (taskId, job) in running {
            note("handing back task \(taskId): the provider is stopping", task: taskId)
            job.cancel()
        }
        for job in running.values { await job.value }
    }

    public var runningCount: Int { running.count }

    // MARK: Frames

    /// One frame from the market. Every body is checked by the protocol's rules before anything
    /// is done with it (`checkedBody`); one they refuse is dropped, and said.
    func handle(_ frame: Envelope) async {
        do {
            try await handleChecked(frame)
        } catch {
            note("dropped a frame: \(error.description)", task: frame.subject.taskId)
        }
    }

    private func handleChecked(_ frame: Envelope) async throws(MarketClientError) {
        switch frame.messageType {
        case .taskOpen:
            await consider(try frame.checkedBody(OpenTaskBody.self))
        case .taskAssigned:
            let assigned = try frame.checkedBody(AssignedBody.self)
            guard assigned.provider == keys.peerID.rawValue else { return }
            do {
                let document = try RelayedFrame.document(assigned.requesterKeyDocument, for: assigned.requester)
                assignments[assigned.taskId] = Assignment(requester: document, price: assigned.price)
                let stoppedReading = machines[assigned.taskId] == nil && readingLeftBehind(assigned.taskId)
                await apply(.assigned(requester: assigned.requester, price: assigned.price), to: assigned.taskId)
                if stoppedReading { await apply(.inputsStoppedTheProvider, to: assigned.taskId) }
            } catch {
                await apply(.assignedUnverified(problem: "\(error)"), to: assigned.taskId)
            }
        case .payloadDeliver:
            await deliver(frame, try frame.checkedBody(SealedBody.self))
        case .blobChunk:
            await inputPiece(frame, try frame.checkedBody(BlobChunkBody.self))
        case .settlement:
            // Recorded even for a task won before a restart: the settlement may come days later.
            let settlement = try frame.checkedBody(SettlementBody.self)
            let earned = settlement.movements.filter {
                $0.to == .known(.peer(keys.peerID)) && $0.kind != .known(.refund)
            }.map(\.amount).saturatingSum()
            await apply(.settlement(settlement, earned: earned), to: settlement.taskId)
        case .jobDispute:
            let dispute = try frame.checkedBody(ReasonBody.self)
            await apply(.dispute(reason: dispute.reason), to: dispute.taskId)
        case .error:
            if let error = frame.errorBody { note("market: \(error.code): \(error.message)") }
        default:
            break
        }
    }

    /// Bids on an open task the offer fits, at the offer's price, while a slot is free.
    func consider(_ open: OpenTaskBody) async {
        guard settings.autoBid, let offer, !optedOut, !stopping, pausedForLimits == nil, capacityPause == nil,
            open.requester != keys.peerID.rawValue, open.maxPrice >= offer.price, running.count < offer.slots,
            limitsBlock() == nil
        else { return }
        if let bytes = open.workspaceBytes {
            guard let maxBytes = offer.maxWorkspaceBytes, let maxFiles = offer.maxWorkspaceFiles, bytes <= maxBytes,
                open.workspaceFiles ?? 0 <= maxFiles
            else { return }
        }
        if let model = open.model, let models = offer.models, !models.isEmpty, !models.contains(model) { return }
        do {
            let ack = try await session.request(
                .bidPlace, BidBody(taskId: open.taskId, price: offer.price), expiresMs: open.expiresMs,
                timeout: .seconds(15))
            note("bid on task \(open.taskId): \(ack.state?.rawValue ?? "sent")", task: open.taskId)
        } catch {
            note("bid on task \(open.taskId) not taken: \(error)", task: open.taskId)
        }
    }

    /// Applies an event to the task's machine and performs what it decides, in order.
    func apply(_ event: ProviderTaskMachine.Event, to taskId: String) async {
        var machine = machines[taskId] ?? ProviderTaskMachine(taskId: taskId)
        let actions = machine.apply(event)
        machines[taskId] = machine
        for action in actions {
            switch action {
            case .recordWon(let requester, let price):
                try? tasks.insert(
                    LocalMarketTask(
                        taskId: taskId, role: "provider", state: .assigned, counterparty: requester, maxPrice: price,
                        price: price, createdMs: nowMs, updatedMs: nowMs), prompt: nil)
            case .record(let state, let note):
                try? tasks.update(taskId, state: state, note: note, at: nowMs)
            case .note(let text):
                note(text, task: taskId)
            case .audit(let kind, let details):
                audit(kind, details)
            case .reject(let reason):
                _ = try? await session.enqueue(
                    .jobRejected, ReasonBody(taskId: taskId, reason: String(reason.prefix(1000))))
            case .awaitInputs:
                await startIfInputsComplete(taskId)
                if machines[taskId]?.phase == .awaitingInputs {
                    let wait = settings.workspaceWait
                    Task {
                        try? await Task.sleep(for: wait)
                        await self.apply(.inputsLate(seconds: Int(wait.inSeconds)), to: taskId)
                    }
                }
            case .start(let payload, let workspace, let conversation):
                inputPieces[taskId] = nil
                guard let assignment = assignments[taskId] else { continue }
                start(
                    taskId, assignment: assignment, payload: payload, workspace: workspace, conversation: conversation)
            case .tellMarket(let type, let reason):
                _ = try? await session.enqueue(type, ReasonBody(taskId: taskId, reason: String(reason.prefix(1000))))
            case .forget:
                machines[taskId] = nil
                assignments[taskId] = nil
                inputPieces[taskId] = nil
            }
        }
    }

    /// A sealed payload from the requester: checked and opened here, then the machine's.
    func deliver(_ frame: Envelope, _ body: SealedBody) async {
        let taskId = body.taskId
        guard let assignment = assignments[taskId], let machine = machines[taskId] else {
            note("a payload for task \(taskId), which is not assigned to this provider, was ignored", task: taskId)
            return
        }
        // Sent again after a reconnect: the job is already under way (or over).
        guard machine.phase == .assigned else { return }
        do {
            try RelayedFrame.verify(frame, from: assignment.requester, nowMs: nowMs)
        } catch {
            await apply(.payloadUnsigned(problem: "\(error)"), to: taskId)
            return
        }
        let payload: JobContent.Payload
        do {
            guard let sealed = Data(base64Encoded: body.sealed) else { throw MarketClientError("not base64") }
            payload = try readingInputs(taskId) {
                let (plaintext, _) = try Sealer.open(sealed, keys: keys)
                return try JSONDecoder().decode(JobContent.Payload.self, from: plaintext)
            }
            guard payload.taskId == taskId else {
                throw MarketClientError("the payload names task \(WireField.printable(payload.taskId)), not \(taskId)")
            }
            guard payload.promptData != nil else { throw MarketClientError("the payload's prompt is not base64") }
        } catch {
            await apply(.payloadUnreadable(problem: "\(error)"), to: taskId)
            return
        }
        let conditions = ProviderTaskMachine.Conditions(
            optedOut: optedOut, stopping: stopping, runsClaude: backend.name == "claude")
        await apply(.payload(payload, conditions), to: taskId)
    }

    private func start(
        _ taskId: String, assignment: Assignment, payload: JobContent.Payload, workspace: WorkspaceTree?,
        conversation: ClaudeTranscript?
    ) {
        let leftOut = Array((payload.workspace?.leftOut ?? []).prefix(20))
        // Checked when the payload was opened; read again here, where nothing may trap.
        let prompt = payload.promptData ?? Data()
        let job = Task {
            await self.run(
                taskId: taskId, assignment: assignment, prompt: prompt, workspace: workspace,
                leftOut: leftOut, conversation: conversation)
        }
        running[taskId] = job
    }

    /// A piece of a requester's workspace or conversation: checked against the requester's key,
    /// kept until the whole blob is there (pieces may come before the payload that names them).
    func inputPiece(_ frame: Envelope, _ body: BlobChunkBody) async {
        guard body.blob.fromRequester, let assignment = assignments[body.taskId],
            let phase = machines[body.taskId]?.phase, phase == .assigned || phase == .awaitingInputs
        else { return }
        do {
            try RelayedFrame.verify(frame, from: assignment.requester, nowMs: nowMs)
        } catch {
            note("refused a \(body.blob.rawValue) piece for task \(body.taskId): \(error)", task: body.taskId)
            return
        }
        let config = reloadConfig() ?? basePipeline.config
        // The archive of a workspace within the config's limits is checked by them once read.
        let fresh =
            body.blob == .conversation
            ? SealedBlob.Assembler(
                maxBytes: config.bytes(.maxTranscriptBytes), limitName: ConfigKey.maxTranscriptBytes.name)
            : SealedBlob.Assembler()
        var pieces = inputPieces[body.taskId]?[body.blob] ?? fresh
        do {
            try pieces.add(body)
        } catch {
            inputPieces[body.taskId] = nil
            await apply(.inputsRefused(reason: "the \(body.blob.rawValue) was refused: \(error)"), to: body.taskId)
            return
        }
        inputPieces[body.taskId, default: [:]][body.blob] = pieces
        await startIfInputsComplete(body.taskId)
    }

    /// Once payload and every piece are in: the workspace and the conversation are opened and
    /// read as hostile input, within this provider's own limits; anything wrong with them
    /// rejects the job (the requester's fault), with nothing written anywhere.
    private func startIfInputsComplete(_ taskId: String) async {
        guard let payload = machines[taskId]?.awaiting else { return }
        let pieces = inputPieces[taskId] ?? [:]
        let needed: [(BlobChunkBody.Blob, JobContent.BlobInfo)] =
            [payload.workspace.map { (.workspace, $0.blob) }, payload.conversation.map { (.conversation, $0.blob) }]
            .compactMap { $0 }
        do {
            guard try SealedBlob.complete(needed, in: pieces) else { return }
        } catch {
            inputPieces[taskId] = nil
            await apply(.inputsRefused(reason: error.description), to: taskId)
            return
        }
        inputPieces[taskId] = nil
        let config = reloadConfig() ?? basePipeline.config
        var tree: WorkspaceTree?
        var conversation: ClaudeTranscript?
        if let info = payload.workspace {
            let limits = WorkspaceLimits(
                maxBytes: config.bytes(.maxWorkspaceBytes), maxFiles: Int(config.integer(.maxWorkspaceFiles)))
            do {
                tree = try readingInputs(taskId) {
                    let archive = try SealedBlob.open(pieces[.workspace], info.blob, keys: keys)
                    return try WorkspaceTree.read(tar: archive, limits: limits).tree
                }
            } catch {
                await apply(.inputsRefused(reason: "the workspace was refused: \(error)"), to: taskId)
                return
            }
        }
        if let info = payload.conversation {
            do {
                conversation = try readingInputs(taskId) {
                    let data = try SealedBlob.open(pieces[.conversation], info.blob, keys: keys)
                    return try ClaudeTranscript(
                        checking: data, sessionID: info.sessionId, maxBytes: config.bytes(.maxTranscriptBytes))
                }
            } catch {
                await apply(.inputsRefused(reason: "the conversation was refused: \(error)"), to: taskId)
                return
            }
        }
        await apply(.inputsOpened(workspace: tree, conversation: conversation), to: taskId)
    }

    /// Reads a requester's inputs with a mark left in this home meanwhile: a process that stops
    /// while reading (a reader that traps) leaves it, and the task, which the market sends again
    /// after the restart, is then refused (`readingLeftBehind`) instead of read into a loop.
    private func readingInputs<T>(_ taskId: String, _ read: () throws -> T) throws -> T {
        try? tasks.update(taskId, state: .readingInputs, at: nowMs)
        defer { try? tasks.update(taskId, state: .assigned, at: nowMs) }
        return try read()
    }

    private func readingLeftBehind(_ taskId: String) -> Bool {
        (try? tasks.task(taskId))?.state == .readingInputs
    }

    // MARK: One job

    func run(
        taskId: String, assignment: Assignment, prompt: Data, workspace: WorkspaceTree?, leftOut: [String],
        conversation: ClaudeTranscript?
    ) async {
        defer { running[taskId] = nil }
        let jobID = UUID().uuidString.lowercased()
        try? tasks.update(taskId, jobId: jobID, at: nowMs)
        var job = PipelineJob(
            id: jobID, role: .market, prompt: prompt, backend: backend, requester: assignment.requester.peerId,
            taskID: taskId, price: Credits(micro: assignment.price), workspace: workspace)
        job.workspaceLeftOut = leftOut
        job.conversation = conversation
        let report = self.report
        let streamer = EventStreamer(
            taskId: taskId, requester: assignment.requester, session: session,
            onError: { report(ProviderEvent(taskId: taskId, message: $0)) })
        let isClaude = backend.name == "claude"
        let session = self.session
        let output = OutputKeeper(limit: JobContent.maxOutputBytes)
        let redactor = self.redactor
        let redactions = Counter()
        let clean: @Sendable (String) -> String = { text in
            let (cleaned, count) = redactor.redact(text)
            if count > 0 { redactions.add(count) }
            return cleaned
        }
        let deltas = DeltaHolder()
        var hooks = JobPipeline.Hooks()
        hooks.ask = ask
        hooks.approved = {
            _ = try await session.request(.jobApproved, TaskRefBody(taskId: taskId), timeout: .seconds(30))
            report(ProviderEvent(taskId: taskId, message: "approved and started task \(taskId)"))
        }
        hooks.output = { event in
            switch event {
            case .started: streamer.add(JobContent.Item(kind: .known(.started)))
            case .line(let stream, let text):
                let text = clean(text)
                if stream == .stdout && !isClaude { output.add(text) }
                if !isClaude || stream == .stderr {
                    streamer.add(
                        JobContent.Item(
                            kind: .known(.line), stream: .known(stream == .stderr ? .stderr : .stdout), text: text))
                }
            case .event(.textDelta(let text)):
                let ready = deltas.add(text)
                if !ready.isEmpty { streamer.add(JobContent.Item(kind: .known(.delta), text: clean(ready))) }
            case .event(.text(let text)):
                let rest = deltas.flush()
                if !rest.isEmpty { streamer.add(JobContent.Item(kind: .known(.delta), text: clean(rest))) }
                streamer.add(JobContent.Item(kind: .known(.text), text: clean(text)))
            case .event(.toolUse(let name)): streamer.add(JobContent.Item(kind: .known(.tool), text: clean(name)))
            default: break
            }
        }
        do {
            let result = try await pipeline.run(job, pool: pool, hooks: hooks)
            await streamer.finish()
            if result.state == .capacity {
                await apply(
                    .jobEnded(.handedBack(reason: result.error ?? "the provider's account is at its limit")),
                    to: taskId)
                await capacityMayHaveChanged()
                return
            }
            if !result.limits.isEmpty { await capacityMayHaveChanged() }
            if result.state == .cancelled {
                await apply(.jobEnded(.stopped), to: taskId)
                return
            }
            if result.providerFault {
                // The provider's side failed, not the job: no result to judge, the task goes back.
                let reason = result.error ?? "the job's container was killed from outside the job"
                await apply(.jobEnded(.failedHere(reason: reason, sent: nil)), to: taskId)
                return
            }
            let usage = result.totalUsage
            let text = isClaude ? clean(result.result?.text ?? "") : output.text
            var patchInfo: JobContent.PatchInfo?
            if let outcome = result.workspace, let workspace {
                patchInfo = try await sendPatch(outcome, base: workspace, taskId: taskId, to: assignment.requester)
            }
            var content = JobContent.Result(
                taskId: taskId, state: .known(result.state), exitCode: result.exitCode,
                output: JobContent.prefix(text, maxBytes: JobContent.maxOutputBytes),
                truncated: output.truncated || text.utf8.count > JobContent.maxOutputBytes,
                error: result.error.map(clean),
                usage: JobUsage(inputTokens: usage.inputTokens, outputTokens: usage.outputTokens),
                metered: result.metered, seconds: result.duration.inSeconds,
                redactions: result.redactions + redactions.value)
            content.patch = patchInfo
            if let sessionID = result.sessionID {
                content.transcript = try await sendTranscript(
                    result, sessionID: sessionID, taskId: taskId, to: assignment.requester)
            }
            if redactions.value > 0 {
                audit("market.redacted", ["task": taskId, "job": jobID, "count": String(redactions.value)])
            }
            let (sealed, plaintext) = try JobContent.seal(content, to: assignment.requester, purpose: .result)
            let hash = JobContent.sha256Hex(plaintext)
            try await session.enqueue(
                .jobResult,
                ResultBody(taskId: taskId, sealed: sealed, resultHash: hash, usage: content.usage))
            finishedJobs += 1
            let took = String(format: "%.1f", result.duration.inSeconds)
            await apply(.jobEnded(.delivered(summary: "\(result.state.rawValue) in \(took) s")), to: taskId)
        } catch let refusal as JobRefusal {
            await streamer.finish()
            await apply(.jobEnded(.refused(reason: refusal.reason)), to: taskId)
        } catch {
            await streamer.finish()
            let failure = ProviderTaskMachine.JobEnd.failedHere(
                reason: "\(error)", sent: "the provider could not run the job: \(error)")
            await apply(.jobEnded(failure), to: taskId)
        }
    }

    /// A workspace job's patch goes sealed to the requester, in pieces, before the result that
    /// names it. The patch is what the job left in /work: the requester's to judge.
    private func sendPatch(
        _ outcome: WorkspaceOutcome, base: WorkspaceTree, taskId: String, to requester: PublicKeyDocument
    ) async throws -> JobContent.PatchInfo {
        let skipped = outcome.skipped.map { "\($0.path): \($0.reason)" }
        guard let patch = outcome.patch else {
            return JobContent.PatchInfo(
                blob: nil, baseHash: base.baseHash, files: [], skipped: skipped, error: outcome.error)
        }
        guard !patch.isEmpty else {
            return JobContent.PatchInfo(blob: nil, baseHash: patch.baseHash, files: [], skipped: skipped, error: nil)
        }
        let (info, chunks) = try SealedBlob.seal(patch.data, to: requester, purpose: .result)
        for (index, chunk) in chunks.enumerated() {
            try await session.enqueue(
                .blobChunk,
                BlobChunkBody(taskId: taskId, blob: .patch, index: index, count: chunks.count, sealed: chunk),
                id: "patch-\(taskId)-\(index)")
        }
        return JobContent.PatchInfo(
            blob: info, baseHash: patch.baseHash, files: patch.files, skipped: skipped, error: nil)
    }

    /// A claude job's transcript goes sealed to the requester, in pieces, before the result that
    /// names it; nothing of it is kept here (the job's container, which held it, is gone).
    private func sendTranscript(
        _ report: JobReport, sessionID: String, taskId: String, to requester: PublicKeyDocument
    ) async throws -> JobContent.TranscriptInfo {
        guard let transcript = report.transcript else {
            return JobContent.TranscriptInfo(sessionId: sessionID, blob: nil, error: report.transcriptError)
        }
        let (info, chunks) = try SealedBlob.seal(transcript.data, to: requester, purpose: .result)
        for (index, chunk) in chunks.enumerated() {
            try await session.enqueue(
                .blobChunk,
                BlobChunkBody(taskId: taskId, blob: .transcript, index: index, count: chunks.count, sealed: chunk),
                id: "transcript-\(taskId)-\(index)")
        }
        return JobContent.TranscriptInfo(sessionId: sessionID, blob: info, error: nil)
    }
}

/// Text deltas as they stream, held back so that redaction always sees a credential whole: a
/// credential holds no whitespace, so text goes on up to its last whitespace and the rest
/// waits for the next piece (or the whole message, or `maxHeld` characters).
final class DeltaHolder: Sendable {
    private let held = Mutex("")
    static let maxHeld = 4096

    func add(_ piece: String) -> String {
        held.withLock { held in
            held += piece
            guard let last = held.lastIndex(where: \.isWhitespace) else {
                guard held.count > Self.maxHeld else { return "" }
                defer { held = "" }
                return held
            }
            let ready = String(held[...last])
            held = String(held[held.index(after: last)...])
            return ready
        }
    }

    func flush() -> String {
        held.withLock { held in
            defer { held = "" }
            return held
        }
    }
}

/// A command's standard output for the result, up to a limit.
final class OutputKeeper: Sendable {
    private let state = Mutex<(text: String, truncated: Bool)>(("", false))
    let limit: Int
    init(limit: Int) { self.limit = limit }

    func add(_ line: String) {
        state.withLock {
            if $0.text.utf8.count + line.utf8.count + 1 > limit {
                $0.truncated = true
            } else {
                $0.text += line + "\n"
            }
        }
    }

    var text: String { state.withLock { $0.text } }
    var truncated: Bool { state.withLock { $0.truncated } }
}

final class Counter: Sendable {
    private let count = Atomic(0)
    func add(_ value: Int) { count.add(value, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
