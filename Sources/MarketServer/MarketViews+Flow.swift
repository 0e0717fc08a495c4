import Foundation
import MarketCore
import MarketProtocol
import MarketStore

extension MarketViews {
    public static func flow(in tx: some MarketTransaction, nowMs: Int64) async throws -> FlowView {
        let hourMs: Int64 = 3_600_000
        let end = (nowMs / hourMs + 1) * hourMs
        let start = end - 24 * hourMs
        var hours = (0..<24).map {
            HourView(
                startMs: start + Int64($0) * hourMs, posted: 0, matched: 0, settled: 0, refunded: 0,
                medianSettledPrice: nil)
        }
        var prices: [[Int64]] = Array(repeating: [], count: 24)
        var matchTimes: [Int64] = []
        for event in try await tx.taskEvents(sinceMs: start) {
            let index = Int((event.atMs - start) / hourMs)
            guard hours.indices.contains(index) else { continue }
            switch event.state {
            case .open where event.atMs == event.createdMs: hours[index].posted += 1
            case .assigned:
                hours[index].matched += 1
                matchTimes.append(event.atMs - event.createdMs)
            case .settled:
                hours[index].settled += 1
                if let price = event.price { prices[index].append(price) }
            case .refunded: hours[index].refunded += 1
            default: break
            }
        }
        for index in hours.indices where !prices[index].isEmpty {
            hours[index].medianSettledPrice = median(prices[index])
        }
        return FlowView(
            hours: hours, medianMatchMs: matchTimes.isEmpty ? nil : median(matchTimes),
            matchedInWindow: matchTimes.count)
    }

    public static func providers(in tx: some MarketTransaction, rules: MarketRules, nowMs: Int64) async throws
        -> [ProviderView]
    {
        let offering = Set(try await tx.offers().map(\.provider))
        var counts: [PeerID: (successes: Int, failures: Int)] = [:]
        for row in try await tx.providerOutcomeCounts() { counts[row.peer] = (row.successes, row.failures) }
        for provider in offering where counts[provider] == nil { counts[provider] = (0, 0) }
        var views: [ProviderView] = []
        for (provider, count) in counts {
            let record = try await tx.peer(provider)
            let total = count.successes + count.failures
            views.append(
                ProviderView(
                    provider: provider.rawValue, reputation: reputation(record, rules: rules, nowMs: nowMs),
                    settledJobs: record?.settledJobs ?? 0, handBacks: record?.handBacks ?? 0,
                    successes: count.successes, failures: count.failures,
                    failureRate: total == 0 ? 0 : Double(count.failures) / Double(total),
                    hasOffer: offering.contains(provider)))
        }
        return views.sorted {
            ($0.reputation.score, $0.settledJobs, $0.provider) > ($1.reputation.score, $1.settledJobs, $1.provider)
        }
    }

    static func median(_ values: [Int64]) -> Int64 {
        let sorted = values.sorted()
        return sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
