import Crypto
import Foundation
import Logging
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import Synchronization

/// Where a connection is in the handshake.
enum SessionState: Sendable {
    case awaitingHello
    case awaitingAuth(peer: PeerID, key: Curve25519.Signing.PublicKey, keyDocument: String, challenge: String)
    case authenticated(peer: PeerID, key: Curve25519.Signing.PublicKey)
}

/// What processing one frame produced: frames for this connection, frames for other peers.
struct FrameOutput: Sendable {
    var replies: [String] = []
    var outgoing: [(peer: PeerID, text: String)] = []
    /// Set when the connection should close after the replies (a fatal handshake error).
    var close: Bool = false
    var authenticated: PeerID?
}

/// Checks and acts on frames. Every check that can refuse a frame runs before the store is
/// touched; the nonce and the action then share one transaction, so a frame is either refused
/// with nothing written or acted on exactly once (a resent message id gets the stored answer).
final class FrameProcessor: Sendable {
    let store: any MarketStore
    /// Where every frame's and every sweep's writes go: many of them in one durable transaction.
    let commits: GroupCommit
    let book: MarketBook
    let configuration: MarketServerConfiguration
    let metrics: MarketMetrics
    let logger: Logger
    let now: @Sendable () -> Int64
    /// Live nonces, counted here so that a full cache is noticed without a count query.
    let nonceCount: Atomic<Int>
    /// Counts changes to the market (a message acted on, a sweep that moved a task): the
    /// dashboard's live updates follow it.
    let changes = Atomic<Int>(0)

    init(
        store: any MarketStore, configuration: MarketServerConfiguration, metrics: MarketMetrics, logger: Logger,
        now: @escaping @Sendable () -> Int64
    ) {
        self.store = store
        self.commits = GroupCommit(store: store, limits: configuration.groupCommit(on: store))
        self.book = MarketBook(rules: configuration.rules)
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        self.now = now
        self.nonceCount = Atomic(0)
    }

    func loadNonceCount() async throws {
        let count = try await store.read { try await $0.nonceCount() }
        nonceCount.store(count, ordering: .relaxed)
    }

    // MARK: Entry

    func process(_ text: String, session: inout SessionState) async -> FrameOutput {
        let nowMs = now()
        var envelope: Envelope?
        do {
            guard text.utf8.count <= configuration.limits.maxFrameBytes else {
                throw MarketError(
                    .frameTooLarge,
                    "a frame of \(text.utf8.count) bytes is over the limit of \(configuration.limits.maxFrameBytes)")
            }
            let decoded: Envelope
            do { decoded = try JSONDecoder().decode(Envelope.self, from: Data(text.utf8)) } catch {
                throw MarketError(
                    .malformed, "the frame is not a JSON envelope (v, type, id, from, ts, nonce, body, sig)")
            }
            envelope = decoded
            guard decoded.v == Envelope.currentVersion else {
                throw MarketError(.unsupportedVersion, "envelope version \(decoded.v) is not supported (expected 1)")
            }
            guard let type = decoded.messageType else {
                throw MarketError(.unknownType, "unknown message type '\(WireField.printable(decoded.type))'")
            }
            guard (1...128).contains(decoded.id.utf8.count) else {
                throw MarketError(.malformed, "id must be 1–128 characters")
            }
            metrics.frame(type.rawValue)
            switch session {
            case .awaitingHello:
                return try await hello(decoded, type: type, session: &session, nowMs: nowMs)
            case .awaitingAuth(let peer, let key, let document, let challenge):
                return try await auth(
                    decoded, type: type, peer: peer, key: key, document: document, challenge: challenge,
                    session: &session, nowMs: nowMs)
            case .authenticated(let peer, let key):
                return try await authenticated(decoded, type: type, text: text, peer: peer, key: key, nowMs: nowMs)
            }
        } catch let error as MarketError {
            metrics.error(error.code.rawValue)
            var output = FrameOutput(replies: [ServerFrames.error(error, ref: envelope?.id, nowMs: nowMs)])
            if case .authenticated = session {} else if error.code == .authFailed { output.close = true }
            return output
        } catch {
            logger.error("frame failed", metadata: ["error": "\(StoreFailure.describe(error))"])
            metrics.error(MarketError.Code.internalError.rawValue)
            let refusal = MarketError(.internalError, "the market could not process this frame; nothing was changed")
            return FrameOutput(replies: [ServerFrames.error(refusal, ref: envelope?.id, nowMs: nowMs)])
        }
    }

