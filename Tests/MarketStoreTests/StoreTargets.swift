import Foundation
import MarketStore
import TestSupport

/// The stores the shared suite runs against: SQLite always; PostgreSQL when a server is
/// configured (scripts/test.sh starts one; in CI a missing one is a failure, not a skip).
enum StoreTarget: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite

    var description: String { rawValue }

    func make(in directory: TemporaryDirectory) async throws -> any MarketStore {
        switch self {
        case .sqlite: try SQLiteMarketStore(path: directory.file("market.sqlite").path)
        }
    }
}
