import Foundation
import GRDB
import Logging
import MarketCore
import PostgresNIO
import TestSupport
import Testing

@testable import MarketStore

/// Books written before the task became columns (each task a JSON document in `data`) open with
/// every field of every task kept, the document gone; and a task with every field set goes in,
/// changes and comes back whole through the columns, on both backends.
@Suite struct TaskColumnsMigrationTests {
    let directory = TemporaryDirectory("cmm-task-columns")

    /// A task with every optional field set, and two excluded providers.
    static var full: MarketTask {
        let peers = (1...4).map { PeerID(digestPrefix: [UInt8](repeating: UInt8($0 * 13), count: 20)) }
        var task = MarketTask(
            id: "t-full", requester: peers[0], maxPrice: Credits(micro: 7_500_000), minReputation: 0.25,
            model: "claude-sonnet-4-5", timeoutSeconds: 600, createdMs: 1_000, deadlineMs: 9_000)
        task.cap = Credits(micro: 5_000_000)
        task.state = .delivered
        task.provider = peers[1]
        task.price = Credits(micro: 4_000_000)
        task.updatedMs = 2_000
        task.rejections = 1
        task.faults = 2
        task.excluded = [peers[2], peers[3]]
        task.resultHash = String(repeating: "ab", count: 32)
        task.reason = "re-opened: the provider went silent, \"quoted\" and ünïcode"
        task.dispute = "the patch, line 3"
        task.workspaceBytes = 123_456
        task.workspaceFiles = 17
        task.workspaceArchiveBytes = 130_000
        task.conversationBytes = 9_999
        return task
    }

    /// The document a task row kept before (the old store's encoding).
    static func document(_ task: MarketTask) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(task), as: UTF8.self)
    }

    @Test func sqliteBooksOfTheJSONFormatOpenWithEveryField() async throws {
        let path = directory.file("old.sqlite").path
        var open = MarketTask(
            id: "t-open", requester: Self.full.requester, maxPrice: Credits(micro: 1), minReputation: 0, model: nil,
            timeoutSeconds: 60, createdMs: 5, deadlineMs: 50)
        open.excluded = []
        let tasks = [Self.full, open]
        // The books as the store before this change left them: migrations v1 to v4 applied.
        let old = try DatabaseQueue(path: path)
        try await old.write { db in
            for sql in [
                MarketSchema.sqlite, MarketSchema.sqliteTaskEvents, MarketSchema.sqliteWorkspaces,
                MarketSchema.sqliteCapacity,
            ] {
                try db.execute(sql: sql)
            }
            try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
            for identifier in ["v1-market", "v2-task-events", "v3-workspaces", "v4-capacity"] {
                try db.execute(sql: "INSERT INTO grdb_migrations VALUES (?)", arguments: [identifier])
            }
            for task in tasks {
                try db.execute(
                    sql: """
                        INSERT INTO tasks (id, requester, provider, state, deadline, created, price, data)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        task.id, task.requester.rawValue, task.provider?.rawValue, task.state.rawValue,
                        task.deadlineMs, task.createdMs, task.price?.micro, try Self.document(task),
                    ])
            }
        }
        try old.close()
        let store = try SQLiteMarketStore(path: path)
        defer { try? store.pool.close() }
        try await Self.checkMigratedAndRoundTrips(store, expecting: tasks)
        let columns = try await store.pool.read { db in try db.columns(in: "tasks").map(\.name) }
        #expect(!columns.contains("data"), "the document column is gone: \(columns)")
    }

    @Test(.enabled(if: PostgresTestDatabase.shouldRun)) func postgresBooksOfTheJSONFormatOpenWithEveryField()
        async throws
    {
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 2, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        // Back to the shape of before: the document column, and a row that has only it.
        try await store.write { tx in
            let tx = tx as! SQLMarketTransaction
            // Books of then kept no record of their migrations: every statement runs again.
            try await tx.run("DROP TABLE market_migrations")
            try await tx.postgres.query("ALTER TABLE tasks ADD COLUMN data TEXT")
            let task = Self.full
            try await tx.postgres.query(
                """
                INSERT INTO tasks (id, requester, provider, state, deadline, created, price, data)
                VALUES (\(task.id), \(task.requester.rawValue), \(task.provider?.rawValue), \(task.state.rawValue),
                        \(task.deadlineMs), \(task.createdMs), \(task.price?.micro), \(try Self.document(task)))
                """)
        }
        #expect(try await store.migrate() == MarketSchema.migrations.map(\.id))
        try await Self.checkMigratedAndRoundTrips(store, expecting: [Self.full])
        let left = try await store.read { tx in
            try await (tx as! SQLMarketTransaction).postgres.query(
                "SELECT count(*)::INT FROM information_schema.columns WHERE table_name = 'tasks' AND column_name = 'data'"
            ).first!.decode(Int.self)
        }
        #expect(left == 0, "the document column is gone")
        // A second start finds nothing to migrate and changes nothing.
        #expect(try await store.migrate() == [])
        #expect(try await store.read { try await $0.task("t-full", lock: false) } == Self.full)
    }

    /// Every migrated task reads back whole; then a full task changes and reads back whole.
    static func checkMigratedAndRoundTrips(_ store: any MarketStore, expecting tasks: [MarketTask]) async throws {
        for task in tasks {
            let read = try await store.read { try await $0.task(task.id, lock: false) }
            #expect(read == task, "\(task.id) after the migration: \(String(describing: read))")
        }
        var new = Self.full
        new.id = "t-new"
        let inserted = new
        try await store.write { try await $0.insertTask(inserted) }
        new.state = .settled
        new.deadlineMs = nil
        new.excluded = []
        new.reason = nil
        new.price = nil
        let changed = new
        try await store.write { try await $0.updateTask(changed) }
        #expect(try await store.read { try await $0.task("t-new", lock: false) } == changed)
        let listed = try await store.read { try await $0.tasks(of: changed.requester, states: [.settled]) }
        #expect(listed == [changed])
        await #expect(throws: MarketError.self, "a second task with the id is refused on both backends") {
            try await store.write { try await $0.insertTask(changed) }
        }
    }
}

extension SQLMarketTransaction {
    /// The PostgreSQL connection under a transaction of the PostgreSQL store.
    var postgres: PostgresSession { session as! PostgresSession }
}
