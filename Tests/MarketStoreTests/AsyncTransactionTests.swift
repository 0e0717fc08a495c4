import Foundation
import Logging
import MarketCore
import PostgresNIO
import TestSupport
import Testing

@testable import MarketStore

/// The store's transactions as async code: on PostgreSQL each statement is its connection's
/// named prepared statement, and a transaction that suspends on SQLite still runs to its end on
/// GRDB's writer thread, in order, with nothing of another transaction between its statements.
@Suite struct AsyncTransactionTests {
    let directory = TemporaryDirectory("cmm-async-tx")
    static let peer = PeerID(digestPrefix: [UInt8](repeating: 7, count: 20))

    @Test func aTextKeepsItsSlotAndTextsPastTheCapacityGetNone() {
        var registry = PreparedStatements.Registry(capacity: 2)
        #expect(registry.slot(for: "SELECT 1") == 0)
        #expect(registry.slot(for: "SELECT 2") == 1)
        #expect(registry.slot(for: "SELECT 1") == 0)
        #expect(registry.slot(for: "SELECT 3") == nil)
        #expect(registry.texts == ["SELECT 1", "SELECT 2"])
    }

    @Test func everySlotIsItsOwnStatementType() {
        let names = Set(PreparedStatements.statements.map { $0.name })
        #expect(names.count == PreparedStatements.capacity)
        #expect(PreparedStatements.statements[5].name == "cmm_5")
        #expect(PreparedStatements.statements[127].name == "cmm_127")
    }

    @Test(.enabled(if: PostgresTestDatabase.shouldRun))
    func postgresStatementsArePreparedOncePerConnection() async throws {
        // One connection, so that every transaction sees the same session's statements.
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 1, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        for _ in 0..<3 {
            try await store.write { try await $0.upsertPeer(Self.peer, keyDocument: "{}", nowMs: 1) }
            #expect(try await store.read { try await $0.peerCount() } == 1)
        }
        let prepared = try await store.read { tx in
            try await (tx as! SQLMarketTransaction).postgres.query(
                "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'cmm_%'"
            ).map { try $0.decode((String, String).self) }
        }
        let upserts = prepared.filter { $0.1.hasPrefix("INSERT INTO peers") }
        let counts = prepared.filter { $0.1 == SQLMarketTransaction.peerCountSQL.postgres }
        #expect(upserts.count == 1 && counts.count == 1, "\(prepared)")
        #expect(prepared.allSatisfy { PreparedStatements.names.contains($0.0) })
    }

    @Test func aSQLiteTransactionThatSuspendsRunsToItsEndAlone() async throws {
        let store = try SQLiteMarketStore(path: directory.file("market.sqlite").path)
        defer { Task { try? await store.close() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                group.addTask {
                    try await store.write { tx in
                        try await tx.upsertPeer(Self.peer, keyDocument: "\(index)", nowMs: Int64(index))
                        // A real suspension mid-transaction: another writer must not get in here.
                        try await Task.sleep(for: .milliseconds(20))
                        let record = try await tx.peer(Self.peer)
                        #expect(record?.keyDocument == "\(index)", "another transaction ran inside this one")
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await store.read { try await $0.peerCount() } == 1)
    }
}