    // MARK: Handshake

    private func hello(_ envelope: Envelope, type: MessageType, session: inout SessionState, nowMs: Int64)
        async throws -> FrameOutput
    {
        guard type == .hello else {
            throw MarketError(.notAuthenticated, "send hello, then auth, before \(type.rawValue)")
        }
        let body = try ServerFrames.decode(HelloBody.self, envelope.body)
        try body.validate(limits: configuration.limits)
        let document: PublicKeyDocument
        do { document = try PublicKeyDocument.verified(from: Data(body.keyDocument.utf8)) } catch {
            throw MarketError(.authFailed, "the key document does not verify: \(error)")
        }
        guard document.peerId == envelope.from else {
            throw MarketError(.authFailed, "the key document is for \(document.peerId), not \(envelope.from)")
        }
        let key = try Curve25519.Signing.PublicKey(rawRepresentation: Data(base64Encoded: document.signingKey)!)
        try verifySignature(envelope, key: key, nowMs: nowMs)
        var nonce = [UInt8](repeating: 0, count: 32)
        for index in nonce.indices { nonce[index] = UInt8.random(in: 0...255) }
        let challenge = Data(nonce).base64EncodedString()
        session = .awaitingAuth(
            peer: try PeerID(validating: envelope.from), key: key, keyDocument: body.keyDocument, challenge: challenge)
        return FrameOutput(replies: [
            ServerFrames.frame(
                .challenge,
                ChallengeBody(nonce: challenge, heartbeatTimeoutMs: configuration.rules.heartbeatTimeoutMs),
                nowMs: nowMs)
        ])
    }

    private func auth(
        _ envelope: Envelope, type: MessageType, peer: PeerID, key: Curve25519.Signing.PublicKey, document: String,
        challenge: String, session: inout SessionState, nowMs: Int64
    ) async throws -> FrameOutput {
        guard type == .auth else { throw MarketError(.notAuthenticated, "send auth before \(type.rawValue)") }
        guard envelope.from == peer.rawValue else {
            throw MarketError(.authFailed, "auth from \(envelope.from) after hello from \(peer)")
        }
        do { try verifySignature(envelope, key: key, nowMs: nowMs) } catch let error as MarketError {
            throw MarketError(.authFailed, error.message)
        }
        let body = try ServerFrames.decode(AuthBody.self, envelope.body)
        guard body.challenge == challenge else {
            throw MarketError(.authFailed, "the auth does not answer this connection's challenge")
        }
        let pending = try await commits.write { [book] tx in
            try await tx.upsertPeer(peer, keyDocument: document, nowMs: nowMs)
            return try await Self.pendingFrames(for: peer, book: book, in: tx, nowMs: nowMs)
        }
        session = .authenticated(peer: peer, key: key)
        let ack = ServerFrames.frame(
            .ack, AckBody(ref: envelope.id, type: "auth", note: "authenticated as \(peer)"), nowMs: nowMs)
        return FrameOutput(replies: [ack] + pending, authenticated: peer)
    }

    /// What a party missed while away: its tasks' assignments, and the stored payload or result.
    static func pendingFrames(for peer: PeerID, book: MarketBook, in tx: some MarketTransaction, nowMs: Int64)
        async throws -> [String]
    {
        var frames: [String] = []
        for task in try await tx.tasks(of: peer, states: [.assigned, .running, .delivered]) {
            if let assigned = try await assignedFrame(task, in: tx, nowMs: nowMs) { frames.append(assigned) }
            if task.provider == peer, task.state != .delivered,
                let payload = try await tx.frame(taskID: task.id, kind: .payload)
            {
                frames.append(payload)
                if task.workspaceBytes != nil { await frames += try tx.blobChunks(taskID: task.id, blob: "workspace") }
                if task.conversationBytes != nil {
                    await frames += try tx.blobChunks(taskID: task.id, blob: "conversation")
                }
            }
            if task.requester == peer, task.state == .delivered,
                let result = try await tx.frame(taskID: task.id, kind: .result)
            {
                await frames += try tx.blobChunks(taskID: task.id, blob: "patch")
                await frames += try tx.blobChunks(taskID: task.id, blob: "transcript")
                frames.append(result)
            }
        }
        return frames
    }

