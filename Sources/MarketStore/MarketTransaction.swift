import MarketCore

/// A peer as the market knows it.
public struct PeerRecord: Sendable, Equatable {
    public var id: PeerID
    /// The peer's signed public key document (JSON text).
    public var keyDocument: String
    public var firstSeenMs: Int64
    public var lastSeenMs: Int64
    /// The latest signed head of the peer's audit log, as its heartbeats carried it.
    public var auditHead: String?
    public var reputation: Reputation
    public var settledJobs: Int
    /// Tasks the provider handed back for its account's capacity (`job.handback`).
    public var handBacks = 0

    public init(
        id: PeerID, keyDocument: String, firstSeenMs: Int64, lastSeenMs: Int64, auditHead: String?,
        reputation: Reputation, settledJobs: Int, handBacks: Int = 0
    ) {
        self.handBacks = handBacks
        self.id = id
        self.keyDocument = keyDocument
        self.firstSeenMs = firstSeenMs
        self.lastSeenMs = lastSeenMs
        self.auditHead = auditHead
        self.reputation = reputation
        self.settledJobs = settledJobs
    }
}

/// Counts for `/v1/stats` and `market status`.
public struct MarketCounts: Sendable, Equatable, Codable {
    public var peers: Int
    public var offers: Int
    public var tasksByState: [String: Int]
    public var minted: Int64
    public var inEscrow: Int64
    public var heldBack: Int64
    public var fees: Int64
    public var settledVolume: Int64

    public init(
        peers: Int, offers: Int, tasksByState: [String: Int], minted: Int64, inEscrow: Int64, heldBack: Int64,
        fees: Int64, settledVolume: Int64
    ) {
        self.peers = peers
        self.offers = offers
        self.tasksByState = tasksByState
        self.minted = minted
        self.inEscrow = inEscrow
        self.heldBack = heldBack
        self.fees = fees
        self.settledVolume = settledVolume
    }
}

/// One write (or read) transaction of the market's storage: the small port every backend
/// implements in its own SQL. The rules that use it (`MarketBook`) are written once.
///
/// Async, so that no thread waits on a statement: on PostgreSQL a transaction runs on its
/// connection's event loop (`EventLoopTaskExecutor`) and each statement is a suspension, not a
/// blocked thread. SQLite's statements never suspend: its transaction runs to its end on GRDB's
/// writer thread (`InlineTaskExecutor`), as a synchronous closure did.
public protocol MarketTransaction {
    // Peers
    func peer(_ id: PeerID) async throws -> PeerRecord?
    /// Two peers in one step (a task's parties), by id; the same id twice reads one.
    func peers(_ first: PeerID, _ second: PeerID) async throws -> [PeerID: PeerRecord]
    func upsertPeer(_ id: PeerID, keyDocument: String, nowMs: Int64) async throws
    func touchPeer(_ id: PeerID, nowMs: Int64, auditHead: String?) async throws
    func updateStanding(_ id: PeerID, reputation: Reputation, settledJobs: Int) async throws
    /// Counts one capacity hand-back for the provider.
    func countHandBack(of provider: PeerID) async throws
    func peerCount() async throws -> Int
    /// What settlement needs of a provider: its settled jobs and what the market holds back of its earnings.
    func standing(of provider: PeerID) async throws -> ProviderStanding
    /// Peers that have an offer or a task holding a slot and were last seen before `cutoffMs`.
    func silentProviders(lastSeenBefore cutoffMs: Int64) async throws -> [PeerID]

