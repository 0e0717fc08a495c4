import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// Hostile and mistaken frames over a real connection: each is answered with its error code,
/// the connection stays usable where the error is recoverable, and the books do not move.
@Suite(.serialized) struct BadInputTests {
    @Test func everyBadFrameGetsItsErrorAndChangesNothing() async throws {
        try await TestMarket.with { market in
            let alice = TestMarket.newPeer()
            let bob = TestMarket.newPeer()
            let carol = TestMarket.newPeer()
            try await market.mint(alice.peerID, 10)
            try await market.mint(bob.peerID, 10)
            let before = try await market.store.read { (try await $0.allBalances(), try await $0.allMovements().count) }
            try await market.connect(alice) { a in
                let now = market.clock.nowMs
                // Framing and envelope checks.
                #expect(try await a.refusedRaw("{not json") == "malformed")
                #expect(try await a.refusedRaw(String(repeating: "x", count: 1_200_000)) == "frame_too_large")
                #expect(
                    try await a.refusedRaw(try alice.forged(type: "task.steal", body: "{}", ts: now)) == "unknown_type")
                #expect(
                    try await a.refusedRaw(try alice.forged(type: "ping", body: "{}", ts: now - 6 * 60_000))
                        == "stale_timestamp")
                #expect(
                    try await a.refusedRaw(try alice.forged(type: "ping", body: "{}", ts: now + 6 * 60_000))
                        == "future_timestamp")
                var tampered = try JSONDecoder().decode(
                    Envelope.self, from: Data(try alice.forged(type: "ping", body: "{}", ts: now).utf8))
                tampered.body = "{\"x\":1}"
                #expect(
                    try await a.refusedRaw(String(decoding: try JSONEncoder().encode(tampered), as: UTF8.self))
                        == "bad_signature")
                #expect(try await a.refusedRaw(try bob.forged(type: "ping", body: "{}", ts: now)) == "wrong_sender")
                // Bodies that do not fit their type, and amounts.
                #expect(
                    try await a.refusedRaw(try alice.forged(type: "task.post", body: "{\"x\":1}", ts: now))
                        == "invalid_body")
                #expect(try await a.refused(.taskPost, PostBody(taskId: "t0", maxPrice: 0)) == "invalid_amount")
                #expect(try await a.refused(.taskPost, PostBody(taskId: "t0", maxPrice: -5)) == "invalid_amount")
                let huge = "{\"taskId\":\"t0\",\"maxPrice\":99999999999999999999}"
                #expect(
                    try await a.refusedRaw(try alice.forged(type: "task.post", body: huge, ts: now)) == "invalid_body")
                #expect(
                    try await a.refused(.taskPost, PostBody(taskId: "t0", maxPrice: micro(11))) == "insufficient_funds")
                #expect(
                    try await a.refused(.taskPost, PostBody(taskId: "../etc", maxPrice: micro(1))) == "invalid_body")
                #expect(
                    try await a.refused(.offerAdvertise, AdvertiseBody(price: micro(1), slots: 0)) == "invalid_body")
                // A pause needs both its time and its window, each well-formed.
                var pausedAlone = AdvertiseBody(price: micro(1), slots: 1)
                pausedAlone.pausedUntilMs = 1_796_000_000_000
                #expect(try await a.refused(.offerAdvertise, pausedAlone) == "invalid_body")
                var badWindow = pausedAlone
                badWindow.pausedFor = "../five_hour"
                #expect(try await a.refused(.offerAdvertise, badWindow) == "invalid_body")
                var badTime = badWindow
                badTime.pausedFor = "five_hour"
                badTime.pausedUntilMs = -1
                #expect(try await a.refused(.offerAdvertise, badTime) == "invalid_body")
                #expect(try await a.refused(.challenge, ChallengeBody(nonce: "x")) == "not_allowed")
                // Market rules.
                #expect(try await a.refused(.bidPlace, BidBody(taskId: "nothing", price: micro(1))) == "unknown_task")
                try await a.ok(.taskPost, PostBody(taskId: "mine", maxPrice: micro(4)))
                #expect(try await a.refused(.bidPlace, BidBody(taskId: "mine", price: micro(1))) == "no_offer")
                try await a.ok(.offerAdvertise, AdvertiseBody(price: micro(1), slots: 1))
                #expect(try await a.refused(.bidPlace, BidBody(taskId: "mine", price: micro(1))) == "own_task")
                try await market.connect(bob) { b in
                    try await b.ok(.offerAdvertise, AdvertiseBody(price: micro(9), slots: 1))
                    #expect(
                        try await b.refused(.bidPlace, BidBody(taskId: "mine", price: micro(5))) == "price_above_max")
                    #expect(try await b.refused(.taskCancel, TaskRefBody(taskId: "mine")) == "not_a_party")
                    try await b.ok(.bidPlace, BidBody(taskId: "mine", price: micro(3)))
                    #expect(try await a.refused(.jobApproved, TaskRefBody(taskId: "mine")) == "not_a_party")
                    try await market.connect(carol) { (c: MarketConnection) async throws in
                        #expect(try await c.refused(.jobAccept, TaskRefBody(taskId: "mine")) == "not_a_party")
                        #expect(
                            try await c.refused(.jobHandback, ReasonBody(taskId: "mine", reason: "capacity"))
                                == "not_a_party")
                        #expect(
                            try await c.refused(.payloadDeliver, SealedBody(taskId: "mine", sealed: "eA=="))
                                == "not_a_party")
                        #expect(
                            try await c.refused(
                                .jobResult,
                                ResultBody(
                                    taskId: "mine", sealed: "eA==", resultHash: String(repeating: "a", count: 64)))
                                == "not_a_party")
                    }
                    #expect(try await a.refused(.jobAccept, TaskRefBody(taskId: "mine")) == "invalid_state")
                    #expect(try await b.refused(.bidPlace, BidBody(taskId: "mine", price: micro(3))) == "invalid_state")
                }
                // Recoverable errors kept the connection: it still answers.
                let pong = try await a.request(.ping, EmptyBody())
                #expect(pong.type == "pong")
            }
            // Only the accepted actions moved money: the escrow lock (the whole maximum stays in
            // escrow while the task is assigned; the difference goes back at settlement).
            let after = try await market.store.read { (try await $0.allBalances(), try await $0.allMovements().count) }
            #expect(after.1 == before.1 + 1)
            #expect(after.0["peer:\(alice.peerID)"] == micro(6) && after.0["escrow:mine"] == micro(4))
            #expect(after.0["peer:\(bob.peerID)"] == before.0["peer:\(bob.peerID)"])
            #expect(try await market.audit().balanced)
        }
    }

    /// A listener that takes the TCP connection but never answers the WebSocket upgrade (a
    /// market killed mid-upgrade looks like this): the client gives up after its open timeout,
    /// with a message, instead of waiting forever.
    @Test func aMarketThatNeverAnswersTheUpgradeIsGivenUpOn() async throws {
        let listener = try LoopbackSocket(listening: true)
        let port = listener.port
        let started = ContinuousClock.now
        await #expect {
            try await MarketConnection.with(
                url: "ws://127.0.0.1:\(port)/market", keys: TestMarket.newPeer(), openTimeout: .seconds(1)
            ) { _ in }
        } throws: { "\($0)".contains("no WebSocket connection") }
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test func theHandshakeRefusesWrongKeysAndFramesBeforeAuth() async throws {
        try await TestMarket.with { market in
            let alice = TestMarket.newPeer()
            let mallory = TestMarket.newPeer()
            try await market.connect(alice, authenticate: false) { (connection: MarketConnection) async throws in
                #expect(
                    try await connection.refused(.taskPost, PostBody(taskId: "t", maxPrice: 1)) == "not_authenticated")
            }
            // Hello as alice, then an auth signed by another key that claims to be alice.
            try await market.connect(alice, authenticate: false) { connection in
                let document = String(decoding: try PublicKeyDocument(ring: alice).encoded(), as: UTF8.self)
                try await connection.send(.hello, HelloBody(keyDocument: document))
                let challenge = try await connection.next(.challenge).decodeBody(ChallengeBody.self)
                var nonce = Data(count: 16)
                for index in nonce.indices { nonce[index] = UInt8.random(in: 0...255) }
                var auth = Envelope(
                    type: "auth", id: "a1", from: alice.peerID.rawValue, ts: market.clock.nowMs,
                    nonce: nonce.base64EncodedString(), body: "{\"challenge\":\"\(challenge.nonce)\"}")
                auth.sig = try mallory.identity.sign(auth.signingBytes).base64EncodedString()
                #expect(
                    try await connection.refusedRaw(String(decoding: try JSONEncoder().encode(auth), as: UTF8.self))
                        == "auth_failed")
            }
            // A key document that is not the sender's.
            try await market.connect(mallory, authenticate: false) { connection in
                let document = String(decoding: try PublicKeyDocument(ring: alice).encoded(), as: UTF8.self)
                #expect(try await connection.refused(.hello, HelloBody(keyDocument: document)) == "auth_failed")
            }
            #expect(
                try await market.store.read { try await $0.peer(alice.peerID) } == nil,
                "no failed handshake registered a peer")
        }
    }

    @Test func aReplayedFrameIsRefusedAlsoAfterARestart() async throws {
        let directory = TemporaryDirectory("cmm-replay")
        let alice = TestMarket.newPeer()
        let captured = try await TestMarket.with(directory: directory) { market in
            try await market.mint(alice.peerID, 10)
            return try await market.connect(alice) { connection in
                let frame = try alice.forged(
                    type: "task.post", body: "{\"maxPrice\":1000000,\"taskId\":\"r1\"}", ts: market.clock.nowMs,
                    id: "m1")
                try await connection.sendRaw(frame)
                try (try await connection.answer(to: "m1")).throwIfError()
                #expect(try await connection.refusedRaw(frame, ref: "m1") == "replayed_nonce")
                return frame
            }
        }
        try await TestMarket.with(directory: directory) { market in
            try await market.connect(alice) { connection in
                #expect(try await connection.refusedRaw(captured, ref: "m1") == "replayed_nonce")
                // The same message id with a fresh nonce is a resend: the stored answer, no second action.
                let again = try await connection.request(
                    .taskPost, PostBody(taskId: "r1", maxPrice: micro(1)), id: "m1")
                #expect(again.type == "ack")
            }
            #expect(try await market.balance(.peer(alice.peerID)) == Credits(whole: 9))
            #expect(try await market.audit().balanced)
        }
    }

    /// A refused frame changes nothing but its nonce: the same frame again is a replay, not a second
    /// try (the refusal's nonce is spent in a transaction of its own, before it is answered).
    @Test func aRefusedFrameSpendsItsNonce() async throws {
        let alice = TestMarket.newPeer()
        try await TestMarket.with { market in
            try await market.mint(alice.peerID, 1)
            try await market.connect(alice) { connection in
                let frame = try alice.forged(
                    type: "task.post", body: "{\"maxPrice\":5000000,\"taskId\":\"r2\"}", ts: market.clock.nowMs,
                    id: "m2")
                #expect(try await connection.refusedRaw(frame, ref: "m2") == "insufficient_funds")
                try await market.mint(alice.peerID, 10)
                #expect(try await connection.refusedRaw(frame, ref: "m2") == "replayed_nonce")
            }
            #expect(try await market.store.read { try await $0.task("r2", lock: false) } == nil)
            #expect(try await market.balance(.peer(alice.peerID)) == Credits(whole: 11))
            #expect(try await market.audit().balanced)
        }
    }
}
