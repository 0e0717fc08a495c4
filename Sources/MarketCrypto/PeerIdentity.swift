import Crypto
import Foundation
import MarketCore
import _CryptoExtras

extension PeerID {
    /// The peer id of an Ed25519 public key: base32 of the first 20 bytes of its SHA-256.
    public init(signingKey: Curve25519.Signing.PublicKey) {
        self.init(digestPrefix: Array(SHA256.hash(data: signingKey.rawRepresentation).prefix(20)))
    }
}

/// A participant's long-term signing identity (Ed25519).
public struct PeerIdentity: Sendable {
    public let signingKey: Curve25519.Signing.PrivateKey
    public let created: Date

    public init(signingKey: Curve25519.Signing.PrivateKey, created: Date) {
        self.signingKey = signingKey
        self.created = created
    }

    public var publicKey: Curve25519.Signing.PublicKey { signingKey.publicKey }
    public var peerID: PeerID { PeerID(signingKey: publicKey) }

    public func sign(_ bytes: some DataProtocol) throws -> Data {
        try signingKey.signature(for: bytes)
    }
}

/// One generation of sealing keys: the private halves of every suite a peer can receive in.
public struct SealingKeySet: Sendable {
    public let x25519: Curve25519.KeyAgreement.PrivateKey
    public let xwing: XWingMLKEM768X25519.PrivateKey
    /// PKCS#1 DER of the RSA-2048 private key (the RSA key type itself is not `Sendable`).
    public let rsaDER: Data
    public let created: Date
    public var retired: Date?
    /// Computed once: deriving the RSA public key means parsing the private key's DER.
    public let publicKeys: SealingPublicKeys

    public init(
        x25519: Curve25519.KeyAgreement.PrivateKey, xwing: XWingMLKEM768X25519.PrivateKey,
        rsaDER: Data, created: Date, retired: Date? = nil
    ) {
        self.x25519 = x25519
        self.xwing = xwing
        self.rsaDER = rsaDER
        self.created = created
        self.retired = retired
        self.publicKeys = SealingPublicKeys(
            x25519: x25519.publicKey.rawRepresentation, xwing: xwing.publicKey.rawRepresentation,
            rsa: (try? _RSA.Encryption.PrivateKey(derRepresentation: rsaDER).publicKey.derRepresentation) ?? Data())
    }

    public static func generate(at now: Date) throws -> SealingKeySet {
        SealingKeySet(
            x25519: Curve25519.KeyAgreement.PrivateKey(), xwing: try XWingMLKEM768X25519.PrivateKey.generate(),
            rsaDER: try _RSA.Encryption.PrivateKey(keySize: .bits2048).derRepresentation, created: now)
    }

    public func rsaKey() throws -> _RSA.Encryption.PrivateKey {
        try _RSA.Encryption.PrivateKey(derRepresentation: rsaDER)
    }
}

/// The public halves of a sealing key set, as raw bytes per suite.
public struct SealingPublicKeys: Sendable, Equatable, Codable {
    /// 32 bytes.
    public var x25519: Data
    /// 1216 bytes.
    public var xwing: Data
    /// SubjectPublicKeyInfo DER of an RSA-2048 key.
    public var rsa: Data

    public init(x25519: Data, xwing: Data, rsa: Data) {
        self.x25519 = x25519
        self.xwing = xwing
        self.rsa = rsa
    }

    public func key(for suite: SealSuite) -> Data {
        switch suite {
        case .hpkeX25519: x25519
        case .hpkeXWing: xwing
        case .rsaOAEP: rsa
        }
    }
}
