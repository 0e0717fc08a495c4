import Logging
import PostgresNIO
import Synchronization

/// Every statement of the PostgreSQL store as a named prepared statement: parsed and planned
/// once per connection, then only bound and executed.
///
/// postgres-nio prepares a statement by its type (`PostgresPreparedStatement` has a static name
/// and SQL), while the store writes its statements as `PostgresQuery` interpolations, whose SQL
/// text is fixed per call site and whose values are bound. So each distinct SQL text gets a slot
/// the first time it runs, for the life of the process, and each slot is one of `capacity`
/// types (`Slot<…>`, a number in binary type arguments): the text's slot type is its prepared
/// statement, on every connection. Texts past `capacity` run unnamed, as before.
enum PreparedStatements {
    static let capacity = 128

    /// Which SQL text holds which slot.
    struct Registry {
        let capacity: Int
        private(set) var texts: [String] = []
        private var slots: [String: Int] = [:]

        init(capacity: Int) { self.capacity = capacity }

        /// The slot of `sql`, given now if it has none; nil when every slot is taken.
        mutating func slot(for sql: String) -> Int? {
            if let slot = slots[sql] { return slot }
            guard texts.count < capacity else { return nil }
            texts.append(sql)
            slots[sql] = texts.count - 1
            return texts.count - 1
        }
    }

    private static let registry = Mutex(Registry(capacity: capacity))
    /// Each slot's statement name, made once.
    static let names = (0..<capacity).map { "cmm_\($0)" }

    static func slot(for sql: String) -> Int? { registry.withLock { $0.slot(for: sql) } }

    static func sql(ofSlot slot: Int) -> String { registry.withLock { $0.texts[slot] } }

    /// The rows of `query` on `connection`, through its slot's prepared statement.
    static func rows(of query: PostgresQuery, on connection: PostgresConnection, logger: Logger) async throws
        -> [PostgresRow]
    {
        guard let slot = slot(for: query.sql) else {
            return Array(try await connection.query(query, logger: logger).get().rows)
        }
        return try await rows(of: statements[slot], query.binds, on: connection, logger: logger)
    }

    private static func rows<Statement: SlotStatement>(
        of _: Statement.Type, _ bindings: PostgresBindings, on connection: PostgresConnection, logger: Logger
    ) async throws -> [PostgresRow] {
        var rows: [PostgresRow] = []
        for try await row in try await connection.execute(Statement(bindings: bindings), logger: logger) {
            rows.append(row)
        }
        return rows
    }

    /// The statement type of every slot, by number.
    static let statements: [any SlotStatement.Type] = (0..<capacity).map { number in
        func bit(_ place: Int) -> any Bit.Type { number & (1 << place) != 0 ? One.self : Zero.self }
        return slotType(bit(6), bit(5), bit(4), bit(3), bit(2), bit(1), bit(0))
    }

    private static func slotType<A: Bit, B: Bit, C: Bit, D: Bit, E: Bit, F: Bit, G: Bit>(
        _: A.Type, _: B.Type, _: C.Type, _: D.Type, _: E.Type, _: F.Type, _: G.Type
    ) -> any SlotStatement.Type {
        Slot<A, B, C, D, E, F, G>.self
    }
}

protocol SlotStatement: PostgresPreparedStatement where Row == PostgresRow {
    init(bindings: PostgresBindings)
}

protocol Bit { static var value: Int { get } }
enum Zero: Bit { static var value: Int { 0 } }
enum One: Bit { static var value: Int { 1 } }

/// Slot number `ABCDEFG` (binary): its SQL is the text that took the slot.
struct Slot<A: Bit, B: Bit, C: Bit, D: Bit, E: Bit, F: Bit, G: Bit>: SlotStatement {
    static var number: Int {
        A.value << 6 | B.value << 5 | C.value << 4 | D.value << 3 | E.value << 2 | F.value << 1 | G.value
    }
    static var name: String { PreparedStatements.names[number] }
    static var sql: String { PreparedStatements.sql(ofSlot: number) }

    let bindings: PostgresBindings
    init(bindings: PostgresBindings) { self.bindings = bindings }
    func makeBindings() throws -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}
