import Crypto
import Foundation
import MarketCore

/// The public half of a participant, as others use it to seal to them and check their
/// signatures: JSON, signed by the identity key over every field.
public struct PublicKeyDocument: Codable, Sendable, Equatable {
    public static let formatName = "claude-max-market-public-key"

    public var format: String
    public var version: Int
    public var peerId: String
    /// Base64 of the raw 32-byte Ed25519 public key.
    public var signingKey: String
    /// Base64 public sealing keys by suite name.
    public var sealingKeys: [String: String]
    public var created: Date
    /// Base64 Ed25519 signature over `signedBytes`.
    public var signature: String

    public init(ring: KeyRing) throws {
        format = Self.formatName
        version = 1
        peerId = ring.peerID.rawValue
        signingKey = ring.identity.publicKey.rawRepresentation.base64EncodedString()
        var keys: [String: String] = [:]
        for suite in SealSuite.allCases {
            keys[suite.name] = ring.current.publicKeys.key(for: suite).base64EncodedString()
        }
        sealingKeys = keys
        created = Date(timeIntervalSince1970: (ring.current.created.timeIntervalSince1970 * 1000).rounded(.down) / 1000)
        signature = ""
        signature = try ring.identity.sign(signedBytes).base64EncodedString()
    }

    var signedBytes: [UInt8] {
        var fields = [format, String(version), peerId, signingKey, String(Int64(created.timeIntervalSince1970 * 1000))]
        for name in sealingKeys.keys.sorted() { fields += [name, sealingKeys[name]!] }
        return CanonicalBytes.lengthPrefixed(domain: "claude-max-market/public-key/v1\u{0}", fields: fields)
    }

    /// Parses and checks a document: format, peer id matches the signing key, signature valid,
    /// and every sealing key well formed.
    public static func verified(from data: Data) throws -> PublicKeyDocument {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        let document: PublicKeyDocument
        do { document = try decoder.decode(PublicKeyDocument.self, from: data) } catch {
            throw KeyStoreError(description: "not a public key document (\(error))")
        }
        guard document.format == formatName, document.version == 1 else {
            throw KeyStoreError(description: "unsupported public key document \(document.format) v\(document.version)")
        }
        guard let keyData = Data(base64Encoded: document.signingKey),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: keyData)
        else { throw KeyStoreError(description: "the document's signing key is not an Ed25519 public key") }
        guard PeerID(signingKey: key).rawValue == document.peerId else {
            throw KeyStoreError(description: "the document's peer id does not match its signing key")
        }
        guard let signature = Data(base64Encoded: document.signature),
            key.isValidSignature(signature, for: document.signedBytes)
        else { throw KeyStoreError(description: "the document's signature does not verify: it was altered") }
        _ = try document.publicKeys()
        return document
    }

    /// The sealing public keys, checked for length and form.
    public func publicKeys() throws -> SealingPublicKeys {
        func key(_ suite: SealSuite) throws -> Data {
            guard let text = sealingKeys[suite.name], let data = Data(base64Encoded: text) else {
                throw KeyStoreError(description: "the document has no \(suite.name) sealing key")
            }
            return data
        }
        let keys = SealingPublicKeys(x25519: try key(.hpkeX25519), xwing: try key(.hpkeXWing), rsa: try key(.rsaOAEP))
        guard keys.x25519.count == 32, keys.xwing.count == 1216 else {
            throw KeyStoreError(description: "a sealing key in the document has the wrong length")
        }
        return keys
    }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .millisecondsSince1970
        return try encoder.encode(self) + Data("\n".utf8)
    }
}
