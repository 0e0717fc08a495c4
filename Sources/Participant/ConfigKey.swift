import Foundation
import MarketCore

/// A typed configuration value, in its canonical form.
public enum ConfigValue: Sendable, Equatable, CustomStringConvertible {
    case integer(Int64)
    case boolean(Bool)
    case text(String)
    case list([String])

    public var description: String {
        switch self {
        case .integer(let value): String(value)
        case .boolean(let value): String(value)
        case .text(let value): value
        case .list(let values): values.joined(separator: ",")
        }
    }

    var fileValue: ConfigFileValue {
        switch self {
        case .integer(let value): .number(String(value))
        case .boolean(let value): .boolean(value)
        case .text(let value): .text(value)
        case .list(let values): .list(values)
        }
    }
}

/// One configuration key: its type, default, allowed range and what it means.
public struct ConfigKey: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case integer(ClosedRange<Int64>)
        /// A size in bytes written as `512m`, `1g`, `65536`; stored as the text the user gave.
        case byteSize(ClosedRange<Int64>)
        case boolean
        case choice([String])
        case text(maxLength: Int)
        /// A `ws://` or `wss://` URL.
        case webSocketURL
        /// An `https://` URL without a path (`http://` only to loopback).
        case httpsBaseURL
        /// A number with up to two decimals, such as `1.5`.
        case decimal(ClosedRange<Double>)
        /// Whole credits with up to six decimals, in a range of micro-credits.
        case credits(ClosedRange<Int64>)
        /// A comma-separated list of `host:port` pairs.
        case hostPortList
        /// A comma-separated list of names.
        case nameList
    }

    public let name: String
    public let kind: Kind
    public let defaultValue: ConfigValue
    public let summary: String

    public init(_ name: String, _ kind: Kind, default defaultValue: ConfigValue, _ summary: String) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.summary = summary
    }

    public static func == (lhs: ConfigKey, rhs: ConfigKey) -> Bool { lhs.name == rhs.name }
    public func hash(into hasher: inout Hasher) { hasher.combine(name) }

    /// The environment variable that sets this key: `limits.dailyTasks` → `CMM_LIMITS_DAILYTASKS`.
    public var environmentName: String {
        "CMM_" + name.uppercased().replacingOccurrences(of: ".", with: "_")
    }

    /// What values are allowed, in words, for error messages and `config --list`.
    public var allowed: String {
        switch kind {
        case .integer(let range): "an integer from \(range.lowerBound) to \(range.upperBound)"
        case .byteSize(let range):
            "a size such as 512m or 1g (k, m, g suffixes; from \(ByteSize.format(range.lowerBound)) to \(ByteSize.format(range.upperBound)))"
        case .boolean: "true or false"
        case .choice(let options): "one of: \(options.joined(separator: ", "))"
        case .text(let maxLength): "text of 1 to \(maxLength) characters without control characters"
        case .webSocketURL: MarketURL.allowed
        case .httpsBaseURL: "an https:// URL without a path (http:// only to 127.0.0.1 or localhost)"
        case .decimal(let range): "a number from \(range.lowerBound) to \(range.upperBound), at most two decimals"
        case .credits(let range):
            "an amount of credits from \(Credits(micro: range.lowerBound).amountString) to \(Credits(micro: range.upperBound).amountString)"
        case .hostPortList:
            "a comma-separated list of host:port pairs (ASCII host names or IP addresses, IPv6 in brackets; no paths or wildcards)"
        case .nameList: "a comma-separated list of names (letters, digits, - _ . :)"
        }
    }

    /// Parses text from the command line, a file or the environment into the canonical value.
    public func parse(_ raw: String) -> ConfigValue? {
        let text = raw.trimmingCharacters(in: .whitespaces)
        switch kind {
        case .integer(let range):
            guard let value = Int64(text), range.contains(value) else { return nil }
            return .integer(value)
        case .byteSize(let range):
            guard let value = ByteSize.parse(text), range.contains(value) else { return nil }
            return .text(text.lowercased())
        case .boolean:
            switch text.lowercased() {
            case "true", "yes", "on", "1": return .boolean(true)
            case "false", "no", "off", "0": return .boolean(false)
            default: return nil
            }
        case .choice(let options):
            return options.contains(text) ? .text(text) : nil
        case .text(let maxLength):
            guard !text.isEmpty, text.count <= maxLength,
                !text.unicodeScalars.contains(where: { CharacterSet.controlCharacters.contains($0) })
            else { return nil }
            return .text(text)
        case .webSocketURL:
            guard (try? MarketURL(validating: text)) != nil else { return nil }
            return .text(text)
        case .decimal(let range):
            let parts = text.split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count),
                parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { ("0"..."9").contains($0) } }),
                parts.count == 1 || parts[1].count <= 2, let value = Double(text), range.contains(value)
            else { return nil }
            return .text(text)
        case .httpsBaseURL:
            guard let url = URL(string: text), let host = url.host, !host.isEmpty, url.path.isEmpty || url.path == "/",
                url.query == nil, url.user == nil,
                url.scheme == "https" || (url.scheme == "http" && ["127.0.0.1", "localhost"].contains(host))
            else { return nil }
            return .text(text.hasSuffix("/") ? String(text.dropLast()) : text)
        case .credits(let range):
            guard let credits = try? Credits(parsing: text), range.contains(credits.micro) else { return nil }
            return .text(credits.amountString)
        case .hostPortList:
            // Stored in the one spelling the egress proxy compares and connects to.
            let items = Self.splitList(text).map { EgressTarget(parsing: $0)?.description }
            guard items.allSatisfy({ $0 != nil }) else { return nil }
            return .list(items.compactMap { $0 })
        case .nameList:
            let items = Self.splitList(text)
            let allowedCharacters = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_.:"))
            guard items.allSatisfy({ $0.unicodeScalars.allSatisfy(allowedCharacters.contains) }) else { return nil }
            return .list(items)
        }
    }

    /// Parses a value read from a JSON config file.
    func parse(_ fileValue: ConfigFileValue) -> ConfigValue? {
        switch fileValue {
        case .boolean(let value):
            guard case .boolean = kind else { return nil }
            return .boolean(value)
        case .number(let value):
            switch kind {
            case .integer, .byteSize, .credits, .decimal: return parse(value)
            default: return nil
            }
        case .text(let value):
            return parse(value)
        case .list(let values):
            switch kind {
            case .hostPortList, .nameList: return parse(values.joined(separator: ","))
            default: return nil
            }
        }
    }

    static func splitList(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// `host:port` with a DNS name or IP literal and a port from 1 to 65535.
/// Sizes such as `512m`: k, m, g are powers of 1024.
public enum ByteSize {
    public static func parse(_ text: String) -> Int64? {
        let lower = text.lowercased()
        var digits = Substring(lower)
        var multiplier: Int64 = 1
        if let last = lower.last, let factor = ["k": Int64(1) << 10, "m": Int64(1) << 20, "g": Int64(1) << 30][last] {
            multiplier = factor
            digits = lower.dropLast()
            if digits.hasSuffix("i") { return nil }
        } else if lower.hasSuffix("b") {
            digits = lower.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let value = Int64(digits) else { return nil }
        let (result, overflow) = value.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : result
    }

    public static func format(_ bytes: Int64) -> String {
        for (suffix, shift) in [("g", 30), ("m", 20), ("k", 10)] where bytes >= Int64(1) << shift {
            if bytes % (Int64(1) << shift) == 0 { return "\(bytes >> shift)\(suffix)" }
        }
        return "\(bytes)"
    }
}

/// A value as written in `config.json`: JSON booleans, numbers, strings and string arrays.
enum ConfigFileValue: Codable, Equatable {
    case boolean(Bool)
    case number(String)
    case text(String)
    case list([String])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) {
            self = .boolean(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .number(String(value))
        } else if let value = try? container.decode(Double.self) {
            self = .number(String(value))
        } else if let value = try? container.decode(String.self) {
            self = .text(value)
        } else if let value = try? container.decode([String].self) {
            self = .list(value)
        } else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "expected a boolean, a number, a string or a list of strings"
            )
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .boolean(let value): try container.encode(value)
        case .number(let value):
            if let integer = Int64(value) { try container.encode(integer) } else { try container.encode(value) }
        case .text(let value): try container.encode(value)
        case .list(let values): try container.encode(values)
        }
    }

    var display: String {
        switch self {
        case .boolean(let value): String(value)
        case .number(let value), .text(let value): value
        case .list(let values): values.joined(separator: ",")
        }
    }
}
