import Foundation
import Logging
import MarketCore
import PostgresNIO
import TestSupport
import Testing

@testable import MarketStore

/// PostgreSQL's CHECK violations reach the market as the refusal each one means, told apart by
/// the constraint's name (they were all `insufficient_funds` before), and a ledger movement is
/// one statement that moves nothing when the debited account holds too little.
@Suite(.enabled(if: PostgresTestDatabase.shouldRun)) struct PostgresConstraintTests {
    static let peer = PeerID(digestPrefix: [UInt8](repeating: 42, count: 20))

    @Test(arguments: [
        ("UPDATE accounts SET balance = -1 WHERE name = 'peer:\(peer)'", MarketError.Code.insufficientFunds),
        (
            "INSERT INTO ledger (at, debit, credit, amount, kind) VALUES (0, 'mint', 'peer:x', 0, 'mint')",
            .invalidAmount
        ),
        (
            "INSERT INTO ledger (at, debit, credit, amount, kind) VALUES (0, 'mint', 'mint', 5, 'mint')",
            .invalidAmount
        ),
    ])
    func checkViolationsAreToldApartByName(statement: String, code: MarketError.Code) async throws {
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 2, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        let book = MarketBook(rules: MarketRules())
        try await store.write { tx in
            _ = try await book.mint(to: Self.peer, amount: Credits(micro: 5), memo: "seed", nowMs: 0, in: tx)
        }
        do {
            try await store.write { tx in try await (tx as! PostgresMarketTransaction).run(statement) }
            Issue.record("\(statement) was accepted")
        } catch let error as MarketError {
            #expect(error.code == code, "\(statement): \(error)")
        }
        let movement = Movement(from: .peer(Self.peer), to: .market, amount: Credits(micro: 6), kind: .fee)
        do {
            try await store.write { try await $0.insertMovement(movement, nowMs: 1) }
            Issue.record("a movement of more than the account holds was accepted")
        } catch let error as MarketError {
            #expect(error.code == .insufficientFunds && error.message.contains("peer:\(Self.peer) holds"), "\(error)")
        }
        let balances = try await store.read { try await $0.allBalances() }
        #expect(balances["peer:\(Self.peer)"] == 5 && balances["market"] == nil, "nothing moved: \(balances)")
        #expect(try await store.read { try await $0.allMovements().count } == 1)
    }

    /// Two batches that lock two rows in opposite orders deadlock; PostgreSQL ends one of them
    /// inside a step's savepoint. That batch is run again as a whole (it was an internal error for
    /// the step before), so every write succeeds and both increments land.
    @Test func aDeadlockInsideABatchRunsTheBatchAgain() async throws {
        let store = try await PostgresMarketStore.connect(
            url: try PostgresTestDatabase.create(), size: 4, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        try await store.write { tx in
            try await (tx as! PostgresMarketTransaction).run("INSERT INTO accounts VALUES ('x', 0), ('y', 0)")
        }
        @Sendable func bump(_ row: String, wait: Bool) -> @Sendable (any MarketTransaction) async throws -> Void {
            { tx in
                let tx = tx as! PostgresMarketTransaction
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
