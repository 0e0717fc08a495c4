import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport
import Testing

/// Workspace jobs at the market over a real connection: offers without workspace limits never
/// take one, pieces are kept only for the party and the state that need them, bounded by what
/// the task declared, relayed as signed, and dropped when the task moves on.
@Suite(.serialized) struct BlobChunkTests {
    static let piece = Data(repeating: 0x41, count: 3000).base64EncodedString()

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
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "ws1", blob: "workspace") }
                            .isEmpty)

                    // A good piece is kept, a resend of its index replaces it, and it is dropped
                    // when the task re-opens for another provider.
                    try await r.ok(
                        .blobChunk,
                        BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 2, sealed: Self.piece))
                    try await r.ok(
                        .blobChunk,
                        BlobChunkBody(taskId: "ws1", blob: .workspace, index: 0, count: 2, sealed: Self.piece))
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "ws1", blob: "workspace") }.count
                            == 1)
                    try await p.ok(.jobRejected, ReasonBody(taskId: "ws1", reason: "not today"))
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "ws1", blob: "workspace") }
                            .isEmpty)

                    // A task posted without a workspace takes no pieces.
                    try await r.ok(.taskPost, PostBody(taskId: "plain", maxPrice: micro(2)))
                    #expect(
                        try await r.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "plain", blob: .workspace, index: 0, count: 1, sealed: Self.piece))
                            == "invalid_state")
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
        try await TestMarket.with { market in
            let requester = TestMarket.newPeer()
            let provider = TestMarket.newPeer()
            try await market.mint(requester.peerID, 10)
            try await market.connect(requester) { r in
                try await market.connect(provider) { p in
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
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "fu1", blob: "conversation") }
                            .isEmpty)
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "fu1", blob: "transcript") }.count
                            == 1)
                    try await r.ok(.jobAccept, TaskRefBody(taskId: "fu1"))
                    #expect(
                        try await market.store.read { try await $0.blobChunks(taskID: "fu1", blob: "transcript") }
                            .isEmpty)

                    // A task posted as no follow-up takes no conversation.
                    try await r.ok(.taskPost, PostBody(taskId: "new1", maxPrice: micro(2)))
                    #expect(
                        try await r.refused(
                            .blobChunk,
                            BlobChunkBody(taskId: "new1", blob: .conversation, index: 0, count: 1, sealed: Self.piece))
                            == "invalid_state")
                }
            }
            for bytes: Int64 in [0, WireLimits.maxTranscriptBytes + 1] {
                #expect(throws: MarketError.self) {
                    try PostBody(taskId: "x", maxPrice: 1, conversationBytes: bytes).validate(limits: WireLimits())
                }
            }
            #expect(try await market.audit().balanced)
        }
    }
}
