import Crypto
import Foundation
import _CryptoExtras

/// Finds the private sealing keys for a header's key id (current or retired).
public protocol SealingKeyLookup {
    func keySet(forKeyID keyID: Data, suite: SealSuite) throws(SealError) -> SealingKeySet
}

/// What an opened message said about itself.
public struct OpenedInfo: Sendable, Equatable {
    public var suite: SealSuite
    public var purpose: SealPurpose
    public var plaintextBytes: Int
    public var chunks: Int
}

/// Seals and opens streams: a fresh 32-byte stream key is wrapped to the recipient (HPKE base
/// mode single-shot, or RSA-OAEP), then the plaintext follows in AES-256-GCM chunks whose
/// nonce is an 11-byte counter and a final-chunk flag (age's STREAM), each authenticating the
/// whole header. Truncation, reordering, swapping and trailing data all fail authentication.
public enum Sealer {
    static let tagLength = 16

    public static func seal(
        from source: inout some ByteSource, to sink: inout some ByteSink, recipient: SealingPublicKeys,
        suite: SealSuite = .hpkeX25519, purpose: SealPurpose, chunkExponent: UInt8 = SealedHeader.defaultChunkExponent
    ) throws {
        precondition(SealedHeader.chunkExponents.contains(chunkExponent), "chunk exponent out of range")
        let streamKey = SymmetricKey(size: .bits256)
        let publicKey = recipient.key(for: suite)
        var header = SealedHeader(
            suite: suite, purpose: purpose, chunkExponent: chunkExponent,
            keyID: SealSuite.keyID(suite: suite, publicKey: publicKey), wrappedKey: Data())
        header.wrappedKey = try wrap(streamKey, for: publicKey, header: header)
        let aad = header.encoded
        try sink.write(aad)

        let chunkSize = header.chunkSize
        var counter: UInt64 = 0
        var current = try source.read(upTo: chunkSize)
        while true {
            let next = current.count == chunkSize ? try source.read(upTo: chunkSize) : Data()
            let isFinal = next.isEmpty
            let box = try AES.GCM.seal(
                current, using: streamKey, nonce: nonce(counter, final: isFinal), authenticating: aad)
            try sink.write(box.ciphertext)
            try sink.write(box.tag)
            if isFinal { return }
            counter += 1
            current = next
        }
    }

    @discardableResult
    public static func open(
        from source: inout some ByteSource, to sink: inout some ByteSink, keys: some SealingKeyLookup
    ) throws -> OpenedInfo {
        let header = try SealedHeader.read(from: &source)
        let keySet = try keys.keySet(forKeyID: header.keyID, suite: header.suite)
        let streamKey = try unwrap(header: header, keySet: keySet)
        let aad = header.encoded
        let sealedChunk = header.chunkSize + tagLength

        func readChunk() throws -> Data {
            do { return try source.read(upTo: sealedChunk) } catch let error as SealError { throw error } catch {
                throw SealError(.io, "cannot read input: \(error)")
            }
        }
        func open(_ chunk: Data, _ counter: UInt64, final: Bool) -> Data? {
            guard chunk.count >= tagLength else { return nil }
            let split = chunk.endIndex - tagLength
            guard
                let box = try? AES.GCM.SealedBox(
                    nonce: nonce(counter, final: final), ciphertext: chunk[chunk.startIndex..<split],
                    tag: chunk[split...])
            else { return nil }
            return try? AES.GCM.open(box, using: streamKey, authenticating: aad)
        }

        var counter: UInt64 = 0
        var total = 0
        var current = try readChunk()
        while true {
            if current.count < tagLength {
                throw SealError(.truncated, "the input ends before its final chunk (truncated after chunk \(counter))")
            }
            let next = current.count == sealedChunk ? try readChunk() : Data()
            let isLast = next.isEmpty
            if let plaintext = open(current, counter, final: isLast) {
                try sink.write(plaintext)
                total += plaintext.count
                if isLast {
                    return OpenedInfo(
                        suite: header.suite, purpose: header.purpose, plaintextBytes: total, chunks: Int(counter) + 1)
                }
            } else if isLast, current.count < sealedChunk, counter > 0 || current.count > tagLength {
                if open(current, counter, final: false) != nil {
                    throw SealError(
                        .truncated, "the input ends before its final chunk (truncated after chunk \(counter))")
                }
                throw SealError(
                    .truncated,
                    "chunk \(counter), the last, does not authenticate: the input was cut inside it, altered, "
                        + "or has data appended")
            } else if isLast, open(current, counter, final: false) != nil {
                throw SealError(.truncated, "the input ends before its final chunk (truncated after chunk \(counter))")
            } else if !isLast, open(current, counter, final: true) != nil {
                throw SealError(.trailingData, "data follows the final chunk (chunk \(counter)): trailing garbage")
            } else {
                throw SealError(
                    .tampered, "chunk \(counter) does not authenticate: the data was altered, reordered or swapped")
            }
            counter += 1
            current = next
        }
    }

