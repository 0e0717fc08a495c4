import Foundation
import MarketCore
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// Random sequences of operations from many peers, each in its own transaction: after every
/// step the ledger balances, a refused operation changed nothing, and at the end every task is
/// final with an empty escrow.
@Suite struct MarketBookPropertyTests {

    static let peers = (1...6).map { PeerID(digestPrefix: [UInt8](repeating: UInt8($0 * 7), count: 20)) }

    @Test(arguments: StoreTarget.enabled, [1, 2, 3])
    func randomOperationsKeepTheLedgerWhole(target: StoreTarget, seed: UInt64) async throws {
        let directory = TemporaryDirectory("cmm-store")
        let store = try await target.make(in: directory)
        defer { Task { try? await store.close() } }
        let rules = MarketRules(
            feeBasisPoints: 250, acceptanceWindowMs: 5_000, approvalTimeoutMs: 30_000, runGraceMs: 1_000,
            openTimeoutMs: 20_000, heartbeatTimeoutMs: 60_000_000, disputeWindowMs: 4_000, holdbackJobs: 2,
            holdbackBasisPoints: 3_000)
        let book = MarketBook(rules: rules)
        var random = SeededRandom(state: seed)
        var nowMs: Int64 = 1_000_000
        var taskIDs: [String] = []
        for peer in Self.peers {
            try await store.write { tx in
                try await tx.upsertPeer(peer, keyDocument: "{}", nowMs: 0)
                _ = try await book.mint(to: peer, amount: Credits(micro: 1_000_000_000), memo: "seed", nowMs: 0, in: tx)
            }
        }
        let minted = Credits(micro: 6_000_000_000)
        var refusals = 0
        for step in 0..<400 {
            var peer = Self.peers.randomElement(using: &random)!
            // Recent tasks are the live ones; an old one now and then tests events on final tasks.
            let recent = Int.random(in: 0..<10, using: &random) < 8 ? taskIDs.suffix(4) : taskIDs[...]
            let task = recent.randomElement(using: &random) ?? "none"
            let price = Int64.random(in: -2...400, using: &random) * 1_000_000
            let hash = String(repeating: "c", count: 64)
            // Weighted toward the path to settlement, so that every state is reached.
            let operation = [0, 0, 1, 2, 2, 3, 4, 4, 5, 5, 5, 5, 6, 7, 7, 7, 7, 8, 8, 8, 9, 10, 11, 12, 13]
                .randomElement(
                    using: &random)!
            nowMs += Int64.random(in: 0...900, using: &random)
            let at = nowMs
            // Mostly the party that may act, sometimes anyone: both paths get exercised.
            if (5...12).contains(operation), Int.random(in: 0..<10, using: &random) < 8,
                let current = try await store.read({ try await $0.task(task, lock: false) })
            {
                let byProvider = [5, 6, 7, 10].contains(operation)
                peer = (byProvider ? current.provider : current.requester) ?? peer
            }
            let actor = peer
            let before = try await store.read { (try await $0.allBalances(), try await $0.allMovements().count) }
            do {
                try await store.write { tx in
                    switch operation {
                    case 0:
                        _ = try await book.advertise(
                            AdvertiseBody(price: max(price, 1) / 4, slots: Int.random(in: 1...2)), from: actor,
                            nowMs: at, in: tx)
                    case 1: _ = try await book.withdraw(actor, in: tx)
                    case 2, 3:
                        let body = PostBody(taskId: "t\(step)", maxPrice: price)
                        try body.validate(limits: WireLimits())
                        _ = try await book.post(body, from: actor, nowMs: at, in: tx)
                    case 4:
                        _ = try await book.bid(
                            BidBody(taskId: task, price: max(price, 1) / 8), from: actor, nowMs: at, in: tx)
                    case 5: _ = try await book.apply(.approve(by: actor), toTask: task, nowMs: at, in: tx)
                    case 6: _ = try await book.apply(.reject(by: actor, reason: "no"), toTask: task, nowMs: at, in: tx)
                    case 7:
                        _ = try await book.apply(.deliver(by: actor, resultHash: hash), toTask: task, nowMs: at, in: tx)
                    case 8: _ = try await book.apply(.accept(by: actor), toTask: task, nowMs: at, in: tx)
                    case 9:
                        _ = try await book.apply(.dispute(by: actor, reason: "bad"), toTask: task, nowMs: at, in: tx)
                    case 10:
                        _ = try await book.apply(.fail(by: actor, reason: "crash"), toTask: task, nowMs: at, in: tx)
                    case 11: _ = try await book.apply(.cancel(by: actor), toTask: task, nowMs: at, in: tx)
                    case 12:
                        _ = try await book.apply(
                            .resolve(forProvider: Bool.random(), memo: "op"), toTask: task, nowMs: at, in: tx)
                    default: _ = try await book.sweep(nowMs: at, in: tx)
                    }
                }
            } catch is MarketError {
                refusals += 1
                let after = try await store.read { (try await $0.allBalances(), try await $0.allMovements().count) }
                #expect(
                    after.0 == before.0 && after.1 == before.1, "a refused operation \(operation) changed the books")
            }
            if operation == 2 || operation == 3,
                try await store.read({ try await $0.task("t\(step)", lock: false) }) != nil
            {
                taskIDs.append("t\(step)")
            }
            let audit = try await store.read { try await book.audit(in: $0) }
            #expect(audit.balanced, "step \(step): \(audit.discrepancies)")
            #expect(audit.minted == minted)
        }
        #expect(refusals > 0 && taskIDs.count > 10, "the run exercised both paths")
        // Let every window pass: all tasks end final, every escrow empty, nothing lost.
        for _ in 0..<12 {
            nowMs += 3_600_000
            let at = nowMs
            _ = try await store.write { try await book.sweep(nowMs: at, in: $0) }
        }
        let (tasks, audit) = try await store.read { tx in
            await (try tx.tasks(state: nil, limit: 10_000), try book.audit(in: tx))
        }
        for task in tasks {
            #expect(task.state.isFinal, "task \(task.id) is still \(task.state)")
            #expect(try await store.read { try await $0.balance(.escrow(taskID: task.id)) } == .zero)
        }
        let states = Set(tasks.map(\.state))
        #expect(states.isSuperset(of: [.settled, .refunded]), "the run reached settlement and refunds: \(states)")
        #expect(audit.balanced && audit.inEscrow == .zero, "\(audit)")
        #expect(audit.accountsTotal == minted)
    }
}
