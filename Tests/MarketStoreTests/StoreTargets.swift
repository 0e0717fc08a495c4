import Foundation
import Logging
import MarketStore
import TestSupport
import Testing

/// The stores the shared suite runs against: both, always. Without a PostgreSQL server its
/// cases are reported as cancelled (skipped, with why), never dropped in silence; with
/// `CMM_REQUIRE_POSTGRES=1` (as `scripts/test.sh` sets) or in CI, a missing server fails them.
enum StoreTarget: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite
    case postgres

    var description: String { rawValue }

    static var enabled: [StoreTarget] { allCases }

    func make(in directory: TemporaryDirectory) async throws -> any MarketStore {
        try await open(try freshLocation(in: directory))
    }

    /// Where new books of this kind go: a file in `directory`, or a new PostgreSQL database.
    func freshLocation(in directory: TemporaryDirectory) throws -> String {
        switch self {
        case .sqlite: return directory.file("market.sqlite").path
        case .postgres:
            guard PostgresTestDatabase.shouldRun else {
                try Test.cancel(
                    "no PostgreSQL server: set CMM_TEST_POSTGRES_URL, or run scripts/test.sh (which starts one)")
            }
            return try PostgresTestDatabase.create()
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

/// Says so in the run's output when the PostgreSQL cases of the shared suite cannot run here
/// (each of them is cancelled too, so none counts as passed).
struct StoreTargetsReport {
    @Test(
        .enabled(
            if: PostgresTestDatabase.shouldRun,
            "no PostgreSQL server: every PostgreSQL case of the store suites is cancelled (set CMM_TEST_POSTGRES_URL, or run scripts/test.sh)"
        ))
    func postgresCasesRun() throws {
        #expect(PostgresTestDatabase.serverURL != nil, "CMM_REQUIRE_POSTGRES or CI is set, but no server was given")
    }
}
