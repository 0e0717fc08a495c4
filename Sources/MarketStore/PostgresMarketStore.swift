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
        // No minimum: postgres-nio 1.33.2's pool, while reconnections fail, drops the failed ones
        // below its minimum and then stops the process on a precondition (`minimum <= active`,
        // PoolStateMachine+ConnectionGroup.swift:163) at the next lease it cannot serve; seen as
        // a SIGILL of a server whose PostgreSQL restarted under load. Connections open on demand
        // and close after the pool's idle timeout instead.
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
    @discardableResult
    func migrate() async throws -> [String] {
        let session = PostgresSession(connection: listener.withLock { $0 }, logger: logger, prepared: false)
        try await session.execute(script: "SELECT pg_advisory_lock(734205)")
        let ran: [String]
        do {
            try await session.execute(script: "BEGIN")
            ran = try await MarketSchema.migrate(session)
            try await session.execute(script: "COMMIT")
        } catch {
            try? await session.execute(script: "ROLLBACK")
            try? await session.execute(script: "SELECT pg_advisory_unlock(734205)")
            throw error
        }
        try await session.execute(script: "SELECT pg_advisory_unlock(734205)")
        return ran
    }

    public func write<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await transaction(body)
    }

    /// One snapshot for the whole read (REPEATABLE READ): `market verify` and the stats read
    /// tasks, movements and balances in several statements, and under READ COMMITTED a task
    /// settled between two of them read as books that do not balance. (Not READ ONLY: a read
    /// may take row locks, as a check of what a write would find does.)
    public func read<T: Sendable>(_ body: @escaping @Sendable (any MarketTransaction) async throws -> T) async throws
        -> T
    {
        try await transaction(body, begin: "BEGIN ISOLATION LEVEL REPEATABLE READ")
    }

    private func transaction<T: Sendable>(
        _ body: @escaping @Sendable (any MarketTransaction) async throws -> T, begin: String = "BEGIN"
    ) async throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await client.withConnection { [logger] connection in
                    try await withTaskExecutorPreference(EventLoopTaskExecutor(connection.eventLoop)) {
                        try await Self.transaction(body, begin: begin, on: connection, logger: logger)
                    }
                }
            } catch  where attempt < 8 && PostgresSession.isTransient(error) {
                continue
            }
        }
    }

    /// BEGIN, `body`, COMMIT on `connection`; ROLLBACK when anything throws. A transaction that
    /// outlives `transactionTimeout` loses its connection, which fails what it waits for.
    private static func transaction<T: Sendable>(
        _ body: @Sendable (any MarketTransaction) async throws -> T, begin: String = "BEGIN",
        on connection: PostgresConnection, logger: Logger
    ) async throws -> T {
        let watchdog = connection.eventLoop.scheduleTask(in: transactionTimeout) {
            let _: EventLoopFuture<Void> = connection.close()
        }
        defer { watchdog.cancel() }
        let session = PostgresSession(connection: connection, logger: logger)
        do {
            try await session.execute(script: begin)
            let result = try await body(SQLMarketTransaction(session: session))
            try await session.execute(script: "COMMIT")
            return result
        } catch {
            if !connection.isClosed { _ = try? await session.execute(script: "ROLLBACK") }
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
            try await Relay(tx).publish(text, to: peer)
        }
    }

    /// Calls `deliver` with every message another instance published, until cancelled. When
    /// the listening connection is lost it connects again, and delivers what was published
    /// meanwhile (the relay table keeps five minutes of messages).
    public func listen(_ deliver: @escaping @Sendable (PeerID, String) -> Void) async throws {
        let relay = RelayCursor(after: try await read { try await Relay($0).lastID() })
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                try await listener.withLock { $0 }.listen(on: "cmm_relay") { notifications in
                    backoff = .milliseconds(100)
                    // Listening again: what came while no one listened goes first.
                    let missed = try await read {
                        try await Relay($0).messages(after: relay.last)
                    }
                    for row in missed where relay.first(row.id) { Self.deliver(row.peer, row.text, deliver) }
                    for try await notification in notifications {
                        guard let id = Int64(notification.payload), relay.first(id) else { continue }
                        let row = try await read { tx in try await Relay(tx).message(id) }
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

/// `SQLSession` on one PostgreSQL connection: every statement a named prepared statement of
/// the connection (`PreparedStatements`), unless `prepared` is false (migrations run once).
struct PostgresSession: SQLSession {
    let connection: PostgresConnection
    let logger: Logger
    var prepared = true

    var dialect: SQLDialect { .postgres }

    func rows(_ sql: SQL, _ values: [SQLValue]) async throws -> [SQLRow] {
        var bindings = PostgresBindings(capacity: values.count)
        for value in values {
            switch value {
            case .text(let text): bindings.append(text)
            case .integer(let number): bindings.append(number)
            case .real(let number): bindings.append(number)
            case .boolean(let flag): bindings.append(flag)
            case .null: bindings.appendNull()
            }
        }
        let query = PostgresQuery(unsafeSQL: sql.postgres, binds: bindings)
        return try await PreparedStatements.rows(of: query, on: connection, logger: logger).map(Self.row)
    }

    /// The rows of a query as postgres-nio reads them (tests; the books use `rows`).
    @discardableResult
    func query(_ query: PostgresQuery) async throws -> [PostgresRow] {
        try await PreparedStatements.rows(of: query, on: connection, logger: logger)
    }

    /// A row's cells as values; a column of a type the books never use is an error naming it.
    static func row(_ row: PostgresRow) throws -> SQLRow {
        var values: [SQLValue] = []
        for cell in row {
            guard cell.bytes != nil else {
                values.append(.null)
                continue
            }
            switch cell.dataType {
            case .int8: values.append(.integer(try cell.decode(Int64.self)))
            case .int4: values.append(.integer(Int64(try cell.decode(Int32.self))))
            case .int2: values.append(.integer(Int64(try cell.decode(Int16.self))))
            case .float8, .float4: values.append(.real(try cell.decode(Double.self)))
            case .bool: values.append(.boolean(try cell.decode(Bool.self)))
            case .text, .varchar, .name, .bpchar: values.append(.text(try cell.decode(String.self)))
            default:
                throw MarketError(
                    .internalError, "column \(cell.columnName) has a type the books do not use: \(cell.dataType)")
            }
        }
        return SQLRow(values)
    }

    func execute(script: String) async throws {
        if prepared {
            _ = try await PreparedStatements.rows(of: PostgresQuery(unsafeSQL: script), on: connection, logger: logger)
        } else {
            _ = try await connection.query(PostgresQuery(unsafeSQL: script), logger: logger).get()
        }
    }

    /// PostgreSQL ends only the failed statement's work (a savepoint undoes it); a transaction
    /// that must be run again is `transient`.
    var isInsideTransaction: Bool { true }

    func failure(of error: any Error) -> SQLFailure {
        if Self.isTransient(error) { return .transient }
        guard let info = (error as? PSQLError)?.serverInfo else { return .other }
        switch info[.sqlState] {
        case "23505": return .duplicate
        case "23514": return .check(info[.constraintName])
        default: return .other
        }
    }

    /// A deadlock (40P01) or a serialization failure (40001): running the transaction again may succeed.
    static func isTransient(_ error: any Error) -> Bool {
        let underlying = (error as? TransactionAborted)?.underlying ?? error
        let code = (underlying as? PSQLError)?.serverInfo?[.sqlState]
        return code == "40P01" || code == "40001"
    }
}

/// The relay table, through a transaction of the store: messages for peers connected to
/// another instance, each announced with `pg_notify` by its id.
struct Relay {
    let tx: SQLMarketTransaction

    init(_ tx: any MarketTransaction) { self.tx = tx as! SQLMarketTransaction }

    /// One statement: forget what is past five minutes, keep the message, announce its id (the
    /// notification leaves at COMMIT; `pg_notify` answers void, which the books never read).
    static let publishSQL = SQL(
        """
        WITH gone AS (DELETE FROM relay WHERE at < now() - interval '5 minutes'),
        kept AS (INSERT INTO relay (peer, text) VALUES ($1, $2) RETURNING id)
        SELECT id, pg_notify('cmm_relay', CAST(id AS TEXT)) IS NULL FROM kept
        """)
    static let lastSQL = SQL("SELECT COALESCE(MAX(id), 0) FROM relay")
    static let afterSQL = SQL("SELECT id, peer, text FROM relay WHERE id > $1 ORDER BY id LIMIT 10000")
    static let messageSQL = SQL("SELECT peer, text FROM relay WHERE id = $1")

    func publish(_ text: String, to peer: PeerID) async throws {
        guard try await tx.one(Self.publishSQL, [.text(peer.rawValue), .text(text)]) != nil else {
            throw MarketError(.internalError, "the relay kept no message")
        }
    }

    /// The newest relay message's id (0 when there is none).
    func lastID() async throws -> Int64 {
        try await tx.one(Self.lastSQL)?.int64(0) ?? 0
    }

    /// Relay messages published after `id`, oldest first.
    func messages(after id: Int64) async throws -> [(id: Int64, peer: String, text: String)] {
        try await tx.rows(Self.afterSQL, [.integer(id)]).map { (try $0.int64(0), try $0.text(1), try $0.text(2)) }
    }

    func message(_ id: Int64) async throws -> (peer: String, text: String)? {
        try await tx.one(Self.messageSQL, [.integer(id)]).map { (try $0.text(0), try $0.text(1)) }
    }
}
