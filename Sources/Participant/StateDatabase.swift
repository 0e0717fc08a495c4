import Foundation
import GRDB
import GRDBSQLite
import MarketCrypto

/// The participant's local SQLite database (WAL): consent, jobs, usage, audit log.
///
/// Several processes may use it at once (a `logs --follow` beside an `execute`), so writers
/// that read-then-write take the write lock up front (`BEGIN IMMEDIATE`) and wait on a busy
/// timeout instead of failing.
public final class StateDatabase: Sendable {
    public let pool: DatabasePool
    public let url: URL
    /// Where the identity key lives: every audit append signs the log's head with it.
    public let keyStore: KeyStore?

    public init(url: URL, keyStore: KeyStore? = nil) throws {
        self.url = url
        self.keyStore = keyStore
        var configuration = Configuration()
        configuration.busyMode = .timeout(15)
        configuration.prepareDatabase { db in
            // The WAL and its index stay when the last connection closes, so that a home on a
            // full disk can still be opened and read (`status`, `audit --verify`): creating
            // them again would need space. Writes then fail with SQLITE_FULL and change nothing.
            var persist: Int32 = 1
            _ = sqlite3_file_control(db.sqliteConnection, nil, SQLITE_FCNTL_PERSIST_WAL, &persist)
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            try db.execute(sql: "PRAGMA foreign_keys = ON")
        }
        let directory = url.deletingLastPathComponent()
        try FileManager.default.createDirectory(
            at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // New database files are created private; existing ones keep their mode so that
        // `compliance-check` reports a loosened file instead of this hiding it.
        let previousMask = umask(0o077)
        defer { umask(previousMask) }
        pool = try DatabasePool(path: url.path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

    public convenience init(paths: ParticipantPaths) throws {
        try paths.prepare()
        try self.init(url: paths.databaseFile, keyStore: KeyStore(directory: paths.keysDirectory))
    }

    /// The key that signs the audit head: the identity, once there is one.
    public func auditSigner() throws -> PeerIdentity? { try keyStore?.identityKey() }

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction: the write lock is held from the first
    /// read, so a check-then-insert cannot race another process.
    public func immediateWrite<T>(_ body: (Database) throws -> T) throws -> T {
        try pool.writeWithoutTransaction { db in
            var result: T?
            try db.inTransaction(.immediate) {
                result = try body(db)
                return .commit
            }
            return result!
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-foundation") { db in
            try db.execute(
                sql: """
                    CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                    CREATE TABLE audit (
                        seq INTEGER PRIMARY KEY NOT NULL,
                        at_ms INTEGER NOT NULL,
                        actor TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        details TEXT NOT NULL,
                        prev_hash TEXT NOT NULL,
                        hash TEXT NOT NULL
                    );
                    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
                        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                    CREATE TABLE consent_events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        kind TEXT NOT NULL,
                        scope TEXT,
                        terms_version TEXT,
                        terms_sha256 TEXT,
                        at_ms INTEGER NOT NULL
                    );
                    CREATE TABLE jobs (
                        id TEXT PRIMARY KEY NOT NULL,
                        created_ms INTEGER NOT NULL,
                        started_ms INTEGER,
                        finished_ms INTEGER,
                        state TEXT NOT NULL,
                        role TEXT NOT NULL,
                        backend TEXT NOT NULL,
                        model TEXT,
                        requester TEXT,
                        image TEXT,
                        prompt_bytes INTEGER NOT NULL DEFAULT 0,
                        estimated_tokens INTEGER NOT NULL DEFAULT 0,
                        input_tokens INTEGER NOT NULL DEFAULT 0,
                        output_tokens INTEGER NOT NULL DEFAULT 0,
                        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
                        cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
                        cost_usd REAL NOT NULL DEFAULT 0,
                        exit_code INTEGER,
                        error TEXT,
                        owner_pid INTEGER
                    );
                    CREATE INDEX jobs_created ON jobs(created_ms);
                    CREATE INDEX jobs_state ON jobs(state);
                    CREATE TABLE job_events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        job_id TEXT NOT NULL REFERENCES jobs(id),
                        at_ms INTEGER NOT NULL,
                        stream TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        line TEXT NOT NULL
                    );
                    CREATE INDEX job_events_job ON job_events(job_id, id);
                    CREATE TABLE rate_limit_events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        job_id TEXT,
                        at_ms INTEGER NOT NULL,
                        window TEXT NOT NULL,
                        status TEXT NOT NULL,
                        resets_at_ms INTEGER
                    );
                    """)
        }
        migrator.registerMigration("v2-market") { db in
            try db.execute(
                sql: """
                    CREATE TABLE outbox (
                        id TEXT PRIMARY KEY NOT NULL,
                        type TEXT NOT NULL,
                        body TEXT NOT NULL,
                        created_ms INTEGER NOT NULL,
                        expires_ms INTEGER
                    );
                    CREATE TABLE market_tasks (
                        task_id TEXT PRIMARY KEY NOT NULL,
                        role TEXT NOT NULL,
                        state TEXT NOT NULL,
                        counterparty TEXT,
                        max_price INTEGER NOT NULL,
                        price INTEGER,
                        model TEXT,
                        timeout_seconds INTEGER NOT NULL DEFAULT 300,
                        created_ms INTEGER NOT NULL,
                        updated_ms INTEGER NOT NULL,
                        prompt BLOB,
                        job_id TEXT,
                        result_frame TEXT,
                        result_hash TEXT,
                        result_verified INTEGER,
                        note TEXT
                    );
                    """)
        }
        migrator.registerMigration("v3-account-limits") { db in
            try db.execute(
                sql: """
                    CREATE TABLE account_limits (
                        window TEXT PRIMARY KEY NOT NULL,
                        status TEXT NOT NULL,
                        utilization REAL,
                        resets_at_ms INTEGER,
                        observed_ms INTEGER NOT NULL
                    );
                    """)
        }
        return migrator
    }
}

extension Date {
    public var unixMilliseconds: Int64 { Int64((timeIntervalSince1970 * 1000).rounded(.down)) }
    public init(unixMilliseconds: Int64) { self.init(timeIntervalSince1970: Double(unixMilliseconds) / 1000) }
}
