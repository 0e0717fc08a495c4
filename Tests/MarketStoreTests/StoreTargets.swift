import Foundation
import Logging
import MarketStore
import TestSupport

/// The stores the shared suite runs against: SQLite always; PostgreSQL when `scripts/test.sh`
/// started a server (in CI a missing server is a failure, not a skip).
enum StoreTarget: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite
    case postgres

    var description: String { rawValue }

    static var enabled: [StoreTarget] { PostgresTestDatabase.shouldRun ? allCases : [.sqlite] }

    func make(in directory: TemporaryDirectory) async throws -> any MarketStore {
        try await open(try freshLocation(in: directory))
    }

    /// Where new books of this kind go: a file in `directory`, or a new PostgreSQL database.
    func freshLocation(in directory: TemporaryDirectory) throws -> String {
        switch self {
        case .sqlite: directory.file("market.sqlite").path
        case .postgres: try PostgresTestDatabase.create()
        }
    }

    /// The books at `location`, brought up to the schema: opened again, they get the
    /// migrations they lack.
    func open(_ location: String) async throws -> any MarketStore {
        switch self {
        case .sqlite:
            try SQLiteMarketStore(path: location)
        case .postgres:
            try await PostgresMarketStore.connect(url: location, size: 4, logger: Logger(label: "test.postgres"))
        }
    }
}
