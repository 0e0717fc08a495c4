import Foundation
import MarketCore

/// The bodies of the wire messages (docs/PROTOCOL.md). Amounts are integers of micro-credits
/// (1 RUV = 1 000 000). Every body checks its own fields in `validate()`, naming the bad value
/// and what is allowed; the server calls it before anything is stored.
public protocol WireBody: Codable, Sendable {
    func validate(limits: WireLimits) throws(MarketError)
}

/// `hello`: the peer's signed public key document (JSON text, docs/FORMATS.md).
public struct HelloBody: WireBody, Equatable {
    public var keyDocument: String
    public init(keyDocument: String) { self.keyDocument = keyDocument }
    public func validate(limits: WireLimits) throws(MarketError) {
        try validate(limits: limits, field: "keyDocument")
    }

    func validate(limits: WireLimits, field: String) throws(MarketError) {
        guard (1...16_384).contains(keyDocument.utf8.count) else {
            throw MarketError(.invalidBody, "\(field) of \(keyDocument.utf8.count) bytes must be 1–16384 bytes")
        }
    }
}

/// `challenge` (server): a random nonce the `auth` must echo, and how long the market lets a
/// provider stay silent, so that the client can heartbeat well within it.
public struct ChallengeBody: WireBody, Equatable {
    public var nonce: String
    public var heartbeatTimeoutMs: Int64?
    public init(nonce: String, heartbeatTimeoutMs: Int64? = nil) {
        self.nonce = nonce
        self.heartbeatTimeoutMs = heartbeatTimeoutMs
    }
    public func validate(limits: WireLimits) throws(MarketError) {}
}

/// `auth`: echoes the challenge, signed.
public struct AuthBody: WireBody, Equatable {
    public var challenge: String
    public init(challenge: String) { self.challenge = challenge }
    public func validate(limits: WireLimits) throws(MarketError) {}
}

/// `offer.advertise`: the provider's standing offer (replaces any earlier one).
public struct AdvertiseBody: WireBody, Equatable {
    public var price: Int64
    public var slots: Int
    public var models: [String]?
    public var minRequesterReputation: Double?
    /// The largest workspace the provider takes (bytes of files and links, and their number);
    /// absent: no workspace jobs.
    public var maxWorkspaceBytes: Int64?
    public var maxWorkspaceFiles: Int64?
    /// The provider's account is past its share of the window `pausedFor` until this time
    /// (ms since 1970): the offer stays in the book, takes no task, and returns by itself then.
    public var pausedUntilMs: Int64?
    public var pausedFor: String?

    public init(
        price: Int64, slots: Int, models: [String]? = nil, minRequesterReputation: Double? = nil,
        maxWorkspaceBytes: Int64? = nil, maxWorkspaceFiles: Int64? = nil
    ) {
        self.price = price
        self.slots = slots
        self.models = models
        self.minRequesterReputation = minRequesterReputation
        self.maxWorkspaceBytes = maxWorkspaceBytes
        self.maxWorkspaceFiles = maxWorkspaceFiles
    }

    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.price(price, field: "price")
        guard (1...limits.maxSlots).contains(slots) else {
            throw MarketError(.invalidBody, "slots \(slots) must be 1…\(limits.maxSlots)")
        }
        guard (models?.count ?? 0) <= 32 else { throw MarketError(.invalidBody, "at most 32 models") }
        for model in models ?? [] { try WireField.model(model) }
        try WireField.reputation(minRequesterReputation, field: "minRequesterReputation")
        try WireField.workspace(bytes: maxWorkspaceBytes, files: maxWorkspaceFiles, field: "maxWorkspace")
        guard (pausedUntilMs == nil) == (pausedFor == nil) else {
            throw MarketError(.invalidBody, "pausedUntilMs and pausedFor go together")
        }
        if let until = pausedUntilMs, !(1...(Int64(1) << 45)).contains(until) {
            throw MarketError(.invalidBody, "pausedUntilMs \(until) is not a time in milliseconds since 1970")
        }
        if let window = pausedFor {
            guard (1...32).contains(window.utf8.count),
                window.utf8.allSatisfy({ (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5f })
            else {
                throw MarketError(.invalidBody, "pausedFor must be a window name of 1…32 characters a-z, 0-9 and _")
            }
        }
    }
}

