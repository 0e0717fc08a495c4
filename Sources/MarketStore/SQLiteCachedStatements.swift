import GRDB

// The store's statements are a fixed set: each is compiled once per connection and reused
// (`Database.cachedStatement`), not parsed and planned again for every frame.

extension Database {
    func execute(cachedSQL sql: String, arguments: StatementArguments = StatementArguments()) throws {
        try cachedStatement(sql: sql).execute(arguments: arguments)
    }
}

extension Row {
    static func fetchOne(
        _ db: Database, cachedSQL sql: String, arguments: StatementArguments = StatementArguments()
    ) throws -> Row? {
        try fetchOne(db.cachedStatement(sql: sql), arguments: arguments)
    }

    static func fetchAll(
        _ db: Database, cachedSQL sql: String, arguments: StatementArguments = StatementArguments()
    ) throws -> [Row] {
        try fetchAll(db.cachedStatement(sql: sql), arguments: arguments)
    }
}

extension DatabaseValueConvertible {
    /// The first column of the first row, through the cached statement.
    static func fetchOne(
        _ db: Database, cachedSQL sql: String, arguments: StatementArguments = StatementArguments()
    ) throws -> Self? {
        try Row.fetchOne(db, cachedSQL: sql, arguments: arguments).flatMap { $0[0] as Self? }
    }

    /// The first column of every row (NULLs left out).
    static func fetchAll(
        _ db: Database, cachedSQL sql: String, arguments: StatementArguments = StatementArguments()
    ) throws -> [Self] {
        try Row.fetchAll(db, cachedSQL: sql, arguments: arguments).compactMap { $0[0] as Self? }
    }
}
