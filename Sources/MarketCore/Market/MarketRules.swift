import Foundation

/// The market operator's rules: fees, windows, timeouts, the new-provider hold-back, reputation.
/// Times are milliseconds; nothing here reads a clock.
public struct MarketRules: Sendable, Equatable, Codable {
    /// The market's fee in basis points of the price (0…10 000).
    public var feeBasisPoints: Int64
    /// How long a requester has to accept or dispute a delivered result before it is accepted.
    public var acceptanceWindowMs: Int64
    /// How long a provider has, once assigned, to approve (or reject) a task.
    public var approvalTimeoutMs: Int64
    /// Added to a task's own timeout before a running task counts as a provider fault.
    public var runGraceMs: Int64
    /// How long an open task waits for a provider when its poster gave no expiry.
    public var openTimeoutMs: Int64
    /// A provider silent for this long loses its offers, and its tasks go the fault path.
    public var heartbeatTimeoutMs: Int64
    /// How long a disputed task waits for the operator before the escrow goes to the provider.
    public var disputeWindowMs: Int64
    /// Providers with fewer settled jobs than this are "new": part of their earnings is held back.
    public var holdbackJobs: Int
    /// The share held back from a new provider, in basis points.
    public var holdbackBasisPoints: Int64
    /// Reputation half-life.
    public var reputationHalfLifeMs: Int64
    /// Re-matches after a provider fault (failure, silence, timeout).
    public var maxFaultRematches: Int
    /// Re-matches after a provider's rejection.
    public var maxRejectionRematches: Int
    /// The most a task may ask a provider to run, seconds.
    public var maxTaskTimeoutSeconds: Int64

    public init(
        feeBasisPoints: Int64 = 0,
        acceptanceWindowMs: Int64 = 24 * 3_600_000,
        approvalTimeoutMs: Int64 = 10 * 60_000,
        runGraceMs: Int64 = 60_000,
        openTimeoutMs: Int64 = 3_600_000,
        heartbeatTimeoutMs: Int64 = 90_000,
        disputeWindowMs: Int64 = 7 * 24 * 3_600_000,
        holdbackJobs: Int = 3,
        holdbackBasisPoints: Int64 = 2_000,
        reputationHalfLifeMs: Int64 = 30 * 24 * 3_600_000,
        maxFaultRematches: Int = 3,
        maxRejectionRematches: Int = 1,
        maxTaskTimeoutSeconds: Int64 = 24 * 3600
    ) {
        self.feeBasisPoints = feeBasisPoints
        self.acceptanceWindowMs = acceptanceWindowMs
        self.approvalTimeoutMs = approvalTimeoutMs
        self.runGraceMs = runGraceMs
        self.openTimeoutMs = openTimeoutMs
        self.heartbeatTimeoutMs = heartbeatTimeoutMs
        self.disputeWindowMs = disputeWindowMs
        self.holdbackJobs = holdbackJobs
        self.holdbackBasisPoints = holdbackBasisPoints
        self.reputationHalfLifeMs = reputationHalfLifeMs
        self.maxFaultRematches = maxFaultRematches
        self.maxRejectionRematches = maxRejectionRematches
        self.maxTaskTimeoutSeconds = maxTaskTimeoutSeconds
    }

    /// Refuses rules that would break an invariant (a fee over 100 %, a zero window).
    public func validated() throws(MarketError) -> MarketRules {
        func check(_ ok: Bool, _ message: String) throws(MarketError) {
            if !ok { throw MarketError(.invalidBody, message) }
        }
        try check((0...10_000).contains(feeBasisPoints), "fee \(feeBasisPoints) bp is outside 0…10000")
        try check((0...10_000).contains(holdbackBasisPoints), "hold-back \(holdbackBasisPoints) bp is outside 0…10000")
        try check(acceptanceWindowMs > 0 && approvalTimeoutMs > 0 && openTimeoutMs > 0, "windows must be positive")
        try check(
            heartbeatTimeoutMs > 0 && disputeWindowMs > 0 && reputationHalfLifeMs > 0, "timeouts must be positive")
        try check(holdbackJobs >= 0 && maxFaultRematches >= 0 && maxRejectionRematches >= 0, "counts must be ≥ 0")
        return self
    }

    /// `amount × bp / 10 000`, rounded down, without overflow (the product is taken in 128 bits).
    public static func share(of amount: Credits, basisPoints: Int64) -> Credits {
        let product = amount.micro.multipliedFullWidth(by: basisPoints)
        let (quotient, _) = Int64(10_000).dividingFullWidth(product)
        return Credits(micro: quotient)
    }
}

/// A peer's reputation: the mean of Beta(successes + 1, failures + 1), where every outcome's
/// weight halves each half-life. Kept as decayed sums that are brought forward to `atMs` before
/// each update, so the decay is exact and O(1).
public struct Reputation: Sendable, Equatable, Codable {
    public var successes: Double
    public var failures: Double
    /// Outcomes ever recorded (not decayed): the sample count shown beside the score.
    public var samples: Int
    public var atMs: Int64

