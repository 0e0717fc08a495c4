import Foundation
import GRDB
import MarketCore

/// The embedded market store: one SQLite file in WAL mode. Writers take the lock up front
/// (`BEGIN IMMEDIATE`), so `market verify` or `market mint` from another process can run beside
/// `market serve` safely.
public final class SQLiteMarketStore: MarketStore {
    public let pool: DatabasePool
    public var backendName: String { "sqlite" }

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(15)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            // Statement journals (a savepoint's undo) in memory, not a temporary file each.
            try db.execute(sql: "PRAGMA temp_store = MEMORY")
        }
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(
            at: url.deletingLastPathComponent(), withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        let previousMask = umask(0o077)
        defer { umask(previousMask) }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

    public func write<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await pool.writeWithoutTransaction { db in try Self.transaction(db, body) }
    }

    /// The synchronous form, for commands that are not async.
    public func writeNow<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) throws -> T
    {
        try pool.writeWithoutTransaction { db in try Self.transaction(db, body) }
    }

    public func read<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await pool.read { db in
            let tx = Unchecked(SQLiteMarketTransaction(db: db))
            return try InlineTaskExecutor.run { try await body(tx.value) }
        }
    }

    /// `body` in one immediate transaction, run to its end on this (GRDB's writer) thread.
    private static func transaction<T: Sendable>(
        _ db: Database, _ body: @escaping @Sendable (any MarketTransaction) async throws -> T
    ) throws -> T {
        var result: T?
        try db.inTransaction(.immediate) {
            let tx = Unchecked(SQLiteMarketTransaction(db: db))
            result = try InlineTaskExecutor.run { try await body(tx.value) }
            return .commit
        }
        return result!
    }

    public func close() async throws {
        try pool.close()
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-market") { db in
            try db.execute(sql: MarketSchema.sqlite)
        }
        migrator.registerMigration("v2-task-events") { db in
            try db.execute(sql: MarketSchema.sqliteTaskEvents)
        }
        migrator.registerMigration("v3-workspaces") { db in
            try db.execute(sql: MarketSchema.sqliteWorkspaces)
        }
        migrator.registerMigration("v4-capacity") { db in
            try db.execute(sql: MarketSchema.sqliteCapacity)
        }
        migrator.registerMigration("v5-task-columns") { db in
            try db.execute(sql: MarketSchema.sqliteTaskColumns)
        }
        return migrator
    }
}

/// A value handed to a task that runs on the thread it was made on (`InlineTaskExecutor`):
/// GRDB's `Database` is not `Sendable`, and needs not be here.
struct Unchecked<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// The schema, shared in shape by both backends (types differ).
enum MarketSchema {
    static let sqliteCapacity = """
        ALTER TABLE offers ADD COLUMN paused_until INTEGER;
        ALTER TABLE offers ADD COLUMN paused_for TEXT;
        ALTER TABLE peers ADD COLUMN hand_backs INTEGER NOT NULL DEFAULT 0;
        """

    /// The task's fields as columns (`TaskRow`), filled from the JSON document each row kept
    /// until now, which then goes.
    static let sqliteTaskColumns = """
        ALTER TABLE tasks ADD COLUMN max_price INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN cap INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN min_reputation REAL NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN model TEXT;
        ALTER TABLE tasks ADD COLUMN timeout_seconds INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN rejections INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN faults INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN excluded TEXT NOT NULL DEFAULT '';
        ALTER TABLE tasks ADD COLUMN result_hash TEXT;
        ALTER TABLE tasks ADD COLUMN reason TEXT;
        ALTER TABLE tasks ADD COLUMN dispute TEXT;
        ALTER TABLE tasks ADD COLUMN ws_bytes INTEGER;
        ALTER TABLE tasks ADD COLUMN ws_files INTEGER;
        ALTER TABLE tasks ADD COLUMN ws_archive_bytes INTEGER;
        ALTER TABLE tasks ADD COLUMN conversation_bytes INTEGER;
        UPDATE tasks SET
            max_price = json_extract(data, '$.maxPrice.micro'), cap = json_extract(data, '$.cap.micro'),
            min_reputation = json_extract(data, '$.minReputation'), model = json_extract(data, '$.model'),
            timeout_seconds = json_extract(data, '$.timeoutSeconds'), updated = json_extract(data, '$.updatedMs'),
            rejections = json_extract(data, '$.rejections'), faults = json_extract(data, '$.faults'),
            excluded = coalesce(
                (SELECT group_concat(value, ',') FROM (SELECT value FROM json_each(data, '$.excluded') ORDER BY key)), ''),
            result_hash = json_extract(data, '$.resultHash'), reason = json_extract(data, '$.reason'),
            dispute = json_extract(data, '$.dispute'), ws_bytes = json_extract(data, '$.workspaceBytes'),
            ws_files = json_extract(data, '$.workspaceFiles'),
            ws_archive_bytes = json_extract(data, '$.workspaceArchiveBytes'),
            conversation_bytes = json_extract(data, '$.conversationBytes');
        ALTER TABLE tasks DROP COLUMN data;
        """