    // Replay cache and idempotency
    /// Records the nonce; false when the peer already used it and the entry is still live.
    func insertNonce(peer: String, nonce: String, expiresMs: Int64) async throws -> Bool
    func nonceCount() async throws -> Int
    /// Forgets nonces whose frames can no longer be accepted: `expires < nowMs`.
    func purgeNonces(expiredBefore nowMs: Int64) async throws -> Int
    /// The stored answer to a message id this peer sent before, if any.
    func messageResult(peer: PeerID, id: String) async throws -> String?
    /// What a frame's transaction does first, in one step: spends the nonce (`insertNonce`) and,
    /// when it was fresh, looks up the answer to the message id (`messageResult`).
    func claim(nonce: String, peer: PeerID, expiresMs: Int64, messageID: String) async throws -> FrameClaim
    func recordMessage(peer: PeerID, id: String, result: String, nowMs: Int64) async throws
    func purgeMessages(before cutoffMs: Int64) async throws

    // Ledger
    func balance(_ account: Account) async throws -> Credits
    /// Writes one ledger row and both balances. Refuses (`insufficient_funds`) when the debited
    /// account is not the mint and would go below zero.
    func insertMovement(_ movement: Movement, nowMs: Int64) async throws
    func allMovements() async throws -> [(id: Int64, from: String, to: String, amountMicro: Int64)]
    func allBalances() async throws -> [String: Int64]
    func movements(account: String, limit: Int) async throws -> [Movement]

    // Offers
    func offer(of provider: PeerID) async throws -> Offer?
    /// Every offer, cheapest first.
    func offers() async throws -> [Offer]
    /// Offers as matching needs them, in one query: each with its provider's busy slots and
    /// reputation sums; only those priced at most `maxPrice` and (when given) of `provider`.
    /// With `lock`, the offer rows stay locked until the transaction ends.
    func offerCandidates(maxPrice: Credits?, provider: PeerID?, lock: Bool) async throws -> [(
        offer: Offer, busySlots: Int, reputation: Reputation
    )]
    func putOffer(_ offer: Offer) async throws
    func deleteOffer(of provider: PeerID) async throws -> Bool
    func busySlots(of provider: PeerID) async throws -> Int

    // Tasks
    /// With `lock`, the row stays locked until the transaction ends.
    func task(_ id: String, lock: Bool) async throws -> MarketTask?
    /// Inserts the task and, with `event`, the row of the state it enters, in one step.
    func insertTask(_ task: MarketTask, entering event: TaskEventRecord?) async throws
    /// Updates the task and, with `event`, records the state it enters, in one step.
    func updateTask(_ task: MarketTask, entering event: TaskEventRecord?) async throws
    func tasks(state: TaskState?, limit: Int) async throws -> [MarketTask]
    func tasks(of peer: PeerID, states: [TaskState]) async throws -> [MarketTask]
    /// Ids of non-final tasks whose deadline is at or before `nowMs`, oldest deadline first.
    func tasksDue(nowMs: Int64, limit: Int) async throws -> [String]
    func setFrame(taskID: String, kind: TaskFrameKind, frame: String?) async throws
    func frame(taskID: String, kind: TaskFrameKind) async throws -> String?
    /// Keeps a piece of a sealed blob (ciphertext, as signed) until the task leaves the states
    /// that need it, and adds its bytes to the running counts (`pieceBytes`) in the same step.
    /// A piece is stored once: a second piece under the same (task, blob, index) is refused.
    func putBlobChunk(_ chunk: StoredBlobChunk) async throws
    func blobChunks(taskID: String, blob: String) async throws -> [String]
    /// The piece kept under (task, blob, index), if any.
    func blobChunk(taskID: String, blob: String, index: Int) async throws -> StoredBlobChunk?
    /// The bytes of pieces kept for each blob of a task and for all tasks, from the running
    /// counts (no sum over the pieces). With `lock`, the counts stay locked until the
    /// transaction ends, so that a bound checked against them holds when the piece lands.
    func pieceBytes(taskID: String, lock: Bool) async throws -> StoredPieceBytes
    /// Removes one blob of a task, or (nil) all of them, and takes their bytes off the counts.
    func deleteBlobChunks(taskID: String, blob: String?) async throws
    func taskCounts() async throws -> [String: Int]
    func settledVolume() async throws -> Int64