    static func assignedFrame(_ task: MarketTask, in tx: some MarketTransaction, nowMs: Int64) async throws -> String? {
        guard let provider = task.provider, let price = task.price else { return nil }
        let records = try await tx.peers(task.requester, provider)
        guard let requesterRecord = records[task.requester], let providerRecord = records[provider] else { return nil }
        let body = AssignedBody(
            taskId: task.id, requester: task.requester.rawValue, provider: provider.rawValue, price: price.micro,
            requesterKeyDocument: requesterRecord.keyDocument, providerKeyDocument: providerRecord.keyDocument)
        return ServerFrames.frame(.taskAssigned, body, nowMs: nowMs)
    }

    private func verifySignature(_ envelope: Envelope, key: Curve25519.Signing.PublicKey, nowMs: Int64) throws {
        let verifier = EnvelopeVerifier(replayCache: NoReplayCache(), windowMs: configuration.timestampWindowMs)
        do { try verifier.verifySignature(envelope, signingKey: key, nowMs: nowMs) } catch {
            throw MarketError(MarketError.Code(rawValue: error.code.rawValue), error.message)
        }
        // The handshake's own nonces are checked in memory per connection by the challenge;
        // every later frame's nonce is recorded in the store with its action.
    }

    // MARK: Authenticated frames

    private func authenticated(
        _ envelope: Envelope, type: MessageType, text: String, peer: PeerID, key: Curve25519.Signing.PublicKey,
        nowMs: Int64
    ) async throws -> FrameOutput {
        guard envelope.from == peer.rawValue else {
            throw MarketError(
                .wrongSender, "'from' \(WireField.printable(envelope.from)) is not the authenticated peer \(peer)")
        }
        try verifySignature(envelope, key: key, nowMs: nowMs)
        guard nonceCount.load(ordering: .relaxed) < configuration.replayCapacity else {
            throw MarketError(.rateLimited, "the market's replay cache is full: try again in a minute")
        }
        let expires = envelope.ts + configuration.timestampWindowMs
        if type == .ping {
            // Changes nothing, but its nonce is still spent: a replayed ping is refused like any frame.
            guard
                try await commits.write({
                    try await $0.insertNonce(peer: peer.rawValue, nonce: envelope.nonce, expiresMs: expires)
                })
            else { throw MarketError(.replayedNonce, "nonce already used by \(peer): replay refused") }
            nonceCount.add(1, ordering: .relaxed)
            return FrameOutput(replies: [
                ServerFrames.frame(.pong, AckBody(ref: envelope.id, type: "ping"), nowMs: nowMs)
            ])
        }
        let action = try action(for: envelope, type: type, text: text)
        let result: StoreOutcome
        do {
            // The nonce, the action and the answer are one write: a refusal undoes all of it (the
            // write's savepoint in a batch, its transaction when alone), so no savepoint of its
            // own is needed on the path every accepted frame takes.
            result = try await commits.write { [book] tx -> StoreOutcome in
                switch try await tx.claim(
                    nonce: envelope.nonce, peer: peer, expiresMs: expires, messageID: envelope.id)
                {
                case .replayed: return .replayed
                case .answered(let previous): return .duplicate(previous)
                case .fresh: break
                }
                var output: ActionOutput
                do { output = try await action(book, tx, peer, envelope, nowMs) } catch let error as MarketError {
                    throw Refusal(error: error)
                }
                let ack = ServerFrames.frame(.ack, output.ack, nowMs: nowMs)
                try await tx.recordMessage(peer: peer, id: envelope.id, result: ack, nowMs: nowMs)
                output.replies.insert(ack, at: 0)
                return .done(output.replies, output.outgoing, output.matched, output.settled)
            }
        } catch let refusal as Refusal {
            // A refused frame's nonce is still spent before the refusal is answered, so that the
            // same frame sent again is a replay, not a second try. (A copy that spent it first
            // changes nothing of this answer.)
            _ = try await commits.write {
                try await $0.insertNonce(peer: peer.rawValue, nonce: envelope.nonce, expiresMs: expires)
            }
            nonceCount.add(1, ordering: .relaxed)
            throw refusal.error
        }
        switch result {
        case .replayed:
            throw MarketError(.replayedNonce, "nonce already used by \(peer): replay refused")
        case .duplicate(let ack):
            return FrameOutput(replies: [ack])
        case .done(let replies, let outgoing, let matched, let settled):
            nonceCount.add(1, ordering: .relaxed)
            if type != .heartbeat { changes.add(1, ordering: .relaxed) }
            for _ in 0..<matched { metrics.matched() }
            for state in settled { metrics.settled(state) }
            return FrameOutput(replies: replies, outgoing: outgoing)
        }
    }

