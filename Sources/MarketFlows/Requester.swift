import Foundation
import JobRunner
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import Workspace

/// What a requester needs to post a job.
public struct SubmitOptions: Sendable {
    public var prompt: Data
    public var maxPrice: Int64
    public var minReputation: Double?
    public var model: String?
    public var timeoutSeconds: Int64?
    public var expiresInSeconds: Int64?
    /// A workspace job: the packed tree and what packing left out (said to the provider).
    public var workspace: WorkspaceTree?
    public var workspaceLeftOut: [String] = []
    /// Where the workspace came from, for `result --apply` later.
    public var workspaceDirectory: String?
    /// A follow-up: the conversation it continues (checked) and the task that left it.
    public var conversation: (transcript: ClaudeTranscript, parent: String)?

    public init(
        prompt: Data, maxPrice: Int64, minReputation: Double? = nil, model: String? = nil,
        timeoutSeconds: Int64? = nil, expiresInSeconds: Int64? = nil, workspace: WorkspaceTree? = nil
    ) {
        self.workspace = workspace
        self.prompt = prompt
        self.maxPrice = maxPrice
        self.minReputation = minReputation
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.expiresInSeconds = expiresInSeconds
    }
}

/// What happened to a task, as the requester follows it.
public enum RequesterUpdate: Sendable {
    case assigned(provider: String, price: Int64)
    case approved(provider: String)
    case items([JobContent.Item])
    case rejected(provider: String, reason: String)
    case failed(provider: String, reason: String)
    /// The provider's account hit its limit: the task goes to the next provider, unpaid.
    case handedBack(provider: String, reason: String)
    case result(JobContent.Result, provider: String)
    /// A workspace job's patch, opened and checked against the result that names it.
    case patch(WorkspacePatch)
    /// A claude job's conversation as it stands now, kept for a follow-up.
    case transcript(ClaudeTranscript)
    /// The result names no usable transcript (the job left none, or not a valid one).
    case noTranscript(String)
    /// The result did not check out: it is disputed, not accepted.
    case badResult(provider: String, problem: String)
    case settlement(SettlementBody)
    /// A frame about the task that was not acted on: its body broke the protocol's rules.
    case frameDropped(String)
}

/// How a followed task ended.
public struct RequesterOutcome: Sendable {
    public var taskId: String
    public var state: LocalTaskState
    public var result: JobContent.Result?
    public var provider: String?
    public var patch: WorkspacePatch?
    public var transcript: ClaudeTranscript?
}

