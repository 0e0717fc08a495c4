/// A participant's identity on the market: lowercase base32 of the first 20 bytes of the
/// SHA-256 of its Ed25519 public key (32 characters). Deriving it needs a hash, which lives in
/// `MarketCrypto`; this type only validates and carries it.
public struct PeerID: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public static let length = 32
    public let rawValue: String

    public init(validating text: String) throws(PeerIDError) {
        guard text.utf8.count == Self.length,
            text.utf8.allSatisfy({ Base32.alphabet.contains($0) }),
            Base32.decode(text)?.count == 20
        else { throw PeerIDError(text: text) }
        self.rawValue = text
    }

    /// Builds the id from the 20-byte digest prefix.
    public init(digestPrefix: some Collection<UInt8>) {
        precondition(digestPrefix.count == 20, "a peer id is made of 20 bytes")
        self.rawValue = Base32.encode(digestPrefix)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        try self.init(validating: text)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }
    public static func < (lhs: PeerID, rhs: PeerID) -> Bool { lhs.rawValue < rhs.rawValue }
}

public struct PeerIDError: Error, Sendable, CustomStringConvertible {
    public let text: String
    public init(text: String) { self.text = text }
    public var description: String {
        "'\(text)' is not a peer id (expected \(PeerID.length) characters of lowercase base32: a-z, 2-7)"
    }
}
