import Foundation
import MarketCore

/// The public read views (`/v1/…`, docs/openapi.yaml): the same fields for the REST API, the
/// dashboard and `market status`. Never a payload, a result or a key beyond the public ones. The
/// market builds them (`MarketServer`); participants decode them (`MarketViewsClient`).
public enum MarketViews {
    public struct ReputationView: Codable, Sendable, Equatable {
        public var score: Double
        public var samples: Int
        public var tier: WireEnum<Reputation.Tier>

        public init(
            score: Double, samples: Int, tier: WireEnum<Reputation.Tier>
        ) {
            self.score = score
            self.samples = samples
            self.tier = tier
        }
    }

    public struct OfferView: Codable, Sendable, Equatable {
        public var provider: String
        public var price: Int64
        public var priceText: String
        public var slots: Int
        public var freeSlots: Int
        public var models: [String]
        public var minRequesterReputation: Double
        public var reputation: ReputationView
        public var createdMs: Int64
        /// The provider's account is past its share of `pausedFor` until then: no task now.
        public var pausedUntilMs: Int64?
        public var pausedFor: String?

        public init(
            provider: String, price: Int64, priceText: String, slots: Int, freeSlots: Int, models: [String],
            minRequesterReputation: Double, reputation: ReputationView, createdMs: Int64, pausedUntilMs: Int64? = nil,
            pausedFor: String? = nil
        ) {
            self.provider = provider
            self.price = price
            self.priceText = priceText
            self.slots = slots
            self.freeSlots = freeSlots
            self.models = models
            self.minRequesterReputation = minRequesterReputation
            self.reputation = reputation
            self.createdMs = createdMs
            self.pausedUntilMs = pausedUntilMs
            self.pausedFor = pausedFor
        }
    }

    public struct TaskView: Codable, Sendable, Equatable {
        public var taskId: String
        public var requester: String
        public var provider: String?
        public var state: WireEnum<TaskState>
        public var maxPrice: Int64
        public var price: Int64?
        public var minReputation: Double
        public var model: String?
        public var timeoutSeconds: Int64
        public var createdMs: Int64
        public var updatedMs: Int64
        public var deadlineMs: Int64?
        public var reason: String?

        public init(
            taskId: String, requester: String, provider: String? = nil, state: WireEnum<TaskState>, maxPrice: Int64,
            price: Int64? = nil, minReputation: Double, model: String? = nil, timeoutSeconds: Int64, createdMs: Int64,
            updatedMs: Int64, deadlineMs: Int64? = nil, reason: String? = nil
        ) {
            self.taskId = taskId
            self.requester = requester
            self.provider = provider
            self.state = state
            self.maxPrice = maxPrice
            self.price = price
            self.minReputation = minReputation
            self.model = model
            self.timeoutSeconds = timeoutSeconds
            self.createdMs = createdMs
            self.updatedMs = updatedMs
            self.deadlineMs = deadlineMs
            self.reason = reason
        }
    }

    public struct PeerView: Codable, Sendable, Equatable {
        public var peerId: String
        /// The peer's signed public key document, as the exact JSON text it signed.
        public var keyDocument: String
        public var reputation: ReputationView
        public var settledJobs: Int
        /// Tasks handed back for the account's capacity: no fault, but counted.
        public var handBacks: Int
        public var firstSeenMs: Int64
        public var lastSeenMs: Int64
        public var balance: Int64
        public var inEscrow: Int64
        public var heldBack: Int64
        public var recentOutcomes: [OutcomeView]
        /// The signed head of the peer's audit log (`seq:hash:signature`) as its last heartbeat
        /// carried it: the market's witness that those entries existed.
        public var auditHead: String?

        public init(
            peerId: String, keyDocument: String, reputation: ReputationView, settledJobs: Int, handBacks: Int,
            firstSeenMs: Int64, lastSeenMs: Int64, balance: Int64, inEscrow: Int64, heldBack: Int64,
            recentOutcomes: [OutcomeView], auditHead: String? = nil
        ) {
            self.peerId = peerId
            self.keyDocument = keyDocument
            self.reputation = reputation
            self.settledJobs = settledJobs
            self.handBacks = handBacks
            self.firstSeenMs = firstSeenMs
            self.lastSeenMs = lastSeenMs
            self.balance = balance
            self.inEscrow = inEscrow
            self.heldBack = heldBack
            self.recentOutcomes = recentOutcomes
            self.auditHead = auditHead
        }
    }

