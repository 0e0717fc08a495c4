import Foundation
import GRDB
import MarketCore

/// The latest word on each of the account's limit windows, as the provider's gateway read it
/// off the API's answers. Kept across restarts: a provider that starts while a window is past
/// its share stays off the market until that window resets.
public struct AccountLimitStore: Sendable {
    let database: StateDatabase

    public init(database: StateDatabase) { self.database = database }

    /// Keeps each reading unless the store already has a later one for its window.
    public func record(_ readings: [LimitReading]) throws {
        guard !readings.isEmpty else { return }
        try database.pool.write { db in
            for reading in readings {
                try db.execute(
                    sql: """
                        INSERT INTO account_limits (window, status, utilization, resets_at_ms, observed_ms)
                        VALUES (?, ?, ?, ?, ?)
                        ON CONFLICT(window) DO UPDATE SET status = excluded.status, utilization = excluded.utilization,
                            resets_at_ms = excluded.resets_at_ms, observed_ms = excluded.observed_ms
                        WHERE excluded.observed_ms >= account_limits.observed_ms
                        """,
                    arguments: [
                        reading.window, reading.status, reading.utilization, reading.resetsAt?.unixMilliseconds,
                        reading.observedAt.unixMilliseconds,
                    ])
            }
        }
    }

    public func all() throws -> [LimitReading] {
        try database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT window, status, utilization, resets_at_ms, observed_ms FROM account_limits ORDER BY window"
            ).map {
                LimitReading(
                    window: $0["window"], status: $0["status"], utilization: $0["utilization"],
                    resetsAt: ($0["resets_at_ms"] as Int64?).map(Date.init(unixMilliseconds:)),
                    observedAt: Date(unixMilliseconds: $0["observed_ms"]))
            }
        }
    }
}

extension CapacityShares {
    /// The shares from the participant's config (`capacity.*`).
    public init(config: ResolvedConfig) {
        self.init(
            fiveHour: Double(config.hundredths(.capacityFiveHourShare)) / 100,
            weekly: Double(config.hundredths(.capacityWeeklyShare)) / 100,
            perMinute: Double(config.hundredths(.capacityPerMinuteShare)) / 100)
    }
}
