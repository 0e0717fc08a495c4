import ArgumentParser
import Foundation
import MarketCore
import Participant

struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Jobs, tokens, cost, time and failures; the last 14 days; rate-limit windows; projections."
    )

    enum Format: String, ExpressibleByArgument, CaseIterable { case table, json, csv }
    enum GroupBy: String, ExpressibleByArgument, CaseIterable { case model, role }

    @Option(name: .long, help: "The current day, week or month (default: month).") var period: UsagePeriod?
    @Option(name: .long, help: ArgumentHelp("From this time: \(DateArgument.allowed).", valueName: "D")) var since:
        String?
    @Option(name: .long, help: ArgumentHelp("Until this time (exclusive).", valueName: "D")) var until: String?
    @Option(name: .long, help: "Group rows by model or role.") var by: GroupBy?
    @Option(name: .long, help: "table, json or csv.") var format: Format = .table
    @Option(name: .long, help: ArgumentHelp("Write to FILE instead of stdout.", valueName: "FILE")) var output: String?

    struct Row: Codable {
        var group: String
        var tasks = 0
        var failures = 0
        var inputTokens: Int64 = 0
        var outputTokens: Int64 = 0
        var cacheReadTokens: Int64 = 0
        var cacheCreationTokens: Int64 = 0
        var costUSD: Double = 0
        var seconds: Double = 0
    }

    struct Projection: Codable {
        var limit: String
        var value: Int64
        var used: Int64
        var reachedAt: Date?
        var note: String
    }

    struct Report: Codable {
        var from: Date
        var until: Date
        var rows: [Row]
        var total: Row
        var daily: [String: Int]
        var rateLimits: [RateLimitStatus]
        var projections: [Projection]
    }

    func run() async throws {
        let context = CommandContext()
        let now = context.now
        let calendar = UsagePeriod.utcCalendar
        let interval = (period ?? .month).interval(containing: now, calendar: calendar)
        var from = interval.start
        var to = interval.end
        if let since {
            guard let date = DateArgument.parse(since, now: now) else {
                throw ValidationError("--since '\(since)' is not \(DateArgument.allowed)")
            }
            from = date
        }
        if let until {
            guard let date = DateArgument.parse(until, now: now) else {
                throw ValidationError("--until '\(until)' is not \(DateArgument.allowed)")
            }
            to = date
        }
        guard from < to else { throw ValidationError("--since must be before --until") }
        let database = try context.database()
        let jobs = JobStore(database: database)
        let records = try jobs.jobs(from: from, until: to)
        var groups: [String: Row] = [:]
        var total = Row(group: "total")
        for job in records {
            let key = by == .model ? (job.model ?? job.backend) : by == .role ? job.role : "total"
            var row = groups[key] ?? Row(group: key)
            for target in [true, false] {
                var entry = target ? row : total
                entry.tasks += 1
                if [.failed, .timedOut, .abandoned].contains(job.state) { entry.failures += 1 }
                entry.inputTokens += job.inputTokens
                entry.outputTokens += job.outputTokens
                entry.cacheReadTokens += job.cacheReadTokens
                entry.cacheCreationTokens += job.cacheCreationTokens
                entry.costUSD += job.costUSD
                if let start = job.startedAt, let end = job.finishedAt { entry.seconds += end.timeIntervalSince(start) }
                if target { row = entry } else { total = entry }
            }
            groups[key] = row
        }
        let dayFormatter = DateFormatter()
        dayFormatter.dateFormat = "yyyy-MM-dd"
        dayFormatter.timeZone = TimeZone(identifier: "UTC")
        var daily: [String: Int] = [:]
        let fortnightStart = calendar.startOfDay(for: now).addingTimeInterval(-13 * 86_400)
        for offset in 0..<14 {
            daily[dayFormatter.string(from: fortnightStart.addingTimeInterval(Double(offset) * 86_400))] = 0
        }
        for job in try jobs.jobs(from: fortnightStart, until: now.addingTimeInterval(1)) {
            daily[dayFormatter.string(from: job.createdAt), default: 0] += 1
        }
        let limits = Limits(config: try context.config())
        let snapshot = try jobs.usage(at: now)
        let report = Report(
            from: from, until: to, rows: groups.values.sorted { $0.group < $1.group }, total: total, daily: daily,
            rateLimits: try jobs.latestRateLimits(),
            projections: Self.projections(limits: limits, usage: snapshot, now: now))
        let data: Data
        switch format {
        case .json:
            data = try Output.jsonData(report)
        case .csv:
            var lines = [
                "group,tasks,failures,input_tokens,output_tokens,cache_read_tokens,cache_creation_tokens,cost_usd,seconds"
            ]
            for row in report.rows + [report.total] {
                lines.append(
                    [
                        row.group, String(row.tasks), String(row.failures), String(row.inputTokens),
                        String(row.outputTokens),
                        String(row.cacheReadTokens), String(row.cacheCreationTokens),
                        String(format: "%.6f", row.costUSD),
                        String(format: "%.1f", row.seconds),
                    ].map(Output.csvField).joined(separator: ","))
            }
            data = Data((lines.joined(separator: "\n") + "\n").utf8)
        case .table:
            data = Data((Self.table(report) + "\n").utf8)
        }
        if let output { try Output.write(data, to: output) } else { Output.stdout(data) }
    }

    static func table(_ report: Report) -> String {
        var text = "usage from \(report.from.ISO8601Format()) until \(report.until.ISO8601Format())\n\n"
        let rows = (report.rows.count > 1 || report.rows.first?.group != "total" ? report.rows : []) + [report.total]
        text += Output.table(
            ["GROUP", "JOBS", "FAILED", "IN", "OUT", "CACHE READ", "CACHE WRITE", "COST USD", "TIME"],
            rows.map {
                [
                    $0.group, String($0.tasks), String($0.failures), String($0.inputTokens), String($0.outputTokens),
                    String($0.cacheReadTokens), String($0.cacheCreationTokens), String(format: "%.4f", $0.costUSD),
                    String(format: "%.1fs", $0.seconds),
                ]
            })
        text += "\n\njobs per day, last 14 days\n"
        let peak = max(1, report.daily.values.max() ?? 1)
        for day in report.daily.keys.sorted() {
            let count = report.daily[day] ?? 0
            text += "\(day) \(String(repeating: "█", count: count * 30 / peak))\(count > 0 ? " \(count)" : "")\n"
        }
        text += "\nrate-limit windows (latest notice)\n"
        if report.rateLimits.isEmpty { text += "  none seen yet\n" }
        for status in report.rateLimits {
            text +=
                "  \(status.window): \(status.status)"
                + (status.resetsAt.map { ", resets \($0.ISO8601Format())" } ?? "") + "\n"
        }
        text += "\nprojection at the current rate\n"
        for projection in report.projections {
            text += "  \(projection.limit): \(projection.used)/\(projection.value) — \(projection.note)\n"
        }
        return text
    }

    /// When each limit is reached if work goes on at the rate seen so far in its period.
    static func projections(limits: Limits, usage: UsageSnapshot, now: Date) -> [Projection] {
        func project(_ name: String, _ limit: Int64, _ used: Int64, _ period: PeriodUsage) -> Projection {
            if used >= limit {
                return Projection(limit: name, value: limit, used: used, reachedAt: now, note: "reached")
            }
            let elapsed = now.timeIntervalSince(period.start)
            guard used > 0, elapsed > 0 else {
                return Projection(limit: name, value: limit, used: used, reachedAt: nil, note: "no use yet this period")
            }
            let rate = Double(used) / elapsed
            let reached = now.addingTimeInterval(Double(limit - used) / rate)
            guard reached < period.end else {
                return Projection(
                    limit: name, value: limit, used: used, reachedAt: nil, note: "not reached before the period ends")
            }
            return Projection(
                limit: name, value: limit, used: used, reachedAt: reached,
                note: "reached about \(reached.ISO8601Format())")
        }
        return [
            project("limits.dailyTasks", limits.dailyTasks, usage.day.tasks, usage.day),
            project("limits.weeklyTasks", limits.weeklyTasks, usage.week.tasks, usage.week),
            project("limits.monthlyTasks", limits.monthlyTasks, usage.month.tasks, usage.month),
            project("limits.dailyTokens", limits.dailyTokens, usage.day.tokens, usage.day),
        ]
    }
}

