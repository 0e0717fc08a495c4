/// A value of a closed set that travels as its text and reads any text: one an older or newer
/// peer (or build) wrote decodes to the type's own case for it instead of failing. Conformers
/// say only how text maps to a value and back; coding, literals and printing follow.
public protocol TolerantText: Codable, Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    init(rawValue: String)
    var rawValue: String { get }
}

extension TolerantText {
    /// A value written as its text (`"settled"`): read as a peer's would be.
    public init(stringLiteral text: String) { self.init(rawValue: text) }

    public var description: String { rawValue }

    public init(from decoder: any Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