/// Bodies that only name a task: `task.cancel`, `job.approved`, `job.accept`, `offer.withdraw` (no task).
public struct TaskRefBody: WireBody, Equatable {
    public var taskId: String
    public init(taskId: String) { self.taskId = taskId }
    public func validate(limits: WireLimits) throws(MarketError) { try WireField.taskID(taskId) }
}

public struct EmptyBody: WireBody, Equatable {
    public init() {}
    public func validate(limits: WireLimits) throws(MarketError) {}
}

/// `task.post`: a job offered at up to `maxPrice`, held in escrow at once.
public struct PostBody: WireBody, Equatable {
    public var taskId: String
    public var maxPrice: Int64
    public var minReputation: Double?
    public var model: String?
    public var timeoutSeconds: Int64?
    /// How long the task may stay open; the market's default when absent.
    public var expiresInSeconds: Int64?
    /// A workspace job: the workspace's bytes of files and links and their number (matched
    /// against offers), and the bytes of its archive (bounding what the market stores).
    public var workspaceBytes: Int64?
    public var workspaceFiles: Int64?
    public var workspaceArchiveBytes: Int64?
    /// A follow-up: the bytes of the earlier conversation's transcript, which travels sealed to
    /// the provider that wins in `blob.chunk`s (bounding what the market stores).
    public var conversationBytes: Int64?

    public init(
        taskId: String, maxPrice: Int64, minReputation: Double? = nil, model: String? = nil,
        timeoutSeconds: Int64? = nil, expiresInSeconds: Int64? = nil,
        workspace: (bytes: Int64, files: Int64, archiveBytes: Int64)? = nil, conversationBytes: Int64? = nil
    ) {
        self.conversationBytes = conversationBytes
        self.workspaceBytes = workspace?.bytes
        self.workspaceFiles = workspace?.files
        self.workspaceArchiveBytes = workspace?.archiveBytes
        self.taskId = taskId
        self.maxPrice = maxPrice
        self.minReputation = minReputation
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.expiresInSeconds = expiresInSeconds
    }

    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.price(maxPrice, field: "maxPrice")
        try WireField.reputation(minReputation, field: "minReputation")
        if let model { try WireField.model(model) }
        if let timeoutSeconds, !(1...limits.maxTaskTimeoutSeconds).contains(timeoutSeconds) {
            throw MarketError(
                .invalidBody, "timeoutSeconds \(timeoutSeconds) must be 1…\(limits.maxTaskTimeoutSeconds)")
        }
        if let expiresInSeconds, !(1...7 * 24 * 3600).contains(expiresInSeconds) {
            throw MarketError(.invalidBody, "expiresInSeconds \(expiresInSeconds) must be 1…604800")
        }
        try WireField.workspace(bytes: workspaceBytes, files: workspaceFiles, field: "workspace")
        let given = [workspaceBytes, workspaceFiles, workspaceArchiveBytes].compactMap { $0 }.count
        guard given == 0 || given == 3 else {
            throw MarketError(
                .invalidBody, "workspaceBytes, workspaceFiles and workspaceArchiveBytes go together (all or none)")
        }
        if let workspaceArchiveBytes, !(1...WireLimits.maxBlobBytes).contains(workspaceArchiveBytes) {
            throw MarketError(
                .workspaceTooLarge,
                "workspaceArchiveBytes \(workspaceArchiveBytes) must be 1…\(WireLimits.maxBlobBytes)")
        }
        if let conversationBytes, !(1...WireLimits.maxTranscriptBytes).contains(conversationBytes) {
            throw MarketError(
                .workspaceTooLarge,
                "conversationBytes \(conversationBytes) must be 1…\(WireLimits.maxTranscriptBytes)")
        }
    }
}

/// `bid.place`: a provider asks for an open task at `price`.
public struct BidBody: WireBody, Equatable {
    public var taskId: String
    public var price: Int64
    public init(taskId: String, price: Int64) {
        self.taskId = taskId
        self.price = price
    }
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.price(price, field: "price")
    }
}

/// `job.rejected`, `job.failed`, `job.dispute`.
public struct ReasonBody: WireBody, Equatable {
    public var taskId: String
    public var reason: String
    public init(taskId: String, reason: String) {
        self.taskId = taskId
        self.reason = reason
    }
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.reason(reason, limits: limits)
    }
}

