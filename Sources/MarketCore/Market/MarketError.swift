/// Why the market refused something. `code` is what goes in an `error` frame; the message names
/// the bad value and what is allowed. A struct around an open set of codes, so that codes can be
/// added without breaking callers.
public struct MarketError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        // Frames and sessions
        public static let malformed = Code(rawValue: "malformed")
        public static let frameTooLarge = Code(rawValue: "frame_too_large")
        public static let unsupportedVersion = Code(rawValue: "unsupported_version")
        public static let unknownType = Code(rawValue: "unknown_type")
        public static let invalidBody = Code(rawValue: "invalid_body")
        public static let badSignature = Code(rawValue: "bad_signature")
        public static let staleTimestamp = Code(rawValue: "stale_timestamp")
        public static let futureTimestamp = Code(rawValue: "future_timestamp")
        public static let replayedNonce = Code(rawValue: "replayed_nonce")
        public static let wrongSender = Code(rawValue: "wrong_sender")
        public static let notAuthenticated = Code(rawValue: "not_authenticated")
        public static let authFailed = Code(rawValue: "auth_failed")
        public static let rateLimited = Code(rawValue: "rate_limited")
        /// The offer is paused: the provider's account is past the share it gives.
        public static let capacityPaused = Code(rawValue: "capacity_paused")
        public static let notAllowed = Code(rawValue: "not_allowed")
        // Market rules
        public static let invalidAmount = Code(rawValue: "invalid_amount")
        public static let insufficientFunds = Code(rawValue: "insufficient_funds")
        public static let unknownTask = Code(rawValue: "unknown_task")
        public static let unknownPeer = Code(rawValue: "unknown_peer")
        public static let duplicateTask = Code(rawValue: "duplicate_task")
        public static let invalidState = Code(rawValue: "invalid_state")
        public static let notAParty = Code(rawValue: "not_a_party")
        public static let noOffer = Code(rawValue: "no_offer")
        public static let noFreeSlot = Code(rawValue: "no_free_slot")
        public static let ownTask = Code(rawValue: "own_task")
        public static let priceAboveMax = Code(rawValue: "price_above_max")
        public static let reputationTooLow = Code(rawValue: "reputation_too_low")
        public static let modelNotOffered = Code(rawValue: "model_not_offered")
        public static let excludedProvider = Code(rawValue: "excluded_provider")
        public static let workspaceTooLarge = Code(rawValue: "workspace_too_large")
        /// A blob piece sent again under its index with other bytes than the piece kept.
        public static let duplicatePiece = Code(rawValue: "duplicate_piece")
        public static let internalError = Code(rawValue: "internal_error")
        public static let unavailable = Code(rawValue: "unavailable")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