    static let sqliteWorkspaces = """
        ALTER TABLE offers ADD COLUMN max_ws_bytes INTEGER;
        ALTER TABLE offers ADD COLUMN max_ws_files INTEGER;
        CREATE TABLE blob_chunks (
            task_id TEXT NOT NULL,
            blob TEXT NOT NULL,
            idx INTEGER NOT NULL,
            count INTEGER NOT NULL,
            sender TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            frame TEXT NOT NULL,
            PRIMARY KEY (task_id, blob, idx)
        ) WITHOUT ROWID;
        CREATE INDEX blob_chunks_sender ON blob_chunks(sender);
        """

    static let sqliteTaskEvents = """
        CREATE TABLE task_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL,
            state TEXT NOT NULL,
            at INTEGER NOT NULL,
            created INTEGER NOT NULL,
            price INTEGER
        );
        CREATE INDEX task_events_at ON task_events(at);
        """

    static let sqlite = """
        CREATE TABLE peers (
            id TEXT PRIMARY KEY NOT NULL,
            key_document TEXT NOT NULL,
            first_seen INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            audit_head TEXT,
            rep_s REAL NOT NULL DEFAULT 0,
            rep_f REAL NOT NULL DEFAULT 0,
            rep_n INTEGER NOT NULL DEFAULT 0,
            rep_at INTEGER NOT NULL DEFAULT 0,
            settled_jobs INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE accounts (
            name TEXT PRIMARY KEY NOT NULL,
            balance INTEGER NOT NULL,
            CHECK (balance >= 0 OR name = 'mint')
        );
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            debit TEXT NOT NULL,
            credit TEXT NOT NULL,
            amount INTEGER NOT NULL CHECK (amount > 0),
            kind TEXT NOT NULL,
            task_id TEXT,
            memo TEXT,
            CHECK (debit <> credit)
        );
        CREATE INDEX ledger_debit ON ledger(debit);
        CREATE INDEX ledger_credit ON ledger(credit);
        CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
        CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
        CREATE TABLE offers (
            provider TEXT PRIMARY KEY NOT NULL,
            price INTEGER NOT NULL,
            slots INTEGER NOT NULL,
            models TEXT NOT NULL,
            min_requester_rep REAL NOT NULL,
            created INTEGER NOT NULL
        );
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY NOT NULL,
            requester TEXT NOT NULL,
            provider TEXT,
            state TEXT NOT NULL,
            deadline INTEGER,
            created INTEGER NOT NULL,
            price INTEGER,
            data TEXT NOT NULL,
            payload TEXT,
            result TEXT
        );
        CREATE INDEX tasks_state ON tasks(state, created);
        CREATE INDEX tasks_provider ON tasks(provider, state);
        CREATE INDEX tasks_requester ON tasks(requester, state);
        CREATE INDEX tasks_deadline ON tasks(deadline) WHERE deadline IS NOT NULL;
        CREATE TABLE outcomes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            peer TEXT NOT NULL,
            task_id TEXT NOT NULL,
            role TEXT NOT NULL,
            success INTEGER NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX outcomes_peer ON outcomes(peer, id);
        CREATE TABLE nonces (
            peer TEXT NOT NULL,
            nonce TEXT NOT NULL,
            expires INTEGER NOT NULL,
            PRIMARY KEY (peer, nonce)
        ) WITHOUT ROWID;
        CREATE INDEX nonces_expires ON nonces(expires);
        CREATE TABLE messages (
            peer TEXT NOT NULL,
            id TEXT NOT NULL,
            result TEXT NOT NULL,
            at INTEGER NOT NULL,
            PRIMARY KEY (peer, id)
        ) WITHOUT ROWID;
        CREATE INDEX messages_at ON messages(at);
        """
}