extension UsagePeriod: ExpressibleByArgument {}

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "A job's event log from the local database (redacted as it was shown).",
        discussion:
            "--follow keeps printing new lines, also those written by another process running a job, until Ctrl-C."
    )

    @Option(name: .long, help: ArgumentHelp("The job (default: the latest).", valueName: "ID")) var job: String?
    @Flag(name: .long, help: "Keep printing new lines until Ctrl-C.") var follow = false
    @Option(name: .long, help: ArgumentHelp("Only the last N lines.", valueName: "N")) var tail: Int?
    @Flag(name: .long, help: "All jobs, not just one.") var all = false

    func validate() throws {
        if let tail, tail < 1 { throw ValidationError("--tail must be at least 1, got \(tail)") }
    }

    func run() async throws {
        let context = CommandContext()
        let jobs = JobStore(database: try context.database())
        var jobID: String? = nil
        if !all {
            guard let id = try job ?? jobs.latestJobID() else {
                if follow { jobID = nil } else { throw CLIError("no jobs yet: run `claude-max-market execute` first") }
                return try await followAll(jobs)
            }
            guard try jobs.job(id) != nil else {
                throw CLIError("no job \(id): `claude-max-market usage` lists activity")
            }
            jobID = id
        }
        var events = try tail.map { try jobs.lastEvents(jobID: jobID, count: $0) } ?? jobs.events(jobID: jobID)
        var last: Int64 = 0
        while true {
            for event in events {
                Output.line(
                    "\(event.at.ISO8601Format()) \(event.jobID.prefix(8)) \(event.stream.padding(toLength: 6, withPad: " ", startingAt: 0)) \(event.line)"
                )
                last = event.id
            }
            guard follow else { return }
            try await Task.sleep(for: .milliseconds(200))
            events = try jobs.events(jobID: jobID, afterID: last)
        }
    }

    func followAll(_ jobs: JobStore) async throws {
        var last: Int64 = 0
        while true {
            for event in try jobs.events(jobID: nil, afterID: last) {
                Output.line("\(event.at.ISO8601Format()) \(event.jobID.prefix(8)) \(event.stream) \(event.line)")
                last = event.id
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}
