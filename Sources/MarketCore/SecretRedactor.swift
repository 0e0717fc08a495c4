/// Removes credentials from text before it leaves the machine: exact values the tool handed
/// out (an API key given to a job container) and anything shaped like an Anthropic credential
/// (`sk-ant-…` API keys and OAuth access / refresh tokens).
///
/// Pure string processing so that the job runner, the audit log and the market client share one
/// rule. The replacement names what was removed, never the value.
public struct SecretRedactor: Sendable {
    public static let replacement = "[REDACTED]"
    /// The smallest secret we treat as a literal; shorter values would redact ordinary words.
    public static let minimumLiteralLength = 8

    private var literals: [String]

    public init(knownSecrets: [String] = []) {
        literals = knownSecrets.filter { $0.utf8.count >= Self.minimumLiteralLength }
            .sorted { $0.utf8.count > $1.utf8.count }
    }

    public mutating func add(secret: String) {
        guard secret.utf8.count >= Self.minimumLiteralLength, !literals.contains(secret) else { return }
        literals.append(secret)
        literals.sort { $0.utf8.count > $1.utf8.count }
    }

    /// The redacted text and how many secrets were removed.
    public func redact(_ text: String) -> (text: String, count: Int) {
        var count = 0
        var output = text
        for literal in literals where output.contains(literal) {
            let parts = output.components(separatedBy: literal)
            count += parts.count - 1
            output = parts.joined(separator: Self.replacement)
        }
        let (patterned, patternCount) = Self.redactAnthropicShaped(output)
        return (patterned, count + patternCount)
    }

    /// True when the text holds anything `redact` would remove.
    public func containsSecret(_ text: String) -> Bool { redact(text).count > 0 }

    /// `sk-ant-` followed by at least 16 token characters (letters, digits, `-`, `_`): covers
    /// `sk-ant-api03-…`, `sk-ant-oat01-…` (OAuth access) and `sk-ant-ort01-…` (refresh).
    static func redactAnthropicShaped(_ text: String) -> (String, Int) {
        let bytes = Array(text.utf8)
        let found = anthropicShapedRanges(bytes)
        guard !found.isEmpty else { return (text, 0) }
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        for range in found {
            output.append(contentsOf: bytes[index..<range.lowerBound])
            output.append(contentsOf: Array(replacement.utf8))
            index = range.upperBound
        }
        output.append(contentsOf: bytes[index...])
        return (String(decoding: output, as: UTF8.self), found.count)
    }

    /// Everything in `text` shaped like an Anthropic key or token, as `redact` would remove it
    /// (`login` keeps the token `claude setup-token` prints this way, and shows it redacted).
    public static func anthropicShaped(in text: String) -> [String] {
        let bytes = Array(text.utf8)
        return anthropicShapedRanges(bytes).map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    private static func anthropicShapedRanges(_ bytes: [UInt8]) -> [Range<Int>] {
        let prefix = Array("sk-ant-".utf8)
        guard bytes.count >= prefix.count else { return [] }
        var found: [Range<Int>] = []
        var index = 0
        while index < bytes.count {
            if bytes[index] == prefix[0], index + prefix.count <= bytes.count,
                Array(bytes[index..<index + prefix.count]) == prefix
            {
                var end = index + prefix.count
                while end < bytes.count, isTokenByte(bytes[end]) { end += 1 }
                if end - index - prefix.count >= 16 {
                    found.append(index..<end)
                    index = end
                    continue
                }
            }
            index += 1
        }
        return found
    }

    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            true
        default: false
        }
    }
}
