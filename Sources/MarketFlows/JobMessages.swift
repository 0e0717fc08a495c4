import Crypto
import Foundation
import JobRunner
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Synchronization
import Workspace

/// What travels sealed between the parties of a market job (docs/PROTOCOL.md, "Sealed job
/// content"). The market relays these as ciphertext and never sees them.
public enum JobContent {
    /// `payload.deliver`, requester → provider.
    public struct Payload: Codable, Sendable, Equatable {
        public var v = 1
        public var taskId: String
        /// The prompt, base64: bytes, not text, so any input survives.
        public var prompt: String
        /// A workspace job: the workspace archive travels as a sealed blob in `blob.chunk`s.
        public var workspace: WorkspaceInfo?
        /// A follow-up: the earlier conversation's transcript travels as a sealed blob too.
        public var conversation: ConversationInfo?
        public init(
            taskId: String, prompt: Data, workspace: WorkspaceInfo? = nil, conversation: ConversationInfo? = nil
        ) {
            self.taskId = taskId
            self.prompt = prompt.base64EncodedString()
            self.workspace = workspace
            self.conversation = conversation
        }
        public var promptData: Data? { Data(base64Encoded: prompt) }
    }

    /// What a payload says of its workspace: the sealed blob, and for the approval question
    /// the tree's size and what the requester's packing left out.
    public struct WorkspaceInfo: Codable, Sendable, Equatable {
        public var blob: BlobInfo
        public var files: Int
        public var bytes: Int64
        public var leftOut: [String]
        public init(blob: BlobInfo, files: Int, bytes: Int64, leftOut: [String]) {
            self.blob = blob
            self.files = files
            self.bytes = bytes
            self.leftOut = leftOut
        }
    }

    /// A conversation's transcript: the sealed blob and the session it belongs to (checked
    /// against every line before it is used). `turns` is for the approval question.
    public struct ConversationInfo: Codable, Sendable, Equatable {
        public var blob: BlobInfo
        public var sessionId: String
        public var turns: Int
        public init(blob: BlobInfo, sessionId: String, turns: Int) {
            self.blob = blob
            self.sessionId = sessionId
            self.turns = turns
        }
    }

    /// What a result says of a claude job's conversation: its session, and the transcript
    /// (sent before the result, in `blob.chunk`s), or why there is none.
    public struct TranscriptInfo: Codable, Sendable, Equatable {
        public var sessionId: String
        public var blob: BlobInfo?
        public var error: String?
        public init(sessionId: String, blob: BlobInfo?, error: String?) {
            self.sessionId = sessionId
            self.blob = blob
            self.error = error
        }
    }

    /// A blob sent in `blob.chunk`s: its plaintext's size and SHA-256, and how many pieces.
    public struct BlobInfo: Codable, Sendable, Equatable {
        public var bytes: Int64
        public var sha256: String
        public var chunks: Int
        public init(bytes: Int64, sha256: String, chunks: Int) {
            self.bytes = bytes
            self.sha256 = sha256
            self.chunks = chunks
        }
    }

    /// What a result says of a workspace job's change: the patch (nil blob: nothing changed)
    /// with its base and files, or why there is none.
    public struct PatchInfo: Codable, Sendable, Equatable {
        public var blob: BlobInfo?
        public var baseHash: String
        public var files: [WorkspacePatch.FileChange]
        public var skipped: [String]
        public var error: String?
        public init(
            blob: BlobInfo?, baseHash: String, files: [WorkspacePatch.FileChange], skipped: [String], error: String?
        ) {
            self.blob = blob
            self.baseHash = baseHash
            self.files = files
            self.skipped = skipped
            self.error = error
        }
    }

    /// What an item of a `job.event` batch is.
    public enum ItemKind: String, Sendable {
        /// The job started.
        case started
        /// A line a command printed (or the CLI's stderr).
        case line
        /// A piece of Claude's words as they stream.
        case delta
        /// One of Claude's messages, whole.
        case text
        /// A tool Claude used.
        case tool
    }

    public enum OutputStream: String, Sendable {
        case stdout, stderr
    }

    /// One item of a `job.event` batch.
    public struct Item: Codable, Sendable, Equatable {
        public var kind: WireEnum<ItemKind>
        public var stream: WireEnum<OutputStream>?
        public var text: String?
        public init(kind: WireEnum<ItemKind>, stream: WireEnum<OutputStream>? = nil, text: String? = nil) {
            self.kind = kind
            self.stream = stream
            self.text = text
        }
    }

