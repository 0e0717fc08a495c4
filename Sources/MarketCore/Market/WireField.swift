import Foundation

/// Sizes and ranges the server accepts.
public struct WireLimits: Sendable, Equatable {
    /// The largest text frame, bytes.
    public var maxFrameBytes: Int
    /// The largest sealed payload, event or result inside a body (base64 text), bytes.
    public var maxSealedBytes: Int
    public var maxSlots: Int
    public var maxTaskTimeoutSeconds: Int64
    public var maxReasonCharacters: Int

    /// The largest sealed blob (a workspace or a patch) the market relays for one task, as
    /// plaintext bytes; its chunks together may hold that much sealed, in base64.
    public static let maxBlobBytes: Int64 = 1 << 30
    /// The largest patch the market relays for one task (plaintext bytes).
    public static let maxPatchBytes: Int64 = 64 << 20
    /// The largest conversation transcript a task may carry, either way.
    public static let maxTranscriptBytes: Int64 = 64 << 20

    /// The most sealed base64 a blob of `plaintext` bytes can take: sealing adds a header and a
    /// tag per 16 KiB chunk (docs/FORMATS.md), base64 a third. What a blob's pieces may hold
    /// together, on the market and on the party that puts them back together.
    public static func sealedCharacters(plaintext: Int64) -> Int64 {
        let plaintext = min(max(plaintext, 0), maxBlobBytes)
        return (plaintext + plaintext / 1024 + 65_536) / 3 * 4 + 8
    }

    public init(
        maxFrameBytes: Int = 1 << 20, maxSealedBytes: Int = 900_000, maxSlots: Int = 64,
        maxTaskTimeoutSeconds: Int64 = 24 * 3600, maxReasonCharacters: Int = 1000
    ) {
        self.maxFrameBytes = maxFrameBytes
        self.maxSealedBytes = maxSealedBytes
        self.maxSlots = maxSlots
        self.maxTaskTimeoutSeconds = maxTaskTimeoutSeconds
        self.maxReasonCharacters = maxReasonCharacters
    }
}

/// Strings that come from the network and end up in keys, paths or names.
public enum WireField {
    /// Task ids: 1–64 of `A–Z a–z 0–9 - _`.
    public static func taskID(_ text: String) throws(MarketError) {
        guard (1...64).contains(text.utf8.count), text.utf8.allSatisfy(isIDByte) else {
            throw MarketError(
                .invalidBody, "taskId '\(printable(text))' must be 1–64 characters of A–Z, a–z, 0–9, '-', '_'")
        }
    }

    /// Model names: 1–64 of `A–Z a–z 0–9 . _ : -`.
    public static func model(_ text: String) throws(MarketError) {
        guard (1...64).contains(text.utf8.count),
            text.utf8.allSatisfy({ isIDByte($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: ":") })
        else {
            throw MarketError(
                .invalidBody, "model '\(printable(text))' must be 1–64 characters of A–Z, a–z, 0–9, '.', ':', '-', '_'")
        }
    }

    /// Image references: 1–255 of `a–z 0–9 . _ - / : @` (and `A–Z` after `@sha256:` never
    /// occurs), starting with a letter or digit, without `..`: what `docker` accepts, and
    /// nothing that reads as an option or a path outside a name.
    public static func imageReference(_ text: String) throws(MarketError) {
        let allowed = text.utf8.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x61...0x7A).contains(byte) || ".-_/:@".utf8.contains(byte)
        }
        guard (1...255).contains(text.utf8.count), allowed, let first = text.utf8.first,
            (0x30...0x39).contains(first) || (0x61...0x7A).contains(first), !text.contains("..")
        else {
            throw MarketError(
                .invalidBody,
                "image '\(printable(text))' must be 1–255 characters of a–z, 0–9, '.', '-', '_', '/', ':', '@', starting with a letter or digit"
            )
        }
    }

    /// Peer ids: 32 characters of lowercase base32.
    public static func peer(_ text: String, field: String) throws(MarketError) {
        guard (try? PeerID(validating: text)) != nil else {
            throw MarketError(
                .invalidBody,
                "\(field) '\(printable(text))' must be a peer id: \(PeerID.length) characters of lowercase base32 (a-z, 2-7)"
            )
        }
    }

    public static func price(_ micro: Int64, field: String) throws(MarketError) {
        guard micro > 0 else {
            throw MarketError(.invalidAmount, "\(field) \(micro) must be a positive number of micro-credits")
        }
    }

    public static func reputation(_ value: Double?, field: String) throws(MarketError) {
        guard let value else { return }
        guard value.isFinite, (0...1).contains(value) else {
            throw MarketError(.invalidBody, "\(field) \(value) must be between 0 and 1")
        }
    }

    public static func reason(_ text: String, limits: WireLimits) throws(MarketError) {
        guard !text.isEmpty, text.count <= limits.maxReasonCharacters else {
            throw MarketError(.invalidBody, "reason must be 1–\(limits.maxReasonCharacters) characters")
        }
    }

    /// Workspace sizes: bytes 0…`WireLimits.maxBlobBytes`, files 0…1 000 000.
    public static func workspace(bytes: Int64?, files: Int64?, field: String) throws(MarketError) {
        if let bytes, !(0...WireLimits.maxBlobBytes).contains(bytes) {
            throw MarketError(.invalidBody, "\(field)Bytes \(bytes) must be 0…\(WireLimits.maxBlobBytes)")
        }
        if let files, !(0...1_000_000).contains(files) {
            throw MarketError(.invalidBody, "\(field)Files \(files) must be 0…1000000")
        }
    }

    public static func sealed(_ text: String, limits: WireLimits) throws(MarketError) {
        guard !text.isEmpty, text.utf8.count <= limits.maxSealedBytes else {
            throw MarketError(
                .frameTooLarge, "sealed data of \(text.utf8.count) bytes is outside 1…\(limits.maxSealedBytes) bytes")
        }
        guard Data(base64Encoded: text) != nil else { throw MarketError(.invalidBody, "sealed must be base64") }
    }

    static func isIDByte(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
            || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_")
    }

    /// Up to 40 printable ASCII characters of a hostile string, for an error message.
    public static func printable(_ text: String) -> String {
        let kept = String(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value < 0x7F }.prefix(40))
        return text.count > 40 ? kept + "…" : kept
    }
}