/// `payload.deliver` (requester → provider) and `job.event` (provider → requester): ciphertext
/// sealed to the other party (docs/FORMATS.md), base64. The market relays it and cannot read it.
public struct SealedBody: WireBody, Equatable {
    public var taskId: String
    public var sealed: String
    /// For `job.event`: the event's position in the stream, from 0.
    public var seq: Int?
    public init(taskId: String, sealed: String, seq: Int? = nil) {
        self.taskId = taskId
        self.sealed = sealed
        self.seq = seq
    }
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.sealed(sealed, limits: limits)
        if let seq, seq < 0 { throw MarketError(.invalidBody, "seq \(seq) must be ≥ 0") }
    }
}

/// `blob.chunk`: piece `index` of `count` of a sealed blob, base64 of its sealed bytes cut in
/// order. The blob is sealed whole (docs/FORMATS.md) to the other party; its SHA-256 and size
/// are in the sealed payload (a workspace) or result (a patch), so a piece missing, cut or
/// swapped fails to open, and a resend of a piece is the same piece (idempotent by index).
public struct BlobChunkBody: WireBody, Equatable {
    public enum Blob: String, Codable, Sendable {
        /// requester → provider, while the task is assigned or running.
        case workspace
        /// provider → requester, while the task is running, before the result.
        case patch
        /// A follow-up's earlier conversation: requester → provider, like the workspace.
        case conversation
        /// The job's conversation transcript: provider → requester, like the patch.
        case transcript

        /// Sent by the requester (to the provider) rather than the other way.
        public var fromRequester: Bool { self == .workspace || self == .conversation }
    }
    public var taskId: String
    public var blob: Blob
    public var index: Int
    public var count: Int
    public var sealed: String

    public init(taskId: String, blob: Blob, index: Int, count: Int, sealed: String) {
        self.taskId = taskId
        self.blob = blob
        self.index = index
        self.count = count
        self.sealed = sealed
    }

    /// Most chunks of one blob: 1 GiB in pieces of about 650 KB of base64.
    public static let maxChunks = 2048

    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        guard (1...Self.maxChunks).contains(count), (0..<count).contains(index) else {
            throw MarketError(
                .invalidBody, "index \(index) of count \(count): count must be 1…\(Self.maxChunks), index 0…count-1")
        }
        try WireField.sealed(sealed, limits: limits)
    }
}

/// Token usage as metered on the provider.
public struct JobUsage: Codable, Sendable, Equatable {
    public var inputTokens: Int64
    public var outputTokens: Int64
    public init(inputTokens: Int64, outputTokens: Int64) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
    }
}

/// `job.result`: the sealed result, the SHA-256 of its plaintext, and the metered usage.
public struct ResultBody: WireBody, Equatable {
    public var taskId: String
    public var sealed: String
    public var resultHash: String
    public var usage: JobUsage?
    public init(taskId: String, sealed: String, resultHash: String, usage: JobUsage? = nil) {
        self.taskId = taskId
        self.sealed = sealed
        self.resultHash = resultHash
        self.usage = usage
    }
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.sealed(sealed, limits: limits)
        if let usage, usage.inputTokens < 0 || usage.outputTokens < 0 {
            throw MarketError(.invalidBody, "usage tokens must be ≥ 0")
        }
    }
}

/// `heartbeat`: liveness, with the signed head of the local audit log when there is one.
public struct HeartbeatBody: WireBody, Equatable {
    public var auditHead: String?
    public init(auditHead: String? = nil) { self.auditHead = auditHead }
    public func validate(limits: WireLimits) throws(MarketError) {
        if let auditHead, auditHead.utf8.count > 4096 { throw MarketError(.invalidBody, "auditHead over 4096 bytes") }
    }
}

// MARK: - Server → client

/// `ack` (server): the message `ref` was done (or had already been done: the same answer again).
public struct AckBody: Codable, Sendable, Equatable {
    public var ref: String
    public var type: String
    public var taskId: String?
    public var state: AckState?
    public var note: String?
    public init(ref: String, type: String, taskId: String? = nil, state: AckState? = nil, note: String? = nil) {
        self.ref = ref
        self.type = type
        self.taskId = taskId
        self.state = state
        self.note = note
    }
}

/// `task.open` (server → providers): an open task, public fields only.
public struct OpenTaskBody: WireBody, Equatable {
    public var taskId: String
    public var requester: String
    public var maxPrice: Int64
    public var minReputation: Double
    public var model: String?
    public var timeoutSeconds: Int64
    public var expiresMs: Int64?
    /// A workspace job's sizes: a provider bids only when its own limits take them.
    public var workspaceBytes: Int64?
    public var workspaceFiles: Int64?

