/// How many bytes of blob pieces (the sealed base64 of workspaces, conversations, patches and
/// transcripts, `blob.chunk`) the market keeps. Identities cost nothing, so a bound per sender
/// bounds nothing: what a task may store is bought with its price (not its whole escrow, which
/// holds the requester's maximum until settlement and would let a large maximum, returned at
/// settlement, buy room for nothing), and all tasks together are bounded by what the operator
/// gives the market.
public struct StoredPieceLimits: Sendable, Equatable {
    /// The pieces of every task together.
    public var maxTotalBytes: Int64
    /// What one party of a task may keep per whole credit (RUV) of the task's price.
    public var bytesPerCredit: Int64
    /// What one party of a task may keep whatever its price: so that a cheap task can still
    /// carry a small workspace, and small enough that a task at one micro-credit stores little.
    public var minBytesPerTask: Int64

    public init(maxTotalBytes: Int64 = 4 << 30, bytesPerCredit: Int64 = 256 << 20, minBytesPerTask: Int64 = 4 << 20) {
        self.maxTotalBytes = maxTotalBytes
        self.bytesPerCredit = bytesPerCredit
        self.minBytesPerTask = minBytesPerTask
    }

    /// What `market serve` accepts for each value.
    public static let totalRange: ClosedRange<Int64> = (1 << 20)...(1 << 50)
    public static let perCreditRange: ClosedRange<Int64> = 0...(1 << 40)
    public static let minimumRange: ClosedRange<Int64> = 0...(1 << 40)

    /// Refuses limits outside their ranges, or a per-task minimum over the total (no task could
    /// use it), naming the value and what is allowed.
    public func validated() throws(MarketError) -> StoredPieceLimits {
        func check(_ name: String, _ value: Int64, _ range: ClosedRange<Int64>) throws(MarketError) {
            guard range.contains(value) else {
                throw MarketError(
                    .invalidBody, "\(name) \(value) is outside \(range.lowerBound)…\(range.upperBound) bytes")
            }
        }
        try check("the total of stored pieces", maxTotalBytes, Self.totalRange)
        try check("the stored piece bytes per credit", bytesPerCredit, Self.perCreditRange)
        try check("the stored piece bytes every task may keep", minBytesPerTask, Self.minimumRange)
        guard minBytesPerTask <= maxTotalBytes else {
            throw MarketError(
                .invalidBody,
                "the stored piece bytes every task may keep (\(minBytesPerTask)) is over the total of stored pieces (\(maxTotalBytes))"
            )
        }
        return self
    }

    /// What one party of a task at the price `escrow` may keep: `bytesPerCredit` per RUV, at least
    /// `minBytesPerTask`, at most the total (the product is taken in 128 bits).
    public func taskBound(escrow: Credits) -> Int64 {
        let product = max(0, escrow.micro).multipliedFullWidth(by: bytesPerCredit)
        let bought: Int64
        // The quotient fits in 64 bits only below 2⁶³ · scale, that is while `high` < scale / 2.
        if product.high >= Credits.scale / 2 {
            bought = .max
        } else {
            bought = Credits.scale.dividingFullWidth(product).quotient
        }
        return min(maxTotalBytes, max(minBytesPerTask, bought))
    }

    /// The most sealed base64 a blob of `plaintext` bytes can take: sealing adds a header and a
    /// tag per 16 KiB chunk (docs/FORMATS.md), base64 a third.
    public static func sealedBound(_ plaintext: Int64) -> Int64 {
        (plaintext + plaintext / 1024 + 65_536) / 3 * 4 + 8
    }

    /// Why a piece of `bytes` may not be stored beside what is stored already, or nil when it
    /// may: `blob` its blob of its task (with the blob's own bound, from its declared plaintext
    /// size), `party` everything the same party sent for the task (its name for the message),
    /// `totalStored` every piece of every task. A task's bound is `workspace_too_large` (the
    /// task's to fix); the market's total is `rate_limited`, nothing done, to be sent again
    /// once tasks end.
    public func refusal(
        adding bytes: Int64, blob: (name: String, stored: Int64, bound: Int64), party: (name: String, stored: Int64),
        totalStored: Int64, taskID: String, escrow: Credits
    ) -> MarketError? {
        let blobAfter = blob.stored.addingReportingOverflow(bytes)
        if blobAfter.overflow || blobAfter.partialValue > blob.bound {
            return MarketError(
                .workspaceTooLarge,
                "the \(blob.name) of task \(taskID) would hold \(blob.stored) + \(bytes) bytes of sealed base64; at most \(blob.bound) are kept"
            )
        }
        let taskBound = taskBound(escrow: escrow)
        let partyAfter = party.stored.addingReportingOverflow(bytes)
        if partyAfter.overflow || partyAfter.partialValue > taskBound {
            return MarketError(
                .workspaceTooLarge,
                "the \(party.name)'s pieces of task \(taskID) would hold \(party.stored) + \(bytes) bytes; its price of \(escrow) keeps at most \(taskBound) (\(bytesPerCredit) bytes per RUV, at least \(minBytesPerTask))"
            )
        }
        let totalAfter = totalStored.addingReportingOverflow(bytes)
        if totalAfter.overflow || totalAfter.partialValue > maxTotalBytes {
            return MarketError(
                .rateLimited,
                "the market keeps at most \(maxTotalBytes) bytes of pieces in all and holds \(totalStored): this piece of \(bytes) bytes waits until tasks end; send it again later"
            )
        }
        return nil
    }
}
