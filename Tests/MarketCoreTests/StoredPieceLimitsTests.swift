import MarketCore
import Testing

/// What the market keeps of blob pieces, as a pure rule: a task's share bought by its escrow
/// with a floor, the market's total, and which bound a piece meets first.
@Suite struct StoredPieceLimitsTests {
    let limits = StoredPieceLimits(maxTotalBytes: 1 << 30, bytesPerCredit: 1 << 20, minBytesPerTask: 4096)

    @Test func aTasksShareIsBoughtByItsEscrowWithAFloorAndTheTotalAsCeiling() throws {
        #expect(limits.taskBound(escrow: Credits(micro: 1)) == 4096)
        #expect(limits.taskBound(escrow: try Credits(whole: 3)) == 3 << 20)
        #expect(limits.taskBound(escrow: Credits(micro: 1_500_000)) == (1 << 20) + (1 << 19))
        // The product is taken in 128 bits: the largest escrow and rate buy the total, no more.
        let widest = StoredPieceLimits(maxTotalBytes: 1 << 50, bytesPerCredit: 1 << 40, minBytesPerTask: 0)
        #expect(widest.taskBound(escrow: Credits(micro: .max)) == 1 << 50)
        #expect(widest.taskBound(escrow: Credits(micro: -5)) == 0)
        #expect(StoredPieceLimits().taskBound(escrow: Credits(micro: 1)) == 4 << 20)
    }

    @Test func aPieceMeetsItsBlobThenItsTaskThenTheMarketsTotal() throws {
        func refusal(blob: Int64, bound: Int64 = 10_000, party: Int64, total: Int64) -> MarketError? {
            limits.refusal(
                adding: 1000, blob: ("workspace", blob, bound), party: ("requester", party), totalStored: total,
                taskID: "t1", escrow: Credits(micro: 1))
        }
        #expect(refusal(blob: 0, party: 3096, total: (1 << 30) - 1000) == nil)
        let blob = try #require(refusal(blob: 9001, party: 9001, total: 1 << 30))
        #expect(blob.code == .workspaceTooLarge)
        #expect(
            blob.message
                == "the workspace of task t1 would hold 9001 + 1000 bytes of sealed base64; at most 10000 are kept")
        let task = try #require(refusal(blob: 0, party: 3097, total: 1 << 30))
        #expect(task.code == .workspaceTooLarge)
        #expect(
            task.message
                == "the requester's pieces of task t1 would hold 3097 + 1000 bytes; its price of \(Credits(micro: 1)) keeps at most 4096 (1048576 bytes per RUV, at least 4096)"
        )
        let total = try #require(refusal(blob: 0, party: 0, total: (1 << 30) - 999))
        #expect(total.code == .rateLimited)
        #expect(
            total.message.hasPrefix("the market keeps at most 1073741824 bytes of pieces in all and holds 1073740825"))
        #expect(refusal(blob: .max, bound: .max, party: 0, total: 0)?.code == .workspaceTooLarge, "no overflow")
    }

    @Test func limitsOutsideTheirRangesAreRefusedNamingTheValue() throws {
        #expect(throws: MarketError.self) { try StoredPieceLimits(maxTotalBytes: 1000).validated() }
        let floor = #expect(throws: MarketError.self) {
            try StoredPieceLimits(maxTotalBytes: 1 << 20, minBytesPerTask: 1 << 21).validated()
        }
        #expect(floor?.message.contains("(2097152) is over the total of stored pieces (1048576)") == true)
        #expect(try StoredPieceLimits().validated() == StoredPieceLimits())
    }
}
