import Foundation
import Logging
import MarketCore
import NIOCore
import PostgresNIO
import Synchronization

/// The market's books on PostgreSQL, for several `market serve` processes on one database.
///
/// Connections come from postgres-nio's own pool (`PostgresClient`), which replaces a connection
/// that closed (PostgreSQL restarted, the network dropped it). A transaction holds one connection
/// from BEGIN to COMMIT and runs on that connection's event loop (`EventLoopTaskExecutor`): each
/// statement is a suspension of the transaction, never a thread blocked on an answer, and every
/// statement is a named prepared statement of its connection (`PreparedStatements`). Rows that
/// decide a race are locked (`SELECT … FOR UPDATE`), so exactly one of two instances wins a task;
/// a deadlock or serialization failure is retried from the start.
public final class PostgresMarketStore: MarketStore, MarketRelay {
    public var backendName: String { "postgres" }
    let client: PostgresClient
    /// `client.run()`, for as long as the store is open.
    private let running: Task<Void, Never>
    let size: Int
    let logger: Logger
    let configuration: PostgresConnection.Configuration
    /// The connection that LISTENs for messages to peers connected here (replaced likewise).
    private let listener: Mutex<PostgresConnection>
    /// How long one transaction may take before its connection is closed: a connection whose
    /// server stopped answering must not hold a frame (and its row locks) forever.
    static let transactionTimeout = TimeAmount.seconds(30)

    init(
        client: PostgresClient, size: Int, listener: PostgresConnection,
        configuration: PostgresConnection.Configuration, logger: Logger
    ) {
        self.client = client
        self.running = Task { await client.run() }
        self.size = size
        self.listener = Mutex(listener)
        self.configuration = configuration
        self.logger = logger
    }

    /// Write transactions at once for a group commit: the pool, but two connections for reads.
    public var writeConcurrency: Int { max(1, size - 2) }
    /// A frame a transaction: measured, batching gained nothing here (what costs is a statement's
    /// round trip, not a commit), and a batch would hold its rows' locks across many frames.
    public var groupCommitDefaults: GroupCommit.Limits { GroupCommit.Limits(maxWrites: 1) }

    /// Opens a pool of `size` connections (plus one listener) and creates the schema when missing.
    public static func connect(url: String, size: Int = 8, logger: Logger) async throws -> PostgresMarketStore {
        let configuration = try configuration(from: url)
        let listener: PostgresConnection
        do {
            listener = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        } catch {
            throw MarketError(
                .unavailable,
                "cannot connect to PostgreSQL at \(MarketDatabaseLocation.postgres(url: url)): \(String(reflecting: error))"
            )
        }
        var options = PostgresClient.Configuration(
            host: configuration.host ?? "localhost", port: configuration.port ?? 5432,
            username: configuration.username, password: configuration.password, database: configuration.database,
            tls: .disable)
        options.options.minimumConnections = size
        options.options.maximumConnections = size
        let store = PostgresMarketStore(
            client: PostgresClient(configuration: options, backgroundLogger: logger), size: size, listener: listener,
            configuration: configuration, logger: logger)
        do { try await store.migrate() } catch {
            try? await store.close()
            throw error
        }
        return store
    }

    static func configuration(from url: String) throws -> PostgresConnection.Configuration {
        guard let components = URLComponents(string: url), let host = components.host else {
            throw MarketError(
                .invalidBody, "'\(MarketDatabaseLocation.postgres(url: url))' is not postgres://USER@HOST:PORT/DATABASE"
            )
        }
        let database = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        return PostgresConnection.Configuration(
            host: host, port: components.port ?? 5432, username: components.user ?? "postgres",
            password: components.password, database: database.isEmpty ? nil : database, tls: .disable)
    }