/// An offer's models as one column: the names joined by commas.
enum OfferModels {
    static func models(_ list: [String]) -> String { list.joined(separator: ",") }
    static func models(_ text: String) -> [String] { text.split(separator: ",").map(String.init) }
}

extension TaskRow.Value {
    var databaseValue: DatabaseValue {
        switch self {
        case .text(let text): text.databaseValue
        case .integer(let value): value.databaseValue
        case .real(let value): value.databaseValue
        case .null: .null
        }
    }
}

extension TaskRow {
    static let sqliteInsert = insert { _ in "?" }
    static let sqliteUpdate = update { _ in "?" }

    /// The task of a row selected with `selectSQL`, its columns read by position.
    static func task(_ row: Row) throws -> MarketTask {
        try task(
            (
                row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11],
                row[12], row[13], row[14], row[15], row[16], row[17], row[18], row[19], row[20], row[21], row[22]
            ))
    }
}

struct SQLiteMarketTransaction: MarketTransaction {
    let db: Database

    func peer(_ id: PeerID) async throws -> PeerRecord? {
        try Row.fetchOne(db, cachedSQL: "SELECT * FROM peers WHERE id = ?", arguments: [id.rawValue]).map { row in
            PeerRecord(
                id: id, keyDocument: row["key_document"], firstSeenMs: row["first_seen"], lastSeenMs: row["last_seen"],
                auditHead: row["audit_head"],
                reputation: Reputation(
                    successes: row["rep_s"], failures: row["rep_f"], samples: row["rep_n"], atMs: row["rep_at"]),
                settledJobs: row["settled_jobs"], handBacks: row["hand_backs"])
        }
    }

    func countHandBack(of provider: PeerID) async throws {
        try db.execute(
            cachedSQL: "UPDATE peers SET hand_backs = hand_backs + 1 WHERE id = ?", arguments: [provider.rawValue])
    }

    func upsertPeer(_ id: PeerID, keyDocument: String, nowMs: Int64) async throws {
        try db.execute(
            cachedSQL: """
                INSERT INTO peers (id, key_document, first_seen, last_seen) VALUES (?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET key_document = excluded.key_document, last_seen = excluded.last_seen
                """, arguments: [id.rawValue, keyDocument, nowMs, nowMs])
    }

    func touchPeer(_ id: PeerID, nowMs: Int64, auditHead: String?) async throws {
        try db.execute(
            cachedSQL: "UPDATE peers SET last_seen = ?, audit_head = coalesce(?, audit_head) WHERE id = ?",
            arguments: [nowMs, auditHead, id.rawValue])
    }

    func updateStanding(_ id: PeerID, reputation: Reputation, settledJobs: Int) async throws {
        try db.execute(
            cachedSQL: "UPDATE peers SET rep_s = ?, rep_f = ?, rep_n = ?, rep_at = ?, settled_jobs = ? WHERE id = ?",
            arguments: [
                reputation.successes, reputation.failures, reputation.samples, reputation.atMs, settledJobs,
                id.rawValue,
            ])
    }

    func peerCount() async throws -> Int {
        try Int.fetchOne(db, cachedSQL: "SELECT count(*) FROM peers") ?? 0
    }

