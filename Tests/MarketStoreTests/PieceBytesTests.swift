import Foundation
import MarketCore
import MarketProtocol
import TestSupport
import Testing

@testable import MarketStore

/// The running counts of stored pieces (`piece_bytes`), which the market checks its bounds
/// against instead of summing the pieces: on both stores they stay the sums of the pieces
/// through inserts, a refused duplicate and deletions, every path that ends a task drops its
/// pieces, and books from before the counts get them from their pieces.
@Suite struct PieceBytesTests {
    let directory = TemporaryDirectory("cmm-piece-bytes")
    static let requester = PeerID(digestPrefix: [UInt8](repeating: 42, count: 20))
    static let provider = PeerID(digestPrefix: [UInt8](repeating: 7, count: 20))

    static func piece(_ task: String, _ blob: String, _ index: Int, bytes: Int) -> StoredBlobChunk {
        StoredBlobChunk(
            taskID: task, blob: blob, index: index, count: 4, sender: requester, bytes: Int64(bytes),
            frame: String(repeating: "x", count: bytes))
    }

    /// What the pieces themselves add up to: one task's by blob, and every task's.
    static func sums(_ tx: any MarketTransaction, taskID: String) async throws -> StoredPieceBytes {
        let tx = tx as! SQLMarketTransaction
        var sums = StoredPieceBytes(blobs: [:], total: 0)
        let byBlob = SQL("SELECT blob, CAST(sum(bytes) AS BIGINT) FROM blob_chunks WHERE task_id = $1 GROUP BY blob")
        for row in try await tx.rows(byBlob, [.text(taskID)]) { sums.blobs[try row.text(0)] = try row.int64(1) }
        let all = SQL("SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM blob_chunks")
        sums.total = try await tx.one(all)?.int64(0) ?? 0
        return sums
    }

