import Foundation
import Logging
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// Workspace jobs at the market over a real connection: offers without workspace limits never
/// take one, pieces are kept only for the party and the state that need them, bounded by what
/// the task declared, by what its escrow pays for and by the market's total, relayed as signed,
/// kept once, and dropped when the task moves on.
@Suite(.serialized) struct BlobChunkTests {
    static let piece = Data(repeating: 0x41, count: 3000).base64EncodedString()

    /// A market, a requester holding 10 RUV and a provider, both connected, for `body`; the
    /// books balance after it.
    static func withParties(
        _ body: @escaping @Sendable (TestMarket, MarketConnection, MarketConnection) async throws -> Void
    ) async throws {
        try await TestMarket.with { market in
            let requester = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            try await market.connect(requester) { r in
                try await market.connect(TestMarket.newPeer()) { p in try await body(market, r, p) }
            }
            #expect(try await market.audit().balanced)
        }
    }

    /// A task posted without a workspace takes no workspace pieces, and one posted as no
    /// follow-up no conversation.
    static func expectNoPiecesOfUndeclared(
        _ blob: BlobChunkBody.Blob, taskId: String, from requester: MarketConnection
    ) async throws {
        try await requester.ok(.taskPost, PostBody(taskId: taskId, maxPrice: micro(2)))
        let piece = BlobChunkBody(taskId: taskId, blob: blob, index: 0, count: 1, sealed: Self.piece)
        #expect(try await requester.refused(.blobChunk, piece) == "invalid_state")
    }

    @Test func piecesAreBoundedAndKeptOnlyWhileNeeded() async throws {
        try await TestMarket.with { market in
            let requester = TestMarket.newPeer()
            let provider = TestMarket.newPeer()
            let stranger = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            try await market.connect(requester) { r in
                try await market.connect(provider) { p in
                    // An offer that does not say what workspaces it takes takes none.
                    try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(1), slots: 1))
                    let ws = (bytes: Int64(3000), files: Int64(1), archiveBytes: Int64(4096))
                    try await r.ok(.taskPost, PostBody(taskId: "ws1", maxPrice: micro(2), workspace: ws))
                    #expect(
                        try await p.refused(.bidPlace, BidBody(taskId: "ws1", price: micro(1))) == "workspace_too_large"
                    )
                    try await p.ok(
                        .offerAdvertise,
                        AdvertiseBody(price: micro(1), slots: 1, maxWorkspaceBytes: 2000, maxWorkspaceFiles: 10))
                    #expect(
                        try await p.refused(.bidPlace, BidBody(taskId: "ws1", price: micro(1))) == "workspace_too_large"
                    )
                    // A limit that fits: the standing offer takes the task at once.
                    try await p.ok(
                        .offerAdvertise,
                        AdvertiseBody(price: micro(1), slots: 1, maxWorkspaceBytes: 1 << 20, maxWorkspaceFiles: 10))
                    #expect(try await market.store.read { try await $0.task("ws1", lock: false)?.state } == .assigned)