    public struct OutcomeView: Codable, Sendable, Equatable {
        public var taskId: String
        public var role: String
        public var success: Bool
        public var atMs: Int64

        public init(
            taskId: String, role: String, success: Bool, atMs: Int64
        ) {
            self.taskId = taskId
            self.role = role
            self.success = success
            self.atMs = atMs
        }
    }

    public struct StatsView: Codable, Sendable, Equatable {
        public var version: String
        public var backend: String
        public var peers: Int
        public var connections: Int
        public var offers: Int
        public var freeSlots: Int
        public var tasks: [String: Int]
        public var minted: Int64
        public var inEscrow: Int64
        public var heldBack: Int64
        public var fees: Int64
        public var settledVolume: Int64
        public var ledgerBalanced: Bool
        public var discrepancies: Int
        public var uptimeSeconds: Int64

        public init(
            version: String, backend: String, peers: Int, connections: Int, offers: Int, freeSlots: Int,
            tasks: [String: Int], minted: Int64, inEscrow: Int64, heldBack: Int64, fees: Int64, settledVolume: Int64,
            ledgerBalanced: Bool, discrepancies: Int, uptimeSeconds: Int64
        ) {
            self.version = version
            self.backend = backend
            self.peers = peers
            self.connections = connections
            self.offers = offers
            self.freeSlots = freeSlots
            self.tasks = tasks
            self.minted = minted
            self.inEscrow = inEscrow
            self.heldBack = heldBack
            self.fees = fees
            self.settledVolume = settledVolume
            self.ledgerBalanced = ledgerBalanced
            self.discrepancies = discrepancies
            self.uptimeSeconds = uptimeSeconds
        }
    }

    public struct HealthView: Codable, Sendable, Equatable {
        public var status: String
        public var version: String
        public var backend: String
        public var uptimeSeconds: Int64
        public var connections: Int

        public init(
            status: String, version: String, backend: String, uptimeSeconds: Int64, connections: Int
        ) {
            self.status = status
            self.version = version
            self.backend = backend
            self.uptimeSeconds = uptimeSeconds
            self.connections = connections
        }
    }

    /// One hour of the last day: tasks posted, matched, settled and refunded in it.
    public struct HourView: Codable, Sendable, Equatable {
        public var startMs: Int64
        public var posted: Int
        public var matched: Int
        public var settled: Int
        public var refunded: Int
        /// The median price of the tasks settled in this hour, micro-credits.
        public var medianSettledPrice: Int64?

        public init(
            startMs: Int64, posted: Int, matched: Int, settled: Int, refunded: Int, medianSettledPrice: Int64? = nil
        ) {
            self.startMs = startMs
            self.posted = posted
            self.matched = matched
            self.settled = settled
            self.refunded = refunded
            self.medianSettledPrice = medianSettledPrice
        }
    }

    /// `/v1/flow`: the last 24 hours by hour, and how fast tasks are taken.
    public struct FlowView: Codable, Sendable, Equatable {
        public var hours: [HourView]
        /// The median time from `task.post` to assignment of the tasks matched in the window.
        public var medianMatchMs: Int64?
        public var matchedInWindow: Int

        public init(
            hours: [HourView], medianMatchMs: Int64? = nil, matchedInWindow: Int
        ) {
            self.hours = hours
            self.medianMatchMs = medianMatchMs
            self.matchedInWindow = matchedInWindow
        }
    }

    /// A provider with a track record, for the providers table.
    public struct ProviderView: Codable, Sendable, Equatable {
        public var provider: String
        public var reputation: ReputationView
        public var settledJobs: Int
        /// Tasks handed back for the account's capacity (no fault, shown).
        public var handBacks: Int
        public var successes: Int
        public var failures: Int
        public var failureRate: Double
        public var hasOffer: Bool

        public init(
            provider: String, reputation: ReputationView, settledJobs: Int, handBacks: Int, successes: Int,
            failures: Int, failureRate: Double, hasOffer: Bool
        ) {
            self.provider = provider
            self.reputation = reputation
            self.settledJobs = settledJobs
            self.handBacks = handBacks
            self.successes = successes
            self.failures = failures
            self.failureRate = failureRate
            self.hasOffer = hasOffer
        }
    }
}
