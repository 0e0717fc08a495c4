import Foundation

/// A market's WebSocket URL, checked once where it is read (config, `--url`, a client's
/// connect): `ws` or `wss`, a host of ASCII letters, digits, `-` and `.` (or an IPv6 address in
/// brackets), a port from 1 to 65535 when one is given, and nothing that is a space, a control
/// or a bidirectional-override character anywhere. Nothing converts a port by truncation.
public struct MarketURL: Sendable, Equatable, CustomStringConvertible {
    public let text: String
    public let secure: Bool
    public let host: String
    /// The port given, or the scheme's (80, 443).
    public let port: Int
    public let path: String

    public var description: String { text }

    public static let allowed =
        "a ws:// or wss:// URL with an ASCII host name or IP address, a port from 1 to 65535 if any, and no spaces or control characters"

    public init(validating text: String) throws(MarketURLError) {
        let shown = WireField.printable(String(text.prefix(200)))
        func refuse(_ why: String) -> MarketURLError { MarketURLError(url: shown, reason: why) }
        guard !text.isEmpty, text.utf8.count <= 2048 else { throw refuse("it must be 1 to 2048 bytes") }
        guard text.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value != 0x7f }) else {
            throw refuse("it holds a space, a control character or a character outside ASCII")
        }
        let lower = text.lowercased()
        let secure: Bool
        if lower.hasPrefix("wss://") {
            secure = true
        } else if lower.hasPrefix("ws://") {
            secure = false
        } else {
            throw refuse("the scheme must be ws:// or wss://")
        }
        let rest = text.dropFirst(secure ? 6 : 5)
        let authorityEnd = rest.firstIndex { "/?#".contains($0) } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        let path = String(rest[authorityEnd...])
        guard !authority.contains("@") else { throw refuse("it must not carry a user name or password") }
        guard !path.contains("#") else { throw refuse("it must not have a fragment (#)") }
        var host = Substring(authority)
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw refuse("the IPv6 address has no closing ]") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw refuse("only :PORT may follow the IPv6 address") }
                portText = after.dropFirst()
            }
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw refuse("the IPv6 address is not one")
            }
        } else {
            if let colon = authority.lastIndex(of: ":") {
                host = authority[..<colon]
                portText = authority[authority.index(after: colon)...]
            }
            guard !host.isEmpty, host.count <= 253,
                host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }),
                !host.hasPrefix("-"), !host.hasPrefix(".")
            else { throw refuse("the host must be a name of letters, digits, - and ., or an IP address") }
        }
        var port = secure ? 443 : 80
        if let portText {
            guard (1...5).contains(portText.count), portText.allSatisfy({ $0.isASCII && $0.isNumber }),
                let value = Int(portText), (1...65535).contains(value)
            else { throw refuse("the port must be a number from 1 to 65535") }
            port = value
        }
        self.text = text
        self.secure = secure
        self.host = host.lowercased()
        self.port = port
        self.path = path.isEmpty ? "/" : path
    }
}

public struct MarketURLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var url: String
    public var reason: String
    public init(url: String, reason: String) {
        self.url = url
        self.reason = reason
    }
    public var description: String { "'\(url)' is not a market URL: \(reason) (expected \(MarketURL.allowed))" }
}