    public init(successes: Double = 0, failures: Double = 0, samples: Int = 0, atMs: Int64 = 0) {
        self.successes = successes
        self.failures = failures
        self.samples = samples
        self.atMs = atMs
    }

    /// The sums as they stand at `nowMs`.
    public func decayed(to nowMs: Int64, halfLifeMs: Int64) -> Reputation {
        guard nowMs > atMs, halfLifeMs > 0 else { return self }
        let factor = Self.decayFactor(elapsedMs: nowMs - atMs, halfLifeMs: halfLifeMs)
        return Reputation(successes: successes * factor, failures: failures * factor, samples: samples, atMs: nowMs)
    }

    static func decayFactor(elapsedMs: Int64, halfLifeMs: Int64) -> Double {
        pow(2, -Double(elapsedMs) / Double(halfLifeMs))
    }

    public func recording(success: Bool, atMs nowMs: Int64, halfLifeMs: Int64) -> Reputation {
        var next = decayed(to: max(nowMs, atMs), halfLifeMs: halfLifeMs)
        if success { next.successes += 1 } else { next.failures += 1 }
        next.samples += 1
        return next
    }

    /// The Beta mean at `nowMs`: 0.5 with no history.
    public func score(atMs nowMs: Int64, halfLifeMs: Int64) -> Double {
        let current = decayed(to: nowMs, halfLifeMs: halfLifeMs)
        return (current.successes + 1) / (current.successes + current.failures + 2)
    }

    public enum Tier: String, Codable, Sendable {
        case new, trusted, established, poor
    }

    /// "new" below `newBelow` samples; then by score.
    public func tier(atMs nowMs: Int64, halfLifeMs: Int64, newBelow: Int) -> Tier {
        if samples < newBelow { return .new }
        let value = score(atMs: nowMs, halfLifeMs: halfLifeMs)
        return value >= 0.8 ? .trusted : value >= 0.5 ? .established : .poor
    }
}

/// A provider's standing offer: one per provider; advertising again replaces it.
public struct Offer: Codable, Sendable, Equatable {
    public var provider: PeerID
    public var price: Credits
    public var slots: Int
    /// Models the provider runs; empty means any.
    public var models: [String]
    public var minRequesterReputation: Double
    public var createdMs: Int64
    /// The largest workspace the provider takes; nil: none (a provider that does not say so
    /// may not know what a workspace is).
    public var maxWorkspaceBytes: Int64?
    public var maxWorkspaceFiles: Int64?
    /// The provider's account is past the share it gives for `pausedFor` (a limit window) until
    /// then: the offer takes no task before, and returns by itself after.
    public var pausedUntilMs: Int64?
    public var pausedFor: String?

    public init(
        provider: PeerID, price: Credits, slots: Int, models: [String], minRequesterReputation: Double,
        createdMs: Int64, maxWorkspaceBytes: Int64? = nil, maxWorkspaceFiles: Int64? = nil,
        pausedUntilMs: Int64? = nil, pausedFor: String? = nil
    ) {
        self.pausedUntilMs = pausedUntilMs
        self.pausedFor = pausedFor
        self.maxWorkspaceBytes = maxWorkspaceBytes
        self.maxWorkspaceFiles = maxWorkspaceFiles
        self.provider = provider
        self.price = price
        self.slots = slots
        self.models = models
        self.minRequesterReputation = minRequesterReputation
        self.createdMs = createdMs
    }

    /// Whether the offer is paused for capacity at `nowMs`.
    public func isPaused(atMs nowMs: Int64) -> Bool { (pausedUntilMs ?? 0) > nowMs }

    public func runs(model: String?) -> Bool {
        guard let model, !models.isEmpty else { return true }
        return models.contains(model)
    }

    /// Whether the task's workspace (if any) fits this offer's limits.
    public func takes(_ task: MarketTask) -> Bool {
        guard let bytes = task.workspaceBytes else { return true }
        guard let maxBytes = maxWorkspaceBytes, let maxFiles = maxWorkspaceFiles else { return false }
        return bytes <= maxBytes && (task.workspaceFiles ?? 0) <= maxFiles
    }
}

/// An offer as matching sees it: with its provider's busy slots and reputation at this moment.
public struct OfferCandidate: Sendable, Equatable {
    public var offer: Offer
    public var busySlots: Int
    public var providerReputation: Double
    /// The offer is paused for capacity at this moment.
    public var paused: Bool

    public init(offer: Offer, busySlots: Int, providerReputation: Double, paused: Bool = false) {
        self.offer = offer
        self.busySlots = busySlots
        self.providerReputation = providerReputation
        self.paused = paused
    }