    /// The market's rules refused a frame's action (not the store failing under it).
    struct Refusal: Error {
        let error: MarketError
    }

    enum StoreOutcome: Sendable {
        case replayed
        case duplicate(String)
        case done([String], [(peer: PeerID, text: String)], Int, [String])
    }

    /// The store work of one message type, run inside the frame's transaction.
    typealias Action =
        @Sendable (MarketBook, any MarketTransaction, PeerID, Envelope, Int64) async throws -> ActionOutput

    struct ActionOutput: Sendable {
        var ack: AckBody
        var replies: [String] = []
        var outgoing: [(peer: PeerID, text: String)] = []
        var matched = 0
        var settled: [String] = []
    }

    private func action(for envelope: Envelope, type: MessageType, text: String) throws -> Action {
        let limits = configuration.limits
        func body<T: WireBody>(_ type: T.Type) throws -> T {
            let value = try ServerFrames.decode(T.self, envelope.body)
            try value.validate(limits: limits)
            return value
        }
        let ref = envelope.id
        switch type {
        case .offerAdvertise:
            let advertise = try body(AdvertiseBody.self)
            return { book, tx, peer, _, nowMs in
                let (offer, assignments) = try await book.advertise(advertise, from: peer, nowMs: nowMs, in: tx)
                var output = ActionOutput(
                    ack: AckBody(
                        ref: ref, type: type.rawValue, state: .advertised,
                        note: "\(offer.slots) slots at \(offer.price)"))
                try await Self.notify(assignments, into: &output, in: tx, nowMs: nowMs)
                return output
            }
        case .offerWithdraw:
            return { book, tx, peer, _, _ in
                let removed = try await book.withdraw(peer, in: tx)
                return ActionOutput(ack: AckBody(ref: ref, type: type.rawValue, state: removed ? .withdrawn : .noOffer))
            }
        case .taskPost:
            let post = try body(PostBody.self)
            return { book, tx, peer, _, nowMs in
                let outcome = try await book.post(post, from: peer, nowMs: nowMs, in: tx)
                var output = ActionOutput(
                    ack: AckBody(
                        ref: ref, type: type.rawValue, taskId: post.taskId, state: .task(outcome.task.state),
                        note: outcome.whyUnmatched))
                if let assignment = outcome.assignment {
                    try await Self.notify([assignment], into: &output, in: tx, nowMs: nowMs)
                } else {
                    try await Self.broadcastOpen(
                        outcome.task, to: outcome.offeredBy, into: &output, in: tx, nowMs: nowMs)
                }
                return output
            }
        case .bidPlace:
            let bid = try body(BidBody.self)
            return { book, tx, peer, _, nowMs in
                let transition = try await book.bid(bid, from: peer, nowMs: nowMs, in: tx)
                var output = ActionOutput(
                    ack: AckBody(ref: ref, type: type.rawValue, taskId: bid.taskId, state: .task(.assigned)))
                try await Self.notify([transition], into: &output, in: tx, nowMs: nowMs)
                return output
            }
        case .taskCancel, .jobApproved, .jobAccept:
            let taskRef = try body(TaskRefBody.self)
            return { book, tx, peer, _, nowMs in
                let event: TaskEvent =
                    switch type {
                    case .taskCancel: .cancel(by: peer)
                    case .jobApproved: .approve(by: peer)
                    default: .accept(by: peer)
                    }
                let transitions = try await book.apply(event, toTask: taskRef.taskId, nowMs: nowMs, in: tx)
                var output = ActionOutput(
                    ack: AckBody(
                        ref: ref, type: type.rawValue, taskId: taskRef.taskId,
                        state: transitions.last.map { .task($0.task.state) }))
                if type == .jobApproved { output.outgoing.append((transitions[0].task.requester, text)) }
                try await Self.notify(transitions, into: &output, in: tx, nowMs: nowMs)
                return output
            }
        case .jobRejected, .jobFailed, .jobDispute, .jobHandback:
            let reason = try body(ReasonBody.self)
            return { book, tx, peer, _, nowMs in
                let event: TaskEvent =
                    switch type {
                    case .jobRejected: .reject(by: peer, reason: reason.reason)
                    case .jobFailed: .fail(by: peer, reason: reason.reason)
                    case .jobHandback: .handBack(by: peer, reason: reason.reason)
                    default: .dispute(by: peer, reason: reason.reason)
                    }
                let before = try await tx.task(reason.taskId, lock: false)
                let transitions = try await book.apply(event, toTask: reason.taskId, nowMs: nowMs, in: tx)
                var output = ActionOutput(
                    ack: AckBody(
                        ref: ref, type: type.rawValue, taskId: reason.taskId,
                        state: transitions.last.map { .task($0.task.state) }))
                // The other party sees the signed frame itself.
                if let before {
                    let other = type == .jobDispute ? before.provider : before.requester
                    if let other { output.outgoing.append((other, text)) }
                }
                try await Self.notify(transitions, into: &output, in: tx, nowMs: nowMs)
                return output
            }
        case .payloadDeliver:
            let sealed = try body(SealedBody.self)
            return { _, tx, peer, _, _ in
                let task = try await Self.partyTask(
                    sealed.taskId, peer: peer, requester: true, states: [.assigned, .running], in: tx)
                try await tx.setFrame(taskID: task.id, kind: .payload, frame: text)
                var output = ActionOutput(
                    ack: AckBody(ref: ref, type: type.rawValue, taskId: task.id, state: .task(task.state)))
                if let provider = task.provider { output.outgoing.append((provider, text)) }
                return output
            }
        case .blobChunk:
            let chunk = try body(BlobChunkBody.self)
            let limits = configuration.storedPieces
            return { _, tx, peer, _, _ in
                let fromRequester = chunk.blob.fromRequester
                // Locked: a transition that drops the task's pieces waits for this piece, or
                // this piece sees the task's new state; no piece outlives its task.
                let task = try await Self.partyTask(
                    chunk.taskId, peer: peer, requester: fromRequester,
                    states: fromRequester ? [.assigned, .running] : [.running], lock: true,
                    in: tx)
                let blobBound = try Self.sealedBound(of: chunk.blob, in: task)
                let bytes = Int64(chunk.sealed.utf8.count)
                var output = ActionOutput(
                    ack: AckBody(ref: ref, type: type.rawValue, taskId: task.id, state: .task(task.state)))
                if let other = fromRequester ? task.provider : task.requester { output.outgoing.append((other, text)) }
                if let kept = try await tx.blobChunk(taskID: task.id, blob: chunk.blob.rawValue, index: chunk.index) {
                    // The same piece again (a resend) is taken as it was; other bytes under its
                    // index would change what the other party may have received already.
                    guard Self.samePiece(kept, as: chunk, bytes: bytes) else {
                        throw MarketError(
                            .duplicatePiece,
                            "piece \(chunk.index) of the \(chunk.blob.rawValue) of task \(task.id) is kept already, and this one differs (kept: \(kept.bytes) bytes of base64, one of \(kept.count) pieces; sent: \(bytes) bytes, one of \(chunk.count)): a piece is sent once, and a resend carries the same bytes"
                        )
                    }
                    return output
                }
                let stored = try await tx.pieceBytes(taskID: task.id, lock: true)
                let party = stored.blobs.reduce(Int64(0)) {
                    $0 + (BlobChunkBody.Blob(rawValue: $1.key)?.fromRequester == fromRequester ? $1.value : 0)
                }
                if let refusal = limits.refusal(
                    adding: bytes, blob: (chunk.blob.rawValue, stored.blobs[chunk.blob.rawValue] ?? 0, blobBound),
                    party: (fromRequester ? "requester" : "provider", party), totalStored: stored.total,
                    taskID: task.id, escrow: task.price ?? task.cap)
                {
                    throw refusal
                }
                try await tx.putBlobChunk(
                    StoredBlobChunk(
                        taskID: task.id, blob: chunk.blob.rawValue, index: chunk.index, count: chunk.count,
                        sender: peer, bytes: bytes, frame: text))
                return output
            }
        case .jobEvent:
            let sealed = try body(SealedBody.self)
            return { _, tx, peer, _, _ in
                let task = try await Self.partyTask(
                    sealed.taskId, peer: peer, requester: false, states: [.running], in: tx)
                var output = ActionOutput(ack: AckBody(ref: ref, type: type.rawValue, taskId: task.id))
                output.outgoing.append((task.requester, text))
                return output
            }
        case .jobResult:
            let result = try body(ResultBody.self)
            return { book, tx, peer, _, nowMs in
                let transitions = try await book.apply(
                    .deliver(by: peer, resultHash: result.resultHash), toTask: result.taskId, nowMs: nowMs, in: tx)
                try await tx.setFrame(taskID: result.taskId, kind: .result, frame: text)
                var output = ActionOutput(
                    ack: AckBody(ref: ref, type: type.rawValue, taskId: result.taskId, state: .task(.delivered)))
                output.outgoing.append((transitions[0].task.requester, text))
                try await Self.notify(transitions, into: &output, in: tx, nowMs: nowMs)
                return output
            }
        case .heartbeat:
            let heartbeat = try body(HeartbeatBody.self)
            return { _, tx, peer, _, nowMs in
                try await tx.touchPeer(peer, nowMs: nowMs, auditHead: heartbeat.auditHead)
                return ActionOutput(ack: AckBody(ref: ref, type: type.rawValue))
            }
        case .hello, .auth:
            throw MarketError(.notAllowed, "this connection is already authenticated")
        case .challenge, .taskAssigned, .settlement, .taskOpen, .ack, .pong, .error, .ping:
            throw MarketError(.notAllowed, "\(type.rawValue) is sent by the market, not to it")
        }
    }

