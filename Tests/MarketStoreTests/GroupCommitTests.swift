import Foundation
import MarketCore
import MarketStore
import TestSupport
import Testing

/// Group commit on the real stores: many writes in one transaction, each answered with its own
/// outcome once the transaction has committed; a write that throws changes nothing and spoils
/// nothing else; a transaction that is lost loses the whole batch, and says so to every write.
@Suite struct GroupCommitTests {
    static let peers = (1...4).map { PeerID(digestPrefix: [UInt8](repeating: UInt8($0 * 11), count: 20)) }
    /// A write's own amount, so that what was kept can be told apart.
    static func amount(_ index: Int) -> Credits { Credits(micro: 1_000_000 + Int64(index)) }

    struct Refused: Error {}

    let directory = TemporaryDirectory("cmm-group")
    let book = MarketBook(rules: MarketRules())

    func seeded(_ target: StoreTarget) async throws -> any MarketStore {
        let store = try await target.make(in: directory)
        for peer in Self.peers {
            try await store.write { try await $0.upsertPeer(peer, keyDocument: "{}", nowMs: 0) }
        }
        return store
    }

    @Test(arguments: StoreTarget.enabled)
    func concurrentWritesShareTransactionsAndEachGetsItsOwnAnswer(target: StoreTarget) async throws {
        let store = try await seeded(target)
        defer { Task { try? await store.close() } }
        let book = self.book
        let commits = GroupCommit(store: store, limits: .init(maxWrites: 32))
        // 300 writes at once, every fifth of which mints and then throws: it must leave nothing.
        let answers = try await withThrowingTaskGroup(of: (Int, Int?).self) { group in
            for index in 0..<300 {
                group.addTask {
                    do {
                        let answer = try await commits.write { tx in
                            _ = try await book.mint(
                                to: Self.peers[index % 4], amount: Self.amount(index), memo: "w", nowMs: 1, in: tx)
                            if index % 5 == 0 { throw Refused() }
                            return index * 10
                        }
                        return (index, answer)
                    } catch is Refused {
                        return (index, nil)
                    }
                }
            }
            return try await group.reduce(into: [Int: Int?]()) { $0[$1.0] = $1.1 }
        }
        #expect(answers.count == 300)
        for (index, answer) in answers {
            #expect(answer == (index % 5 == 0 ? nil : index * 10), "write \(index) got \(String(describing: answer))")
        }
        let audit = try await store.read { try await book.audit(in: $0) }
        #expect(audit.balanced, "\(audit.discrepancies)")
        let kept = Set(try await store.read { try await $0.allMovements().map(\.amountMicro) })
        let expected = Set((0..<300).filter { $0 % 5 != 0 }.map { Self.amount($0).micro })
        #expect(kept == expected, "only the 240 writes that did not throw were kept")
        #expect(audit.minted.micro == expected.reduce(0, +))
        let (writes, transactions) = commits.committed
        // A write that threw alone in its transaction rolled that transaction back: not counted.
        #expect((240...300).contains(writes), "\(writes) writes committed")
        #expect(transactions < 300 && transactions >= 300 / 32, "300 writes in \(transactions) transactions")
    }

    /// A write whose transaction is lost (`TransactionAborted`: SQLite rolled the whole of it
    /// back, or a savepoint could not be undone) fails every write of its batch, and nothing of
    /// the batch is kept; the next batch is unaffected.
    @Test(arguments: StoreTarget.enabled)
    func aLostTransactionFailsItsWholeBatch(target: StoreTarget) async throws {
        let store = try await seeded(target)
        defer { Task { try? await store.close() } }
        let book = self.book
        // Ten writes make one batch: it goes when the tenth is queued (the linger, never reached,
        // decides nothing).
        let commits = GroupCommit(store: store, limits: .init(maxWrites: 10, linger: .seconds(600)))
        let failures = await withTaskGroup(of: String?.self) { group in
            for index in 0..<10 {
                group.addTask {
                    do {
                        try await commits.write { tx in
                            _ = try await book.mint(
                                to: Self.peers[index % 4], amount: Self.amount(index), memo: "b", nowMs: 1, in: tx)
                            if index == 7 { throw TransactionAborted(Refused()) }
                        }
                        return nil
                    } catch {
                        return "\(type(of: error))"
                    }
                }
            }
            return await group.reduce(into: [String]()) { if let failure = $1 { $0.append(failure) } }
        }
        #expect(failures == Array(repeating: "Refused", count: 10), "every write of the batch failed: \(failures)")
        #expect(try await store.read { try await $0.allMovements().count } == 0, "nothing of the batch was kept")
        #expect(commits.committed == (writes: 0, transactions: 0))
        let after = GroupCommit(store: store, limits: .init(maxWrites: 10))
        try await after.write { tx in
            _ = try await book.mint(to: Self.peers[0], amount: Self.amount(99), memo: "after", nowMs: 2, in: tx)
        }
        #expect(try await store.read { try await $0.allMovements().map(\.amountMicro) } == [Self.amount(99).micro])
        #expect(after.committed == (writes: 1, transactions: 1))
    }
}