/// The requester's side of a market job: posts it with the price in escrow, seals the prompt
/// to whichever provider wins (checking that provider's signed key document), checks every
/// event and the result against the provider's signature and the result hash, and accepts —
/// or disputes a result that does not check out.
public actor Requester {
    let session: MarketSession
    let tasks: MarketTaskStore
    let database: StateDatabase
    /// Each followed task's machine: what is done for each of its frames.
    private var machines: [String: RequesterMachine] = [:]
    /// The assigned provider's verified key document: what its frames are checked against.
    private var providers: [String: PublicKeyDocument] = [:]
    /// A workspace job's files here: the archive sent (`TASK.tar`) and the patch back (`TASK.diff`).
    let workspaces: WorkspaceFiles?
    /// Conversations here: a follow-up's transcript sent, and every claude job's transcript back.
    let conversations: ConversationFiles?
    private var resultPieces: [String: [BlobChunkBody.Blob: SealedBlob.Assembler]] = [:]

    public init(
        session: MarketSession, database: StateDatabase, workspaces: WorkspaceFiles? = nil,
        conversations: ConversationFiles? = nil
    ) {
        self.session = session
        self.database = database
        self.tasks = MarketTaskStore(database: database)
        self.workspaces = workspaces
        self.conversations = conversations
    }

    var nowMs: Int64 { Date().unixMilliseconds }
    var me: String { session.keys.peerID.rawValue }

    /// Posts the task (the prompt is kept locally, to seal again if the task moves to another
    /// provider); returns the market's answer: `assigned` at once, or `open` with why not.
    public func post(_ options: SubmitOptions, taskId: String = UUID().uuidString.lowercased()) async throws
        -> AckBody
    {
        try tasks.insert(
            LocalMarketTask(
                taskId: taskId, role: "requester", state: .posting, maxPrice: options.maxPrice,
                model: options.model, timeoutSeconds: options.timeoutSeconds ?? 300, createdMs: nowMs,
                updatedMs: nowMs), prompt: options.prompt)
        var sizes: (bytes: Int64, files: Int64, archiveBytes: Int64)?
        if let tree = options.workspace {
            guard let workspaces else { throw MarketClientError("no place to keep the workspace of task \(taskId)") }
            let archive = tree.tar()
            try workspaces.save(
                archive, leftOut: options.workspaceLeftOut, directory: options.workspaceDirectory, for: taskId)
            sizes = (tree.byteCount, Int64(tree.fileCount), Int64(archive.count))
        }
        if let (transcript, parent) = options.conversation {
            guard let conversations else {
                throw MarketClientError("no place to keep the conversation of task \(taskId)")
            }
            try conversations.saveSent(transcript, parent: parent, for: taskId)
        }
        let body = PostBody(
            taskId: taskId, maxPrice: options.maxPrice, minReputation: options.minReputation, model: options.model,
            timeoutSeconds: options.timeoutSeconds, expiresInSeconds: options.expiresInSeconds, workspace: sizes,
            conversationBytes: options.conversation.map { Int64($0.transcript.data.count) })
        do {
            var ack = try await session.request(.taskPost, body, id: "post-\(taskId)", timeout: .seconds(30))
            // The task is the one this requester named: an answer about another is not believed.
            if let answered = ack.taskId, answered != taskId {
                throw MarketClientError(
                    "the market answered the post of task \(taskId) about another task (\(answered.prefix(64).debugDescription))"
                )
            }
            ack.taskId = taskId
            try tasks.update(
                taskId, state: ack.state.map { LocalTaskState(ack: $0) } ?? .open, note: ack.note, at: nowMs)
            try database.audit(
                actor: "requester", kind: "market.posted",
                details: [
                    "task": taskId, "maxPrice": String(options.maxPrice),
                    "promptSha256": JobContent.sha256Hex(options.prompt),
                ], at: Date())
            return ack
        } catch {
            try? tasks.update(taskId, state: .refused, note: "\(error)", at: nowMs)
            throw error
        }
    }

    /// Follows the task until it is settled, refunded or cancelled (or `timeout` passes),
    /// reporting each step. With `accept`, a result that checks out is accepted at once.
    public func follow(
        _ taskId: String, accept: Bool, timeout: Duration, untilDelivered: Bool = false,
        onUpdate: @escaping @Sendable (RequesterUpdate) -> Void
    ) async throws -> RequesterOutcome {
        machines[taskId] = RequesterMachine(taskId: taskId, accepts: accept, stopsAtPayload: untilDelivered)
        let frames = session.frames
        return try await withThrowingTaskGroup(of: RequesterOutcome?.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            group.addTask {
                for await frame in frames {
                    if let done = try await self.handle(frame, taskId: taskId, onUpdate) {
                        return done
                    }
                }
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            guard let first else {
                throw MarketClientError(
                    "task \(taskId) was not finished within \(timeout): `claude-max-market result --task-id \(taskId)` picks it up again"
                )
            }
            return first
        }
    }

    /// One frame: checked into an event for the task's machine (or dropped), applied, and the
    /// machine's actions performed; the outcome once the machine finishes.
    private func handle(_ frame: Envelope, taskId: String, _ onUpdate: @Sendable (RequesterUpdate) -> Void)
        async throws -> RequesterOutcome?
    {
        guard frame.subject.taskId == taskId else { return nil }
        let checked: RequesterMachine.Event
        do {
            guard let event = try event(for: frame, taskId: taskId) else { return nil }
            checked = event
        } catch {
            checked = .frameDropped(reason: error.description)
        }
        return try await apply(checked, taskId: taskId, frame: frame, onUpdate)
    }

    private func apply(
        _ event: RequesterMachine.Event, taskId: String, frame: Envelope,
        _ onUpdate: @Sendable (RequesterUpdate) -> Void
    ) async throws -> RequesterOutcome? {
        guard var machine = machines[taskId] else { return nil }
        let actions = machine.apply(event)
        machines[taskId] = machine
        for action in actions {
            switch action {
            case .record(let state, let counterparty, let price, let note):
                try tasks.update(taskId, state: state, counterparty: counterparty, price: price, note: note, at: nowMs)
            case .report(let update):
                onUpdate(update)
            case .deliverPayload:
                guard let document = providers[taskId] else { continue }
                try await deliverPayload(taskId, to: document)
            case .storeResult(let hash):
                try tasks.storeResult(
                    taskId, frame: try Self.text(frame), hash: hash ?? "", verified: hash != nil, at: nowMs)
            case .collectBlobs:
                if let opened = openBlobsIfComplete(taskId) {
                    return try await apply(opened, taskId: taskId, frame: frame, onUpdate)
                }
            case .audit(let kind, let details):
                try database.audit(actor: "requester", kind: kind, details: details, at: Date())
            case .accept:
                try await session.enqueue(.jobAccept, TaskRefBody(taskId: taskId), id: "accept-\(taskId)")
            case .dispute(let reason):
                try await session.enqueue(
                    .jobDispute, ReasonBody(taskId: taskId, reason: reason), id: "dispute-\(taskId)")
            case .finish:
                return machines[taskId]?.outcome
            }
        }
        return nil
    }

    /// The edge: a frame about the task, its body checked by the protocol's rules (it throws
    /// when they refuse it), then against the assigned provider's signature, its seal and its
    /// hash, as the machine's event; nil for a frame that does not count.
    private func event(for frame: Envelope, taskId: String) throws(MarketClientError) -> RequesterMachine.Event? {
        switch frame.messageType {
        case .taskAssigned:
            let assigned = try frame.checkedBody(AssignedBody.self)
            guard assigned.requester == me else { return nil }
            do {
                providers[taskId] = try RelayedFrame.document(assigned.providerKeyDocument, for: assigned.provider)
            } catch {
                return .assignedUnverified(provider: assigned.provider, problem: "\(error)")
            }
            return .assigned(provider: assigned.provider, price: assigned.price)
        case .jobApproved:
            guard verified(frame, taskId) else { return nil }
            return .approved
        case .jobEvent:
            guard verified(frame, taskId) else { return nil }
            let body = try frame.checkedBody(SealedBody.self)
            guard let seq = body.seq, let sealed = Data(base64Encoded: body.sealed),
                let (plaintext, _) = try? Sealer.open(sealed, keys: session.keys),
                let batch = try? JSONDecoder().decode(JobContent.EventBatch.self, from: plaintext),
                batch.taskId == taskId
            else { return nil }
            return .events(seq: seq, items: batch.items)
        case .jobResult:
            guard let document = providers[taskId] else { return nil }
            // Not signed by the provider: not its result (the market, or anyone, made it up), so
            // it is dropped and said, never disputed against the provider.
            do {
                try RelayedFrame.verify(frame, from: document, nowMs: nowMs)
            } catch {
                throw MarketClientError("\(error)")
            }
            switch checkResult(frame, taskId: taskId) {
            case .success(let (result, hash)): return .result(result, hash: hash)
            case .failure(let problem): return .resultRefused(problem: problem.description)
            }
        case .blobChunk:
            guard verified(frame, taskId) else { return nil }
            let body = try frame.checkedBody(BlobChunkBody.self)
            guard !body.blob.fromRequester else { return nil }
            let maxBytes = body.blob == .patch ? WireLimits.maxPatchBytes : WireLimits.maxTranscriptBytes
            var pieces = resultPieces[taskId]?[body.blob] ?? SealedBlob.Assembler(maxBytes: maxBytes)
            let refusal: SealedBlob.Assembler.Refusal?
            do {
                try pieces.add(body)
                refusal = nil
            } catch {
                // Kept: a result that names this blob is refused with why.
                refusal = error
            }
            resultPieces[taskId, default: [:]][body.blob] = pieces
            if let opened = openBlobsIfComplete(taskId) { return opened }
            if let refusal { throw MarketClientError("the \(body.blob.rawValue) is refused: \(refusal)") }
            return nil
        case .jobRejected, .jobFailed, .jobHandback:
            guard verified(frame, taskId), let type = frame.messageType else { return nil }
            let body = try frame.checkedBody(ReasonBody.self)
            providers[taskId] = nil
            return .providerLeft(type, reason: body.reason)
        case .settlement:
            return .settlement(try frame.checkedBody(SettlementBody.self))
        default:
            return nil
        }
    }

    /// Signed by the provider assigned now.
    private func verified(_ frame: Envelope, _ taskId: String) -> Bool {
        guard let document = providers[taskId] else { return false }
        return (try? RelayedFrame.verify(frame, from: document, nowMs: nowMs)) != nil
    }

    /// Seals the prompt, and the workspace and conversation it carries, to the provider; one id
    /// per provider and piece, so that a reconnect does not deliver twice.
    private func deliverPayload(_ taskId: String, to document: PublicKeyDocument) async throws {
        let provider = document.peerId
        guard let prompt = try tasks.prompt(taskId) else {
            throw MarketClientError("the prompt of task \(taskId) is not in this home any more")
        }
        var workspace: JobContent.WorkspaceInfo?
        if let workspaces, let (archive, leftOut) = try workspaces.load(taskId) {
            let tree = try WorkspaceTree.read(tar: archive, limits: WorkspaceLimits(maxBytes: .max, maxFiles: .max))
                .tree
            let (info, chunks) = try SealedBlob.seal(archive, to: document, purpose: .payload)
            for (index, chunk) in chunks.enumerated() {
                try await session.enqueue(
                    .blobChunk,
                    BlobChunkBody(taskId: taskId, blob: .workspace, index: index, count: chunks.count, sealed: chunk),
                    id: "workspace-\(taskId)-\(provider.prefix(16))-\(index)")
            }
            workspace = JobContent.WorkspaceInfo(
                blob: info, files: tree.fileCount, bytes: tree.byteCount, leftOut: leftOut)
        }
        var conversation: JobContent.ConversationInfo?
        if let transcript = try conversations?.sent(taskId) {
            let (info, chunks) = try SealedBlob.seal(transcript.data, to: document, purpose: .payload)
            for (index, chunk) in chunks.enumerated() {
                try await session.enqueue(
                    .blobChunk,
                    BlobChunkBody(
                        taskId: taskId, blob: .conversation, index: index, count: chunks.count, sealed: chunk),
                    id: "conversation-\(taskId)-\(provider.prefix(16))-\(index)")
            }
            conversation = JobContent.ConversationInfo(
                blob: info, sessionId: transcript.sessionID, turns: transcript.turns.count)
        }
        let (sealed, _) = try JobContent.seal(
            JobContent.Payload(taskId: taskId, prompt: prompt, workspace: workspace, conversation: conversation),
            to: document, purpose: .payload)
        try await session.enqueue(
            .payloadDeliver, SealedBody(taskId: taskId, sealed: sealed), id: "payload-\(taskId)-\(provider.prefix(16))")
    }

    /// Once every piece of the patch and the transcript the awaited result names is in: each is
    /// opened and checked against the result's SHA-256, read and kept here. A blob that does not
    /// match what the provider signed, or a patch that does not parse, is refused like a result
    /// that does not check out; a transcript that matches but is no valid transcript (the job's
    /// own doing) is only said. Either refusal is kept beside the task, so that `result` says it
    /// at once later instead of waiting for pieces that will not come.
    private func openBlobsIfComplete(_ taskId: String) -> RequesterMachine.Event? {
        guard let result = machines[taskId]?.awaitingBlobs else { return nil }
        let pieces = resultPieces[taskId] ?? [:]
        let needed: [(BlobChunkBody.Blob, JobContent.BlobInfo)] =
            [result.patch?.blob.map { (.patch, $0) }, result.transcript?.blob.map { (.transcript, $0) }]
            .compactMap { $0 }
        do {
            guard try SealedBlob.complete(needed, in: pieces) else { return nil }
        } catch {
            resultPieces[taskId] = nil
            return refuseBlobs(error.description, result: result, taskId: taskId)
        }
        resultPieces[taskId] = nil
        var patch: WorkspacePatch?
        var transcript: ClaudeTranscript?
        var transcriptProblem: String?
        do {
            if let info = result.patch?.blob {
                let data: Data
                do {
                    data = try SealedBlob.open(pieces[.patch], info, keys: session.keys)
                    patch = try WorkspacePatch(parsing: data)
                } catch {
                    throw Problem("the patch does not check out: \(error)")
                }
                try workspaces?.savePatch(data, for: taskId)
            }
            if let transcriptInfo = result.transcript, let info = transcriptInfo.blob {
                let data: Data
                do {
                    data = try SealedBlob.open(pieces[.transcript], info, keys: session.keys)
                } catch {
                    throw Problem("the transcript does not check out: \(error)")
                }
                do {
                    let checked = try ClaudeTranscript(
                        checking: data, sessionID: transcriptInfo.sessionId, maxBytes: WireLimits.maxTranscriptBytes)
                    try conversations?.save(checked, for: taskId)
                    transcript = checked
                } catch let error as TranscriptError {
                    transcriptProblem = "\(error)"
                    try? conversations?.saveRefusal("\(error)", for: taskId)
                }
            }
        } catch {
            return refuseBlobs("\(error)", result: result, taskId: taskId)
        }
        return .blobsOpened(patch: patch, transcript: transcript, transcriptProblem: transcriptProblem)
    }

    /// The result's blobs refused, and why kept beside the task for `result` to say later: the
    /// patch and the transcript go together, whichever the problem was in.
    private func refuseBlobs(_ problem: String, result: JobContent.Result, taskId: String) -> RequesterMachine.Event {
        if result.patch?.blob != nil { try? workspaces?.savePatchRefusal(problem, for: taskId) }
        if result.transcript?.blob != nil { try? conversations?.saveRefusal(problem, for: taskId) }
        return .blobsRefused(problem: problem)
    }

    static func text(_ frame: Envelope) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(frame), as: UTF8.self)
    }

    struct Problem: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// A result frame the assigned provider signed (checked before): its body, its seal, the hash
    /// of the plaintext against the one signed, and the task it names. What fails here is the
    /// provider's doing.
    nonisolated func checkResult(_ frame: Envelope, taskId: String)
        -> Result<(JobContent.Result, String), Problem>
    {
        let body: ResultBody
        do {
            body = try frame.checkedBody(ResultBody.self)
        } catch {
            return .failure(Problem(error.description))
        }
        guard let sealed = Data(base64Encoded: body.sealed) else {
            return .failure(Problem("the result frame's sealed field is not base64"))
        }
        guard let (plaintext, _) = try? Sealer.open(sealed, keys: session.keys) else {
            return .failure(Problem("the result is not sealed to this requester's keys"))
        }
        let hash = JobContent.sha256Hex(plaintext)
        guard hash == body.resultHash else {
            return .failure(Problem("the result's SHA-256 is \(hash), but the provider signed \(body.resultHash)"))
        }
        guard let result = try? JSONDecoder().decode(JobContent.Result.self, from: plaintext), result.taskId == taskId
        else {
            return .failure(Problem("the result is not a job result for task \(taskId)"))
        }
        return .success((result, hash))
    }

    /// Opens a stored result again (`result --task-id`).
    public nonisolated static func openStored(_ frameText: String, keys: KeyRing) throws -> JobContent.Result {
        let frame = try JSONDecoder().decode(Envelope.self, from: Data(frameText.utf8))
        let body = try frame.decodeBody(ResultBody.self)
        guard let sealed = Data(base64Encoded: body.sealed) else { throw MarketClientError("malformed result") }
        let (plaintext, _) = try Sealer.open(sealed, keys: keys)
        guard JobContent.sha256Hex(plaintext) == body.resultHash else {
            throw MarketClientError("the stored result does not match its hash")
        }
        return try JSONDecoder().decode(JobContent.Result.self, from: plaintext)
    }
}
