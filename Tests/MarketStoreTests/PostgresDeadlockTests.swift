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
    /// the step before), so every write succeeds and both increments land. Nothing here waits on
    /// time: each batch forms when its second write is queued (the linger never runs out), and
    /// each holds its first row until the other holds its own, so the deadlock always happens,
    /// and the third run of a first step shows it did.
    @Test func aDeadlockInsideABatchRunsTheBatchAgain() async throws {
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 4, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        try await store.write { tx in
            try await (tx as! SQLMarketTransaction).run("INSERT INTO accounts VALUES ('x', 0), ('y', 0)")
        }
        let bothHoldARow = Rendezvous(parties: 2)
        @Sendable func bump(_ row: String, first: Bool) -> @Sendable (any MarketTransaction) async throws -> Void {
            { tx in
                let tx = tx as! SQLMarketTransaction
                try await tx.run("UPDATE accounts SET balance = balance + 1 WHERE name = '\(row)'")
                if first { await bothHoldARow.arrive() }
            }
        }
        // Two group commits, each gathering its two writes into one batch, in opposite orders:
        // x then y, y then x.
        let first = GroupCommit(store: store, limits: .init(maxWrites: 2, linger: .seconds(600)))
        let second = GroupCommit(store: store, limits: .init(maxWrites: 2, linger: .seconds(600)))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await first.write(bump("x", first: true)) }
            group.addTask { try await second.write(bump("y", first: true)) }
            while first.queued < 1 || second.queued < 1 { await Task.yield() }
            group.addTask { try await first.write(bump("y", first: false)) }
            group.addTask { try await second.write(bump("x", first: false)) }
            try await group.waitForAll()
        }
        let balances = try await store.read { try await $0.allBalances() }
        #expect(balances["x"] == 2 && balances["y"] == 2, "\(balances)")
        #expect(first.committed.transactions == 1 && second.committed.transactions == 1)
        #expect(await bothHoldARow.arrivals == 3, "one batch ran again after the deadlock")
    }
}

/// Lets `parties` callers on until all of them have arrived; later ones pass at once.
actor Rendezvous {
    let parties: Int
    private(set) var arrivals = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(parties: Int) { self.parties = parties }

    func arrive() async {
        arrivals += 1
        if arrivals >= parties {
            for continuation in waiting { continuation.resume() }
            waiting = []
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }
}