    /// `job.event`, provider → requester: output items in order.
    public struct EventBatch: Codable, Sendable, Equatable {
        public var taskId: String
        public var items: [Item]
    }

    /// `job.result`, provider → requester; its SHA-256 is the message's `resultHash`.
    public struct Result: Codable, Sendable, Equatable {
        public var v = 1
        public var taskId: String
        /// `succeeded`, `failed`, `timed-out`, `over_budget`, `output_limit`.
        public var state: WireEnum<JobEndState>
        public var exitCode: Int?
        /// Claude's answer, or a command's standard output (at most `maxOutputBytes`).
        public var output: String
        public var truncated: Bool
        public var error: String?
        public var usage: JobUsage
        /// Whether `usage` was metered by the provider's gateway (API key mode).
        public var metered: Bool
        public var seconds: Double
        public var redactions: Int
        /// A workspace job's change.
        public var patch: PatchInfo?
        /// A claude job's conversation, for a follow-up on any provider.
        public var transcript: TranscriptInfo?
    }

    /// Sealed fields may hold up to 900 000 bytes of base64: the output kept in a result stays
    /// well below that.
    public static let maxOutputBytes = 600_000

    /// At most `maxBytes` of `text`'s UTF-8, cut before a scalar that does not fit whole (a cut
    /// inside one would not be text at all).
    public static func prefix(_ text: String, maxBytes: Int) -> String {
        let utf8 = text.utf8
        guard utf8.count > maxBytes else { return text }
        var end = utf8.index(utf8.startIndex, offsetBy: max(0, maxBytes))
        while end > utf8.startIndex && end.samePosition(in: text.unicodeScalars) == nil {
            end = utf8.index(before: end)
        }
        return String(text.unicodeScalars[..<end])
    }

    public static func encode(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(value)
    }

    public static func seal(_ value: some Encodable, to document: PublicKeyDocument, purpose: SealPurpose) throws
        -> (sealed: String, plaintext: Data)
    {
        let plaintext = try encode(value)
        let sealed = try Sealer.seal(plaintext, to: try document.publicKeys(), purpose: purpose)
        return (sealed.base64EncodedString(), plaintext)
    }

    public static func sha256Hex(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }
}

/// A workspace or a patch: sealed whole to the other party, its base64 cut into pieces that
/// fit a frame (`blob.chunk`), put back together on the other side, where it opens only if
/// every piece is there, in order, unchanged.
public enum SealedBlob {
    /// Base64 characters per piece: under the market's 900 000 for a sealed field.
    public static let chunkCharacters = 640_000

    public static func seal(_ data: Data, to document: PublicKeyDocument, purpose: SealPurpose) throws
        -> (info: JobContent.BlobInfo, chunks: [String])
    {
        let text = try Sealer.seal(data, to: try document.publicKeys(), purpose: purpose).base64EncodedString()
        var chunks: [String] = []
        var start = text.startIndex
        while start < text.endIndex {
            let end = text.index(start, offsetBy: chunkCharacters, limitedBy: text.endIndex) ?? text.endIndex
            chunks.append(String(text[start..<end]))
            start = end
        }
        return (
            JobContent.BlobInfo(bytes: Int64(data.count), sha256: JobContent.sha256Hex(data), chunks: chunks.count),
            chunks
        )
    }

    /// Whether every blob `needed` names is whole in `pieces`; throws, naming the blob, when one
    /// can never be (its pieces contradict it or each other).
    public static func complete(
        _ needed: [(BlobChunkBody.Blob, JobContent.BlobInfo)], in pieces: [BlobChunkBody.Blob: Assembler]
    ) throws(Assembler.Refusal) -> Bool {
        var complete = true
        for (blob, info) in needed {
            do {
                complete = try (pieces[blob]?.isComplete(info) ?? false) && complete
            } catch {
                throw Assembler.Refusal(description: "the \(blob.rawValue) was refused: \(error)")
            }
        }
        return complete
    }

    /// Opens the blob whose pieces `assembler` holds (nil: none has come).
    public static func open(_ assembler: Assembler?, _ info: JobContent.BlobInfo, keys: KeyRing) throws -> Data {
        guard let assembler else { throw MarketClientError("none of its \(info.chunks) pieces has arrived") }
        return try assembler.open(info, keys: keys)
    }

