import ArgumentParser
import Foundation
import Participant

struct LimitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limits",
        abstract: "Show or set your limits on jobs and tokens per day, week and month.",
        discussion: "With no option, or with --show, prints the limits and today's, this week's and this month's usage."
    )

    @Option(name: .long, help: ArgumentHelp("Jobs per day.", valueName: "N")) var daily: String?
    @Option(name: .long, help: ArgumentHelp("Jobs per ISO week.", valueName: "N")) var weekly: String?
    @Option(name: .long, help: ArgumentHelp("Jobs per calendar month.", valueName: "N")) var monthly: String?
    @Option(name: .customLong("tokens-daily"), help: ArgumentHelp("Input + output tokens per day.", valueName: "N"))
    var tokensDaily: String?
    @Option(name: .customLong("max-tokens-per-task"), help: ArgumentHelp("Tokens one job may use.", valueName: "N"))
    var maxTokensPerTask: String?
    @Option(name: .long, help: ArgumentHelp("Jobs running at once.", valueName: "N")) var concurrent: String?
    @Flag(name: .long, help: "Show the limits and usage (the default).") var show = false
    @OptionGroup var output: JSONOutput

    var assignments: [(key: String, value: String)] {
        [
            (ConfigKey.dailyTasks, daily), (.weeklyTasks, weekly), (.monthlyTasks, monthly),
            (.dailyTokens, tokensDaily), (.maxTokensPerTask, maxTokensPerTask), (.concurrentJobs, concurrent),
        ].compactMap { key, value in value.map { (key.name, $0) } }
    }

    func validate() throws {
        if show && !assignments.isEmpty { throw ValidationError("--show cannot be combined with new limits") }
    }

    func run() async throws {
        let context = CommandContext()
        let database = try context.database()
        if !assignments.isEmpty {
            _ = try context.configStore.set(assignments, source: "limits")
            try database.audit(
                actor: context.actor, kind: "limits.set",
                details: Dictionary(assignments.map { ($0.key, $0.value) }) { $1 }, at: context.now)
        }
        let config = try context.config()
        let limits = Limits(config: config)
        let usage = try JobStore(database: database).usage(at: context.now)
        if output.json {
            try Output.json(LimitsReport(limits: limits, usage: usage))
            return
        }
        if !assignments.isEmpty { Output.line("limits updated\n") }
        Output.line(LimitsReport.table(limits: limits, usage: usage))
    }
}

struct LimitsReport: Codable {
    var limits: Limits
    var usage: UsageSnapshot

    static func table(limits: Limits, usage: UsageSnapshot) -> String {
        Output.table(
            ["LIMIT", "VALUE", "USED", "LEFT"],
            [
                ("jobs per day", limits.dailyTasks, usage.day.tasks),
                ("jobs per week", limits.weeklyTasks, usage.week.tasks),
                ("jobs per month", limits.monthlyTasks, usage.month.tasks),
                ("tokens per day", limits.dailyTokens, usage.day.tokens),
                ("jobs at once", limits.concurrentJobs, usage.running),
            ].map(row) + [["tokens per job", String(limits.maxTokensPerTask), "-", "-"]])
    }

    private static func row(_ item: (name: String, limit: Int64, used: Int64)) -> [String] {
        [item.name, String(item.limit), String(item.used), String(max(0, item.limit - item.used))]
    }
}
