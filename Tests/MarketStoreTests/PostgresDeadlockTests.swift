import Foundation
import Logging
import MarketCore
import PostgresNIO
import TestSupport
import Testing

@testable import MarketStore

/// What only PostgreSQL does to a batch: row locks taken in opposite orders deadlock, and the
/// batch PostgreSQL ends is run again. (The refusals both stores share are `StoreSemanticsTests`.)
@Suite(.enabled(if: PostgresTestDatabase.shouldRun)) struct PostgresDeadlockTests {
    /// Two batches that lock two rows in opposite orders deadlock; PostgreSQL ends one of them
    /// inside a step's savepoint. That batch is run again as a whole (it was an internal error for
    /// the step before), so every write succeeds and both increments land.
    @Test func aDeadlockInsideABatchRunsTheBatchAgain() async throws {
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 4, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        try await store.write { tx in
            try await (tx as! SQLMarketTransaction).run("INSERT INTO accounts VALUES ('x', 0), ('y', 0)")
        }
        @Sendable func bump(_ row: String, wait: Bool) -> @Sendable (any MarketTransaction) async throws -> Void {
            { tx in
                let tx = tx as! SQLMarketTransaction
                try await tx.run("UPDATE accounts SET balance = balance + 1 WHERE name = '\(row)'")
                if wait { try await tx.run("SELECT pg_sleep(0.3)") }
            }
        }
        // Two group commits, each gathering its two writes into one batch (the wait), in
        // opposite orders: x then y, y then x.
        let first = GroupCommit(store: store, limits: .init(maxWrites: 2, linger: .milliseconds(200)))
        let second = GroupCommit(store: store, limits: .init(maxWrites: 2, linger: .milliseconds(200)))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await first.write(bump("x", wait: true)) }
            group.addTask { try await second.write(bump("y", wait: true)) }
            try await Task.sleep(for: .milliseconds(50))
            group.addTask { try await first.write(bump("y", wait: false)) }
            group.addTask { try await second.write(bump("x", wait: false)) }
            try await group.waitForAll()
        }
        let balances = try await store.read { try await $0.allBalances() }
        #expect(balances["x"] == 2 && balances["y"] == 2, "\(balances)")
        #expect(first.committed.transactions == 1 && second.committed.transactions == 1)
    }
}
