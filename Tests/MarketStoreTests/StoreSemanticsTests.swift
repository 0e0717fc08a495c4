import Foundation
import Logging
import MarketCore
import TestSupport
import Testing

@testable import MarketStore

/// The cases where the two stores used to differ, run on both: the books are one SQL layer now
/// (`SQLMarketTransaction`), so a refusal means the same thing whichever database refused it.
@Suite struct StoreSemanticsTests {
    let directory = TemporaryDirectory("cmm-store-semantics")
    static let peer = PeerID(digestPrefix: [UInt8](repeating: 42, count: 20))
    static let other = PeerID(digestPrefix: [UInt8](repeating: 7, count: 20))

    /// An open task of `peer`'s, as the cases below insert it.
    static func task(_ id: String) -> MarketTask {
        MarketTask(
            id: id, requester: peer, maxPrice: Credits(micro: 3), minReputation: 0, model: nil, timeoutSeconds: 60,
            createdMs: 1, deadlineMs: 100)
    }

    func seeded(_ target: StoreTarget, with amount: Int64 = 5) async throws -> any MarketStore {
        let store = try await target.make(in: directory)
        let book = MarketBook(rules: MarketRules())
        try await store.write { tx in
            _ = try await book.mint(to: Self.peer, amount: Credits(micro: amount), memo: "seed", nowMs: 0, in: tx)
        }
        return store
    }