    /// On the listener's connection, before any transaction: one migrator at a time across
    /// instances, and nothing prepared (each statement runs once).
    func migrate() async throws {
        let connection = listener.withLock { $0 }
        _ = try await connection.query("SELECT pg_advisory_lock(734205)", logger: logger).get()
        do {
            for statement in MarketSchema.postgres {
                _ = try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger).get()
            }
        } catch {
            _ = try? await connection.query("SELECT pg_advisory_unlock(734205)", logger: logger).get()
            throw error
        }
        _ = try await connection.query("SELECT pg_advisory_unlock(734205)", logger: logger).get()
    }

    public func write<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await transaction(body)
    }

    public func read<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await transaction(body)
    }

    private func transaction<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T)
        async throws -> T
    {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await client.withConnection { [logger] connection in
                    try await withTaskExecutorPreference(EventLoopTaskExecutor(connection.eventLoop)) {
                        try await Self.transaction(body, on: connection, logger: logger)
                    }
                }
            } catch  where attempt < 8 && PostgresMarketTransaction.isTransient(error) {
                continue
            }
        }
    }

    /// BEGIN, `body`, COMMIT on `connection`; ROLLBACK when anything throws. A transaction that
    /// outlives `transactionTimeout` loses its connection, which fails what it waits for.
    private static func transaction<T: Sendable>(
        _ body: @Sendable (any MarketTransaction) async throws -> T, on connection: PostgresConnection, logger: Logger
    ) async throws -> T {
        let watchdog = connection.eventLoop.scheduleTask(in: transactionTimeout) {
            let _: EventLoopFuture<Void> = connection.close()
        }
        defer { watchdog.cancel() }
        let tx = PostgresMarketTransaction(connection: connection, logger: logger)
        do {
            try await tx.run("BEGIN")
            let result = try await body(tx)
            try await tx.run("COMMIT")
            return result
        } catch {
            if !connection.isClosed { _ = try? await tx.run("ROLLBACK") }
            if connection.isClosed, !(error is MarketError) {
                throw MarketError(.unavailable, "the market's database did not answer; try again shortly")
            }
            throw error
        }
    }

    public func close() async throws {
        running.cancel()
        await running.value
        try? await listener.withLock { $0 }.close()
    }

    // MARK: Messages between instances

    /// Queues `text` for `peer` on whichever instance it is connected to; returns the relay id.
    public func publish(_ text: String, to peer: PeerID) async throws {
        try await write { tx in
            try await (tx as! PostgresMarketTransaction).relay(text, to: peer)
        }
    }

    /// Calls `deliver` with every message another instance published, until cancelled. When
    /// the listening connection is lost it connects again, and delivers what was published
    /// meanwhile (the relay table keeps five minutes of messages).
    public func listen(_ deliver: @escaping @Sendable (PeerID, String) -> Void) async throws {
        let relay = RelayCursor(after: try await read { try await ($0 as! PostgresMarketTransaction).lastRelayID() })
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                try await listener.withLock { $0 }.listen(on: "cmm_relay") { notifications in
                    backoff = .milliseconds(100)
                    // Listening again: what came while no one listened goes first.
                    let missed = try await read {
                        try await ($0 as! PostgresMarketTransaction).relayed(after: relay.last)
                    }
                    for row in missed where relay.first(row.id) { Self.deliver(row.peer, row.text, deliver) }
                    for try await notification in notifications {
                        guard let id = Int64(notification.payload), relay.first(id) else { continue }
                        let row = try await read { tx in try await (tx as! PostgresMarketTransaction).relayed(id) }
                        if let row { Self.deliver(row.peer, row.text, deliver) }
                    }
                }
            } catch {
                if Task.isCancelled { throw error }
                logger.warning("relay listener lost its connection; reconnecting", metadata: ["error": "\(error)"])
            }
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
            if let fresh = try? await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger) {
                let old = listener.withLock { current in
                    defer { current = fresh }
                    return current
                }
                try? await old.close()
            }
        }
    }

    private static func deliver(_ peer: String, _ text: String, _ deliver: (PeerID, String) -> Void) {
        if let peer = try? PeerID(validating: peer) { deliver(peer, text) }
    }
}

/// Which relay messages this instance has delivered: each once, also when a notification and
/// the catch-up after a reconnect both name it.
final class RelayCursor: Sendable {
    private let state: Mutex<(last: Int64, seen: Set<Int64>)>

    init(after last: Int64) { state = Mutex((last, [])) }

    var last: Int64 { state.withLock { $0.last } }

    /// True the first time `id` is seen.
    func first(_ id: Int64) -> Bool {
        state.withLock { state in
            guard id > state.last - 10_000, state.seen.insert(id).inserted else { return false }
            state.last = max(state.last, id)
            if state.seen.count > 20_000 { state.seen = state.seen.filter { $0 > state.last - 10_000 } }
            return true
        }
    }
}

/// What a log may say of a store's error: PostgreSQL's own code and message (postgres-nio's
/// description hides both), never the statement's values.
public enum StoreFailure {
    public static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        guard let info = error.serverInfo else { return "PostgreSQL: \(error.code)" }
        return "PostgreSQL \(info[.sqlState] ?? "?"): \(info[.message] ?? "")"
    }
}