    /// Pieces of one blob as they arrive, in any order, from a peer that may lie. A piece that
    /// cannot belong with the others (an index outside its count, a count that changes, other
    /// bytes at an index already held, more than the blob may hold) refuses the whole blob for
    /// good; an identical resend (after a reconnect) changes nothing.
    public struct Assembler: Sendable {
        /// Why these pieces can never make the blob.
        public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
            public let description: String
        }

        /// The largest plaintext this receiver takes for the blob (its kind's limit).
        public let maxBytes: Int64
        private var pieces: [Int: String] = [:]
        private var count: Int?
        private var characters: Int64 = 0
        /// The first contradiction, kept: nothing opens after it.
        public private(set) var refusal: Refusal?

        /// The setting `maxBytes` comes from, named when pieces go over it.
        public let limitName: String?

        public init(maxBytes: Int64 = WireLimits.maxBlobBytes, limitName: String? = nil) {
            self.maxBytes = min(max(maxBytes, 0), WireLimits.maxBlobBytes)
            self.limitName = limitName
        }

        /// The most sealed base64 the pieces may hold together.
        var maxCharacters: Int64 { WireLimits.sealedCharacters(plaintext: maxBytes) }

        /// Takes a piece, or refuses the blob (and every later piece) with why.
        public mutating func add(_ body: BlobChunkBody) throws(Refusal) {
            if let refusal { throw refusal }
            do {
                try take(body)
            } catch {
                refusal = error
                throw error
            }
        }

        private mutating func take(_ body: BlobChunkBody) throws(Refusal) {
            let what = "piece \(body.index) of the \(body.blob.rawValue)"
            guard (1...BlobChunkBody.maxChunks).contains(body.count) else {
                throw Refusal(
                    description: "\(what) says it is one of \(body.count); 1…\(BlobChunkBody.maxChunks) are allowed")
            }
            guard (0..<body.count).contains(body.index) else {
                throw Refusal(description: "\(what) is outside 0…\(body.count - 1), its count of \(body.count)")
            }
            if let count, count != body.count {
                throw Refusal(description: "\(what) says there are \(body.count) pieces; earlier ones said \(count)")
            }
            if let held = pieces[body.index] {
                guard held == body.sealed else {
                    throw Refusal(description: "\(what) came again with other bytes")
                }
                return
            }
            let total = characters + Int64(body.sealed.utf8.count)
            guard total <= maxCharacters else {
                throw Refusal(
                    description:
                        "the \(body.blob.rawValue)'s pieces hold \(total) characters with \(what); \(limitName ?? "the blob's limit") allows \(maxBytes) bytes, which seal to at most \(maxCharacters)"
                )
            }
            count = body.count
            pieces[body.index] = body.sealed
            characters = total
        }

        /// Whether every piece `info` announces is in; throws when these pieces can never be
        /// that blob (another count, more than its size seals to, a size over `maxBytes`).
        public func isComplete(_ info: JobContent.BlobInfo) throws(Refusal) -> Bool {
            if let refusal { throw refusal }
            guard (0...maxBytes).contains(info.bytes) else {
                throw Refusal(
                    description: "the blob is announced as \(info.bytes) bytes; at most \(maxBytes) are taken")
            }
            guard (1...BlobChunkBody.maxChunks).contains(info.chunks) else {
                throw Refusal(
                    description:
                        "the blob is announced in \(info.chunks) pieces; 1…\(BlobChunkBody.maxChunks) are allowed")
            }
            if let count, count != info.chunks {
                throw Refusal(
                    description: "the blob is announced in \(info.chunks) pieces, but its pieces say \(count)")
            }
            let bound = WireLimits.sealedCharacters(plaintext: info.bytes)
            guard characters <= bound else {
                throw Refusal(
                    description:
                        "the pieces hold \(characters) characters; a blob of \(info.bytes) bytes seals to at most \(bound)"
                )
            }
            return pieces.count == info.chunks
        }

        /// Opens the blob with `keys` and checks it is what `info` says.
        public func open(_ info: JobContent.BlobInfo, keys: KeyRing) throws -> Data {
            guard try isComplete(info) else {
                throw MarketClientError("\(pieces.count) of \(info.chunks) pieces have arrived")
            }
            var text = ""
            text.reserveCapacity(Int(characters))
            for index in 0..<info.chunks {
                guard let piece = pieces[index] else { throw MarketClientError("piece \(index) has not arrived") }
                text += piece
            }
            guard let sealed = Data(base64Encoded: text) else { throw MarketClientError("the pieces are not base64") }
            let (plaintext, _) = try Sealer.open(sealed, keys: keys)
            guard Int64(plaintext.count) == info.bytes, JobContent.sha256Hex(plaintext) == info.sha256 else {
                throw MarketClientError("the blob does not match the size and SHA-256 it was announced with")
            }
            return plaintext
        }
    }
}

