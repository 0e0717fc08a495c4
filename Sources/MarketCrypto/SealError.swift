import Foundation

/// Why sealing or opening failed. Opening never says more than is safe: which check failed and
/// where, never key material.
public struct SealError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case notSealed = "not-sealed"
        case unsupportedVersion = "unsupported-version"
        case unknownSuite = "unknown-suite"
        case malformedHeader = "malformed-header"
        case wrongKey = "wrong-key"
        case keyRetired = "key-retired"
        case tampered
        case truncated
        case trailingData = "trailing-data"
        case io
        case invalidKey = "invalid-key"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