                    // Bad pieces change nothing.
                    #expect(
                        try await p.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 1, sealed: Self.piece))
                            == "not_a_party")
                    #expect(
                        try await r.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "ws1", blob: .workspace, index: 2, count: 2, sealed: Self.piece))
                            == "invalid_body")
                    #expect(
                        try await r.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "ws1", blob: .patch, index: 0, count: 1, sealed: Self.piece))
                            == "not_a_party")
                    let tooMuch = Data(repeating: 0x42, count: 600_000).base64EncodedString()
                    #expect(
                        try await r.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 2, sealed: tooMuch))
                            == "workspace_too_large")
                    try await market.connect(stranger) { (s: MarketConnection) async throws in
                        #expect(
                            try await s.refused(
                                .blobChunk,
                                BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 1, sealed: Self.piece))
                                == "not_a_party")
                    }
                    #expect(try await market.piecesKept("ws1", "workspace") == 0)

                    // A good piece is kept, the same piece again is taken as it was, and it is
                    // dropped when the task re-opens for another provider.
                    try await r.ok(
                        .blobChunk,
                        BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 2, sealed: Self.piece))
                    try await r.ok(
                        .blobChunk,
                        BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 2, sealed: Self.piece))
                    #expect(try await market.piecesKept("ws1", "workspace") == 1)
                    try await p.ok(.jobRejected, ReasonBody(taskId: "ws1", reason: "not today"))
                    #expect(try await market.piecesKept("ws1", "workspace") == 0)

                    try await Self.expectNoPiecesOfUndeclared(.workspace, taskId: "plain", from: r)
                }
            }
            // The workspace fields go together.
            #expect(throws: MarketError.self) {
                var body = PostBody(taskId: "x", maxPrice: 1)
                body.workspaceBytes = 1
                try body.validate(limits: WireLimits())
            }
            #expect(try await market.audit().balanced)
        }
    }

    /// A follow-up's conversation (requester → provider) and a job's transcript (provider →
    /// requester) follow the same rules as a workspace and a patch.
    @Test func conversationAndTranscriptPiecesFollowTheSameRules() async throws {
        try await Self.withParties { market, r, p in
            try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(1), slots: 1))
            try await r.ok(.taskPost, PostBody(taskId: "fu1", maxPrice: micro(2), conversationBytes: 4096))
            #expect(try await market.store.read { try await $0.task("fu1", lock: false)?.state } == .assigned)
            func piece(_ blob: BlobChunkBody.Blob, _ sealed: String = Self.piece, count: Int = 1)
                -> BlobChunkBody
            {
                BlobChunkBody(taskId: "fu1", blob: blob, index: 0, count: count, sealed: sealed)
            }
            #expect(try await p.refused(.blobChunk, piece(.conversation)) == "not_a_party")
            #expect(try await r.refused(.blobChunk, piece(.transcript)) == "not_a_party")
            #expect(try await p.refused(.blobChunk, piece(.transcript)) == "invalid_state")
            let tooMuch = Data(repeating: 0x42, count: 600_000).base64EncodedString()
            #expect(
                try await r.refused(.blobChunk, piece(.conversation, tooMuch, count: 2))
                    == "workspace_too_large")
            try await r.ok(.blobChunk, piece(.conversation))
            try await p.ok(.jobApproved, TaskRefBody(taskId: "fu1"))
            try await p.ok(.blobChunk, piece(.transcript))
            let hash = String(repeating: "a", count: 64)
            try await p.ok(
                .jobResult,
                ResultBody(
                    taskId: "fu1", sealed: Self.piece, resultHash: hash,
                    usage: JobUsage(inputTokens: 1, outputTokens: 1)))
            // Delivered: the requester's pieces are no longer needed, the provider's are.
            #expect(try await market.piecesKept("fu1", "conversation") == 0)
            #expect(try await market.piecesKept("fu1", "transcript") == 1)
            try await r.ok(.jobAccept, TaskRefBody(taskId: "fu1"))
            #expect(try await market.piecesKept("fu1", "transcript") == 0)

            try await Self.expectNoPiecesOfUndeclared(.conversation, taskId: "new1", from: r)
        }
        for bytes: Int64 in [0, WireLimits.maxTranscriptBytes + 1] {
            #expect(throws: MarketError.self) {
                try PostBody(taskId: "x", maxPrice: 1, conversationBytes: bytes).validate(limits: WireLimits())
            }
        }
    }

    /// A piece is kept once: the same piece again (under another message id) is taken and
    /// changes nothing, while other bytes or another count under its index are refused, say
    /// why, change nothing and leave the connection open.
    @Test func aPieceIndexKeepsItsFirstBytes() async throws {
        try await Self.withParties { market, r, p in
            try await p.ok(
                .offerAdvertise,
                AdvertiseBody(price: micro(1), slots: 1, maxWorkspaceBytes: 1 << 20, maxWorkspaceFiles: 10))
            let ws = (bytes: Int64(3000), files: Int64(1), archiveBytes: Int64(1 << 16))
            try await r.ok(.taskPost, PostBody(taskId: "dup", maxPrice: micro(2), workspace: ws))
            func piece(_ sealed: String, count: Int = 2) -> BlobChunkBody {
                BlobChunkBody(taskId: "dup", blob: .workspace, index: 0, count: count, sealed: sealed)
            }
            let other = Data(repeating: 0x42, count: 3000).base64EncodedString()
            try await r.ok(.blobChunk, piece(Self.piece))
            try await r.ok(.blobChunk, piece(Self.piece))
            for (body, why) in [
                (piece(other), "this one differs"), (piece(Self.piece, count: 3), "one of 3)"),
                (piece(Self.piece + "QUJD"), "sent: 4004 bytes"),
            ] {
                let answer = try await r.request(.blobChunk, body)
                #expect(answer.errorBody?.code == .duplicatePiece, "\(answer.body)")
                #expect(
                    answer.errorBody?.message.contains("piece 0 of the workspace of task dup is kept already")
                        == true && answer.errorBody?.message.contains(why) == true,
                    "\(answer.body)")
            }
            let kept = try await market.store.read { try await $0.blobChunks(taskID: "dup", blob: "workspace") }
            #expect(kept.count == 1 && kept[0].contains(Self.piece) && !kept[0].contains(other))
            #expect(
                try await market.store.read { try await $0.pieceBytes(taskID: "dup", lock: false) }
                    == StoredPieceBytes(blobs: ["workspace": 4000], total: 4000))
            // The provider was relayed the piece each time it was taken, never the others.
            for _ in 0..<2 {
                let relayed = try await p.next(.blobChunk, taskId: "dup")
                #expect(try relayed.decodeBody(BlobChunkBody.self).sealed == Self.piece)
            }
            // Refused, not dropped: the same connection goes on.
            try await r.ok(
                .blobChunk, BlobChunkBody(taskId: "dup", blob: .workspace, index: 1, count: 2, sealed: other))
            #expect(try await p.next(.blobChunk, taskId: "dup").decodeBody(BlobChunkBody.self).index == 1)
        }
    }

    /// Identities cost nothing: ten of them, each offering and posting tasks at one micro-credit,
    /// push pieces from both sides of every task at once. Each party of a task keeps no more
    /// than the floor its escrow buys, the market no more than its total; every refusal says
    /// which bound and by how much, and a bystander's handshake completes while the swarm
    /// pushes and once the market is full. On both stores: PostgreSQL's locks are what hold
    /// the bounds there.
    @Test(arguments: PostgresTestDatabase.shouldRun ? ["sqlite", "postgres"] : ["sqlite"])
    func aSybilSwarmStoresNoMoreThanItPaysForAndTheMarketKeeps(books: String) async throws {
        let limits = StoredPieceLimits(maxTotalBytes: 1 << 20, bytesPerCredit: 1 << 20, minBytesPerTask: 100_000)
        let piece = Data(repeating: 0x43, count: 30_000).base64EncodedString()
        let pieceBytes = Int64(piece.utf8.count)
        var postgres: (any MarketStore)?
        if books == "postgres" {
            postgres = try await PostgresMarketStore.connect(
                url: try PostgresTestDatabase.create(), size: 4, logger: Logger(label: "test.postgres"))
        }
        let store = postgres.map { store in { @Sendable (_: URL) in store } }
        try await TestMarket.with(configure: { $0.storedPieces = limits }, store: store) { market in
            let swarm = (0..<10).map { _ in TestMarket.newPeer() }
            for sybil in swarm { try await market.mint(sybil.peerID, 1) }
            for sybil in swarm {
                try await market.connect(sybil) { c in
                    try await c.ok(
                        .offerAdvertise,
                        AdvertiseBody(price: 1, slots: 2, maxWorkspaceBytes: 1 << 20, maxWorkspaceFiles: 10))
                }
            }
            let ws = (bytes: Int64(1000), files: Int64(1), archiveBytes: Int64(1 << 20))
            for (index, sybil) in swarm.enumerated() {
                try await market.connect(sybil) { c in
                    try await c.ok(.taskPost, PostBody(taskId: "sybil\(index)", maxPrice: 1, workspace: ws))
                }
            }
            var posted: [MarketTask] = []
            for index in 0..<10 { posted.append(try #require(try await market.task("sybil\(index)"))) }
            let tasks = posted
            #expect(tasks.allSatisfy { $0.state == .assigned && $0.price?.micro == 1 })

            /// Pieces of `blob` until one is refused for a task's bound; what the market said.
            @Sendable func push(_ c: MarketConnection, _ task: String, _ blob: BlobChunkBody.Blob) async throws
                -> [ErrorBody]
            {
                var refusals: [ErrorBody] = []
                for index in 0..<8 {
                    let answer = try await c.request(
                        .blobChunk, BlobChunkBody(taskId: task, blob: blob, index: index, count: 8, sealed: piece))
                    guard let refusal = answer.errorBody else { continue }
                    refusals.append(refusal)
                    if refusal.code != .rateLimited { break }
                }
                return refusals
            }
            /// Every sybil at once, and a bystander's handshake and ping among them.
            func swarming(_ each: @escaping @Sendable (MarketConnection, Int) async throws -> [ErrorBody]) async throws
                -> [ErrorBody]
            {
                try await withThrowingTaskGroup(of: [ErrorBody].self) { group in
                    for (index, sybil) in swarm.enumerated() {
                        group.addTask { try await market.connect(sybil) { try await each($0, index) } }
                    }
                    group.addTask {
                        let pong = try await market.connect(TestMarket.newPeer()) {
                            try await $0.request(.ping, EmptyBody())
                        }
                        #expect(pong.type == "pong")
                        return []
                    }
                    return try await group.reduce(into: []) { $0 += $1 }
                }
            }
            // The requesters first: ten parties' floors (2 pieces each) fit in the total, so each
            // is refused for its task's bound alone.
            let requesterRefusals = try await swarming { c, index in try await push(c, "sybil\(index)", .workspace) }
            #expect(requesterRefusals.count == 10 && requesterRefusals.allSatisfy { $0.code == .workspaceTooLarge })
            #expect(
                requesterRefusals.allSatisfy {
                    $0.message.contains("the requester's pieces of task sybil")
                        && $0.message.contains(
                            "would hold 80000 + 40000 bytes; its price of \(Credits(micro: 1)) keeps at most 100000")
                }, "\(requesterRefusals.map(\.message))")
            // Then the providers, of the tasks each won: the total runs out before their floors.
            let providerRefusals = try await swarming { c, _ in
                var refusals: [ErrorBody] = []
                for task in tasks where task.provider == c.peerID {
                    try await c.ok(.jobApproved, TaskRefBody(taskId: task.id))
                    refusals += try await push(c, task.id, .patch)
                }
                return refusals
            }
            let full = providerRefusals.filter { $0.code == .rateLimited }
            #expect(
                !full.isEmpty && providerRefusals.allSatisfy { [.rateLimited, .workspaceTooLarge].contains($0.code) })
            #expect(
                full.allSatisfy {
                    $0.message.contains("the market keeps at most 1048576 bytes of pieces in all and holds")
                        && $0.message.contains("this piece of 40000 bytes waits until tasks end")
                }, "\(full.map(\.message))")

            // What is kept: the counts are the pieces, within every bound.
            var kept: Int64 = 0
            for task in tasks {
                let counts = try await market.store.read { try await $0.pieceBytes(taskID: task.id, lock: false) }
                for blob in ["workspace", "patch"] {
                    let bytes = Int64(try await market.piecesKept(task.id, blob)) * pieceBytes
                    #expect(counts.blobs[blob, default: 0] == bytes, "\(task.id) \(blob)")
                    #expect(bytes <= 100_000)
                    kept += bytes
                }
            }
            #expect(
                try await market.store.read { try await $0.pieceBytes(taskID: "sybil0", lock: false).total } == kept)
            #expect(kept <= limits.maxTotalBytes && kept > limits.maxTotalBytes - pieceBytes, "\(kept)")
            let pong = try await market.connect(TestMarket.newPeer()) { try await $0.request(.ping, EmptyBody()) }
            #expect(pong.type == "pong")

            // The tasks' ends free what they held.
            for sybil in swarm {
                try await market.connect(sybil) { c in
                    for task in tasks where task.provider == c.peerID {
                        try await c.ok(.jobFailed, ReasonBody(taskId: task.id, reason: "gave up"))
                    }
                }
            }
            #expect(try await market.store.read { try await $0.pieceBytes(taskID: "sybil0", lock: false).total } == 0)
            #expect(try await market.audit().balanced)
        }
    }
}

extension TestMarket {
    /// How many pieces of a task's blob the market keeps.
    func piecesKept(_ taskID: String, _ blob: String) async throws -> Int {
        try await store.read { try await $0.blobChunks(taskID: taskID, blob: blob).count }
    }
}