    func silentProviders(lastSeenBefore cutoffMs: Int64) async throws -> [PeerID] {
        try String.fetchAll(
            db,
            cachedSQL: """
                SELECT id FROM peers WHERE last_seen < ? AND (
                    id IN (SELECT provider FROM offers)
                    OR id IN (SELECT provider FROM tasks WHERE state IN ('assigned', 'running')))
                """, arguments: [cutoffMs]
        ).compactMap { try? PeerID(validating: $0) }
    }

    func insertNonce(peer: String, nonce: String, expiresMs: Int64) async throws -> Bool {
        try db.execute(
            cachedSQL: """
                INSERT INTO nonces (peer, nonce, expires) VALUES (?, ?, ?)
                ON CONFLICT(peer, nonce) DO NOTHING
                """, arguments: [peer, nonce, expiresMs])
        return db.changesCount == 1
    }

    func nonceCount() async throws -> Int {
        try Int.fetchOne(db, cachedSQL: "SELECT count(*) FROM nonces") ?? 0
    }

    func purgeNonces(expiredBefore nowMs: Int64) async throws -> Int {
        try db.execute(cachedSQL: "DELETE FROM nonces WHERE expires < ?", arguments: [nowMs])
        return db.changesCount
    }

    func messageResult(peer: PeerID, id: String) async throws -> String? {
        try String.fetchOne(
            db, cachedSQL: "SELECT result FROM messages WHERE peer = ? AND id = ?", arguments: [peer.rawValue, id])
    }

    func recordMessage(peer: PeerID, id: String, result: String, nowMs: Int64) async throws {
        try db.execute(
            cachedSQL: "INSERT INTO messages (peer, id, result, at) VALUES (?, ?, ?, ?)",
            arguments: [peer.rawValue, id, result, nowMs])
    }

    func purgeMessages(before cutoffMs: Int64) async throws {
        try db.execute(cachedSQL: "DELETE FROM messages WHERE at < ?", arguments: [cutoffMs])
    }

    func balance(_ account: Account) async throws -> Credits {
        Credits(
            micro: try Int64.fetchOne(
                db, cachedSQL: "SELECT balance FROM accounts WHERE name = ?", arguments: [account.description])
                ?? 0)
    }

    func insertMovement(_ movement: Movement, nowMs: Int64) async throws {
        let debit = movement.from.description
        let credit = movement.to.description
        let amount = movement.amount.micro
        guard amount > 0 else {
            throw MarketError(.invalidAmount, "a ledger movement must be positive, not \(movement.amount)")
        }
        let from = try await balance(movement.from).micro
        let to = try await balance(movement.to).micro
        let (newFrom, overflowFrom) = from.subtractingReportingOverflow(amount)
        let (newTo, overflowTo) = to.addingReportingOverflow(amount)
        guard !overflowFrom, !overflowTo else {
            throw MarketError(.invalidAmount, "moving \(movement.amount) overflows an account")
        }
        if newFrom < 0, !movement.from.mayGoNegative {
            throw MarketError(
                .insufficientFunds, "\(debit) holds \(Credits(micro: from)), less than \(movement.amount)")
        }
        try db.execute(
            cachedSQL:
                "INSERT INTO ledger (at, debit, credit, amount, kind, task_id, memo) VALUES (?, ?, ?, ?, ?, ?, ?)",
            arguments: [nowMs, debit, credit, amount, movement.kind.rawValue, movement.taskID, movement.memo])
        let upsert = """
            INSERT INTO accounts (name, balance) VALUES (?, ?)
            ON CONFLICT(name) DO UPDATE SET balance = excluded.balance
            """
        try db.execute(cachedSQL: upsert, arguments: [debit, newFrom])
        try db.execute(cachedSQL: upsert, arguments: [credit, newTo])
    }

    func allMovements() async throws -> [(id: Int64, from: String, to: String, amountMicro: Int64)] {
        try Row.fetchAll(db, cachedSQL: "SELECT id, debit, credit, amount FROM ledger ORDER BY id").map {
            (id: $0["id"], from: $0["debit"], to: $0["credit"], amountMicro: $0["amount"])
        }
    }

