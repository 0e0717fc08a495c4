import Foundation
import GRDB
import MarketCore
import MarketProtocol

/// The participant's outbox: messages kept until the market answers them, across restarts.
public struct Outbox: Sendable {
    public let database: StateDatabase

    public init(database: StateDatabase) { self.database = database }

    /// Adds a message; a second add of the same id changes nothing.
    public func add(_ item: OutboxItem) throws {
        try database.pool.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO outbox (id, type, body, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)",
                arguments: [item.id, item.type.rawValue, item.body, item.createdMs, item.expiresMs])
        }
    }

    public func remove(id: String) throws {
        try database.pool.write { db in try db.execute(sql: "DELETE FROM outbox WHERE id = ?", arguments: [id]) }
    }

    /// Messages still to send, oldest first.
    public func pending() throws -> [OutboxItem] {
        try database.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM outbox ORDER BY created_ms, rowid").compactMap { row in
                guard let type = MessageType(rawValue: row["type"]) else { return nil }
                return OutboxItem(
                    id: row["id"], type: type, body: row["body"], createdMs: row["created_ms"],
                    expiresMs: row["expires_ms"])
            }
        }
    }

    /// Removes and returns the messages that expired before `nowMs`: they are never sent.
    public func removeExpired(nowMs: Int64) throws -> [OutboxItem] {
        let expired = try pending().filter { ($0.expiresMs ?? .max) < nowMs }
        for item in expired { try remove(id: item.id) }
        return expired
    }

    public func count() throws -> Int {
        try database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox") ?? 0 }
    }
}

/// A market task as this participant knows it: posted (requester) or taken (provider).
public struct LocalMarketTask: Codable, Sendable, Equatable {
    public var taskId: String
    public var role: String
    public var state: LocalTaskState
    public var counterparty: String?
    public var maxPrice: Int64
    public var price: Int64?
    public var model: String?
    public var timeoutSeconds: Int64
    public var createdMs: Int64
    public var updatedMs: Int64
    public var jobId: String?
    public var resultHash: String?
    /// The result's signature and hash were checked (requester side).
    public var resultVerified: Bool?
    public var note: String?

    public init(
        taskId: String, role: String, state: LocalTaskState, counterparty: String? = nil, maxPrice: Int64,
        price: Int64? = nil, model: String? = nil, timeoutSeconds: Int64 = 300, createdMs: Int64,
        updatedMs: Int64, jobId: String? = nil, resultHash: String? = nil, resultVerified: Bool? = nil,
        note: String? = nil
    ) {
        self.taskId = taskId
        self.role = role
        self.state = state
        self.counterparty = counterparty
        self.maxPrice = maxPrice
        self.price = price
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.createdMs = createdMs
        self.updatedMs = updatedMs
        self.jobId = jobId
        self.resultHash = resultHash
        self.resultVerified = resultVerified
        self.note = note
    }

    init(row: Row) {
        taskId = row["task_id"]
        role = row["role"]
        state = LocalTaskState(rawValue: row["state"])
        counterparty = row["counterparty"]
        maxPrice = row["max_price"]
        price = row["price"]
        model = row["model"]
        timeoutSeconds = row["timeout_seconds"]
        createdMs = row["created_ms"]
        updatedMs = row["updated_ms"]
        jobId = row["job_id"]
        resultHash = row["result_hash"]
        resultVerified = (row["result_verified"] as Int64?).map { $0 != 0 }
        note = row["note"]
    }
}

/// The tasks this participant posted or ran, with what it needs to finish them after a
/// restart: the requester's own prompt (to seal again for a new provider) and the signed result.
public struct MarketTaskStore: Sendable {
    public let database: StateDatabase

    public init(database: StateDatabase) { self.database = database }

