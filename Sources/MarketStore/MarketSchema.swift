import MarketCore

/// The books' schema for both databases, and one way to bring a database up to it: numbered
/// migrations, each applied once and recorded in `market_migrations`, in one transaction with
/// the record, on SQLite and PostgreSQL alike (`migrate(_:)`). A migration's text differs per
/// dialect only where the types or the DDL do.
enum MarketSchema {
    struct Migration: Sendable {
        let id: String
        /// One script; nil when the migration is PostgreSQL's alone.
        let sqlite: String?
        /// One statement each.
        let postgres: [String]
    }

    /// In the order they are applied. The ids are those GRDB's migrator recorded on SQLite
    /// before, so books it migrated go on from where they were. PostgreSQL's statements are
    /// idempotent: books from before `market_migrations` (which kept no record) run them again
    /// and change nothing.
    static let migrations: [Migration] = [
        Migration(id: "v1-market", sqlite: sqlite, postgres: postgresMarket),
        Migration(id: "v2-task-events", sqlite: sqliteTaskEvents, postgres: postgresTaskEvents),
        Migration(id: "v3-workspaces", sqlite: sqliteWorkspaces, postgres: postgresWorkspaces),
        Migration(id: "v4-capacity", sqlite: sqliteCapacity, postgres: postgresCapacity),
        Migration(id: "v5-task-columns", sqlite: sqliteTaskColumns, postgres: postgresTaskColumns),
        // Messages between instances on one database: PostgreSQL's alone.
        Migration(id: "v6-relay", sqlite: nil, postgres: postgresRelay),
        Migration(id: "v7-piece-bytes", sqlite: sqlitePieceBytes, postgres: postgresPieceBytes),
    ]

