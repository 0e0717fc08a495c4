import Crypto
import Foundation
import MarketCore
import MarketProtocol
import Synchronization

/// Why an envelope was refused. `code` is what goes in the protocol's `error` frame.
public struct EnvelopeError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case unsupportedVersion = "unsupported_version"
        case unknownType = "unknown_type"
        case malformed
        case badSignature = "bad_signature"
        case staleTimestamp = "stale_timestamp"
        case futureTimestamp = "future_timestamp"
        case replayedNonce = "replayed_nonce"
        case wrongSender = "wrong_sender"
        case replayCacheFull = "rate_limited"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// What a replay cache did with a nonce.
public enum ReplayCacheResult: Sendable, Equatable {
    case inserted
    /// The peer already used this nonce and its frame could still be accepted.
    case replayed
    /// Every entry is still live: refuse the frame rather than forget one (forgetting a live
    /// nonce would let its captured frame be replayed).
    case full
}

/// Remembers nonces per peer for the freshness window. The server persists its own; this
/// protocol is the seam.
public protocol ReplayCache: Sendable {
    /// Records the nonce, which stays live while `nowMs <= expiresAtMs` (the last moment its
    /// frame's timestamp can still be accepted).
    func insert(peer: String, nonce: String, expiresAtMs: Int64, nowMs: Int64) -> ReplayCacheResult
}

/// A bounded in-memory replay cache. Entries are forgotten only once expired; when every entry
/// is live and the cache is full, new nonces are refused (`.full`) instead of evicting any.
public final class MemoryReplayCache: ReplayCache, Sendable {
    private struct State {
        var entries: [String: Int64] = [:]
        var order: [(key: String, expires: Int64)] = []
        var head = 0
    }

    private let state = Mutex(State())
    public let capacity: Int

    public init(capacity: Int = 100_000) {
        self.capacity = capacity
    }

    public var count: Int { state.withLock { $0.entries.count } }

    public func insert(peer: String, nonce: String, expiresAtMs: Int64, nowMs: Int64) -> ReplayCacheResult {
        let key = peer + "\u{0}" + nonce
        let capacity = self.capacity
        return state.withLock { state in
            // Entries expire in insertion order only roughly (timestamps vary), so an entry is
            // dropped only when it has really expired; a later-expiring one blocks the scan.
            while state.head < state.order.count, state.order[state.head].expires < nowMs {
                let (oldKey, oldExpires) = state.order[state.head]
                if state.entries[oldKey] == oldExpires { state.entries[oldKey] = nil }
                state.head += 1
            }
            if state.head > 4096, state.head * 2 > state.order.count {
                state.order.removeFirst(state.head)
                state.head = 0
            }
            if let expires = state.entries[key], expires >= nowMs { return .replayed }
            if state.entries.count >= capacity {
                state.entries = state.entries.filter { $0.value >= nowMs }
                let live = state.entries
                state.order = state.order[state.head...].filter { live[$0.key] == $0.expires }
                state.head = 0
                if state.entries.count >= capacity { return .full }
            }
            state.entries[key] = expiresAtMs
            state.order.append((key, expiresAtMs))
            return .inserted
        }
    }
}

/// Signs and verifies wire envelopes (docs/PROTOCOL.md): Ed25519 over the domain-separated,
/// length-prefixed fields; timestamps within ±`window`; nonces never reused per peer.
public struct EnvelopeVerifier: Sendable {
    public static let defaultWindowMs: Int64 = 5 * 60 * 1000
    public let windowMs: Int64
    let replayCache: any ReplayCache

    public init(replayCache: any ReplayCache, windowMs: Int64 = EnvelopeVerifier.defaultWindowMs) {
        self.replayCache = replayCache
        self.windowMs = windowMs
    }

    /// Checks everything but the nonce: version, type, sender, signature and timestamp.
    public func verifySignature(
        _ envelope: Envelope, signingKey: Curve25519.Signing.PublicKey, nowMs: Int64
    ) throws(EnvelopeError) {
        guard envelope.v == Envelope.currentVersion else {
            throw EnvelopeError(.unsupportedVersion, "envelope version \(envelope.v) is not supported (expected 1)")
        }
        guard envelope.messageType != nil else {
            throw EnvelopeError(.unknownType, "unknown message type '\(envelope.type)'")
        }
        guard PeerID(signingKey: signingKey).rawValue == envelope.from else {
            throw EnvelopeError(.wrongSender, "'from' \(envelope.from) is not the peer id of the signing key")
        }
        guard let nonce = Data(base64Encoded: envelope.nonce), nonce.count == 16 else {
            throw EnvelopeError(.malformed, "nonce must be 16 bytes in base64")
        }
        guard let signature = Data(base64Encoded: envelope.sig),
            signingKey.isValidSignature(signature, for: envelope.signingBytes)
        else { throw EnvelopeError(.badSignature, "the signature does not verify for \(envelope.from)") }
        if envelope.ts < nowMs - windowMs {
            throw EnvelopeError(
                .staleTimestamp, "timestamp \(envelope.ts) is more than \(windowMs / 1000) s in the past")
        }
        if envelope.ts > nowMs + windowMs {
            throw EnvelopeError(
                .futureTimestamp, "timestamp \(envelope.ts) is more than \(windowMs / 1000) s in the future")
        }
    }

    /// Full check, then records the nonce: a second envelope with the same nonce is a replay.
    public func verify(_ envelope: Envelope, signingKey: Curve25519.Signing.PublicKey, nowMs: Int64)
        throws(EnvelopeError)
    {
        try verifySignature(envelope, signingKey: signingKey, nowMs: nowMs)
        switch replayCache.insert(
            peer: envelope.from, nonce: envelope.nonce, expiresAtMs: envelope.ts + windowMs, nowMs: nowMs)
        {
        case .inserted: return
        case .replayed: throw EnvelopeError(.replayedNonce, "nonce already used by \(envelope.from): replay refused")
        case .full:
            throw EnvelopeError(.replayCacheFull, "too many live nonces: the frame is refused, try again in a minute")
        }
    }
}

extension PeerIdentity {
    /// A signed envelope with a fresh random nonce.
    public func envelope(type: MessageType, id: String, body: String, nowMs: Int64) throws -> Envelope {
        var nonce = [UInt8](repeating: 0, count: 16)
        for index in nonce.indices { nonce[index] = UInt8.random(in: 0...255) }
        var envelope = Envelope(
            type: type.rawValue, id: id, from: peerID.rawValue, ts: nowMs, nonce: Data(nonce).base64EncodedString(),
            body: body)
        envelope.sig = try sign(envelope.signingBytes).base64EncodedString()
        return envelope
    }
}