    func allBalances() async throws -> [String: Int64] {
        var balances: [String: Int64] = [:]
        for row in try Row.fetchAll(db, cachedSQL: "SELECT name, balance FROM accounts") {
            balances[row["name"]] = row["balance"]
        }
        return balances
    }

    func movements(account: String, limit: Int) async throws -> [Movement] {
        try Row.fetchAll(
            db,
            cachedSQL: "SELECT * FROM ledger WHERE debit = ? OR credit = ? ORDER BY id DESC LIMIT ?",
            arguments: [account, account, limit]
        ).compactMap { row in
            guard let from = Account(row["debit"]), let to = Account(row["credit"]),
                let kind = MovementKind(rawValue: row["kind"])
            else { return nil }
            return Movement(
                from: from, to: to, amount: Credits(micro: row["amount"]), kind: kind, taskID: row["task_id"],
                memo: row["memo"])
        }
    }

    func offer(of provider: PeerID) async throws -> Offer? {
        try Row.fetchOne(db, cachedSQL: "SELECT * FROM offers WHERE provider = ?", arguments: [provider.rawValue]).map(
            Self.offer)
    }

    func offers() async throws -> [Offer] {
        try Row.fetchAll(db, cachedSQL: "SELECT * FROM offers ORDER BY price, created").map(Self.offer)
    }

    static func offer(_ row: Row) -> Offer {
        Offer(
            provider: try! PeerID(validating: row["provider"]), price: Credits(micro: row["price"]),
            slots: row["slots"], models: OfferModels.models(row["models"] as String),
            minRequesterReputation: row["min_requester_rep"], createdMs: row["created"],
            maxWorkspaceBytes: row["max_ws_bytes"], maxWorkspaceFiles: row["max_ws_files"],
            pausedUntilMs: row["paused_until"], pausedFor: row["paused_for"])
    }

    func offerCandidates(maxPrice: Credits?, provider: PeerID?, lock: Bool) async throws -> [(
        offer: Offer, busySlots: Int, reputation: Reputation
    )] {
        try Row.fetchAll(
            db,
            cachedSQL: """
                SELECT o.*, p.rep_s, p.rep_f, p.rep_n, p.rep_at,
                    (SELECT count(*) FROM tasks t WHERE t.provider = o.provider AND t.state IN ('assigned', 'running')) AS busy
                FROM offers o LEFT JOIN peers p ON p.id = o.provider
                WHERE o.price <= ? AND (? IS NULL OR o.provider = ?)
                """,
            arguments: [maxPrice?.micro ?? Int64.max, provider?.rawValue, provider?.rawValue]
        ).map { row in
            (
                Self.offer(row), row["busy"],
                Reputation(
                    successes: row["rep_s"] ?? 0, failures: row["rep_f"] ?? 0, samples: row["rep_n"] ?? 0,
                    atMs: row["rep_at"] ?? 0)
            )
        }
    }

    func putOffer(_ offer: Offer) async throws {
        try db.execute(
            cachedSQL: """
                INSERT INTO offers (provider, price, slots, models, min_requester_rep, created, max_ws_bytes, max_ws_files,
                    paused_until, paused_for)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(provider) DO UPDATE SET price = excluded.price, slots = excluded.slots,
                    models = excluded.models, min_requester_rep = excluded.min_requester_rep,
                    max_ws_bytes = excluded.max_ws_bytes, max_ws_files = excluded.max_ws_files,
                    paused_until = excluded.paused_until, paused_for = excluded.paused_for
                """,
            arguments: [
                offer.provider.rawValue, offer.price.micro, offer.slots, OfferModels.models(offer.models),
                offer.minRequesterReputation, offer.createdMs, offer.maxWorkspaceBytes, offer.maxWorkspaceFiles,
                offer.pausedUntilMs, offer.pausedFor,
            ])
    }

    func deleteOffer(of provider: PeerID) async throws -> Bool {
        try db.execute(cachedSQL: "DELETE FROM offers WHERE provider = ?", arguments: [provider.rawValue])
        return db.changesCount > 0
    }

    func busySlots(of provider: PeerID) async throws -> Int {
        try Int.fetchOne(
            db, cachedSQL: "SELECT count(*) FROM tasks WHERE provider = ? AND state IN ('assigned', 'running')",
            arguments: [provider.rawValue]) ?? 0
    }