    static let createRecordSQL = "CREATE TABLE IF NOT EXISTS market_migrations (id TEXT PRIMARY KEY NOT NULL)"
    static let appliedSQL = SQL("SELECT id FROM market_migrations")
    static let recordSQL = SQL("INSERT INTO market_migrations (id) VALUES ($1)")
    /// GRDB's record of the migrations it applied to SQLite books before.
    static let grdbRecordSQL = SQL(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'grdb_migrations'")
    static let importGRDBRecordSQL = SQL(
        "INSERT INTO market_migrations (id) SELECT identifier FROM grdb_migrations WHERE true ON CONFLICT DO NOTHING")

    /// Applies every migration the books have not had, inside the caller's transaction (which
    /// holds the database, or PostgreSQL's advisory lock, against a second migrator). Returns
    /// the ids applied.
    @discardableResult
    static func migrate(_ session: any SQLSession) async throws -> [String] {
        try await session.execute(script: createRecordSQL)
        if session.dialect == .sqlite, try await session.rows(grdbRecordSQL, []).first?.int64(0) == 1 {
            _ = try await session.rows(importGRDBRecordSQL, [])
        }
        let applied = Set(try await session.rows(appliedSQL, []).map { try $0.text(0) })
        var ran: [String] = []
        for migration in migrations where !applied.contains(migration.id) {
            switch session.dialect {
            case .sqlite:
                if let script = migration.sqlite { try await session.execute(script: script) }
            case .postgres:
                for statement in migration.postgres { try await session.execute(script: statement) }
            }
            _ = try await session.rows(recordSQL, [.text(migration.id)])
            ran.append(migration.id)
        }
        return ran
    }

    /// SQLite names a failed CHECK by its expression when the CHECK has no name; PostgreSQL by
    /// the name it gave it. The books' CHECKs, by both.
    static let checkNames = [
        "balance >= 0 OR name = 'mint'": "accounts_check",
        "amount > 0": "ledger_amount_check",
        "debit <> credit": "ledger_check",
    ]

    /// Pieces no rule needs any more go (those of tasks that ended or re-opened, and the
    /// requester's once the result is in: kept until now when a task moved outside the server,
    /// by `market resolve`); then the running counts of what is kept start from the pieces
    /// themselves, per blob of a task and for the market (`''`, `''`). The per-sender index
    /// served the per-sender sum, which the counts replace.
    static let pieceBytesCleanup = """
        DELETE FROM blob_chunks
        WHERE task_id NOT IN (SELECT id FROM tasks WHERE state IN ('assigned', 'running', 'delivered', 'disputed'))
            OR (blob IN ('workspace', 'conversation')
                AND task_id IN (SELECT id FROM tasks WHERE state IN ('delivered', 'disputed')))
        """
    static let pieceBytesFill = [
        "INSERT INTO piece_bytes (task_id, blob, bytes) SELECT task_id, blob, sum(bytes) FROM blob_chunks GROUP BY task_id, blob",
        "INSERT INTO piece_bytes (task_id, blob, bytes) SELECT '', '', coalesce(sum(bytes), 0) FROM blob_chunks",
    ]

    static let sqlitePieceBytes = """
        \(pieceBytesCleanup);
        DROP INDEX blob_chunks_sender;
        CREATE TABLE piece_bytes (
            task_id TEXT NOT NULL,
            blob TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (task_id, blob)
        ) WITHOUT ROWID;
        \(pieceBytesFill.joined(separator: ";\n"));
        """

    static let postgresPieceBytes: [String] =
        [
            pieceBytesCleanup,
            "DROP INDEX IF EXISTS blob_chunks_sender",
            """
            CREATE TABLE IF NOT EXISTS piece_bytes (
                task_id TEXT NOT NULL, blob TEXT NOT NULL, bytes BIGINT NOT NULL, PRIMARY KEY (task_id, blob))
            """,
            "DELETE FROM piece_bytes",
        ] + pieceBytesFill

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

    static let postgresMarket: [String] = [
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
        CREATE TABLE IF NOT EXISTS nonces (
            peer TEXT NOT NULL, nonce TEXT NOT NULL, expires BIGINT NOT NULL, PRIMARY KEY (peer, nonce))
        """,
        "CREATE INDEX IF NOT EXISTS nonces_expires ON nonces(expires)",
        """
        CREATE TABLE IF NOT EXISTS messages (
            peer TEXT NOT NULL, id TEXT NOT NULL, result TEXT NOT NULL, at BIGINT NOT NULL, PRIMARY KEY (peer, id))
        """,
        "CREATE INDEX IF NOT EXISTS messages_at ON messages(at)",
    ]

    static let postgresTaskEvents: [String] = [
        """
        CREATE TABLE IF NOT EXISTS task_events (
            id BIGSERIAL PRIMARY KEY, task_id TEXT NOT NULL, state TEXT NOT NULL, at BIGINT NOT NULL,
            created BIGINT NOT NULL, price BIGINT)
        """,
        "CREATE INDEX IF NOT EXISTS task_events_at ON task_events(at)",
    ]

    static let postgresWorkspaces: [String] = [
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS max_ws_bytes BIGINT",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS max_ws_files BIGINT",
        """
        CREATE TABLE IF NOT EXISTS blob_chunks (
            task_id TEXT NOT NULL, blob TEXT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
            sender TEXT NOT NULL, bytes BIGINT NOT NULL, frame TEXT NOT NULL, PRIMARY KEY (task_id, blob, idx))
        """,
        "CREATE INDEX IF NOT EXISTS blob_chunks_sender ON blob_chunks(sender)",
    ]

    static let postgresCapacity: [String] = [
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS paused_until BIGINT",
        "ALTER TABLE offers ADD COLUMN IF NOT EXISTS paused_for TEXT",
        "ALTER TABLE peers ADD COLUMN IF NOT EXISTS hand_backs INTEGER NOT NULL DEFAULT 0",
    ]

    static let postgresTaskColumns: [String] = [
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

    static let postgresRelay: [String] = [
        """
        CREATE TABLE IF NOT EXISTS relay (
            id BIGSERIAL PRIMARY KEY, peer TEXT NOT NULL, text TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())
        """
    ]
}