    public func insert(_ task: LocalMarketTask, prompt: Data?) throws {
        try database.pool.write { db in
            try db.execute(
                sql: """
                    INSERT OR IGNORE INTO market_tasks (task_id, role, state, counterparty, max_price, price, model,
                        timeout_seconds, created_ms, updated_ms, prompt, job_id, note)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    task.taskId, task.role, task.state.rawValue, task.counterparty, task.maxPrice, task.price,
                    task.model,
                    task.timeoutSeconds, task.createdMs, task.updatedMs, prompt, task.jobId, task.note,
                ])
        }
    }

    /// Updates what is given; the rest stays.
    public func update(
        _ taskId: String, state: LocalTaskState? = nil, counterparty: String? = nil, price: Int64? = nil,
        jobId: String? = nil, note: String? = nil, at nowMs: Int64
    ) throws {
        try database.pool.write { db in
            try db.execute(
                sql: """
                    UPDATE market_tasks SET state = coalesce(?, state), counterparty = coalesce(?, counterparty),
                        price = coalesce(?, price), job_id = coalesce(?, job_id), note = coalesce(?, note),
                        updated_ms = ?
                    WHERE task_id = ?
                    """,
                arguments: [state?.rawValue, counterparty, price, jobId, note, nowMs, taskId])
        }
    }

    /// Keeps the result frame as received (signed, sealed) and whether it checked out.
    public func storeResult(_ taskId: String, frame: String, hash: String, verified: Bool, at nowMs: Int64) throws {
        try database.pool.write { db in
            try db.execute(
                sql: """
                    UPDATE market_tasks SET result_frame = ?, result_hash = ?, result_verified = ?, updated_ms = ?
                    WHERE task_id = ?
                    """,
                arguments: [frame, hash, verified, nowMs, taskId])
        }
    }

    public func task(_ taskId: String) throws -> LocalMarketTask? {
        try database.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM market_tasks WHERE task_id = ?", arguments: [taskId])
                .map(LocalMarketTask.init(row:))
        }
    }

    public func prompt(_ taskId: String) throws -> Data? {
        try database.pool.read { db in
            try Data.fetchOne(db, sql: "SELECT prompt FROM market_tasks WHERE task_id = ?", arguments: [taskId])
        }
    }

    public func resultFrame(_ taskId: String) throws -> String? {
        try database.pool.read { db in
            try String.fetchOne(
                db, sql: "SELECT result_frame FROM market_tasks WHERE task_id = ?", arguments: [taskId])
        }
    }

    /// Newest first, optionally of one role and state.
    public func tasks(role: String? = nil, state: LocalTaskState? = nil, limit: Int = 200) throws -> [LocalMarketTask] {
        try database.pool.read { db in
            var clauses: [String] = []
            var arguments: StatementArguments = []
            if let role {
                clauses.append("role = ?")
                arguments += [role]
            }
            if let state {
                clauses.append("state = ?")
                arguments += [state.rawValue]
            }
            let condition = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
            arguments += [limit]
            return try Row.fetchAll(
                db, sql: "SELECT * FROM market_tasks \(condition) ORDER BY created_ms DESC, rowid DESC LIMIT ?",
                arguments: arguments
            ).map(LocalMarketTask.init(row:))
        }
    }
}

extension AuditLog {
    /// The signed head, `seq:hash:signature`, as it travels with heartbeats; nil for an empty
    /// log or one whose head is not signed yet.
    public static func signedHead(_ db: Database) throws -> String? {
        guard let head = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [headKey]),
            let signature = try String.fetchOne(
                db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [headSignatureKey])
        else { return nil }
        return "\(head):\(signature)"
    }

    /// Whether the chain still holds the entry a witnessed head named (`seq:hash[:sig]`): a log
    /// whose anchored entries were deleted or rewritten does not, whoever holds the key file.
    public static func extends(_ db: Database, anchor: String) throws -> (ok: Bool, reason: String?) {
        let parts = anchor.split(separator: ":")
        guard parts.count >= 2, let seq = Int64(parts[0]) else {
            return (false, "the market's anchor '\(anchor.prefix(80))' is not seq:hash")
        }
        let hash = String(parts[1])
        guard let stored = try String.fetchOne(db, sql: "SELECT hash FROM audit WHERE seq = ?", arguments: [seq])
        else {
            return (false, "entry \(seq), which the market witnessed, is missing (entries removed)")
        }
        guard stored == hash else {
            return (false, "entry \(seq) differs from the one the market witnessed (entries rewritten)")
        }
        return (true, nil)
    }
}

extension StateDatabase {
    public func signedAuditHead() throws -> String? { try pool.read { try AuditLog.signedHead($0) } }

    public func auditExtends(anchor: String) throws -> (ok: Bool, reason: String?) {
        try pool.read { try AuditLog.extends($0, anchor: anchor) }
    }
}

/// The provider's standing offer as it last advertised it: `provide` advertises it again on
/// every connection, so the offer stays live across reconnects and restarts.
public struct OfferStore: Sendable {
    public let database: StateDatabase
    static let key = "market.offer"

    public init(database: StateDatabase) { self.database = database }

    public func save(_ offer: AdvertiseBody) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = String(decoding: try encoder.encode(offer), as: UTF8.self)
        try database.pool.write { db in
            try db.execute(
                sql:
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                arguments: [Self.key, text])
        }
    }

    public func load() throws -> AdvertiseBody? {
        try database.pool.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [Self.key])
        }.flatMap { try? JSONDecoder().decode(AdvertiseBody.self, from: Data($0.utf8)) }
    }

    public func clear() throws {
        try database.pool.write { db in try db.execute(sql: "DELETE FROM meta WHERE key = ?", arguments: [Self.key]) }
    }
}