    func task(_ id: String, lock: Bool) async throws -> MarketTask? {
        try Row.fetchOne(db, cachedSQL: TaskRow.selectSQL + " WHERE id = ?", arguments: [id]).map(TaskRow.task)
    }

    func insertTask(_ task: MarketTask) async throws {
        do {
            try db.execute(
                cachedSQL: TaskRow.sqliteInsert,
                arguments: StatementArguments(TaskRow.values(of: task).map(\.databaseValue)))
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY {
            throw MarketError(.duplicateTask, "task \(task.id) already exists: choose a new taskId")
        }
    }

    func updateTask(_ task: MarketTask) async throws {
        try db.execute(
            cachedSQL: TaskRow.sqliteUpdate,
            arguments: StatementArguments(TaskRow.updateValues(of: task).map(\.databaseValue)))
    }

    func tasks(state: TaskState?, limit: Int) async throws -> [MarketTask] {
        let limit = min(limit, Int(Int32.max))
        if let state {
            return try Row.fetchAll(
                db, cachedSQL: TaskRow.selectSQL + " WHERE state = ? ORDER BY created LIMIT ?",
                arguments: [state.rawValue, limit]
            ).map(TaskRow.task)
        }
        return try Row.fetchAll(
            db, cachedSQL: TaskRow.selectSQL + " ORDER BY created DESC LIMIT ?", arguments: [limit]
        )
        .map(TaskRow.task)
    }

    func tasks(of peer: PeerID, states: [TaskState]) async throws -> [MarketTask] {
        let marks = states.map { _ in "?" }.joined(separator: ",")
        var arguments: StatementArguments = [peer.rawValue, peer.rawValue]
        for state in states { _ = arguments.append(contentsOf: [state.rawValue]) }
        return try Row.fetchAll(
            db,
            cachedSQL:
                TaskRow.selectSQL + " WHERE (provider = ? OR requester = ?) AND state IN (\(marks)) ORDER BY created",
            arguments: arguments
        ).map(TaskRow.task)
    }

    func tasksDue(nowMs: Int64, limit: Int) async throws -> [String] {
        try String.fetchAll(
            db,
            cachedSQL: "SELECT id FROM tasks WHERE deadline IS NOT NULL AND deadline <= ? ORDER BY deadline LIMIT ?",
            arguments: [nowMs, limit])
    }

    func setFrame(taskID: String, kind: TaskFrameKind, frame: String?) async throws {
        try db.execute(cachedSQL: "UPDATE tasks SET \(kind.rawValue) = ? WHERE id = ?", arguments: [frame, taskID])
    }

    func frame(taskID: String, kind: TaskFrameKind) async throws -> String? {
        try String.fetchOne(db, cachedSQL: "SELECT \(kind.rawValue) FROM tasks WHERE id = ?", arguments: [taskID])
    }

    func putBlobChunk(_ chunk: StoredBlobChunk) async throws {
        try db.execute(
            cachedSQL: """
                INSERT INTO blob_chunks (task_id, blob, idx, count, sender, bytes, frame) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(task_id, blob, idx) DO UPDATE SET count = excluded.count, sender = excluded.sender,
                    bytes = excluded.bytes, frame = excluded.frame
                """,
            arguments: [
                chunk.taskID, chunk.blob, chunk.index, chunk.count, chunk.sender.rawValue, chunk.bytes, chunk.frame,
            ])
    }

    func blobChunks(taskID: String, blob: String) async throws -> [String] {
        try String.fetchAll(
            db, cachedSQL: "SELECT frame FROM blob_chunks WHERE task_id = ? AND blob = ? ORDER BY idx",
            arguments: [taskID, blob])
    }

    func blobBytes(taskID: String, blob: String, except index: Int) async throws -> Int64 {
        try Int64.fetchOne(
            db,
            cachedSQL: "SELECT coalesce(sum(bytes), 0) FROM blob_chunks WHERE task_id = ? AND blob = ? AND idx <> ?",
            arguments: [taskID, blob, index]) ?? 0
    }

    func blobBytes(sender: PeerID) async throws -> Int64 {
        try Int64.fetchOne(
            db, cachedSQL: "SELECT coalesce(sum(bytes), 0) FROM blob_chunks WHERE sender = ?",
            arguments: [sender.rawValue])
            ?? 0
    }

    func deleteBlobChunks(taskID: String, blob: String?) async throws {
        try db.execute(
            cachedSQL: "DELETE FROM blob_chunks WHERE task_id = ? AND (? IS NULL OR blob = ?)",
            arguments: [taskID, blob, blob])
    }

    func taskCounts() async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try Row.fetchAll(db, cachedSQL: "SELECT state, count(*) AS n FROM tasks GROUP BY state") {
            counts[row["state"]] = row["n"]
        }
        return counts
    }

