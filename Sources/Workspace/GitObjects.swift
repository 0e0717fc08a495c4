import Crypto
import Foundation

/// The pieces of git's formats a patch needs: blob ids, base85 and zlib streams (stored
/// blocks only: no compression library is needed to write or read them, and git reads them
/// like any other).
enum GitObjects {
    static let zeroID = String(repeating: "0", count: 40)

    /// git's blob id: SHA-1 of "blob SIZE\0" and the contents (an id, not a security check:
    /// the result that carries the patch is signed and hashed with SHA-256).
    static func blobID(_ contents: Data) -> String {
        var hasher = Insecure.SHA1()
        hasher.update(data: Data("blob \(contents.count)\u{0}".utf8))
        hasher.update(data: contents)
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    static let alphabet = Array(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~".utf8)
    static let alphabetIndex: [UInt8: UInt32] = Dictionary(
        uniqueKeysWithValues: alphabet.enumerated().map { ($1, UInt32($0)) })

    /// git's base85 lines: each starts with its byte count (A–Z 1–26, a–z 27–52).
    static func base85Lines(_ data: Data) -> [String] {
        let bytes = [UInt8](data)
        var lines: [String] = []
        var start = 0
        while start < bytes.count {
            let chunk = Array(bytes[start..<min(start + 52, bytes.count)])
            start += chunk.count
            var line: [UInt8] = [
                chunk.count <= 26
                    ? UInt8(ascii: "A") + UInt8(chunk.count - 1) : UInt8(ascii: "a") + UInt8(chunk.count - 27)
            ]
            var index = 0
            while index < chunk.count {
                var value: UInt32 = 0
                for offset in 0..<4 {
                    value = value << 8 | UInt32(index + offset < chunk.count ? chunk[index + offset] : 0)
                }
                var digits = [UInt8](repeating: 0, count: 5)
                for position in stride(from: 4, through: 0, by: -1) {
                    digits[position] = alphabet[Int(value % 85)]
                    value /= 85
                }
                line += digits
                index += 4
            }
            lines.append(String(decoding: line, as: UTF8.self))
        }
        return lines
    }

    static func decodeBase85(lines: [Substring]) throws(WorkspaceError) -> Data {
        var output = Data()
        for line in lines {
            let bytes = Array(line.utf8)
            guard let first = bytes.first else { continue }
            let count: Int
            switch first {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): count = Int(first - UInt8(ascii: "A")) + 1
            case UInt8(ascii: "a")...UInt8(ascii: "z"): count = Int(first - UInt8(ascii: "a")) + 27
            default: throw WorkspaceError(.badPatch, "a binary patch line has a bad length character")
            }
            let encoded = bytes.dropFirst()
            guard encoded.count == (count + 3) / 4 * 5 else {
                throw WorkspaceError(.badPatch, "a binary patch line has the wrong length")
            }
            var decoded: [UInt8] = []
            var index = encoded.startIndex
            while index < encoded.endIndex {
                var value: UInt64 = 0
                for offset in 0..<5 {
                    guard let digit = alphabetIndex[encoded[index + offset]] else {
                        throw WorkspaceError(.badPatch, "a binary patch line has a character outside base85")
                    }
                    value = value * 85 + UInt64(digit)
                }
                guard value <= UInt64(UInt32.max) else { throw WorkspaceError(.badPatch, "a base85 group overflows") }
                decoded += [
                    UInt8(value >> 24 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff),
                ]
                index += 5
            }
            output.append(contentsOf: decoded.prefix(count))
        }
        return output
    }

    /// A zlib stream of stored (uncompressed) deflate blocks.
    static func zlibStored(_ data: Data) -> Data {
        var output = Data([0x78, 0x01])
        let bytes = [UInt8](data)
        var start = 0
        repeat {
            let length = min(65_535, bytes.count - start)
            let final: UInt8 = start + length >= bytes.count ? 1 : 0
            output.append(final)
            output.append(contentsOf: [UInt8(length & 0xff), UInt8(length >> 8)])
            output.append(contentsOf: [UInt8(~length & 0xff), UInt8((~length >> 8) & 0xff)])
            output.append(contentsOf: bytes[start..<start + length])
            start += length
        } while start < bytes.count
        let adler = adler32(bytes)
        output.append(contentsOf: [
            UInt8(adler >> 24), UInt8(adler >> 16 & 0xff), UInt8(adler >> 8 & 0xff), UInt8(adler & 0xff),
        ])
        return output
    }

    /// Reads a zlib stream made of stored blocks (what `zlibStored` writes); a compressed one
    /// is refused with a clear error.
    static func unzlibStored(_ data: Data, expectedSize: Int) throws(WorkspaceError) -> Data {
        let bytes = [UInt8](data)
        guard bytes.count >= 6, bytes[0] & 0x0f == 8, (UInt16(bytes[0]) << 8 | UInt16(bytes[1])) % 31 == 0 else {
            throw WorkspaceError(.badPatch, "a binary patch is not a zlib stream")
        }
        var index = 2
        var output: [UInt8] = []
        // The size is the patch's claim: nothing is reserved past what the bytes could hold.
        output.reserveCapacity(min(expectedSize, bytes.count))
        while true {
            guard index + 5 <= bytes.count else { throw WorkspaceError(.badPatch, "a binary patch is cut short") }
            let header = bytes[index]
            guard header & 0x06 == 0 else {
                throw WorkspaceError(
                    .badPatch,
                    "a binary patch is compressed; only patches made by claude-max-market (stored blocks) are read")
            }
            let length = Int(bytes[index + 1]) | Int(bytes[index + 2]) << 8
            let check = Int(bytes[index + 3]) | Int(bytes[index + 4]) << 8
            guard length ^ check == 0xffff, index + 5 + length <= bytes.count else {
                throw WorkspaceError(.badPatch, "a binary patch has a bad stored block")
            }
            output += bytes[(index + 5)..<(index + 5 + length)]
            guard output.count <= expectedSize else {
                throw WorkspaceError(.badPatch, "a binary patch is longer than it says")
            }
            index += 5 + length
            if header & 1 == 1 { break }
        }
        guard index + 4 <= bytes.count else { throw WorkspaceError(.badPatch, "a binary patch lacks its checksum") }
        let stored =
            UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8
            | UInt32(bytes[index + 3])
        guard stored == adler32(output), output.count == expectedSize else {
            throw WorkspaceError(.badPatch, "a binary patch's checksum or size does not match")
        }
        return Data(output)
    }

    static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1
        var b: UInt32 = 0
        for byte in bytes {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return b << 16 | a
    }
}
