import Crypto
import Foundation
import MarketCore
import MarketCrypto
import MarketProtocol
import Testing

@Suite struct EnvelopeSigningTests {
    let alice = PeerIdentity(signingKey: Curve25519.Signing.PrivateKey(), created: Date())
    let mallory = PeerIdentity(signingKey: Curve25519.Signing.PrivateKey(), created: Date())
    let now: Int64 = 1_800_000_000_000

    func verifier() -> EnvelopeVerifier { EnvelopeVerifier(replayCache: MemoryReplayCache()) }

    func expectRefusal(
        _ code: EnvelopeError.Code, _ envelope: Envelope, key: Curve25519.Signing.PublicKey? = nil, at: Int64? = nil,
        verifier given: EnvelopeVerifier? = nil
    ) {
        do {
            try (given ?? verifier()).verify(envelope, signingKey: key ?? alice.publicKey, nowMs: at ?? now)
            Issue.record("expected a refusal with \(code)")
        } catch {
            #expect(error.code == code)
        }
    }

    @Test func aSignedEnvelopeVerifies() throws {
        let envelope = try alice.envelope(type: .taskPost, id: "m1", body: #"{"maxPrice":"5"}"#, nowMs: now)
        try verifier().verify(envelope, signingKey: alice.publicKey, nowMs: now)
        #expect(envelope.from == alice.peerID.rawValue)
        #expect(Data(base64Encoded: envelope.nonce)?.count == 16)
        // Survives a JSON round trip byte for byte: the body is a string, never re-encoded.
        let decoded = try JSONDecoder().decode(Envelope.self, from: try JSONEncoder().encode(envelope))
        try verifier().verify(decoded, signingKey: alice.publicKey, nowMs: now)
    }

    @Test func theWrongKeyIsRefused() throws {
        let envelope = try alice.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        expectRefusal(.wrongSender, envelope, key: mallory.publicKey)
        var forged = try mallory.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        forged.from = alice.peerID.rawValue
        expectRefusal(.badSignature, forged)
    }

    @Test func alteringAnySignedFieldIsRefused() throws {
        let envelope = try alice.envelope(type: .bidPlace, id: "m1", body: #"{"price":"5"}"#, nowMs: now)
        var changes: [(String, (inout Envelope) -> Void, EnvelopeError.Code)] = [
            ("type", { $0.type = "task.post" }, .badSignature),
            ("id", { $0.id = "m2" }, .badSignature),
            ("ts", { $0.ts += 1 }, .badSignature),
            ("nonce", { $0.nonce = Data(repeating: 7, count: 16).base64EncodedString() }, .badSignature),
            ("body", { $0.body = #"{"price":"1"}"# }, .badSignature),
            ("sig", { $0.sig = Data(repeating: 1, count: 64).base64EncodedString() }, .badSignature),
            ("v", { $0.v = 2 }, .unsupportedVersion),
            ("type unknown", { $0.type = "task.steal" }, .unknownType),
            ("nonce malformed", { $0.nonce = "abc" }, .malformed),
        ]
        changes.append(("from", { $0.from = String(repeating: "a", count: 32) }, .wrongSender))
        for (name, change, code) in changes {
            var altered = envelope
            change(&altered)
            do {
                try verifier().verify(altered, signingKey: alice.publicKey, nowMs: now)
                Issue.record("altered \(name) verified")
            } catch {
                #expect(error.code == code, "\(name)")
            }
        }
    }

    @Test func aReplayedNonceIsRefused() throws {
        let shared = EnvelopeVerifier(replayCache: MemoryReplayCache())
        let envelope = try alice.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        try shared.verify(envelope, signingKey: alice.publicKey, nowMs: now)
        #expect(throws: EnvelopeError(.replayedNonce, "nonce already used by \(alice.peerID): replay refused")) {
            try shared.verify(envelope, signingKey: alice.publicKey, nowMs: now + 1000)
        }
        // The same nonce from another peer is that peer's business.
        var bob = try mallory.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        bob.nonce = envelope.nonce
        bob.sig = try mallory.sign(bob.signingBytes).base64EncodedString()
        try shared.verify(bob, signingKey: mallory.publicKey, nowMs: now)
    }

    @Test func clockSkewBeyondFiveMinutesIsRefused() throws {
        let envelope = try alice.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        try verifier().verify(envelope, signingKey: alice.publicKey, nowMs: now + 5 * 60 * 1000)
        try verifier().verify(envelope, signingKey: alice.publicKey, nowMs: now - 5 * 60 * 1000)
        expectRefusal(.staleTimestamp, envelope, at: now + 5 * 60 * 1000 + 1)
        expectRefusal(.futureTimestamp, envelope, at: now - 5 * 60 * 1000 - 1)
    }

    @Test func aFullReplayCacheRefusesInsteadOfForgettingLiveNonces() {
        let cache = MemoryReplayCache(capacity: 100)
        for index in 0..<100 {
            #expect(cache.insert(peer: "p", nonce: "n\(index)", expiresAtMs: now + 1000, nowMs: now) == .inserted)
        }
        // A flood of new nonces is refused; none of the live ones is evicted to make room.
        for index in 100..<1000 {
            #expect(cache.insert(peer: "q\(index)", nonce: "n", expiresAtMs: now + 1000, nowMs: now) == .full)
        }
        #expect(cache.count == 100)
        #expect(cache.insert(peer: "p", nonce: "n0", expiresAtMs: now + 1000, nowMs: now + 500) == .replayed)
        // Once they expire, there is room again.
        #expect(cache.insert(peer: "q", nonce: "n", expiresAtMs: now + 5000, nowMs: now + 1001) == .inserted)
        #expect(cache.count == 1)
    }

    @Test func aNonceStaysLiveUpToTheLastAcceptableMoment() throws {
        let cache = MemoryReplayCache()
        let verifier = EnvelopeVerifier(replayCache: cache)
        let envelope = try alice.envelope(type: .ping, id: "m1", body: "{}", nowMs: now)
        let lastMoment = now + EnvelopeVerifier.defaultWindowMs
        try verifier.verify(envelope, signingKey: alice.publicKey, nowMs: now)
        // At exactly ts + window the timestamp is still accepted, so the nonce must still be known.
        expectRefusal(.replayedNonce, envelope, at: lastMoment, verifier: verifier)
        // One millisecond later the timestamp itself is refused.
        expectRefusal(.staleTimestamp, envelope, at: lastMoment + 1, verifier: verifier)
    }

    @Test func aFullCacheIsARefusalNotAnEviction() throws {
        let verifier = EnvelopeVerifier(replayCache: MemoryReplayCache(capacity: 1))
        try verifier.verify(
            try alice.envelope(type: .ping, id: "m1", body: "{}", nowMs: now), signingKey: alice.publicKey, nowMs: now)
        expectRefusal(
            .replayCacheFull, try alice.envelope(type: .ping, id: "m2", body: "{}", nowMs: now), at: now,
            verifier: verifier)
    }
}