    public var freeSlots: Int { max(0, offer.slots - busySlots) }
}

/// First-accept matching (docs/PROTOCOL.md, "Rules a client can rely on"): eligibility and order.
public enum Matching {
    /// Why one offer cannot take a task, or nil when it can.
    public static func ineligibility(
        of candidate: OfferCandidate, for task: MarketTask, requesterReputation: Double
    ) -> MarketError? {
        let offer = candidate.offer
        if offer.provider == task.requester {
            return MarketError(.ownTask, "a provider never takes its own task")
        }
        if task.excluded.contains(offer.provider) {
            return MarketError(.excludedProvider, "provider \(offer.provider) already lost task \(task.id)")
        }
        if offer.price > task.cap {
            return MarketError(.priceAboveMax, "price \(offer.price) is above the task's maximum \(task.cap)")
        }
        if candidate.providerReputation < task.minReputation {
            return MarketError(
                .reputationTooLow,
                "provider reputation \(format(candidate.providerReputation)) is below the task's minimum \(format(task.minReputation))"
            )
        }
        if requesterReputation < offer.minRequesterReputation {
            return MarketError(
                .reputationTooLow,
                "requester reputation \(format(requesterReputation)) is below the offer's minimum \(format(offer.minRequesterReputation))"
            )
        }
        if !offer.runs(model: task.model) {
            return MarketError(
                .modelNotOffered, "model \(task.model ?? "") is not among \(offer.models.joined(separator: ", "))")
        }
        if !offer.takes(task) {
            return MarketError(
                .workspaceTooLarge,
                offer.maxWorkspaceBytes == nil
                    ? "\(offer.provider) takes no workspace jobs"
                    : "the workspace (\(task.workspaceBytes ?? 0) bytes, \(task.workspaceFiles ?? 0) files) is over \(offer.provider)'s limits (\(offer.maxWorkspaceBytes ?? 0) bytes, \(offer.maxWorkspaceFiles ?? 0) files)"
            )
        }
        if candidate.paused, let until = offer.pausedUntilMs {
            return MarketError(
                .capacityPaused,
                "\(offer.provider)'s \(offer.pausedFor ?? "capacity") share is used until \(Self.time(until))")
        }
        if candidate.freeSlots <= 0 {
            return MarketError(.noFreeSlot, "all \(offer.slots) slots of \(offer.provider) are busy")
        }
        return nil
    }

    /// The best eligible offer: lowest price, then highest reputation, then oldest offer.
    public static func best(
        among candidates: [OfferCandidate], for task: MarketTask, requesterReputation: Double
    ) -> OfferCandidate? {
        candidates
            .filter { ineligibility(of: $0, for: task, requesterReputation: requesterReputation) == nil }
            .min { a, b in
                if a.offer.price != b.offer.price { return a.offer.price < b.offer.price }
                if a.providerReputation != b.providerReputation { return a.providerReputation > b.providerReputation }
                if a.offer.createdMs != b.offer.createdMs { return a.offer.createdMs < b.offer.createdMs }
                return a.offer.provider < b.offer.provider
            }
    }

    /// Why no offer fits (for `submit`'s explanation): the most telling reason across offers.
    public static func whyNoMatch(
        among candidates: [OfferCandidate], for task: MarketTask, requesterReputation: Double
    ) -> String {
        if candidates.isEmpty { return "no provider has a standing offer" }
        let reasons = candidates.compactMap {
            ineligibility(of: $0, for: task, requesterReputation: requesterReputation)
        }
        let codes = Set(reasons.map(\.code))
        if codes.contains(.capacityPaused) && codes.isSubset(of: [.capacityPaused, .noFreeSlot]) {
            let returns = candidates.filter(\.paused).compactMap(\.offer.pausedUntilMs).min()
            return "no provider can take it now; capacity returns at \(returns.map(Self.time) ?? "an unknown time")"
        }
        if codes == [.priceAboveMax] {
            let cheapest = candidates.map(\.offer.price).min()!
            return "the maximum price \(task.cap) is below every offer (the cheapest is \(cheapest))"
        }
        if codes.contains(.noFreeSlot) && codes.count == 1 { return "all providers' slots are busy" }
        if codes.contains(.reputationTooLow) { return "the reputation minimum excludes the providers that fit" }
        if codes.contains(.modelNotOffered) { return "no provider offers model \(task.model ?? "")" }
        if codes.contains(.workspaceTooLarge) { return "no provider takes a workspace of this size" }
        return reasons.first.map(\.message) ?? "no offer fits"
    }

    /// `2026-12-02T15:40:00Z`
    public static func time(_ ms: Int64) -> String {
        Date(timeIntervalSince1970: Double(ms) / 1000).formatted(.iso8601)
    }

    static func format(_ value: Double) -> String {
        let scaled = (value * 1000).rounded() / 1000
        return "\(scaled)"
    }
}