    /// The most sealed base64 the market keeps of one blob: what the task declared for the
    /// requester's, the wire's limit for the provider's.
    static func sealedBound(of blob: BlobChunkBody.Blob, in task: MarketTask) throws -> Int64 {
        switch blob {
        case .workspace:
            guard let archive = task.workspaceArchiveBytes else {
                throw MarketError(.invalidState, "task \(task.id) was posted without a workspace")
            }
            return StoredPieceLimits.sealedBound(archive)
        case .conversation:
            guard let transcript = task.conversationBytes else {
                throw MarketError(.invalidState, "task \(task.id) was posted as no follow-up")
            }
            return StoredPieceLimits.sealedBound(transcript)
        case .patch:
            return StoredPieceLimits.sealedBound(WireLimits.maxPatchBytes)
        case .transcript:
            return StoredPieceLimits.sealedBound(WireLimits.maxTranscriptBytes)
        }
    }

    /// Whether `kept` is the piece `chunk` carries (its bytes and its count), whichever
    /// envelope brought it.
    static func samePiece(_ kept: StoredBlobChunk, as chunk: BlobChunkBody, bytes: Int64) -> Bool {
        guard kept.bytes == bytes, kept.count == chunk.count,
            let envelope = try? JSONDecoder().decode(Envelope.self, from: Data(kept.frame.utf8)),
            let body = try? JSONDecoder().decode(BlobChunkBody.self, from: Data(envelope.body.utf8))
        else { return false }
        return body.sealed == chunk.sealed
    }

