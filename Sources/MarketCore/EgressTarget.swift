import Foundation

/// The one spelling of a `host:port` that the config stores and the egress proxy compares and
/// connects to: ASCII only, lower case, no trailing dot, IP addresses in their canonical form
/// (IPv6 in brackets), the port as a plain number. Anything else does not parse.
public struct EgressTarget: Sendable, Equatable, CustomStringConvertible {
    /// What to connect to: a lower-case DNS name, or an IP address without brackets.
    public let host: String
    public let port: Int
    let isIPv6: Bool

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public init?(parsing text: String) {
        guard text.utf8.count <= 300,
            text.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value < 0x7F }),
            let colon = text.lastIndex(of: ":")
        else { return nil }
        let portText = text[text.index(after: colon)...]
        guard (1...8).contains(portText.count), portText.allSatisfy(\.isASCIIDigitCharacter), let port = Int(portText),
            (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            guard let canonical = Self.canonicalIP(host, family: AF_INET6) else { return nil }
            self.host = canonical
            self.isIPv6 = true
        } else if let canonical = Self.canonicalIP(host, family: AF_INET) {
            self.host = canonical
            self.isIPv6 = false
        } else {
            host = host.lowercased()
            if host.hasSuffix(".") { host.removeLast() }
            let labels = host.split(separator: ".", omittingEmptySubsequences: false)
            // A name whose last label is a number is an IP address spelt another way (`0177.0.0.1`,
            // `127.1`), which the resolver would read as one: refused.
            guard !host.isEmpty, host.count <= 253, labels.last?.allSatisfy(\.isASCIIDigitCharacter) == false,
                labels.allSatisfy({ label in
                    (1...63).contains(label.count) && label.first != "-" && label.last != "-"
                        && label.allSatisfy { $0.isASCIIDigitCharacter || ("a"..."z").contains($0) || $0 == "-" }
                })
            else { return nil }
            self.host = host
            self.isIPv6 = false
        }
        self.port = port
    }

    static func canonicalIP(_ text: String, family: Int32) -> String? {
        var storage = [UInt8](repeating: 0, count: 16)
        guard inet_pton(family, text, &storage) == 1 else { return nil }
        var output = [CChar](repeating: 0, count: 64)
        guard inet_ntop(family, storage, &output, socklen_t(output.count)) != nil else { return nil }
        return String(decoding: output.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Character {
    fileprivate var isASCIIDigitCharacter: Bool { ("0"..."9").contains(self) }
}
