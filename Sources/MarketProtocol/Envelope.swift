import Foundation
import MarketCore

/// The message types of the wire protocol (docs/PROTOCOL.md). An unknown type is refused by name.
public enum MessageType: String, Codable, Sendable, CaseIterable {
    case hello, challenge, auth
    case offerAdvertise = "offer.advertise"
    case offerWithdraw = "offer.withdraw"
    case taskPost = "task.post"
    case taskCancel = "task.cancel"
    case bidPlace = "bid.place"
    case taskAssigned = "task.assigned"
    case payloadDeliver = "payload.deliver"
    case jobApproved = "job.approved"
    case jobRejected = "job.rejected"
    case jobEvent = "job.event"
    case jobResult = "job.result"
    case jobAccept = "job.accept"
    case jobDispute = "job.dispute"
    case jobFailed = "job.failed"
    /// The provider's account is at its limit: the task goes to the next provider (no fault).
    case jobHandback = "job.handback"
    /// One piece of a sealed blob too large for one frame: a workspace (requester → provider)
    /// or a patch (provider → requester).
    case blobChunk = "blob.chunk"
    case settlement
    case heartbeat
    case taskOpen = "task.open"
    case ack
    case ping, pong, error
}

/// One protocol message: the JSON object carried in one WebSocket text frame.
///
/// `body` is the body as a JSON *string*: those exact bytes are signed, so no re-encoding can
/// change what a signature covers. `type` stays a string here so that an unknown type can be
/// reported by name rather than failing the whole decode.
public struct Envelope: Codable, Sendable, Equatable {
    public static let currentVersion = 1

    public var v: Int
    public var type: String
    public var id: String
    public var from: String
    public var ts: Int64
    public var nonce: String
    public var body: String
    public var sig: String

    public init(
        v: Int = Envelope.currentVersion,
        type: String,
        id: String,
        from: String,
        ts: Int64,
        nonce: String,
        body: String,
        sig: String = ""
    ) {
        self.v = v
        self.type = type
        self.id = id
        self.from = from
        self.ts = ts
        self.nonce = nonce
        self.body = body
        self.sig = sig
    }

    public var messageType: MessageType? { MessageType(rawValue: type) }

    /// The bytes a signature covers: a domain tag, then each field length-prefixed (8-byte
    /// big-endian length), in the order `v, type, id, from, ts, nonce, body`. Length prefixes make
    /// the concatenation unambiguous: no two different envelopes share signing bytes.
    public var signingBytes: [UInt8] {
        CanonicalBytes.lengthPrefixed(
            domain: Self.signingDomain, fields: [String(v), type, id, from, String(ts), nonce, body])
    }

    public static let signingDomain = "claude-max-market/envelope/v1\u{0}"
}

/// The body of an `error` frame.
public struct ErrorBody: Codable, Sendable, Equatable {
    /// An open set: a code this build does not know decodes as itself.
    public var code: MarketError.Code
    public var message: String
    public var ref: String?

    public init(code: MarketError.Code, message: String, ref: String? = nil) {
        self.code = code
        self.message = message
        self.ref = ref
    }
}

extension MarketError.Code: Codable {}

extension ErrorBody {
    /// The refusal as the market raised it.
    public var error: MarketError { MarketError(code, message) }
}
