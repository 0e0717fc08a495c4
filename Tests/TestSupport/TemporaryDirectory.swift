import Foundation

/// A fresh directory under the system temp dir, removed when the test is done with it.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL

    public init(_ prefix: String = "cmm-test") {
        url = FileManager.default.temporaryDirectory.appending(path: "\(prefix)-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        chmod(url.path, 0o700)
    }

    deinit {
        try? FileManager.default.removeItem(at: url)
    }

    public var path: String { url.path }

    public func file(_ name: String) -> URL { url.appending(path: name) }
}

/// A wall clock the test moves by hand.
public final class ManualWallClock: @unchecked Sendable {
    private let lock = NSLock()
    private var current: Date

    public init(_ start: Date) { current = start }

    public var now: Date { lock.withLock { current } }

    public func advance(by seconds: TimeInterval) {
        lock.withLock { current = current.addingTimeInterval(seconds) }
    }

    public func set(_ date: Date) {
        lock.withLock { current = date }
    }
}

extension Date {
    /// `2026-11-25T10:00:00Z`-style literals for tests.
    public static func utc(_ text: String) -> Date {
        try! Date(text, strategy: .iso8601)
    }
}

/// Compares large byte strings without letting a failed `#expect` compute a quadratic diff.
public func sameBytes(_ a: Data, _ b: Data) -> Bool { a == b }