/// Relayed frames are checked against the sender's own key document, never the market's word.
public enum RelayedFrame {
    /// How old a relayed frame may be: the market keeps payloads and results for a peer that
    /// was away, so the usual ±5 minutes would refuse honest frames.
    public static let windowMs: Int64 = 30 * 24 * 3600 * 1000

    public static func verify(_ envelope: Envelope, from document: PublicKeyDocument, nowMs: Int64) throws {
        guard envelope.from == document.peerId else {
            throw MarketClientError(
                "a relayed \(envelope.type) claims to be from \(envelope.from), not \(document.peerId)")
        }
        guard let raw = Data(base64Encoded: document.signingKey),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { throw MarketClientError("the key document of \(document.peerId) has no usable signing key") }
        do {
            try EnvelopeVerifier(replayCache: NoReplay(), windowMs: windowMs).verifySignature(
                envelope, signingKey: key, nowMs: nowMs)
        } catch {
            throw MarketClientError("a relayed \(envelope.type) does not verify: \(error.message)")
        }
    }

    /// A key document from `task.assigned`: signed by its own key, and for the peer it names.
    public static func document(_ text: String, for peer: String) throws -> PublicKeyDocument {
        let document = try PublicKeyDocument.verified(from: Data(text.utf8))
        guard document.peerId == peer else {
            throw MarketClientError("the key document offered for \(peer) belongs to \(document.peerId)")
        }
        return document
    }

    struct NoReplay: ReplayCache {
        func insert(peer: String, nonce: String, expiresAtMs: Int64, nowMs: Int64) -> ReplayCacheResult { .inserted }
    }
}

/// Turns a job's output into sealed `job.event` frames, in order and in batches (at most 64 KiB
/// of text each), without slowing the job: output is buffered and a single task sends.
final class EventStreamer: Sendable {
    final class Buffer: Sendable {
        let state = Mutex<(items: [JobContent.Item], finished: Bool)>(([], false))
    }
    private let buffer = Buffer()
    private let signal: AsyncStream<Void>.Continuation
    private let sender: Task<Void, Never>

    init(
        taskId: String, requester: PublicKeyDocument, session: MarketSession,
        onError: @escaping @Sendable (String) -> Void
    ) {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        signal = continuation
        let buffer = self.buffer
        sender = Task {
            var seq = 0
            var finished = false
            var lastSent = ContinuousClock.now - .seconds(1)
            for await _ in stream {
                var items: [JobContent.Item] = []
                buffer.state.withLock {
                    items = $0.items
                    $0.items = []
                    finished = $0.finished
                }
                var batch: [JobContent.Item] = []
                var bytes = 0
                func send() async {
                    guard !batch.isEmpty else { return }
                    // At most one frame per 10 ms (the market allows 200 a second per peer):
                    // a chatty job gets fewer, larger batches instead of refused frames.
                    let since = ContinuousClock.now - lastSent
                    if since < .milliseconds(10) { try? await Task.sleep(for: .milliseconds(10) - since) }
                    lastSent = ContinuousClock.now
                    do {
                        let (sealed, _) = try JobContent.seal(
                            JobContent.EventBatch(taskId: taskId, items: batch), to: requester, purpose: .result)
                        try await session.sendNow(.jobEvent, SealedBody(taskId: taskId, sealed: sealed, seq: seq))
                    } catch {
                        onError("event \(seq) of task \(taskId) was not sent: \(error)")
                    }
                    seq += 1
                    batch = []
                    bytes = 0
                }
                for item in items {
                    let size = item.text?.utf8.count ?? 0
                    if bytes + size > 64 << 10 { await send() }
                    batch.append(item)
                    bytes += size
                }
                await send()
                if finished { break }
            }
        }
    }

    func add(_ item: JobContent.Item) {
        buffer.state.withLock { $0.items.append(item) }
        signal.yield()
    }

    /// Sends what is left and stops.
    func finish() async {
        buffer.state.withLock { $0.finished = true }
        signal.yield()
        await sender.value
    }
}
