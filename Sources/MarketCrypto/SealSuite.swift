import Crypto
import Foundation

/// The ways a payload can be sealed. Every sealed file and envelope names its suite by id.
public enum SealSuite: UInt8, Sendable, CaseIterable, Codable {
    /// RFC 9180 HPKE, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The default.
    case hpkeX25519 = 1
    /// HPKE with the X-Wing KEM (ML-KEM-768 + X25519, post-quantum hybrid), HKDF-SHA256, AES-256-GCM.
    case hpkeXWing = 2
    /// The original Node tool's scheme: RSA-OAEP-2048 (SHA-256) wrapping an AES-256-GCM key.
    case rsaOAEP = 3

    /// The name used on the command line and in documents.
    public var name: String {
        switch self {
        case .hpkeX25519: "hpke-x25519"
        case .hpkeXWing: "hpke-xwing"
        case .rsaOAEP: "rsa-oaep-2048"
        }
    }

    public init?(name: String) {
        guard let suite = Self.allCases.first(where: { $0.name == name }) else { return nil }
        self = suite
    }

    var hpkeCiphersuite: HPKE.Ciphersuite? {
        switch self {
        case .hpkeX25519: HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .AES_GCM_256)
        case .hpkeXWing: HPKE.Ciphersuite(kem: .XWingMLKEM768X25519, kdf: .HKDF_SHA256, aead: .AES_GCM_256)
        case .rsaOAEP: nil
        }
    }

    /// An 8-byte id of a recipient's public key in this suite: the file header names the key
    /// it was sealed to, so the right (possibly retired) private key can be found.
    public static func keyID(suite: SealSuite, publicKey: Data) -> Data {
        var bytes = Data("claude-max-market/key-id/v1".utf8)
        bytes.append(suite.rawValue)
        bytes.append(publicKey)
        return Data(SHA256.hash(data: bytes).prefix(8))
    }
}

/// What a sealed message is for; bound into the HPKE `info` and the header.
public enum SealPurpose: UInt8, Sendable, CaseIterable {
    case file = 1
    case payload = 2
    case result = 3

    public var name: String {
        switch self {
        case .file: "file"
        case .payload: "payload"
        case .result: "result"
        }
    }
}
