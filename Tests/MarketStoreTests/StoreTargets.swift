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
        switch self {
        case .sqlite:
            try SQLiteMarketStore(path: directory.file("market.sqlite").path)
        case .postgres:
            try await PostgresMarketStore.connect(
                url: try PostgresTestDatabase.create(), size: 4, logger: Logger(label: "test.postgres"))
        }
    }
}
