import Foundation
import MarketCore
import MarketProtocol
import MarketStore

/// How the market builds its read views (the types are in `MarketProtocol`) from its books.
extension MarketViews {
    static func reputation(_ record: PeerRecord?, rules: MarketRules, nowMs: Int64) -> ReputationView {
        let reputation = record?.reputation ?? Reputation()
        return ReputationView(
            score: (reputation.score(atMs: nowMs, halfLifeMs: rules.reputationHalfLifeMs) * 10_000).rounded() / 10_000,
            samples: reputation.samples,
            tier: .known(
                reputation.tier(atMs: nowMs, halfLifeMs: rules.reputationHalfLifeMs, newBelow: rules.holdbackJobs)))
    }

    public static func offers(in tx: some MarketTransaction, rules: MarketRules, nowMs: Int64) async throws
        -> [OfferView]
    {
        var views: [OfferView] = []
        for offer in try await tx.offers() {
            let busy = try await tx.busySlots(of: offer.provider)
            let standing = reputation(try await tx.peer(offer.provider), rules: rules, nowMs: nowMs)
            views.append(
                OfferView(
                    provider: offer.provider.rawValue, price: offer.price.micro, priceText: offer.price.description,
                    slots: offer.slots, freeSlots: max(0, offer.slots - busy), models: offer.models,
                    minRequesterReputation: offer.minRequesterReputation,
                    reputation: standing, createdMs: offer.createdMs,
                    pausedUntilMs: offer.isPaused(atMs: nowMs) ? offer.pausedUntilMs : nil,
                    pausedFor: offer.isPaused(atMs: nowMs) ? offer.pausedFor : nil))
        }
        return views
    }

    public static func task(_ task: MarketTask) -> TaskView {
        TaskView(
            taskId: task.id, requester: task.requester.rawValue, provider: task.provider?.rawValue,
            state: .known(task.state), maxPrice: task.maxPrice.micro, price: task.price?.micro,
            minReputation: task.minReputation, model: task.model, timeoutSeconds: task.timeoutSeconds,
            createdMs: task.createdMs, updatedMs: task.updatedMs, deadlineMs: task.deadlineMs, reason: task.reason)
    }

    public static func peer(_ id: PeerID, in tx: some MarketTransaction, rules: MarketRules, nowMs: Int64) async throws
        -> PeerView?
    {
        guard let record = try await tx.peer(id) else { return nil }
        var escrow: Int64 = 0
        for task in try await tx.tasks(of: id, states: [.open, .assigned, .running, .delivered, .disputed])
        where task.requester == id {
            await escrow += try tx.balance(.escrow(taskID: task.id)).micro
        }
        return await PeerView(
            peerId: id.rawValue, keyDocument: record.keyDocument,
            reputation: reputation(record, rules: rules, nowMs: nowMs), settledJobs: record.settledJobs,
            handBacks: record.handBacks, firstSeenMs: record.firstSeenMs, lastSeenMs: record.lastSeenMs,
            balance: try tx.balance(.peer(id)).micro,
            inEscrow: escrow, heldBack: try tx.balance(.held(id)).micro,
            recentOutcomes: try tx.outcomes(of: id, limit: 20).map {
                OutcomeView(
                    taskId: $0.outcome.taskID, role: $0.outcome.role, success: $0.outcome.success, atMs: $0.atMs)
            }, auditHead: record.auditHead)
    }

    public static func stats(
        in tx: some MarketTransaction, book: MarketBook, backend: String, connections: Int, uptimeSeconds: Int64,
        nowMs: Int64
    ) async throws -> StatsView {
        let audit = try await book.audit(in: tx)
        let offers = try await Self.offers(in: tx, rules: book.rules, nowMs: nowMs)
        var tasks = try await tx.taskCounts()
        for state in TaskState.allCases where tasks[state.rawValue] == nil { tasks[state.rawValue] = 0 }
        return await StatsView(
            version: ToolVersion.current, backend: backend, peers: try tx.peerCount(), connections: connections,
            offers: offers.count, freeSlots: offers.map(\.freeSlots).reduce(0, +), tasks: tasks,
            minted: audit.minted.micro, inEscrow: audit.inEscrow.micro, heldBack: audit.heldBack.micro,
            fees: audit.fees.micro, settledVolume: try await tx.settledVolume(), ledgerBalanced: audit.balanced,
            discrepancies: audit.discrepancies.count, uptimeSeconds: uptimeSeconds)
    }
}
