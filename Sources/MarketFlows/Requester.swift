import Foundation
import JobRunner
import MarketClient
import MarketCore
import MarketCrypto
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
}

/// How a followed task ended.
public struct RequesterOutcome: Sendable {
    public var taskId: String
    public var state: String
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
    private var providers: [String: PublicKeyDocument] = [:]
    private var nextSeq: [String: Int] = [:]
    private var outcomes: [String: RequesterOutcome] = [:]
    private var stopAtPayload = false
    /// A workspace job's files here: the archive sent (`TASK.tar`) and the patch back (`TASK.diff`).
    let workspaces: WorkspaceFiles?
    /// Conversations here: a follow-up's transcript sent, and every claude job's transcript back.
    let conversations: ConversationFiles?
    private var resultPieces: [String: [BlobChunkBody.Blob: SealedBlob.Assembler]] = [:]
    /// A result that checked out and waits for the pieces of its patch and transcript.
    private var waitingForBlobs: [String: (result: JobContent.Result, provider: String)] = [:]

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
                taskId: taskId, role: "requester", state: "posting", maxPrice: options.maxPrice,
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
            let ack = try await session.request(.taskPost, body, id: "post-\(taskId)", timeout: .seconds(30))
            try tasks.update(taskId, state: ack.state ?? "open", note: ack.note, at: nowMs)
            try database.audit(
                actor: "requester", kind: "market.posted",
                details: [
                    "task": taskId, "maxPrice": String(options.maxPrice),
                    "promptSha256": JobContent.sha256Hex(options.prompt),
                ], at: Date())
            return ack
        } catch {
            try? tasks.update(taskId, state: "refused", note: "\(error)", at: nowMs)
            throw error
        }
    }

    /// Follows the task until it is settled, refunded or cancelled (or `timeout` passes),
    /// reporting each step. With `accept`, a result that checks out is accepted at once.
    public func follow(
        _ taskId: String, accept: Bool, timeout: Duration, untilDelivered: Bool = false,
        onUpdate: @escaping @Sendable (RequesterUpdate) -> Void
    ) async throws -> RequesterOutcome {
        outcomes[taskId] = RequesterOutcome(taskId: taskId, state: "open")
        stopAtPayload = untilDelivered
        let frames = session.frames
        return try await withThrowingTaskGroup(of: RequesterOutcome?.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            group.addTask {
                for await frame in frames {
                    if let done = try await self.handle(frame, taskId: taskId, accept: accept, onUpdate) {
                        return done
                    }
                }
                return nil
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let first else {
                throw MarketClientError(
                    "task \(taskId) was not finished within \(timeout): `claude-max-market result --task-id \(taskId)` picks it up again"
                )
            }
            return first
        }
    }

    private func handle(
        _ frame: Envelope, taskId: String, accept: Bool, _ onUpdate: @Sendable (RequesterUpdate) -> Void
    ) async throws -> RequesterOutcome? {
        var outcome = outcomes[taskId] ?? RequesterOutcome(taskId: taskId, state: "open")
        defer { outcomes[taskId] = outcome }
        guard frame.body.contains("\"taskId\":\"\(taskId)\"") else { return nil }
        switch frame.messageType {
        case .taskAssigned:
            guard let assigned = try? frame.decodeBody(AssignedBody.self), assigned.requester == me else {
                return nil
            }
            let document: PublicKeyDocument
            do {
                document = try RelayedFrame.document(assigned.providerKeyDocument, for: assigned.provider)
            } catch {
                // Nothing is sealed to a provider whose key does not check out; the approval
                // timeout re-opens the task.
                onUpdate(.badResult(provider: assigned.provider, problem: "its key document does not verify: \(error)"))
                return nil
            }
            providers[taskId] = document
            outcome.provider = assigned.provider
            try tasks.update(
                taskId, state: "assigned", counterparty: assigned.provider, price: assigned.price, at: nowMs)
            onUpdate(.assigned(provider: assigned.provider, price: assigned.price))
            guard let prompt = try tasks.prompt(taskId) else {
                throw MarketClientError("the prompt of task \(taskId) is not in this home any more")
            }
            var workspace: JobContent.WorkspaceInfo?
            if let workspaces, let (archive, leftOut) = try workspaces.load(taskId) {
                // Sealed to this provider; pieces of one blob for one provider share their ids.
                let tree = try WorkspaceTree.read(tar: archive, limits: WorkspaceLimits(maxBytes: .max, maxFiles: .max))
                    .tree
                let (info, chunks) = try SealedBlob.seal(archive, to: document, purpose: .payload)
                for (index, chunk) in chunks.enumerated() {
                    try await session.enqueue(
                        .blobChunk,
                        BlobChunkBody(
                            taskId: taskId, blob: .workspace, index: index, count: chunks.count, sealed: chunk),
                        id: "workspace-\(taskId)-\(assigned.provider.prefix(16))-\(index)")
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
                        id: "conversation-\(taskId)-\(assigned.provider.prefix(16))-\(index)")
                }
                conversation = JobContent.ConversationInfo(
                    blob: info, sessionId: transcript.sessionID, turns: transcript.turns.count)
            }
            let (sealed, _) = try JobContent.seal(
                JobContent.Payload(taskId: taskId, prompt: prompt, workspace: workspace, conversation: conversation),
                to: document, purpose: .payload)
            // One id per provider: a reconnect does not deliver twice.
            try await session.enqueue(
                .payloadDeliver, SealedBody(taskId: taskId, sealed: sealed),
                id: "payload-\(taskId)-\(assigned.provider.prefix(16))")
            if stopAtPayload {
                outcome.state = "assigned"
                return outcome
            }
        case .jobApproved:
            guard let document = providers[taskId],
                (try? RelayedFrame.verify(frame, from: document, nowMs: nowMs)) != nil
            else { return nil }
            try tasks.update(taskId, state: "running", at: nowMs)
            onUpdate(.approved(provider: document.peerId))
        case .jobEvent:
            guard let document = providers[taskId],
                (try? RelayedFrame.verify(frame, from: document, nowMs: nowMs)) != nil,
                let body = try? frame.decodeBody(SealedBody.self), let seq = body.seq,
                seq >= nextSeq[taskId, default: 0],
                let sealed = Data(base64Encoded: body.sealed),
                let (plaintext, _) = try? Sealer.open(sealed, keys: session.keys),
                let batch = try? JSONDecoder().decode(JobContent.EventBatch.self, from: plaintext),
                batch.taskId == taskId
            else { return nil }
            nextSeq[taskId] = seq + 1
            onUpdate(.items(batch.items))
        case .jobResult:
            guard let document = providers[taskId] else { return nil }
            let checked = checkResult(frame, document: document, taskId: taskId)
            switch checked {
            case .success(let (result, hash)):
                try tasks.storeResult(taskId, frame: try Self.text(frame), hash: hash, verified: true, at: nowMs)
                outcome.result = result
                onUpdate(.result(result, provider: document.peerId))
                if result.patch?.blob != nil || result.transcript?.blob != nil {
                    waitingForBlobs[taskId] = (result, document.peerId)
                    outcomes[taskId] = outcome
                    let done = try await finishBlobs(taskId, accept: accept, onUpdate)
                    outcome = outcomes[taskId] ?? outcome
                    return done
                }
                if let transcript = result.transcript {
                    onUpdate(.noTranscript(transcript.error ?? "the job left no transcript"))
                }
                if let done = try await settleResult(result, taskId: taskId, accept: accept, outcome: &outcome) {
                    return done
                }
            case .failure(let problem):
                try? tasks.storeResult(taskId, frame: try Self.text(frame), hash: "", verified: false, at: nowMs)
                onUpdate(.badResult(provider: document.peerId, problem: problem.description))
                try database.audit(
                    actor: "requester", kind: "market.result-refused",
                    details: ["task": taskId, "provider": document.peerId, "reason": problem.description], at: Date())
                try await session.enqueue(
                    .jobDispute,
                    ReasonBody(
                        taskId: taskId, reason: String("the result does not check out: \(problem)".prefix(1000))),
                    id: "dispute-\(taskId)")
                // A dispute moves no money until the operator decides: nothing more to wait for.
                try tasks.update(taskId, state: "disputed", note: problem.description, at: nowMs)
                outcome.state = "disputed"
                return outcome
            }
        case .blobChunk:
            guard let document = providers[taskId],
                (try? RelayedFrame.verify(frame, from: document, nowMs: nowMs)) != nil,
                let body = try? frame.decodeBody(BlobChunkBody.self), !body.blob.fromRequester
            else { return nil }
            var pieces = resultPieces[taskId]?[body.blob] ?? SealedBlob.Assembler()
            _ = pieces.add(body)
            resultPieces[taskId, default: [:]][body.blob] = pieces
            if waitingForBlobs[taskId] != nil {
                outcomes[taskId] = outcome
                let done = try await finishBlobs(taskId, accept: accept, onUpdate)
                outcome = outcomes[taskId] ?? outcome
                if let done { return done }
            }
        case .jobRejected, .jobFailed, .jobHandback:
            guard let document = providers[taskId],
                (try? RelayedFrame.verify(frame, from: document, nowMs: nowMs)) != nil,
                let body = try? frame.decodeBody(ReasonBody.self)
            else { return nil }
            let update: RequesterUpdate =
                switch frame.messageType {
                case .jobRejected: .rejected(provider: document.peerId, reason: body.reason)
                case .jobHandback: .handedBack(provider: document.peerId, reason: body.reason)
                default: .failed(provider: document.peerId, reason: body.reason)
                }
            onUpdate(update)
            providers[taskId] = nil
            nextSeq[taskId] = 0
        case .settlement:
            guard let settlement = try? frame.decodeBody(SettlementBody.self) else { return nil }
            outcome.state = settlement.state
            try tasks.update(taskId, state: settlement.state, note: settlement.reason, at: nowMs)
            onUpdate(.settlement(settlement))
            if ["settled", "refunded", "cancelled"].contains(settlement.state) {
                try database.audit(
                    actor: "requester", kind: "market.\(settlement.state)",
                    details: ["task": taskId, "reason": settlement.reason ?? ""], at: Date())
                return outcome
            }
            if settlement.state == "disputed" { return outcome }
        default:
            break
        }
        return nil
    }

    /// Accepts a result that checked out (if asked, and it succeeded), or leaves it delivered.
    private func settleResult(
        _ result: JobContent.Result, taskId: String, accept: Bool, outcome: inout RequesterOutcome
    ) async throws -> RequesterOutcome? {
        // Only a job that succeeded is accepted unasked; any other ending is the requester's call
        // (`accept` or `dispute`), settled by the window otherwise.
        // A workspace job whose patch could not be made did not give what was asked for either.
        if accept && result.state == "succeeded" && result.patch?.error == nil {
            try await session.enqueue(.jobAccept, TaskRefBody(taskId: taskId), id: "accept-\(taskId)")
            return nil
        }
        try tasks.update(taskId, state: "delivered", at: nowMs)
        outcome.state = "delivered"
        return outcome
    }

    /// Once every piece of the patch and the transcript a result names is in: each is opened
    /// and checked against the result's SHA-256, read, kept here, and only then is the result
    /// accepted. A blob that does not match what the provider signed is disputed like a result
    /// that does not; a transcript that matches but is no valid transcript (the job's own doing)
    /// is only said, and the result stands.
    private func finishBlobs(_ taskId: String, accept: Bool, _ onUpdate: @Sendable (RequesterUpdate) -> Void)
        async throws -> RequesterOutcome?
    {
        guard let (result, provider) = waitingForBlobs[taskId] else { return nil }
        let pieces = resultPieces[taskId] ?? [:]
        let needed: [(BlobChunkBody.Blob, JobContent.BlobInfo)] =
            [result.patch?.blob.map { (.patch, $0) }, result.transcript?.blob.map { (.transcript, $0) }]
            .compactMap { $0 }
        guard needed.allSatisfy({ pieces[$0.0]?.isComplete($0.1) == true }) else { return nil }
        waitingForBlobs[taskId] = nil
        resultPieces[taskId] = nil
        var outcome = outcomes[taskId] ?? RequesterOutcome(taskId: taskId, state: "delivered")
        do {
            if let info = result.patch?.blob {
                let data = try pieces[.patch]!.open(info, keys: session.keys)
                let patch: WorkspacePatch
                do {
                    patch = try WorkspacePatch(parsing: data)
                } catch {
                    throw Problem("the patch does not check out: \(error)")
                }
                try workspaces?.savePatch(data, for: taskId)
                outcome.patch = patch
                onUpdate(.patch(patch))
            }
            if let transcriptInfo = result.transcript, let info = transcriptInfo.blob {
                let data: Data
                do {
                    data = try pieces[.transcript]!.open(info, keys: session.keys)
                } catch {
                    throw Problem("the transcript does not check out: \(error)")
                }
                do {
                    let transcript = try ClaudeTranscript(
                        checking: data, sessionID: transcriptInfo.sessionId, maxBytes: WireLimits.maxTranscriptBytes)
                    try conversations?.save(transcript, for: taskId)
                    outcome.transcript = transcript
                    onUpdate(.transcript(transcript))
                } catch let error as TranscriptError {
                    onUpdate(.noTranscript("the transcript was not kept: \(error)"))
                }
            }
        } catch {
            let problem = error is Problem ? "\(error)" : "the patch does not check out: \(error)"
            onUpdate(.badResult(provider: provider, problem: problem))
            try await session.enqueue(
                .jobDispute, ReasonBody(taskId: taskId, reason: String(problem.prefix(1000))), id: "dispute-\(taskId)")
            try tasks.update(taskId, state: "disputed", note: problem, at: nowMs)
            outcome.state = "disputed"
            outcomes[taskId] = outcome
            return outcome
        }
        let done = try await settleResult(result, taskId: taskId, accept: accept, outcome: &outcome)
        outcomes[taskId] = outcome
        return done
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

    /// Signature by the assigned provider, hash of the plaintext, and the task it names.
    nonisolated func checkResult(_ frame: Envelope, document: PublicKeyDocument, taskId: String)
        -> Result<(JobContent.Result, String), Problem>
    {
        do {
            try RelayedFrame.verify(frame, from: document, nowMs: Date().unixMilliseconds)
        } catch {
            return .failure(Problem("\(error)"))
        }
        guard let body = try? frame.decodeBody(ResultBody.self), let sealed = Data(base64Encoded: body.sealed) else {
            return .failure(Problem("the result frame is malformed"))
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