    /// The task, checked: it exists, the peer is the named party, and it is in one of `states`.
    /// With `lock`, its row stays locked until the transaction ends.
    static func partyTask(
        _ id: String, peer: PeerID, requester: Bool, states: [TaskState], lock: Bool = false,
        in tx: some MarketTransaction
    ) async throws -> MarketTask {
        guard let task = try await tx.task(id, lock: lock) else { throw MarketError(.unknownTask, "no task \(id)") }
        let party = requester ? task.requester : task.provider
        guard party == peer else {
            throw MarketError(
                .notAParty, "only the \(requester ? "requester" : "assigned provider") of task \(id) may send this")
        }
        guard states.contains(task.state) else {
            throw MarketError(
                .invalidState,
                "task \(id) is \(task.state.rawValue); this needs \(states.map(\.rawValue).joined(separator: " or "))")
        }
        return task
    }

    /// The market's own frames for what transitions did: assignments, re-openings, settlements.
    static func notify(
        _ transitions: [TaskTransition], into output: inout ActionOutput, in tx: some MarketTransaction, nowMs: Int64
    ) async throws {
        for transition in transitions {
            let task = transition.task
            if task.state == .assigned, transition.before == .open,
                let frame = try await assignedFrame(task, in: tx, nowMs: nowMs)
            {
                output.outgoing.append((task.requester, frame))
                if let provider = task.provider { output.outgoing.append((provider, frame)) }
                output.matched += 1
            }
            if task.state.isFinal || transition.reopened || !transition.movements.isEmpty && task.state != .assigned {
                let body = SettlementBody(
                    taskId: task.id, state: .known(task.state), reason: task.reason,
                    movements: transition.movements.map {
                        .init(from: .known($0.from), to: .known($0.to), amount: $0.amount.micro, kind: .known($0.kind))
                    })
                let frame = ServerFrames.frame(.settlement, body, nowMs: nowMs)
                var parties = Set([task.requester])
                if let provider = task.provider { parties.insert(provider) }
                if let last = task.excluded.last, transition.reopened || task.state == .refunded {
                    parties.insert(last)
                }
                for party in parties { output.outgoing.append((party, frame)) }
                if task.state.isFinal { output.settled.append(task.state.rawValue) }
            }
            if transition.reopened && task.state == .open {
                try await broadcastOpen(task, into: &output, in: tx, nowMs: nowMs)
            }
        }
    }

