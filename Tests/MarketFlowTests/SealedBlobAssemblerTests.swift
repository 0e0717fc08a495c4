import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Testing

/// A blob's pieces come from a peer through the market: whatever they say, putting them back
/// together refuses with why, and never traps.
@Suite struct SealedBlobAssemblerTests {
    static func piece(_ index: Int, of count: Int, _ sealed: String = "QUJD") -> BlobChunkBody {
        BlobChunkBody(taskId: "t1", blob: .patch, index: index, count: count, sealed: sealed)
    }

    static func refusal(_ body: () throws(SealedBlob.Assembler.Refusal) -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return error.description
        }
    }

    @Test func piecesInAnyOrderWithResendsOpenToTheBlob() throws {
        let keys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
        // Large enough for three pieces.
        let data = Data((0..<1_000_000).map { UInt8($0 % 251) })
        let (info, chunks) = try SealedBlob.seal(data, to: try PublicKeyDocument(ring: keys), purpose: .result)
        #expect(chunks.count == 3)
        var assembler = SealedBlob.Assembler()
        for (index, chunk) in chunks.enumerated().reversed() {
            let piece = Self.piece(index, of: chunks.count, chunk)
            try assembler.add(piece)
            try assembler.add(piece)  // a resend after a reconnect is the same piece
        }
        #expect(try assembler.isComplete(info))
        #expect(try assembler.open(info, keys: keys) == data)
    }

    @Test func anIndexOutsideItsCountIsRefused() {
        for (index, count) in [(2, 2), (-1, 2), (0, 0), (0, BlobChunkBody.maxChunks + 1)] {
            var assembler = SealedBlob.Assembler()
            let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in
                try assembler.add(Self.piece(index, of: count))
            }
            #expect(why != nil, "index \(index) of \(count)")
        }
        var assembler = SealedBlob.Assembler()
        let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in try assembler.add(Self.piece(5, of: 2)) }
        #expect(why == "piece 5 of the patch is outside 0…1, its count of 2")
    }

    @Test func aCountThatChangesRefusesTheBlobForGood() throws {
        var assembler = SealedBlob.Assembler()
        try assembler.add(Self.piece(0, of: 2))
        let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in try assembler.add(Self.piece(1, of: 3)) }
        #expect(why == "piece 1 of the patch says there are 3 pieces; earlier ones said 2")
        // Nothing after the refusal is taken, not even a piece that would have fitted.
        let again = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in try assembler.add(Self.piece(1, of: 2)) }
        #expect(again == why)
        let info = JobContent.BlobInfo(bytes: 3, sha256: "00", chunks: 2)
        #expect(Self.refusal { () throws(SealedBlob.Assembler.Refusal) in _ = try assembler.isComplete(info) } == why)
    }

    @Test func aDuplicateIndexWithOtherBytesIsRefusedAndTheFirstIsKept() throws {
        var assembler = SealedBlob.Assembler()
        try assembler.add(Self.piece(0, of: 2, "QUJD"))
        try assembler.add(Self.piece(0, of: 2, "QUJD"))
        let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in
            try assembler.add(Self.piece(0, of: 2, "WFla"))
        }
        #expect(why == "piece 0 of the patch came again with other bytes")
        #expect(assembler.refusal?.description == why)
    }

    @Test func piecesOverWhatTheBlobMayHoldAreRefused() throws {
        // The receiver's own limit, as pieces come (before any announcement of the size).
        var small = SealedBlob.Assembler(maxBytes: 10)
        let limit = WireLimits.sealedCharacters(plaintext: 10)
        let big = String(repeating: "A", count: Int(limit) + 4)
        let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in try small.add(Self.piece(0, of: 1, big)) }
        #expect(
            why?.contains("the blob's limit allows 10 bytes, which seal to at most \(limit)") == true, "\(why ?? "")")

        // The size the blob was announced with: its pieces may not hold more than it seals to.
        var assembler = SealedBlob.Assembler()
        try assembler.add(Self.piece(0, of: 1, String(repeating: "A", count: 100_000)))
        let announced = JobContent.BlobInfo(bytes: 1, sha256: "00", chunks: 1)
        let over = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in _ = try assembler.isComplete(announced) }
        #expect(over?.contains("a blob of 1 bytes seals to at most") == true, "\(over ?? "")")

        let tooBig = JobContent.BlobInfo(bytes: 11, sha256: "00", chunks: 1)
        #expect(Self.refusal { () throws(SealedBlob.Assembler.Refusal) in _ = try small.isComplete(tooBig) } != nil)
    }

    @Test func anAnnouncementThatContradictsThePiecesIsRefusedNotAwaited() throws {
        var assembler = SealedBlob.Assembler()
        try assembler.add(Self.piece(0, of: 2))
        let info = JobContent.BlobInfo(bytes: 3, sha256: "00", chunks: 3)
        let why = Self.refusal { () throws(SealedBlob.Assembler.Refusal) in _ = try assembler.isComplete(info) }
        #expect(why == "the blob is announced in 3 pieces, but its pieces say 2")
        let missing = JobContent.BlobInfo(bytes: 3, sha256: "00", chunks: 2)
        #expect(try assembler.isComplete(missing) == false)
        let keys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
        #expect(throws: MarketClientError.self) { try assembler.open(missing, keys: keys) }
    }

    @Test func theOutputKeptInAResultIsCutAtAScalar() {
        #expect(JobContent.prefix("héllo", maxBytes: 2) == "h")
        #expect(JobContent.prefix("héllo", maxBytes: 3) == "hé")
        #expect(JobContent.prefix("👋👋", maxBytes: 7) == "👋")
        #expect(JobContent.prefix("abc", maxBytes: 10) == "abc")
    }

    @Test func aRelayedBodyTheRulesRefuseIsAnErrorThatSaysWhy() throws {
        let body = #"{"taskId":"t1","blob":"patch","index":7,"count":2,"sealed":"QUJD"}"#
        let frame = Envelope(type: "blob.chunk", id: "m1", from: "p", ts: 0, nonce: "n", body: body)
        #expect(throws: MarketClientError.self) { try frame.checkedBody(BlobChunkBody.self) }
        do {
            _ = try frame.checkedBody(BlobChunkBody.self)
        } catch {
            #expect(error.description.contains("index 7 of count 2"), "\(error)")
        }
        let notABody = Envelope(type: "job.rejected", id: "m2", from: "p", ts: 0, nonce: "n", body: "[1]")
        #expect(throws: MarketClientError.self) { try notABody.checkedBody(ReasonBody.self) }
        let assigned = AssignedBody(
            taskId: "t1", requester: "not a peer", provider: "p", price: 1, requesterKeyDocument: "{}",
            providerKeyDocument: "{}")
        #expect(throws: MarketError.self) { try assigned.validate(limits: WireLimits()) }
    }
}
