import Foundation
import GRDB
import MarketCore

/// The embedded market store: one SQLite file in WAL mode. Writers take the lock up front
/// (`BEGIN IMMEDIATE`), so `market verify` or `market mint` from another process can run beside
/// `market serve` safely.
public final class SQLiteMarketStore: MarketStore {
    public let pool: DatabasePool
    public var backendName: String { "sqlite" }
    /// The migrations this store applied when it opened the books (`MarketSchema.migrations`' ids).
    let migrationsApplied: [String]

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
        migrationsApplied = try pool.writeWithoutTransaction { db in
            var applied: [String] = []
            try db.inTransaction(.immediate) {
                let session = Unchecked(SQLiteSession(db: db))
                applied = try InlineTaskExecutor.run { try await MarketSchema.migrate(session.value) }
                return .commit
            }
            return applied
        }
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
            let tx = Unchecked(SQLMarketTransaction(session: SQLiteSession(db: db)))
            return try InlineTaskExecutor.run { try await body(tx.value) }
        }
    }

    /// `body` in one immediate transaction, run to its end on this (GRDB's writer) thread.
    private static func transaction<T: Sendable>(
        _ db: Database, _ body: @escaping @Sendable (any MarketTransaction) async throws -> T
    ) throws -> T {
        var result: T?
        try db.inTransaction(.immediate) {
            let tx = Unchecked(SQLMarketTransaction(session: SQLiteSession(db: db)))
            result = try InlineTaskExecutor.run { try await body(tx.value) }
            return .commit
        }
        return result!
    }

    public func close() async throws {
        try pool.close()
    }
}

/// A value handed to a task that runs on the thread it was made on (`InlineTaskExecutor`):
/// GRDB's `Database` is not `Sendable`, and needs not be here.
struct Unchecked<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// `SQLSession` on one GRDB connection: each statement compiled once per connection and
/// reused (`Database.cachedStatement`), its rows read from the cursor without a copy of GRDB's.
struct SQLiteSession: SQLSession {
    let db: Database

    var dialect: SQLDialect { .sqlite }

    func rows(_ sql: SQL, _ values: [SQLValue]) async throws -> [SQLRow] {
        let statement = try db.cachedStatement(sql: sql.sqlite)
        let arguments = StatementArguments(values.map(\.databaseValue))
        var rows: [SQLRow] = []
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        while let row = try cursor.next() {
            rows.append(SQLRow((0..<row.count).map { SQLValue(row[$0] as DatabaseValue) }))
        }
        return rows
    }

    func execute(script: String) async throws {
        try db.execute(sql: script)
    }

    var isInsideTransaction: Bool { db.isInsideTransaction }

    func failure(of error: any Error) -> SQLFailure {
        guard let error = error as? DatabaseError else { return .other }
        switch error.extendedResultCode {
        case .SQLITE_CONSTRAINT_PRIMARYKEY, .SQLITE_CONSTRAINT_UNIQUE: return .duplicate
        case .SQLITE_CONSTRAINT_CHECK:
            // "CHECK constraint failed: <its name, or its expression>"
            let named = error.message?.components(separatedBy: "CHECK constraint failed: ").last
            return .check(named.map { MarketSchema.checkNames[$0] ?? $0 })
        default: return .other
        }
    }
}

extension SQLValue {
    init(_ value: DatabaseValue) {
        switch value.storage {
        case .null: self = .null
        case .int64(let number): self = .integer(number)
        case .double(let number): self = .real(number)
        case .string(let text): self = .text(text)
        case .blob(let data): self = .text(String(decoding: data, as: UTF8.self))
        }
    }

    var databaseValue: DatabaseValue {
        switch self {
        case .text(let text): text.databaseValue
        case .integer(let value): value.databaseValue
        case .real(let value): value.databaseValue
        case .boolean(let value): (value ? 1 : 0).databaseValue
        case .null: .null
        }
    }
}