    /// An open task goes to every provider with a standing offer (the hub drops it for those not
    /// connected): `providers` when the caller has read them already.
    static func broadcastOpen(
        _ task: MarketTask, to providers: [PeerID]? = nil, into output: inout ActionOutput,
        in tx: some MarketTransaction, nowMs: Int64
    ) async throws {
        let body = OpenTaskBody(
            taskId: task.id, requester: task.requester.rawValue, maxPrice: task.cap.micro,
            minReputation: task.minReputation,
            model: task.model, timeoutSeconds: task.timeoutSeconds, expiresMs: task.deadlineMs,
            workspaceBytes: task.workspaceBytes, workspaceFiles: task.workspaceFiles)
        let frame = ServerFrames.frame(.taskOpen, body, nowMs: nowMs)
        let recipients: [PeerID]
        if let providers { recipients = providers } else { recipients = try await tx.offers().map(\.provider) }
        for provider in recipients where provider != task.requester && !task.excluded.contains(provider) {
            output.outgoing.append((provider, frame))
        }
    }

    // MARK: Sweeping

    /// Timeouts and silent providers; old nonces and message ids are forgotten now and then.
    func sweep(purge: Bool) async throws -> [(peer: PeerID, text: String)] {
        let nowMs = now()
        let retention = configuration.messageRetentionMs
        let (outgoing, purged, settled) = try await commits.write { [book] tx in
            let transitions = try await book.sweep(nowMs: nowMs, in: tx)
            var output = ActionOutput(ack: AckBody(ref: "", type: "sweep"))
            try await Self.notify(transitions, into: &output, in: tx, nowMs: nowMs)
            var purged = 0
            if purge {
                purged = try await tx.purgeNonces(expiredBefore: nowMs)
                try await tx.purgeMessages(before: nowMs - retention)
            }
            return (output.outgoing, purged, output.settled)
        }
        if purged > 0 { nonceCount.subtract(purged, ordering: .relaxed) }
        if !outgoing.isEmpty || !settled.isEmpty { changes.add(1, ordering: .relaxed) }
        for state in settled { metrics.settled(state) }
        return outgoing
    }
}

/// The handshake frames are checked without the store: their freshness comes from the challenge.
struct NoReplayCache: ReplayCache {
    func insert(peer: String, nonce: String, expiresAtMs: Int64, nowMs: Int64) -> ReplayCacheResult { .inserted }
}