    /// The counts of `tasks` and the market's equal the sums of the pieces; returns the total.
    @discardableResult
    static func expectCountsAreSums(
        _ store: any MarketStore, _ tasks: [String], _ step: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Int64 {
        var total: Int64 = -1
        for task in tasks {
            let (counts, sums) = try await store.read { tx in
                (try await tx.pieceBytes(taskID: task, lock: false), try await Self.sums(tx, taskID: task))
            }
            #expect(counts == sums, "\(step): task \(task)", sourceLocation: sourceLocation)
            total = counts.total
        }
        return total
    }

    @Test(arguments: StoreTarget.enabled)
    func theCountsStayTheSumsOfThePieces(target: StoreTarget) async throws {
        let store = try await target.make(in: directory)
        defer { Task { try? await store.close() } }
        let tasks = ["t1", "t2"]
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) empty") == 0)
        try await store.write { tx in
            try await tx.putBlobChunk(Self.piece("t1", "workspace", 0, bytes: 100))
            try await tx.putBlobChunk(Self.piece("t1", "workspace", 1, bytes: 50))
        }
        try await store.write { tx in
            try await tx.putBlobChunk(Self.piece("t1", "patch", 0, bytes: 30))
            try await tx.putBlobChunk(Self.piece("t2", "workspace", 0, bytes: 70))
        }
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) inserted") == 250)
        #expect(
            try await store.read { try await $0.pieceBytes(taskID: "t1", lock: true) }
                == StoredPieceBytes(blobs: ["workspace": 150, "patch": 30], total: 250))

        // A second piece under a kept index is refused by the books themselves, and nothing of
        // it lands: neither the piece nor its bytes on the counts.
        await #expect(throws: (any Error).self) {
            try await store.write { tx in try await tx.putBlobChunk(Self.piece("t1", "workspace", 0, bytes: 999)) }
        }
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) duplicate") == 250)
        #expect(
            try await store.read { try await $0.blobChunk(taskID: "t1", blob: "workspace", index: 0)?.bytes } == 100)

        try await store.write { try await $0.deleteBlobChunks(taskID: "t1", blob: "workspace") }
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) one blob deleted") == 100)
        try await store.write { try await $0.deleteBlobChunks(taskID: "t2", blob: nil) }
        try await store.write { try await $0.deleteBlobChunks(taskID: "t2", blob: nil) }
        try await store.write { try await $0.deleteBlobChunks(taskID: "t1", blob: "conversation") }
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) a task deleted, twice") == 30)
        try await store.write { try await $0.deleteBlobChunks(taskID: "t1", blob: nil) }
        #expect(try await Self.expectCountsAreSums(store, tasks, "\(target) all deleted") == 0)
        #expect(try await store.read { try await $0.pieceBytes(taskID: "t1", lock: false).blobs }.isEmpty)
    }

    /// A disputed task keeps its provider's pieces; the operator's `market resolve`, which moves
    /// the task outside the server, drops them with the task's end like any other path.
    @Test(arguments: StoreTarget.enabled)
    func everyEndOfATaskDropsItsPieces(target: StoreTarget) async throws {
        let store = try await target.make(in: directory)
        defer { Task { try? await store.close() } }
        let book = MarketBook(rules: MarketRules())
        let hash = String(repeating: "a", count: 64)
        try await store.write { tx in
            _ = try await book.mint(to: Self.requester, amount: Credits(micro: 10), memo: "seed", nowMs: 1, in: tx)
            _ = try await book.advertise(
                AdvertiseBody(price: 2, slots: 1, maxWorkspaceBytes: 100, maxWorkspaceFiles: 1), from: Self.provider,
                nowMs: 1, in: tx)
            let posted = try await book.post(
                PostBody(taskId: "d1", maxPrice: 3, workspace: (bytes: 10, files: 1, archiveBytes: 10)),
                from: Self.requester, nowMs: 2, in: tx)
            #expect(posted.assignment != nil)
            try await tx.putBlobChunk(Self.piece("d1", "workspace", 0, bytes: 40))
            _ = try await book.apply(.approve(by: Self.provider), toTask: "d1", nowMs: 3, in: tx)
            try await tx.putBlobChunk(Self.piece("d1", "patch", 0, bytes: 60))
            _ = try await book.apply(.deliver(by: Self.provider, resultHash: hash), toTask: "d1", nowMs: 4, in: tx)
        }
        // Delivered: the requester's workspace is of no more use, the provider's patch is.
        #expect(try await store.read { try await $0.pieceBytes(taskID: "d1", lock: false) }.blobs == ["patch": 60])
        _ = try await book.apply(.dispute(by: Self.requester, reason: "wrong"), toTask: "d1", nowMs: 5, on: store)
        #expect(try await Self.expectCountsAreSums(store, ["d1"], "\(target) disputed") == 60)
        _ = try await book.apply(.resolve(forProvider: false, memo: "refund"), toTask: "d1", nowMs: 6, on: store)
        #expect(try await store.read { try await $0.task("d1", lock: false)?.state } == .refunded)
        #expect(try await Self.expectCountsAreSums(store, ["d1"], "\(target) resolved") == 0)
        #expect(try await book.audit(on: store).balanced)
    }

    /// Books from before the counts: the pieces no rule needs any more go (those of ended
    /// tasks, of no task, and a delivered task's workspace), and the counts start from the
    /// pieces kept.
    @Test(arguments: StoreTarget.enabled)
    func booksFromBeforeTheCountsGetThemFromTheirPieces(target: StoreTarget) async throws {
        let location = try target.freshLocation(in: directory)
        let old = try await target.open(location)
        let states: [String: TaskState] = ["run": .running, "done": .settled, "deliv": .delivered]
        try await old.write { tx in
            let tx = tx as! SQLMarketTransaction
            for (id, state) in states {
                var task = MarketTask(
                    id: id, requester: Self.requester, maxPrice: Credits(micro: 3), minReputation: 0, model: nil,
                    timeoutSeconds: 60, createdMs: 1, deadlineMs: 100)
                task.state = state
                try await tx.insertTask(task)
            }
            // As the books were before the migration: no counts, the per-sender index.
            try await tx.run("DROP TABLE piece_bytes")
            try await tx.run("DELETE FROM market_migrations WHERE id = 'v7-piece-bytes'")
            try await tx.run("CREATE INDEX blob_chunks_sender ON blob_chunks(sender)")
            for (task, blob, bytes) in [
                ("run", "workspace", 11), ("run", "workspace", 12), ("run", "patch", 13), ("done", "patch", 1000),
                ("deliv", "workspace", 2000), ("deliv", "transcript", 17), ("gone", "workspace", 3000),
            ] {
                try await tx.run(
                    """
                    INSERT INTO blob_chunks (task_id, blob, idx, count, sender, bytes, frame)
                    VALUES ('\(task)', '\(blob)', \(bytes), 9999, 'x', \(bytes), 'f')
                    """)
            }
        }
        try await old.close()
        let store = try await target.open(location)
        defer { Task { try? await store.close() } }
        #expect(try await Self.expectCountsAreSums(store, ["run", "done", "deliv", "gone"], "\(target)") == 53)
        #expect(
            try await store.read { try await $0.pieceBytes(taskID: "run", lock: false) }
                == StoredPieceBytes(blobs: ["workspace": 23, "patch": 13], total: 53))
        #expect(
            try await store.read { try await $0.pieceBytes(taskID: "deliv", lock: false).blobs } == ["transcript": 17])
    }
}
