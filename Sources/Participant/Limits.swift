import Foundation
import MarketCore

/// The participant's own limits on the work they take on.
public struct Limits: Codable, Sendable, Equatable {
    public var dailyTasks: Int64
    public var weeklyTasks: Int64
    public var monthlyTasks: Int64
    public var dailyTokens: Int64
    public var maxTokensPerTask: Int64
    public var concurrentJobs: Int64

    public init(
        dailyTasks: Int64, weeklyTasks: Int64, monthlyTasks: Int64, dailyTokens: Int64, maxTokensPerTask: Int64,
        concurrentJobs: Int64
    ) {
        self.dailyTasks = dailyTasks
        self.weeklyTasks = weeklyTasks
        self.monthlyTasks = monthlyTasks
        self.dailyTokens = dailyTokens
        self.maxTokensPerTask = maxTokensPerTask
        self.concurrentJobs = concurrentJobs
    }

    public init(config: ResolvedConfig) {
        self.init(
            dailyTasks: config.integer(.dailyTasks), weeklyTasks: config.integer(.weeklyTasks),
            monthlyTasks: config.integer(.monthlyTasks), dailyTokens: config.integer(.dailyTokens),
            maxTokensPerTask: config.integer(.maxTokensPerTask), concurrentJobs: config.integer(.concurrentJobs))
    }
}

/// Work counted in one calendar period.
public struct PeriodUsage: Codable, Sendable, Equatable {
    public var period: UsagePeriod
    public var start: Date
    public var end: Date
    public var tasks: Int64
    /// Input + output tokens; a job still running counts with its reserved estimate.
    public var tokens: Int64

    public init(period: UsagePeriod, start: Date, end: Date, tasks: Int64, tokens: Int64) {
        self.period = period
        self.start = start
        self.end = end
        self.tasks = tasks
        self.tokens = tokens
    }
}

/// Usage in the current day, week and month, and the jobs holding a slot now.
public struct UsageSnapshot: Codable, Sendable, Equatable {
    public var day: PeriodUsage
    public var week: PeriodUsage
    public var month: PeriodUsage
    public var running: Int64

    public init(day: PeriodUsage, week: PeriodUsage, month: PeriodUsage, running: Int64) {
        self.day = day
        self.week = week
        self.month = month
        self.running = running
    }
}

/// A limit that a new job would exceed. Names the limit's key, its value and the usage.
public struct LimitError: Error, Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var limit: Int64
    public var used: Int64
    public var requested: Int64

    public init(key: String, limit: Int64, used: Int64, requested: Int64) {
        self.key = key
        self.limit = limit
        self.used = used
        self.requested = requested
    }

    public var description: String {
        "limit reached: \(key) is \(limit), \(used) used, this job needs \(requested) more; "
            + "wait for the period to end or raise it with `claude-max-market limits`"
    }
}

extension Limits {
    /// The first limit a new job with `estimatedTokens` would exceed, or nil when it fits.
    /// Pure: the caller holds the write lock that makes check-and-reserve atomic.
    public func violation(adding estimatedTokens: Int64, to usage: UsageSnapshot) -> LimitError? {
        if estimatedTokens > maxTokensPerTask {
            return LimitError(
                key: "limits.maxTokensPerTask", limit: maxTokensPerTask, used: 0, requested: estimatedTokens)
        }
        let checks: [(String, Int64, Int64, Int64)] = [
            ("limits.concurrentJobs", concurrentJobs, usage.running, 1),
            ("limits.dailyTasks", dailyTasks, usage.day.tasks, 1),
            ("limits.weeklyTasks", weeklyTasks, usage.week.tasks, 1),
            ("limits.monthlyTasks", monthlyTasks, usage.month.tasks, 1),
            ("limits.dailyTokens", dailyTokens, usage.day.tokens, estimatedTokens),
        ]
        for (key, limit, used, requested) in checks where used + requested > limit {
            return LimitError(key: key, limit: limit, used: used, requested: requested)
        }
        return nil
    }
}
