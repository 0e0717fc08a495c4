import Foundation

/// The header of a sealed file or payload. Layout (all integers big-endian):
///
///     0   4  magic "CMMS"
///     4   1  format version (1)
///     5   1  suite id (SealSuite)
///     6   1  purpose (SealPurpose)
///     7   1  chunk size exponent: plaintext chunks are 2^e bytes (10...24)
///     8   8  recipient key id
///    16   2  wrapped key length N
///    18   N  wrapped key (HPKE: enc ‖ HPKE ciphertext of the 32-byte stream key; RSA: OAEP ciphertext)
///
/// `docs/FORMATS.md` describes it with the chunk stream that follows.
public struct SealedHeader: Sendable, Equatable {
    public static let magic: [UInt8] = Array("CMMS".utf8)
    public static let version: UInt8 = 1
    public static let fixedLength = 18
    public static let chunkExponents: ClosedRange<UInt8> = 10...24
    public static let defaultChunkExponent: UInt8 = 16

    public var suite: SealSuite
    public var purpose: SealPurpose
    public var chunkExponent: UInt8
    public var keyID: Data
    public var wrappedKey: Data

    public var chunkSize: Int { 1 << Int(chunkExponent) }

    /// Bytes 0..<16: everything before the wrapped key; bound into the HPKE `info`.
    public var prefix: Data {
        var bytes = Data(Self.magic)
        bytes.append(contentsOf: [Self.version, suite.rawValue, purpose.rawValue, chunkExponent])
        bytes.append(keyID)
        return bytes
    }

    /// The whole header: the AAD of every chunk.
    public var encoded: Data {
        var bytes = prefix
        bytes.append(UInt8(wrappedKey.count >> 8))
        bytes.append(UInt8(wrappedKey.count & 0xff))
        bytes.append(wrappedKey)
        return bytes
    }

    /// The HPKE `info`: product, format version, purpose, then the header prefix.
    public var hpkeInfo: Data {
        var info = Data("claude-max-market/seal/v1/\(purpose.name)".utf8)
        info.append(0)
        info.append(prefix)
        return info
    }

    public init(suite: SealSuite, purpose: SealPurpose, chunkExponent: UInt8, keyID: Data, wrappedKey: Data) {
        self.suite = suite
        self.purpose = purpose
        self.chunkExponent = chunkExponent
        self.keyID = keyID
        self.wrappedKey = wrappedKey
    }

    /// Reads and checks a header from the start of `source`.
    public static func read(from source: inout some ByteSource) throws(SealError) -> SealedHeader {
        let fixed: Data
        do { fixed = try source.read(upTo: fixedLength) } catch let error as SealError { throw error } catch {
            throw SealError(.io, "cannot read input: \(error)")
        }
        let bytes = [UInt8](fixed)
        guard bytes.count >= 4, Array(bytes[0..<4]) == magic else {
            throw SealError(.notSealed, "the input is not a claude-max-market sealed file (no CMMS header)")
        }
        guard bytes.count == fixedLength else {
            throw SealError(.truncated, "the input ends inside its header (truncated)")
        }
        guard bytes[4] == version else {
            throw SealError(
                .unsupportedVersion,
                "sealed format version \(bytes[4]) is not supported (this tool reads version \(version))")
        }
        guard let suite = SealSuite(rawValue: bytes[5]) else {
            throw SealError(
                .unknownSuite,
                "unknown suite id \(bytes[5]) (known: \(SealSuite.allCases.map { "\($0.rawValue) \($0.name)" }.joined(separator: ", ")))"
            )
        }
        guard let purpose = SealPurpose(rawValue: bytes[6]) else {
            throw SealError(.malformedHeader, "unknown purpose \(bytes[6]) in the header")
        }
        guard chunkExponents.contains(bytes[7]) else {
            throw SealError(.malformedHeader, "chunk size exponent \(bytes[7]) is outside \(chunkExponents)")
        }
        let length = Int(bytes[16]) << 8 | Int(bytes[17])
        let wrapped: Data
        do { wrapped = try source.read(upTo: length) } catch let error as SealError { throw error } catch {
            throw SealError(.io, "cannot read input: \(error)")
        }
        guard wrapped.count == length else {
            throw SealError(.truncated, "the input ends inside its header (truncated)")
        }
        return SealedHeader(
            suite: suite, purpose: purpose, chunkExponent: bytes[7], keyID: Data(bytes[8..<16]),
            wrappedKey: Data(wrapped))
    }
}
