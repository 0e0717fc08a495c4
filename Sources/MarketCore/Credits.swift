import Foundation

/// An amount of market credits, held as whole micro-credits so that money is never rounded.
///
/// Every arithmetic operation is overflow-checked and throws instead of wrapping: a ledger that
/// silently wrapped would create or destroy money.
public struct Credits: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Micro-credits per credit.
    public static let scale: Int64 = 1_000_000
    /// The unit as shown to people.
    public static let unit = "RUV"
    public static let zero = Credits(micro: 0)

    public let micro: Int64

    public init(micro: Int64) {
        self.micro = micro
    }

    /// Whole credits, overflow-checked.
    public init(whole: Int64) throws(CreditsError) {
        let (value, overflow) = whole.multipliedReportingOverflow(by: Self.scale)
        guard !overflow else { throw CreditsError.overflow("\(whole) \(Self.unit)") }
        self.micro = value
    }

    /// Parses a decimal amount such as `5`, `0.25` or `12.000001` (at most six decimals).
    public init(parsing text: String) throws(CreditsError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var body = Substring(trimmed)
        if body.hasSuffix(Self.unit) {
            body = Substring(body.dropLast(Self.unit.count).trimmingCharacters(in: .whitespaces))
        }
        let negative = body.hasPrefix("-")
        if negative || body.hasPrefix("+") { body = body.dropFirst() }
        let parts = body.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let wholePart = parts.first, !wholePart.isEmpty, wholePart.allSatisfy(\.isASCIIDigit) else {
            throw CreditsError.malformed(text)
        }
        var fraction = parts.count == 2 ? parts[1] : ""
        guard fraction.count <= 6, fraction.allSatisfy(\.isASCIIDigit), parts.count == 1 || !fraction.isEmpty else {
            throw CreditsError.malformed(text)
        }
        while fraction.count < 6 { fraction += "0" }
        guard let whole = Int64(wholePart), let micro = Int64(fraction) else { throw CreditsError.overflow(text) }
        let (scaled, overflow1) = whole.multipliedReportingOverflow(by: Self.scale)
        let (sum, overflow2) = scaled.addingReportingOverflow(micro)
        guard !overflow1, !overflow2 else { throw CreditsError.overflow(text) }
        self.micro = negative ? -sum : sum
    }

    public func adding(_ other: Credits) throws(CreditsError) -> Credits {
        let (value, overflow) = micro.addingReportingOverflow(other.micro)
        guard !overflow else { throw CreditsError.overflow("\(self) + \(other)") }
        return Credits(micro: value)
    }

    public func subtracting(_ other: Credits) throws(CreditsError) -> Credits {
        let (value, overflow) = micro.subtractingReportingOverflow(other.micro)
        guard !overflow else { throw CreditsError.overflow("\(self) - \(other)") }
        return Credits(micro: value)
    }

    public var isNegative: Bool { micro < 0 }

    public static func < (lhs: Credits, rhs: Credits) -> Bool { lhs.micro < rhs.micro }

    /// `5 RUV`, `0.25 RUV`, `-1.000001 RUV`.
    public var description: String { "\(amountString) \(Self.unit)" }

    /// The decimal amount without the unit, trailing zeros trimmed.
    public var amountString: String {
        let magnitude = micro.magnitude
        let whole = magnitude / UInt64(Self.scale)
        var fraction = String(magnitude % UInt64(Self.scale))
        fraction = String(repeating: "0", count: 6 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        let sign = micro < 0 ? "-" : ""
        return fraction.isEmpty ? "\(sign)\(whole)" : "\(sign)\(whole).\(fraction)"
    }
}

public enum CreditsError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case overflow(String)

    public var description: String {
        switch self {
        case .malformed(let text):
            "'\(text)' is not an amount of credits (expected a decimal number with at most 6 decimals, e.g. 5 or 0.25)"
        case .overflow(let text):
            "'\(text)' overflows the credit range (at most \(Int64.max / Credits.scale) \(Credits.unit))"
        }
    }
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