    /// A CHECK is told apart by its constraint (SQLite names an unnamed CHECK by its expression,
    /// PostgreSQL by a name of its own; both reach the market as the same refusal), and the
    /// refused statement changes nothing.
    @Test(
        arguments: StoreTarget.enabled,
        [
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
    func checkViolationsAreToldApartByName(target: StoreTarget, case: (String, MarketError.Code)) async throws {
        let (statement, code) = `case`
        let store = try await seeded(target)
        defer { Task { try? await store.close() } }
        do {
            try await store.write { tx in try await (tx as! SQLMarketTransaction).run(statement) }
            Issue.record("\(target): \(statement) was accepted")
        } catch let error as MarketError {
            #expect(error.code == code, "\(target): \(statement): \(error)")
        }
        #expect(try await store.read { try await $0.allBalances() } == ["peer:\(Self.peer)": 5, "mint": -5])
        #expect(try await store.read { try await $0.allMovements().count } == 1)
    }

    /// A movement of more than the account holds moves nothing and names the account and what it
    /// holds; one that would take the mint past what an Int64 holds is refused as invalid.
    @Test(arguments: StoreTarget.enabled)
    func movementsThatCannotHappenMoveNothing(target: StoreTarget) async throws {
        let store = try await seeded(target)
        defer { Task { try? await store.close() } }
        let tooMuch = Movement(from: .peer(Self.peer), to: .market, amount: Credits(micro: 6), kind: .fee)
        do {
            try await store.write { try await $0.insertMovement(tooMuch, nowMs: 1) }
            Issue.record("\(target): a movement of more than the account holds was accepted")
        } catch let error as MarketError {
            #expect(error.code == .insufficientFunds && error.message.contains("peer:\(Self.peer) holds"), "\(error)")
        }
        let overflow = Movement(from: .mint, to: .peer(Self.other), amount: Credits(micro: .max), kind: .mint)
        do {
            try await store.write { try await $0.insertMovement(overflow, nowMs: 1) }
            Issue.record("\(target): a mint past Int64 was accepted")
        } catch let error as MarketError {
            #expect(error.code == .invalidAmount, "\(error)")
        }
        #expect(try await store.read { try await $0.allBalances() } == ["peer:\(Self.peer)": 5, "mint": -5])
        #expect(try await store.read { try await $0.allMovements().count } == 1)
    }

    /// A task id is taken once: the second insert is `duplicate_task` on both stores (it was an
    /// error only on PostgreSQL), and the first task stays as it was.
    @Test(arguments: StoreTarget.enabled)
    func aDuplicateTaskIsRefused(target: StoreTarget) async throws {
        let store = try await target.make(in: directory)
        defer { Task { try? await store.close() } }
        let task = Self.task("t-1")
        try await store.write { try await $0.insertTask(task) }
        var twin = task
        twin.maxPrice = Credits(micro: 9)
        do {
            try await store.write { [twin] in try await $0.insertTask(twin) }
            Issue.record("\(target): a duplicate task was accepted")
        } catch let error as MarketError {
            #expect(error.code == .duplicateTask, "\(error)")
        }
        #expect(try await store.read { try await $0.task("t-1", lock: false) } == task)
    }

    /// Balances change by increments, never by a value read before (SQLite used to upsert a
    /// balance it had read, which only its single writer kept right): movements on one account
    /// from many concurrent transactions all count.
    @Test(arguments: StoreTarget.enabled)
    func concurrentMovementsOnOneAccountAllCount(target: StoreTarget) async throws {
        let store = try await seeded(target, with: 40)
        defer { Task { try? await store.close() } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<80 {
                let movement =
                    index.isMultiple(of: 2)
                    ? Movement(from: .mint, to: .peer(Self.peer), amount: Credits(micro: 1), kind: .mint)
                    : Movement(from: .peer(Self.peer), to: .market, amount: Credits(micro: 1), kind: .fee)
                group.addTask { try await store.write { try await $0.insertMovement(movement, nowMs: 2) } }
            }
            try await group.waitForAll()
        }
        let balances = try await store.read { try await $0.allBalances() }
        #expect(balances == ["peer:\(Self.peer)": 40, "market": 40, "mint": -80], "\(target): \(balances)")
        #expect(try await store.read { try await $0.allMovements().count } == 81)
    }

    /// A frame's first step: a fresh nonce on a new message, a fresh nonce on a message already
    /// answered (its answer), and a nonce spent before (a replay, whatever the message), the same
    /// on both stores; and a provider's standing read in one step.
    @Test(arguments: StoreTarget.enabled)
    func aFramesNonceAndMessageAreClaimedInOneStep(target: StoreTarget) async throws {
        let store = try await seeded(target)
        defer { Task { try? await store.close() } }
        let claims = try await store.write { tx in
            let first = try await tx.claim(nonce: "n1", peer: Self.peer, expiresMs: 100, messageID: "m1")
            try await tx.recordMessage(peer: Self.peer, id: "m1", result: "ack-1", nowMs: 1)
            return [
                first,
                try await tx.claim(nonce: "n2", peer: Self.peer, expiresMs: 100, messageID: "m1"),
                try await tx.claim(nonce: "n1", peer: Self.peer, expiresMs: 100, messageID: "m2"),
                try await tx.claim(nonce: "n1", peer: Self.other, expiresMs: 100, messageID: "m1"),
            ]
        }
        #expect(claims == [.fresh, .answered("ack-1"), .replayed, .fresh], "\(target)")
        #expect(try await store.read { try await $0.nonceCount() } == 3)
        let standing = try await store.write { tx in
            try await tx.upsertPeer(Self.peer, keyDocument: "{}", nowMs: 1)
            try await tx.updateStanding(Self.peer, reputation: Reputation(), settledJobs: 4)
            try await tx.insertMovement(
                Movement(from: .peer(Self.peer), to: .held(Self.peer), amount: Credits(micro: 3), kind: .holdback),
                nowMs: 2)
            return (try await tx.standing(of: Self.peer), try await tx.standing(of: Self.other))
        }
        #expect(standing.0 == ProviderStanding(settledJobs: 4, heldBack: Credits(micro: 3)), "\(target)")
        #expect(standing.1 == ProviderStanding(settledJobs: 0, heldBack: .zero), "\(target)")
    }

    /// The writes that go as one statement on PostgreSQL (`SQL.Pair`) land whole on both stores: a
    /// task with the state it enters, an outcome with its peer's standing; a duplicate task leaves
    /// no event behind; two peers are read in one step.
    @Test(arguments: StoreTarget.enabled)
    func pairedWritesLandWhole(target: StoreTarget) async throws {
        let store = try await target.make(in: directory)
        defer { Task { try? await store.close() } }
        var task = Self.task("t-2")
        let opened = TaskEventRecord(taskID: "t-2", state: .open, atMs: 1, createdMs: 1, price: nil)
        try await store.write { [task] in try await $0.insertTask(task, entering: opened) }
        do {
            try await store.write { [task] in try await $0.insertTask(task, entering: opened) }
            Issue.record("\(target): a duplicate task was accepted")
        } catch let error as MarketError {
            #expect(error.code == .duplicateTask, "\(error)")
        }
        task.state = .cancelled
        let cancelled = TaskEventRecord(taskID: "t-2", state: .cancelled, atMs: 5, createdMs: 1, price: 2)
        try await store.write { [task] in try await $0.updateTask(task, entering: cancelled) }
        #expect(try await store.read { try await $0.task("t-2", lock: false) } == task)
        #expect(try await store.read { try await $0.taskEvents(sinceMs: 0) } == [opened, cancelled], "\(target)")

        let outcome = ReputationOutcome(peer: Self.peer, success: true, taskID: "t-2", role: "provider")
        let reputation = Reputation(successes: 1, failures: 0, samples: 1, atMs: 5)
        let records = try await store.write { tx in
            try await tx.upsertPeer(Self.peer, keyDocument: "{\"p\":1}", nowMs: 1)
            try await tx.upsertPeer(Self.other, keyDocument: "{\"p\":2}", nowMs: 1)
            try await tx.recordOutcome(outcome, nowMs: 5, reputation: reputation, settledJobs: 1)
            return try await tx.peers(Self.peer, Self.other)
        }
        #expect(records[Self.peer]?.reputation == reputation && records[Self.peer]?.settledJobs == 1, "\(target)")
        #expect(records[Self.other]?.keyDocument == "{\"p\":2}" && records.count == 2)
        #expect(try await store.read { try await $0.peers(Self.other, Self.other).keys.sorted() } == [Self.other])
        let outcomes = try await store.read { try await $0.outcomes(of: Self.peer, limit: 5) }
        #expect(outcomes.map(\.outcome) == [outcome] && outcomes.map(\.atMs) == [5])
    }

    /// A pair's second statement is numbered after its first: `$n` moves, `$$` and text stay.
    @Test func aPairNumbersItsSecondStatementAfterItsFirst() {
        let pair = SQL.Pair(SQL("UPDATE a SET x = $1 WHERE id = $2"), then: SQL("INSERT INTO b VALUES ($1, '$', $10)"))
        #expect(pair.split == 2)
        #expect(
            pair.joined.postgres
                == "WITH step AS (UPDATE a SET x = $1 WHERE id = $2) INSERT INTO b VALUES ($3, '$', $12)")
    }

    /// Both stores record the migrations they applied in one table, and a store opened again on
    /// the same books applies none.
    @Test(arguments: StoreTarget.enabled)
    func migrationsAreRecordedAndRunOnce(target: StoreTarget) async throws {
        let store = try await seeded(target)
        let recorded = try await store.read { tx in
            try await (tx as! SQLMarketTransaction).rows(MarketSchema.appliedSQL).map { try $0.text(0) }
        }
        #expect(Set(recorded) == Set(MarketSchema.migrations.map(\.id)), "\(target): \(recorded)")
        let again: [String]
        switch target {
        case .sqlite:
            try await store.close()
            let reopened = try SQLiteMarketStore(path: directory.file("market.sqlite").path)
            defer { Task { try? await reopened.close() } }
            again = reopened.migrationsApplied
            #expect(try await reopened.read { try await $0.balance(.peer(Self.peer)) } == Credits(micro: 5))
        case .postgres:
            defer { Task { try? await store.close() } }
            again = try await (store as! PostgresMarketStore).migrate()
        }
        #expect(again == [], "\(target): \(again)")
    }
}