    // MARK: In memory

    public static func seal(
        _ plaintext: Data, to recipient: SealingPublicKeys, suite: SealSuite = .hpkeX25519, purpose: SealPurpose
    ) throws -> Data {
        var source = DataSource(plaintext)
        var sink = DataSink()
        try seal(from: &source, to: &sink, recipient: recipient, suite: suite, purpose: purpose)
        return sink.data
    }

    public static func open(_ sealed: Data, keys: some SealingKeyLookup) throws -> (Data, OpenedInfo) {
        var source = DataSource(sealed)
        var sink = DataSink()
        let info = try open(from: &source, to: &sink, keys: keys)
        return (sink.data, info)
    }

    // MARK: Pieces

    /// 11-byte big-endian counter, then 0x01 for the final chunk or 0x00.
    static func nonce(_ counter: UInt64, final: Bool) -> AES.GCM.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        for index in 0..<8 { bytes[10 - index] = UInt8(truncatingIfNeeded: counter >> (8 * UInt64(index))) }
        bytes[11] = final ? 1 : 0
        return try! AES.GCM.Nonce(data: bytes)
    }

    static func wrap(_ streamKey: SymmetricKey, for publicKey: Data, header: SealedHeader) throws -> Data {
        let keyBytes = streamKey.withUnsafeBytes { Data($0) }
        do {
            switch header.suite {
            case .hpkeX25519:
                let key = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: publicKey)
                var sender = try HPKE.Sender(
                    recipientKey: key, ciphersuite: header.suite.hpkeCiphersuite!, info: header.hpkeInfo)
                return sender.encapsulatedKey + (try sender.seal(keyBytes))
            case .hpkeXWing:
                let key = try XWingMLKEM768X25519.PublicKey(rawRepresentation: publicKey)
                var sender = try HPKE.Sender(
                    recipientKey: key, ciphersuite: header.suite.hpkeCiphersuite!, info: header.hpkeInfo)
                return sender.encapsulatedKey + (try sender.seal(keyBytes))
            case .rsaOAEP:
                let key = try _RSA.Encryption.PublicKey(derRepresentation: publicKey)
                return try key.encrypt(keyBytes, padding: .PKCS1_OAEP_SHA256)
            }
        } catch {
            throw SealError(.invalidKey, "the recipient's \(header.suite.name) public key is not usable: \(error)")
        }
    }

    static func unwrap(header: SealedHeader, keySet: SealingKeySet) throws(SealError) -> SymmetricKey {
        let wrapped = header.wrappedKey
        let opened: Data?
        switch header.suite {
        case .hpkeX25519:
            opened = hpkeOpen(wrapped, encLength: 32) { enc in
                try HPKE.Recipient(
                    privateKey: keySet.x25519, ciphersuite: header.suite.hpkeCiphersuite!, info: header.hpkeInfo,
                    encapsulatedKey: enc)
            }
        case .hpkeXWing:
            opened = hpkeOpen(wrapped, encLength: 1120) { enc in
                try HPKE.Recipient(
                    privateKey: keySet.xwing, ciphersuite: header.suite.hpkeCiphersuite!, info: header.hpkeInfo,
                    encapsulatedKey: enc)
            }
        case .rsaOAEP:
            opened = try? keySet.rsaKey().decrypt(wrapped, padding: .PKCS1_OAEP_SHA256)
        }
        guard let opened, opened.count == 32 else {
            throw SealError(.tampered, "the header does not authenticate: it was altered, or the key does not match")
        }
        return SymmetricKey(data: opened)
    }

    private static func hpkeOpen(_ wrapped: Data, encLength: Int, recipient: (Data) throws -> HPKE.Recipient) -> Data? {
        guard wrapped.count > encLength else { return nil }
        let enc = wrapped.prefix(encLength)
        let ciphertext = wrapped.dropFirst(encLength)
        guard var context = try? recipient(Data(enc)) else { return nil }
        return try? context.open(ciphertext)
    }
}