extension MarketSchema {
    static let postgres: [String] = [
        """
        CREATE TABLE IF NOT EXISTS peers (
            id TEXT PRIMARY KEY, key_document TEXT NOT NULL, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
            audit_head TEXT, rep_s DOUBLE PRECISION NOT NULL DEFAULT 0, rep_f DOUBLE PRECISION NOT NULL DEFAULT 0,
            rep_n INTEGER NOT NULL DEFAULT 0, rep_at BIGINT NOT NULL DEFAULT 0, settled_jobs INTEGER NOT NULL DEFAULT 0)
        """,
        """
        CREATE TABLE IF NOT EXISTS accounts (
            name TEXT PRIMARY KEY, balance BIGINT NOT NULL, CHECK (balance >= 0 OR name = 'mint'))
        """,
        """
        CREATE TABLE IF NOT EXISTS ledger (
            id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, debit TEXT NOT NULL, credit TEXT NOT NULL,
            amount BIGINT NOT NULL CHECK (amount > 0), kind TEXT NOT NULL, task_id TEXT, memo TEXT,
            CHECK (debit <> credit))
        """,
        "CREATE INDEX IF NOT EXISTS ledger_debit ON ledger(debit)",
        "CREATE INDEX IF NOT EXISTS ledger_credit ON ledger(credit)",
        """
        CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$ LANGUAGE plpgsql
        """,
        "DROP TRIGGER IF EXISTS ledger_no_change ON ledger",
        "CREATE TRIGGER ledger_no_change BEFORE UPDATE OR DELETE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_append_only()",
        """
        CREATE TABLE IF NOT EXISTS offers (
            provider TEXT PRIMARY KEY, price BIGINT NOT NULL, slots INTEGER NOT NULL, models TEXT NOT NULL,
            min_requester_rep DOUBLE PRECISION NOT NULL, created BIGINT NOT NULL)
        """,
        """
        CREATE TABLE IF NOT EXISTS tasks (
            id TEXT PRIMARY KEY, requester TEXT NOT NULL, provider TEXT, state TEXT NOT NULL, deadline BIGINT,
            created BIGINT NOT NULL, price BIGINT, data TEXT NOT NULL, payload TEXT, result TEXT)
        """,
        "CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, created)",
        "CREATE INDEX IF NOT EXISTS tasks_provider ON tasks(provider, state)",
        "CREATE INDEX IF NOT EXISTS tasks_requester ON tasks(requester, state)",
        "CREATE INDEX IF NOT EXISTS tasks_deadline ON tasks(deadline) WHERE deadline IS NOT NULL",
        """
        CREATE TABLE IF NOT EXISTS outcomes (
            id BIGSERIAL PRIMARY KEY, peer TEXT NOT NULL, task_id TEXT NOT NULL, role TEXT NOT NULL,
            success BOOLEAN NOT NULL, at BIGINT NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS outcomes_peer ON outcomes(peer, id)",
        """
        CREATE TABLE IF NOT EXISTS task_events (
            id BIGSERIAL PRIMARY KEY, task_id TEXT NOT NULL, state TEXT NOT NULL, at BIGINT NOT NULL,
            created BIGINT NOT NULL, price BIGINT)
        """,
        "CREATE INDEX IF NOT EXISTS task_events_at ON task_events(at)",
        """
        CREATE TABLE IF NOT EXISTS nonces (
            peer TEXT NOT NULL, nonce TEXT NOT NULL, expires BIGINT NOT NULL, PRIMARY KEY (peer, nonce))
        """,
        "CREATE INDEX IF NOT EXISTS nonces_expires ON nonces(expires)",
        """
        CREATE TABLE IF NOT EXISTS messages (
            peer TEXT NOT NULL, id TEXT NOT NULL, result TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (peer, id))
        """,
        "CREATE INDEX IF NOT EXISTS messages_at ON messages(at)",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS max_ws_bytes BIGINT",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS max_ws_files BIGINT",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS paused_until BIGINT",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS paused_for TEXT",
        "ALTER TABLE peers ADD COLUMN IF NOT EXISTS hand_backs INTEGER NOT NULL DEFAULT 0",
        """
        CREATE TABLE IF NOT EXISTS blob_chunks (
            task_id TEXT NOT NULL, blob TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
            sender TEXT NOT NULL, bytes BIGINT NOT NULL, frame TEXT NOT NULL, PRIMARY KEY (task_id, blob, idx))
        """,
        "CREATE INDEX IF NOT EXISTS blob_chunks_sender ON blob_chunks(sender)",
        """
        CREATE TABLE IF NOT EXISTS relay (
            id BIGSERIAL PRIMARY KEY, peer TEXT NOT NULL, text TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())
        """,
        // The task's fields as columns (`TaskRow`), filled from the JSON document each row kept
        // until now, which then goes.
        """
        ALTER TABLE tasks ADD COLUMN IF NOT EXISTS max_price BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS cap BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS min_reputation DOUBLE PRECISION NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS model TEXT, ADD COLUMN IF NOT EXISTS timeout_seconds BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS updated BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS rejections BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS faults BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN IF NOT EXISTS excluded TEXT NOT NULL DEFAULT '', ADD COLUMN IF NOT EXISTS result_hash TEXT,
            ADD COLUMN IF NOT EXISTS reason TEXT, ADD COLUMN IF NOT EXISTS dispute TEXT,
            ADD COLUMN IF NOT EXISTS ws_bytes BIGINT, ADD COLUMN IF NOT EXISTS ws_files BIGINT,
            ADD COLUMN IF NOT EXISTS ws_archive_bytes BIGINT, ADD COLUMN IF NOT EXISTS conversation_bytes BIGINT
        """,
        """
        DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'tasks' AND column_name = 'data') THEN
            UPDATE tasks SET
                max_price = (data::jsonb #>> '{maxPrice,micro}')::BIGINT, cap = (data::jsonb #>> '{cap,micro}')::BIGINT,
                min_reputation = (data::jsonb ->> 'minReputation')::DOUBLE PRECISION, model = data::jsonb ->> 'model',
                timeout_seconds = (data::jsonb ->> 'timeoutSeconds')::BIGINT,
                updated = (data::jsonb ->> 'updatedMs')::BIGINT, rejections = (data::jsonb ->> 'rejections')::BIGINT,
                faults = (data::jsonb ->> 'faults')::BIGINT,
                excluded = coalesce((SELECT string_agg(value, ',' ORDER BY n)
                    FROM jsonb_array_elements_text(data::jsonb -> 'excluded') WITH ORDINALITY AS e(value, n)), ''),
                result_hash = data::jsonb ->> 'resultHash', reason = data::jsonb ->> 'reason',
                dispute = data::jsonb ->> 'dispute', ws_bytes = (data::jsonb ->> 'workspaceBytes')::BIGINT,
                ws_files = (data::jsonb ->> 'workspaceFiles')::BIGINT,
                ws_archive_bytes = (data::jsonb ->> 'workspaceArchiveBytes')::BIGINT,
                conversation_bytes = (data::jsonb ->> 'conversationBytes')::BIGINT;
            ALTER TABLE tasks DROP COLUMN data;
        END IF;
        END $$
        """,
    ]
}

extension TaskRow {
    static let postgresInsert = insert { "$\($0)" }
    static let postgresUpdate = update { "$\($0)" }

    static func bindings(_ values: [Value]) -> PostgresBindings {
        var bindings = PostgresBindings(capacity: values.count)
        for value in values {
            switch value {
            case .text(let text): bindings.append(text)
            case .integer(let number): bindings.append(number)
            case .real(let number): bindings.append(number)
            case .null: bindings.appendNull()
            }
        }
        return bindings
    }

    /// The task of a row selected with `selectSQL`.
    static func task(_ row: PostgresRow) throws -> MarketTask {
        let fields = try row.decode(
            (
                String, String, Int64, Int64, Double, String?, Int64, String, String?, Int64?, Int64, Int64, Int64?,
                Int64, Int64, String, String?, String?, String?, Int64?, Int64?, Int64?, Int64?
            ).self)
        return try task(fields)
    }
}

/// `MarketTransaction` on one PostgreSQL connection inside BEGIN … COMMIT.
struct PostgresMarketTransaction: MarketTransaction {
    let connection: PostgresConnection
    let logger: Logger

    /// The rows of `query`, run as its connection's named prepared statement (`PreparedStatements`).
    @discardableResult
    func query(_ query: PostgresQuery) async throws -> [PostgresRow] {
        do {
            return try await PreparedStatements.rows(of: query, on: connection, logger: logger)
        } catch let error as PSQLError {
            if error.serverInfo?[.sqlState] == "23514" { throw Self.checkViolation(error.serverInfo?[.constraintName]) }
            throw error
        }
    }

    /// A CHECK the books refused, told apart by the constraint's name (PostgreSQL's own names for
    /// the schema's unnamed CHECKs).
    static func checkViolation(_ constraint: String?) -> MarketError {
        switch constraint {
        case "accounts_check":
            MarketError(.insufficientFunds, "the movement would take an account below zero")
        case "ledger_amount_check":
            MarketError(.invalidAmount, "a ledger movement must be positive")
        case "ledger_check":
            MarketError(.invalidAmount, "a ledger movement must go from one account to another")
        default:
            MarketError(.internalError, "the books refused a write (constraint \(constraint ?? "unnamed"))")
        }
    }

    func run(_ sql: String) async throws {
        try await query(PostgresQuery(unsafeSQL: sql))
    }

    func relay(_ text: String, to peer: PeerID) async throws {
        let id = try await query("INSERT INTO relay (peer, text) VALUES (\(peer.rawValue), \(text)) RETURNING id")
            .first!.decode(Int64.self)
        try await query("SELECT pg_notify('cmm_relay', \(String(id)))")
        try await query("DELETE FROM relay WHERE at < now() - interval '5 minutes'")
    }

    /// The newest relay message's id (0 when there is none).
    func lastRelayID() async throws -> Int64 {
        try await query("SELECT COALESCE(MAX(id), 0) FROM relay").first!.decode(Int64.self)
    }

    /// Relay messages published after `id`, oldest first.
    func relayed(after id: Int64) async throws -> [(id: Int64, peer: String, text: String)] {
        try await query("SELECT id, peer, text FROM relay WHERE id > \(id) ORDER BY id LIMIT 10000").map {
            let (id, peer, text) = try $0.decode((Int64, String, String).self)
            return (id, peer, text)
        }
    }

    func relayed(_ id: Int64) async throws -> (peer: String, text: String)? {
        try await query("SELECT peer, text FROM relay WHERE id = \(id)").first.map {
            try $0.decode((String, String).self)
        }
    }

    // MARK: Peers

    func peer(_ id: PeerID) async throws -> PeerRecord? {
        try await query(
            """
            SELECT key_document, first_seen, last_seen, audit_head, rep_s, rep_f, rep_n, rep_at, settled_jobs, hand_backs
            FROM peers WHERE id = \(id.rawValue)
            """
        ).first.map { row in
            let (document, first, last, head, s, f, n, at, settled, handBacks) = try row.decode(
                (String, Int64, Int64, String?, Double, Double, Int, Int64, Int, Int).self)
            return PeerRecord(
                id: id, keyDocument: document, firstSeenMs: first, lastSeenMs: last, auditHead: head,
                reputation: Reputation(successes: s, failures: f, samples: n, atMs: at), settledJobs: settled,
                handBacks: handBacks)
        }
    }

    func countHandBack(of provider: PeerID) async throws {
        try await query("UPDATE peers SET hand_backs = hand_backs + 1 WHERE id = \(provider.rawValue)")
    }

    func upsertPeer(_ id: PeerID, keyDocument: String, nowMs: Int64) async throws {
        try await query(
            """
            INSERT INTO peers (id, key_document, first_seen, last_seen) VALUES (\(id.rawValue), \(keyDocument), \(nowMs), \(nowMs))
            ON CONFLICT (id) DO UPDATE SET key_document = EXCLUDED.key_document, last_seen = EXCLUDED.last_seen
            """)
    }

    func touchPeer(_ id: PeerID, nowMs: Int64, auditHead: String?) async throws {
        try await query(
            "UPDATE peers SET last_seen = \(nowMs), audit_head = coalesce(\(auditHead), audit_head) WHERE id = \(id.rawValue)"
        )
    }

    func updateStanding(_ id: PeerID, reputation: Reputation, settledJobs: Int) async throws {
        try await query(
            """
            UPDATE peers SET rep_s = \(reputation.successes), rep_f = \(reputation.failures), rep_n = \(reputation.samples),
            rep_at = \(reputation.atMs), settled_jobs = \(settledJobs) WHERE id = \(id.rawValue)
            """)
    }

    func peerCount() async throws -> Int {
        try await query("SELECT count(*)::INT FROM peers").first!.decode(Int.self)
    }

    func silentProviders(lastSeenBefore cutoffMs: Int64) async throws -> [PeerID] {
        try await query(
            """
            SELECT id FROM peers WHERE last_seen < \(cutoffMs) AND (
                id IN (SELECT provider FROM offers)
                OR id IN (SELECT provider FROM tasks WHERE state IN ('assigned', 'running')))
            """
        ).compactMap { try? PeerID(validating: try $0.decode(String.self)) }
    }

    // MARK: Replay cache and idempotency

    func insertNonce(peer: String, nonce: String, expiresMs: Int64) async throws -> Bool {
        try await query(
            "INSERT INTO nonces (peer, nonce, expires) VALUES (\(peer), \(nonce), \(expiresMs)) ON CONFLICT DO NOTHING RETURNING 1"
        ).count == 1
    }

    func nonceCount() async throws -> Int {
        try await query("SELECT count(*)::INT FROM nonces").first!.decode(Int.self)
    }

    func purgeNonces(expiredBefore nowMs: Int64) async throws -> Int {
        try await query(
            "WITH gone AS (DELETE FROM nonces WHERE expires < \(nowMs) RETURNING 1) SELECT count(*)::INT FROM gone"
        ).first!.decode(Int.self)
    }

    func messageResult(peer: PeerID, id: String) async throws -> String? {
        try await query("SELECT result FROM messages WHERE peer = \(peer.rawValue) AND id = \(id)").first?.decode(
            String.self)
    }

    func recordMessage(peer: PeerID, id: String, result: String, nowMs: Int64) async throws {
        try await query(
            "INSERT INTO messages (peer, id, result, at) VALUES (\(peer.rawValue), \(id), \(result), \(nowMs))")
    }

    func purgeMessages(before cutoffMs: Int64) async throws {
        try await query("DELETE FROM messages WHERE at < \(cutoffMs)")
    }

    // MARK: Ledger

    func balance(_ account: Account) async throws -> Credits {
        Credits(
            micro: try await query("SELECT balance FROM accounts WHERE name = \(account.description)").first?.decode(
                Int64.self)
                ?? 0)
    }

    /// One statement, one round trip: the debit (which takes the account's row lock and, unless
    /// it is the mint's, happens only when the account holds enough), then the credit and the
    /// ledger row, both only when the debit did. Concurrent movements on one account add up.
    func insertMovement(_ movement: Movement, nowMs: Int64) async throws {
        let amount = movement.amount.micro
        guard amount > 0 else {
            throw MarketError(.invalidAmount, "a ledger movement must be positive, not \(movement.amount)")
        }
        let debit = movement.from.description
        let credit = movement.to.description
        var bindings = PostgresBindings(capacity: 7)
        bindings.append(debit)  // $1
        bindings.append(credit)  // $2
        bindings.append(amount)  // $3
        bindings.append(nowMs)  // $4
        bindings.append(movement.kind.rawValue)  // $5
        bindings.append(movement.taskID)  // $6
        bindings.append(movement.memo)  // $7
        let debitStep =
            movement.from.mayGoNegative
            // The mint's row may not exist yet: an upsert (two transactions that both find no row
            // must not both insert one). Its CHECK allows it below zero.
            ? """
            INSERT INTO accounts (name, balance) VALUES ($1, -$3::BIGINT)
            ON CONFLICT (name) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance RETURNING 1
            """
            // An UPDATE, not an upsert, for any other account: PostgreSQL checks a proposed row
            // (−amount) against the CHECK before ON CONFLICT.
            : "UPDATE accounts SET balance = balance - $3 WHERE name = $1 AND balance >= $3 RETURNING 1"
        let sql = """
            WITH debit AS (\(debitStep)),
            credit AS (
                INSERT INTO accounts (name, balance) SELECT $2, $3 FROM debit
                ON CONFLICT (name) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance RETURNING 1),
            entry AS (
                INSERT INTO ledger (at, debit, credit, amount, kind, task_id, memo)
                SELECT $4, $1, $2, $3, $5, $6, $7 FROM debit RETURNING 1)
            SELECT count(*)::INT FROM debit
            """
        let moved: Int
        do {
            moved = try await query(PostgresQuery(unsafeSQL: sql, binds: bindings)).first?.decode(Int.self) ?? 0
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "22003" {
            throw MarketError(.invalidAmount, "moving \(movement.amount) overflows an account")
        }
        guard moved == 1 else {
            // Nothing moved. Only now is the balance read, for the message.
            let held = try await query("SELECT balance FROM accounts WHERE name = \(debit)").first?.decode(Int64.self)
            throw MarketError(
                .insufficientFunds, "\(debit) holds \(Credits(micro: held ?? 0)), less than \(movement.amount)")
        }
    }

    func allMovements() async throws -> [(id: Int64, from: String, to: String, amountMicro: Int64)] {
        try await query("SELECT id, debit, credit, amount FROM ledger ORDER BY id").map { row in
            let (id, from, to, amount) = try row.decode((Int64, String, String, Int64).self)
            return (id, from, to, amount)
        }
    }

    func allBalances() async throws -> [String: Int64] {
        var balances: [String: Int64] = [:]
        for row in try await query("SELECT name, balance FROM accounts") {
            let (name, balance) = try row.decode((String, Int64).self)
            balances[name] = balance
        }
        return balances
    }

    func movements(account: String, limit: Int) async throws -> [Movement] {
        try await query(
            """
            SELECT debit, credit, amount, kind, task_id, memo FROM ledger WHERE debit = \(account) OR credit = \(account)
            ORDER BY id DESC LIMIT \(limit)
            """
        ).compactMap { row in
            let (debit, credit, amount, kind, task, memo) = try row.decode(
                (String, String, Int64, String, String?, String?).self)
            guard let from = Account(debit), let to = Account(credit), let kind = MovementKind(rawValue: kind) else {
                return nil
            }
            return Movement(from: from, to: to, amount: Credits(micro: amount), kind: kind, taskID: task, memo: memo)
        }
    }

    // MARK: Offers

    func offer(of provider: PeerID) async throws -> Offer? {
        try await query(
            "SELECT provider, price, slots, models, min_requester_rep, created, max_ws_bytes, max_ws_files, paused_until, paused_for FROM offers WHERE provider = \(provider.rawValue)"
        )
        .first.map(Self.offer)
    }

    func offers() async throws -> [Offer] {
        try await query(
            "SELECT provider, price, slots, models, min_requester_rep, created, max_ws_bytes, max_ws_files, paused_until, paused_for FROM offers ORDER BY price, created"
        )
        .map(Self.offer)
    }

    static func offer(_ row: PostgresRow) throws -> Offer {
        let (provider, price, slots, models, minimum, created, maxBytes, maxFiles, pausedUntil, pausedFor) =
            try row.decode((String, Int64, Int, String, Double, Int64, Int64?, Int64?, Int64?, String?).self)
        var offer = Offer(
            provider: try PeerID(validating: provider), price: Credits(micro: price), slots: slots,
            models: OfferModels.models(models), minRequesterReputation: minimum, createdMs: created,
            maxWorkspaceBytes: maxBytes, maxWorkspaceFiles: maxFiles)
        offer.pausedUntilMs = pausedUntil
        offer.pausedFor = pausedFor
        return offer
    }

    func offerCandidates(maxPrice: Credits?, provider: PeerID?, lock: Bool) async throws -> [(
        offer: Offer, busySlots: Int, reputation: Reputation
    )] {
        let limit = maxPrice?.micro ?? Int64.max
        let only = provider?.rawValue
        let sql: PostgresQuery =
            lock
            ? """
            SELECT o.provider, o.price, o.slots, o.models, o.min_requester_rep, o.created,
                (SELECT count(*)::INT FROM tasks t WHERE t.provider = o.provider AND t.state IN ('assigned', 'running')),
                p.rep_s, p.rep_f, p.rep_n, p.rep_at, o.max_ws_bytes, o.max_ws_files, o.paused_until, o.paused_for
            FROM offers o LEFT JOIN peers p ON p.id = o.provider
            WHERE o.price <= \(limit) AND (\(only)::TEXT IS NULL OR o.provider = \(only))
            ORDER BY o.provider FOR UPDATE OF o
            """
            : """
            SELECT o.provider, o.price, o.slots, o.models, o.min_requester_rep, o.created,
                (SELECT count(*)::INT FROM tasks t WHERE t.provider = o.provider AND t.state IN ('assigned', 'running')),
                p.rep_s, p.rep_f, p.rep_n, p.rep_at, o.max_ws_bytes, o.max_ws_files, o.paused_until, o.paused_for
            FROM offers o LEFT JOIN peers p ON p.id = o.provider
            WHERE o.price <= \(limit) AND (\(only)::TEXT IS NULL OR o.provider = \(only))
            """
        return try await query(sql).map { row in
            let (
                provider, price, slots, models, minimum, created, busy, s, f, n, at, maxBytes, maxFiles, until,
                pausedFor
            ) =
                try row.decode(
                    (
                        String, Int64, Int, String, Double, Int64, Int, Double?, Double?, Int?, Int64?, Int64?, Int64?,
                        Int64?, String?
                    ).self)
            var offer = Offer(
                provider: try PeerID(validating: provider), price: Credits(micro: price), slots: slots,
                models: OfferModels.models(models), minRequesterReputation: minimum, createdMs: created,
                maxWorkspaceBytes: maxBytes, maxWorkspaceFiles: maxFiles)
            offer.pausedUntilMs = until
            offer.pausedFor = pausedFor
            return (offer, busy, Reputation(successes: s ?? 0, failures: f ?? 0, samples: n ?? 0, atMs: at ?? 0))
        }
    }

    func putOffer(_ offer: Offer) async throws {
        try await query(
            """
            INSERT INTO offers (provider, price, slots, models, min_requester_rep, created, max_ws_bytes, max_ws_files,
                    paused_until, paused_for)
            VALUES (\(offer.provider.rawValue), \(offer.price.micro), \(offer.slots), \(OfferModels.models(offer.models)),
                    \(offer.minRequesterReputation), \(offer.createdMs), \(offer.maxWorkspaceBytes), \(offer.maxWorkspaceFiles),
                    \(offer.pausedUntilMs), \(offer.pausedFor))
            ON CONFLICT (provider) DO UPDATE SET price = EXCLUDED.price, slots = EXCLUDED.slots, models = EXCLUDED.models,
                min_requester_rep = EXCLUDED.min_requester_rep, max_ws_bytes = EXCLUDED.max_ws_bytes,
                max_ws_files = EXCLUDED.max_ws_files, paused_until = EXCLUDED.paused_until, paused_for = EXCLUDED.paused_for
            """)
    }

    func deleteOffer(of provider: PeerID) async throws -> Bool {
        try await query("DELETE FROM offers WHERE provider = \(provider.rawValue) RETURNING 1").count > 0
    }

    func busySlots(of provider: PeerID) async throws -> Int {
        try await query(
            "SELECT count(*)::INT FROM tasks WHERE provider = \(provider.rawValue) AND state IN ('assigned', 'running')"
        ).first!.decode(Int.self)
    }

    // MARK: Tasks

    func task(_ id: String, lock: Bool) async throws -> MarketTask? {
        var bindings = PostgresBindings()
        bindings.append(id)
        let sql = TaskRow.selectSQL + " WHERE id = $1" + (lock ? " FOR UPDATE" : "")
        return try await query(PostgresQuery(unsafeSQL: sql, binds: bindings)).first.map(TaskRow.task)
    }

    func insertTask(_ task: MarketTask) async throws {
        do {
            try await query(
                PostgresQuery(unsafeSQL: TaskRow.postgresInsert, binds: TaskRow.bindings(TaskRow.values(of: task))))
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw MarketError(.duplicateTask, "task \(task.id) already exists: choose a new taskId")
        }
    }

    func updateTask(_ task: MarketTask) async throws {
        try await query(
            PostgresQuery(unsafeSQL: TaskRow.postgresUpdate, binds: TaskRow.bindings(TaskRow.updateValues(of: task))))
    }

    func tasks(state: TaskState?, limit: Int) async throws -> [MarketTask] {
        let limit = min(limit, Int(Int32.max))
        var bindings = PostgresBindings()
        let sql: String
        if let state {
            bindings.append(state.rawValue)
            bindings.append(limit)
            sql = TaskRow.selectSQL + " WHERE state = $1 ORDER BY created LIMIT $2"
        } else {
            bindings.append(limit)
            sql = TaskRow.selectSQL + " ORDER BY created DESC LIMIT $1"
        }
        return try await query(PostgresQuery(unsafeSQL: sql, binds: bindings)).map(TaskRow.task)
    }

    func tasks(of peer: PeerID, states: [TaskState]) async throws -> [MarketTask] {
        var bindings = PostgresBindings()
        bindings.append(peer.rawValue)
        bindings.append(states.map(\.rawValue))
        let sql = TaskRow.selectSQL + " WHERE (provider = $1 OR requester = $1) AND state = ANY($2) ORDER BY created"
        return try await query(PostgresQuery(unsafeSQL: sql, binds: bindings)).map(TaskRow.task)
    }

    func tasksDue(nowMs: Int64, limit: Int) async throws -> [String] {
        try await query(
            "SELECT id FROM tasks WHERE deadline IS NOT NULL AND deadline <= \(nowMs) ORDER BY deadline LIMIT \(limit)"
        ).map { try $0.decode(String.self) }
    }

    func setFrame(taskID: String, kind: TaskFrameKind, frame: String?) async throws {
        switch kind {
        case .payload: try await query("UPDATE tasks SET payload = \(frame) WHERE id = \(taskID)")
        case .result: try await query("UPDATE tasks SET result = \(frame) WHERE id = \(taskID)")
        }
    }

    func frame(taskID: String, kind: TaskFrameKind) async throws -> String? {
        let sql: PostgresQuery =
            switch kind {
            case .payload: "SELECT payload FROM tasks WHERE id = \(taskID)"
            case .result: "SELECT result FROM tasks WHERE id = \(taskID)"
            }
        return try await query(sql).first?.decode(String?.self)
    }

    func putBlobChunk(_ chunk: StoredBlobChunk) async throws {
        try await query(
            """
            INSERT INTO blob_chunks (task_id, blob, idx, count, sender, bytes, frame)
            VALUES (\(chunk.taskID), \(chunk.blob), \(chunk.index), \(chunk.count), \(chunk.sender.rawValue), \(chunk.bytes),
                    \(chunk.frame))
            ON CONFLICT (task_id, blob, idx) DO UPDATE SET count = EXCLUDED.count, sender = EXCLUDED.sender,
                bytes = EXCLUDED.bytes, frame = EXCLUDED.frame
            """)
    }

    func blobChunks(taskID: String, blob: String) async throws -> [String] {
        try await query("SELECT frame FROM blob_chunks WHERE task_id = \(taskID) AND blob = \(blob) ORDER BY idx").map {
            try $0.decode(String.self)
        }
    }

    func blobBytes(taskID: String, blob: String, except index: Int) async throws -> Int64 {
        try await query(
            "SELECT coalesce(sum(bytes), 0)::BIGINT FROM blob_chunks WHERE task_id = \(taskID) AND blob = \(blob) AND idx <> \(index)"
        ).first?.decode(Int64.self) ?? 0
    }

    func blobBytes(sender: PeerID) async throws -> Int64 {
        try await query("SELECT coalesce(sum(bytes), 0)::BIGINT FROM blob_chunks WHERE sender = \(sender.rawValue)")
            .first?.decode(Int64.self) ?? 0
    }

    func deleteBlobChunks(taskID: String, blob: String?) async throws {
        try await query(
            "DELETE FROM blob_chunks WHERE task_id = \(taskID) AND (\(blob)::TEXT IS NULL OR blob = \(blob))")
    }

    func taskCounts() async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try await query("SELECT state, count(*)::INT FROM tasks GROUP BY state") {
            let (state, count) = try row.decode((String, Int).self)
            counts[state] = count
        }
        return counts
    }

    func settledVolume() async throws -> Int64 {
        try await query("SELECT coalesce(sum(price), 0)::BIGINT FROM tasks WHERE state = 'settled'").first!.decode(
            Int64.self)
    }

    // MARK: Reputation history

    func insertOutcome(_ outcome: ReputationOutcome, nowMs: Int64) async throws {
        try await query(
            """
            INSERT INTO outcomes (peer, task_id, role, success, at)
            VALUES (\(outcome.peer.rawValue), \(outcome.taskID), \(outcome.role), \(outcome.success), \(nowMs))
            """)
    }

    func outcomes(of peer: PeerID, limit: Int) async throws -> [(outcome: ReputationOutcome, atMs: Int64)] {
        try await query(
            "SELECT task_id, role, success, at FROM outcomes WHERE peer = \(peer.rawValue) ORDER BY id DESC LIMIT \(limit)"
        ).map { row in
            let (task, role, success, at) = try row.decode((String, String, Bool, Int64).self)
            return (ReputationOutcome(peer: peer, success: success, taskID: task, role: role), at)
        }
    }

    func providerOutcomeCounts() async throws -> [(peer: PeerID, successes: Int, failures: Int)] {
        try await query(
            """
            SELECT peer, SUM(CASE WHEN success THEN 1 ELSE 0 END)::BIGINT, SUM(CASE WHEN success THEN 0 ELSE 1 END)::BIGINT
            FROM outcomes WHERE role = 'provider' GROUP BY peer
            """
        ).compactMap { row in
            let (peer, successes, failures) = try row.decode((String, Int64, Int64).self)
            guard let id = try? PeerID(validating: peer) else { return nil }
            return (id, Int(successes), Int(failures))
        }
    }

    func insertTaskEvent(_ event: TaskEventRecord) async throws {
        try await query(
            """
            INSERT INTO task_events (task_id, state, at, created, price)
            VALUES (\(event.taskID), \(event.state.rawValue), \(event.atMs), \(event.createdMs), \(event.price))
            """)
    }

    func taskEvents(sinceMs: Int64) async throws -> [TaskEventRecord] {
        try await query(
            "SELECT task_id, state, at, created, price FROM task_events WHERE at >= \(sinceMs) ORDER BY at, id"
        ).compactMap { row in
            let (task, state, at, created, price) = try row.decode((String, String, Int64, Int64, Int64?).self)
            guard let state = TaskState(rawValue: state) else { return nil }
            return TaskEventRecord(taskID: task, state: state, atMs: at, createdMs: created, price: price)
        }
    }

    func savepoint<T>(_ body: () async throws -> T) async throws -> T {
        try await run("SAVEPOINT step")
        do {
            let result = try await body()
            try await run("RELEASE SAVEPOINT step")
            return result
        } catch {
            // A deadlock or a serialization failure is the whole transaction's to retry, not
            // this step's to report: the caller's retry runs every step again.
            if Self.isTransient(error) { throw TransactionAborted(error) }
            do { try await run("ROLLBACK TO SAVEPOINT step") } catch { throw TransactionAborted(error) }
            throw error
        }
    }

    /// A deadlock (40P01) or a serialization failure (40001): running the transaction again may succeed.
    static func isTransient(_ error: any Error) -> Bool {
        let underlying = (error as? TransactionAborted)?.underlying ?? error
        let code = (underlying as? PSQLError)?.serverInfo?[.sqlState]
        return code == "40P01" || code == "40001"
    }
}