    // Reputation history
    func insertOutcome(_ outcome: ReputationOutcome, nowMs: Int64) async throws
    /// `insertOutcome` and `updateStanding` of the outcome's peer, in one step.
    func recordOutcome(_ outcome: ReputationOutcome, nowMs: Int64, reputation: Reputation, settledJobs: Int)
        async throws
    func outcomes(of peer: PeerID, limit: Int) async throws -> [(outcome: ReputationOutcome, atMs: Int64)]

    /// Every provider that has an outcome: its successes and failures as a provider.
    func providerOutcomeCounts() async throws -> [(peer: PeerID, successes: Int, failures: Int)]

    // Flow history (the dashboard's charts)
    /// One row per state a task entered, written with the change.
    func insertTaskEvent(_ event: TaskEventRecord) async throws
    /// Events at or after `sinceMs`, oldest first.
    func taskEvents(sinceMs: Int64) async throws -> [TaskEventRecord]

    /// Runs `body` so that what it wrote is undone when it throws, while what was written
    /// before it (the nonce, say) stays in the transaction. When the transaction itself did not
    /// survive (the undo failed, or the database ended the whole transaction), it throws
    /// `TransactionAborted`: nothing of the transaction can commit.
    func savepoint<T>(_ body: () async throws -> T) async throws -> T
}

extension MarketTransaction {
    public func insertTask(_ task: MarketTask) async throws { try await insertTask(task, entering: nil) }
    public func updateTask(_ task: MarketTask) async throws { try await updateTask(task, entering: nil) }
}

/// What became of a frame's nonce and message id (`MarketTransaction.claim`).
public enum FrameClaim: Sendable, Equatable {
    /// The nonce is spent now and the message is new.
    case fresh
    /// The peer used the nonce before: a replay.
    case replayed
    /// A new nonce on a message id already answered (a resend): its stored answer.
    case answered(String)
}

/// The transaction is gone, not just one step of it: SQLite rolls a whole transaction back on
/// some errors (a full disk, an I/O error), and a savepoint whose undo fails leaves nothing to
/// commit. A group commit fails its whole batch on it.
public struct TransactionAborted: Error, CustomStringConvertible {
    public let underlying: any Error
    public init(_ underlying: any Error) { self.underlying = underlying }
    public var description: String { "the transaction was rolled back: \(underlying)" }
}

/// A task entering a state, as the flow charts count it.
public struct TaskEventRecord: Sendable, Equatable {
    public var taskID: String
    public var state: TaskState
    public var atMs: Int64
    /// When the task was posted (for the time from post to match).
    public var createdMs: Int64
    public var price: Int64?

    public init(taskID: String, state: TaskState, atMs: Int64, createdMs: Int64, price: Int64?) {
        self.taskID = taskID
        self.state = state
        self.atMs = atMs
        self.createdMs = createdMs
        self.price = price
    }
}

/// The signed frames a task keeps, so that a party who reconnects still gets them.
public struct StoredBlobChunk: Sendable {
    public var taskID: String
    public var blob: String
    public var index: Int
    public var count: Int
    public var sender: PeerID
    public var bytes: Int64
    public var frame: String

    public init(taskID: String, blob: String, index: Int, count: Int, sender: PeerID, bytes: Int64, frame: String) {
        self.taskID = taskID
        self.blob = blob
        self.index = index
        self.count = count
        self.sender = sender
        self.bytes = bytes
        self.frame = frame
    }
}

/// The bytes of blob pieces the market keeps, as its running counts hold them.
public struct StoredPieceBytes: Sendable, Equatable {
    /// One task's, by blob (`workspace`, `patch`…); a blob with nothing kept is absent.
    public var blobs: [String: Int64]
    /// Every task's.
    public var total: Int64

    public init(blobs: [String: Int64], total: Int64) {
        self.blobs = blobs
        self.total = total
    }
}

public enum TaskFrameKind: String, Sendable {
    case payload, result
}