    func settledVolume() async throws -> Int64 {
        try Int64.fetchOne(db, cachedSQL: "SELECT coalesce(sum(price), 0) FROM tasks WHERE state = 'settled'") ?? 0
    }

    func insertOutcome(_ outcome: ReputationOutcome, nowMs: Int64) async throws {
        try db.execute(
            cachedSQL: "INSERT INTO outcomes (peer, task_id, role, success, at) VALUES (?, ?, ?, ?, ?)",
            arguments: [outcome.peer.rawValue, outcome.taskID, outcome.role, outcome.success, nowMs])
    }

    func outcomes(of peer: PeerID, limit: Int) async throws -> [(outcome: ReputationOutcome, atMs: Int64)] {
        try Row.fetchAll(
            db, cachedSQL: "SELECT * FROM outcomes WHERE peer = ? ORDER BY id DESC LIMIT ?",
            arguments: [peer.rawValue, limit]
        ).map { row in
            (
                ReputationOutcome(peer: peer, success: row["success"], taskID: row["task_id"], role: row["role"]),
                row["at"]
            )
        }
    }

    func providerOutcomeCounts() async throws -> [(peer: PeerID, successes: Int, failures: Int)] {
        try Row.fetchAll(
            db,
            cachedSQL: """
                SELECT peer, SUM(CASE WHEN success THEN 1 ELSE 0 END) AS s, SUM(CASE WHEN success THEN 0 ELSE 1 END) AS f
                FROM outcomes WHERE role = 'provider' GROUP BY peer
                """
        ).compactMap { row in
            guard let peer = try? PeerID(validating: row["peer"]) else { return nil }
            return (peer, row["s"], row["f"])
        }
    }

    func insertTaskEvent(_ event: TaskEventRecord) async throws {
        try db.execute(
            cachedSQL: "INSERT INTO task_events (task_id, state, at, created, price) VALUES (?, ?, ?, ?, ?)",
            arguments: [event.taskID, event.state.rawValue, event.atMs, event.createdMs, event.price])
    }

    func taskEvents(sinceMs: Int64) async throws -> [TaskEventRecord] {
        try Row.fetchAll(
            db, cachedSQL: "SELECT * FROM task_events WHERE at >= ? ORDER BY at, id", arguments: [sinceMs]
        ).compactMap { row in
            guard let state = TaskState(rawValue: row["state"]) else { return nil }
            return TaskEventRecord(
                taskID: row["task_id"], state: state, atMs: row["at"], createdMs: row["created"], price: row["price"])
        }
    }

    func savepoint<T>(_ body: () async throws -> T) async throws -> T {
        try db.execute(cachedSQL: "SAVEPOINT step")
        do {
            let result = try await body()
            try db.execute(cachedSQL: "RELEASE SAVEPOINT step")
            return result
        } catch {
            // SQLite ends the whole transaction on some errors (a full disk, an I/O error).
            guard db.isInsideTransaction else { throw TransactionAborted(error) }
            do {
                try db.execute(cachedSQL: "ROLLBACK TO SAVEPOINT step")
                try db.execute(cachedSQL: "RELEASE SAVEPOINT step")
            } catch { throw TransactionAborted(error) }
            throw error
        }
    }
}