    public init(
        taskId: String, requester: String, maxPrice: Int64, minReputation: Double, model: String?,
        timeoutSeconds: Int64, expiresMs: Int64?, workspaceBytes: Int64? = nil, workspaceFiles: Int64? = nil
    ) {
        self.workspaceBytes = workspaceBytes
        self.workspaceFiles = workspaceFiles
        self.taskId = taskId
        self.requester = requester
        self.maxPrice = maxPrice
        self.minReputation = minReputation
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.expiresMs = expiresMs
    }

    /// Checked by the provider that reads it, as a `task.post` is by the market.
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.peer(requester, field: "requester")
        try WireField.price(maxPrice, field: "maxPrice")
        try WireField.reputation(minReputation, field: "minReputation")
        if let model { try WireField.model(model) }
        guard (1...limits.maxTaskTimeoutSeconds).contains(timeoutSeconds) else {
            throw MarketError(
                .invalidBody, "timeoutSeconds \(timeoutSeconds) must be 1…\(limits.maxTaskTimeoutSeconds)")
        }
        try WireField.workspace(bytes: workspaceBytes, files: workspaceFiles, field: "workspace")
    }
}

/// `task.assigned` (server → both parties): who won, at what price, and both parties' signed key
/// documents, so that each seals to and verifies the other without trusting the market.
public struct AssignedBody: WireBody, Equatable {
    public var taskId: String
    public var requester: String
    public var provider: String
    public var price: Int64
    public var requesterKeyDocument: String
    public var providerKeyDocument: String

    public init(
        taskId: String, requester: String, provider: String, price: Int64, requesterKeyDocument: String,
        providerKeyDocument: String
    ) {
        self.taskId = taskId
        self.requester = requester
        self.provider = provider
        self.price = price
        self.requesterKeyDocument = requesterKeyDocument
        self.providerKeyDocument = providerKeyDocument
    }

    /// Checked by the parties that read it; the key documents are verified after this.
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        try WireField.peer(requester, field: "requester")
        try WireField.peer(provider, field: "provider")
        try WireField.price(price, field: "price")
        for (field, document) in [
            ("requesterKeyDocument", requesterKeyDocument), ("providerKeyDocument", providerKeyDocument),
        ] {
            try HelloBody(keyDocument: document).validate(limits: limits, field: field)
        }
    }
}

/// `settlement` (server → both parties): the task's final or re-opened state and the ledger rows.
public struct SettlementBody: WireBody, Equatable {
    public struct Row: Codable, Sendable, Equatable {
        public var from: WireEnum<Account>
        public var to: WireEnum<Account>
        public var amount: Int64
        public var kind: WireEnum<MovementKind>
        public init(from: WireEnum<Account>, to: WireEnum<Account>, amount: Int64, kind: WireEnum<MovementKind>) {
            self.from = from
            self.to = to
            self.amount = amount
            self.kind = kind
        }
    }
    public var taskId: String
    public var state: WireEnum<TaskState>
    public var reason: String?
    public var movements: [Row]

    public init(taskId: String, state: WireEnum<TaskState>, reason: String?, movements: [Row]) {
        self.taskId = taskId
        self.state = state
        self.reason = reason
        self.movements = movements
    }

    /// Rows a settlement can hold: a release, a fee, a hold-back and what a threshold frees.
    public static let maxMovements = 64
    /// A settlement's reason quotes a party's (`rejected by the provider: …`).
    public static let maxReasonBytes = 4096

    /// Checked by the parties that read it: what it says moved is what they record.
    public func validate(limits: WireLimits) throws(MarketError) {
        try WireField.taskID(taskId)
        if let reason, reason.utf8.count > Self.maxReasonBytes {
            throw MarketError(.invalidBody, "reason of \(reason.utf8.count) bytes; at most \(Self.maxReasonBytes)")
        }
        guard movements.count <= Self.maxMovements else {
            throw MarketError(.invalidBody, "\(movements.count) movements; at most \(Self.maxMovements)")
        }
        for row in movements where row.amount <= 0 {
            throw MarketError(.invalidBody, "a movement of \(row.amount) micro-credits; amounts are above zero")
        }
    }
}
