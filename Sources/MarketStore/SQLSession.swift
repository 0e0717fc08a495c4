import MarketCore

/// The two SQL dialects the market's books are kept in. Everything that differs between them is
/// named here or in `SQL(postgres:sqlite:)`, next to the statement it changes.
enum SQLDialect: Sendable {
    case sqlite, postgres
}

/// One statement of the books, written once: `$1`, `$2`, … for its values, and only SQL that
/// both dialects read the same. SQLite's text (`?1`, `?2`, …, its numbered parameters) is made
/// when the statement is, once; a statement that must differ gives both texts.
struct SQL: Sendable, Hashable {
    let postgres: String
    let sqlite: String

    init(_ text: String) {
        postgres = text
        sqlite = Self.sqliteParameters(text)
    }

    init(postgres: String, sqlite: String) {
        self.postgres = postgres
        self.sqlite = Self.sqliteParameters(sqlite)
    }

    /// The statement, and on PostgreSQL `FOR UPDATE [OF table]` after it: SQLite has no row
    /// locks (a write transaction holds the whole database).
    static func locking(_ text: String, of table: String? = nil) -> SQL {
        SQL(postgres: text + " FOR UPDATE" + (table.map { " OF \($0)" } ?? ""), sqlite: text)
    }

    func text(in dialect: SQLDialect) -> String {
        switch dialect {
        case .postgres: postgres
        case .sqlite: sqlite
        }
    }

    /// Two writes as one statement on PostgreSQL (`WITH step AS (first) second`, the second's
    /// parameters numbered after the first's: one round trip) and two on SQLite, which has no
    /// writing CTEs. Only for writes that do not read each other's rows: PostgreSQL runs both
    /// parts of one statement on the same snapshot.
    struct Pair: Sendable {
        let first: SQL
        let second: SQL
        /// The first statement's parameters: the values of the first come first.
        let split: Int
        let joined: SQL

        init(_ first: SQL, then second: SQL) {
            self.first = first
            self.second = second
            split = first.highestParameter
            joined = SQL(
                postgres: "WITH step AS (\(first.postgres)) \(second.shifted(by: split))", sqlite: "")
        }
    }

    /// The highest `$n` the statement names.
    var highestParameter: Int {
        var highest = 0
        _ = Self.renumbered(postgres) { number in
            highest = max(highest, number)
            return ""
        }
        return highest
    }

    /// The PostgreSQL text with every `$n` as `$(n + offset)`.
    func shifted(by offset: Int) -> String { Self.renumbered(postgres) { "$\($0 + offset)" } }

    /// `$n` as `?n`: SQLite reads `$1` as a parameter *named* "$1", numbered by first appearance.
    static func sqliteParameters(_ text: String) -> String { renumbered(text) { "?\($0)" } }

    /// `text` with every parameter `$n` written as `replacement(n)`; a `$` without digits stays.
    private static func renumbered(_ text: String, _ replacement: (Int) -> String) -> String {
        var result = ""
        result.reserveCapacity(text.utf8.count)
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            result += rest[..<dollar]
            let digits = rest[rest.index(after: dollar)...].prefix { $0.isASCII && $0.isNumber }
            result += Int(digits).map(replacement) ?? "$" + digits
            rest = rest[rest.index(dollar, offsetBy: 1 + digits.count)...]
        }
        return result + rest
    }
}

/// A value bound to a statement or read from a row, as both dialects hold it.
enum SQLValue: Sendable, Equatable {
    case text(String)
    case integer(Int64)
    case real(Double)
    /// A PostgreSQL BOOLEAN; SQLite keeps it as 0 or 1.
    case boolean(Bool)
    case null

    static func optional(_ value: Int64?) -> SQLValue { value.map(SQLValue.integer) ?? .null }
    static func optional(_ value: Int?) -> SQLValue { value.map { .integer(Int64($0)) } ?? .null }
    static func optional(_ value: String?) -> SQLValue { value.map(SQLValue.text) ?? .null }
    static func optional(_ value: Double?) -> SQLValue { value.map(SQLValue.real) ?? .null }
    static func int(_ value: Int) -> SQLValue { .integer(Int64(value)) }
}

/// One row of a result, its columns read by position in the statement's SELECT list. A column
/// of another type than the one asked for is an error naming the column, never a guess.
struct SQLRow: Sendable {
    let values: [SQLValue]

    init(_ values: [SQLValue]) { self.values = values }

    private func mismatch(_ index: Int, _ wanted: String) -> MarketError {
        MarketError(
            .internalError,
            "column \(index + 1) of a stored row is \(index < values.count ? "\(values[index])" : "missing"), not \(wanted)"
        )
    }

    func text(_ index: Int) throws -> String {
        guard let value = try optionalText(index) else { throw mismatch(index, "text") }
        return value
    }

    func optionalText(_ index: Int) throws -> String? {
        switch index < values.count ? values[index] : nil {
        case .text(let value): value
        case .null: nil
        default: throw mismatch(index, "text")
        }
    }

    func int64(_ index: Int) throws -> Int64 {
        guard let value = try optionalInt64(index) else { throw mismatch(index, "an integer") }
        return value
    }

    func optionalInt64(_ index: Int) throws -> Int64? {
        switch index < values.count ? values[index] : nil {
        case .integer(let value): value
        case .boolean(let value): value ? 1 : 0
        case .null: nil
        default: throw mismatch(index, "an integer")
        }
    }

    func int(_ index: Int) throws -> Int { Int(try int64(index)) }

    func optionalInt(_ index: Int) throws -> Int? { try optionalInt64(index).map { Int($0) } }

    func double(_ index: Int) throws -> Double {
        guard let value = try optionalDouble(index) else { throw mismatch(index, "a number") }
        return value
    }

    /// A REAL column: SQLite may hand back a whole number as an integer.
    func optionalDouble(_ index: Int) throws -> Double? {
        switch index < values.count ? values[index] : nil {
        case .real(let value): value
        case .integer(let value): Double(value)
        case .null: nil
        default: throw mismatch(index, "a number")
        }
    }

    func bool(_ index: Int) throws -> Bool { try int64(index) != 0 }
}

/// What a refused statement means to the books, whichever database refused it.
enum SQLFailure: Equatable {
    /// A PRIMARY KEY or UNIQUE constraint.
    case duplicate
    /// A CHECK, by the constraint's name (`MarketSchema.checkNames`).
    case check(String?)
    /// A deadlock or a serialization failure: the whole transaction may be run again.
    case transient
    case other
}

/// The connection a transaction of the books runs on: the one port each database implements
/// (`SQLiteSession`, `PostgresSession`); the books' statements and rules over it
/// (`SQLMarketTransaction`) are written once.
protocol SQLSession {
    var dialect: SQLDialect { get }
    /// The rows of `sql` with `values` bound to `$1`, `$2`, …; a statement compiled once per
    /// connection and reused.
    func rows(_ sql: SQL, _ values: [SQLValue]) async throws -> [SQLRow]
    /// Statements run once (a migration, BEGIN): nothing bound, nothing kept compiled.
    func execute(script: String) async throws
    func failure(of error: any Error) -> SQLFailure
    /// False when the database ended the whole transaction (SQLite does on a full disk).
    var isInsideTransaction: Bool { get }
}
