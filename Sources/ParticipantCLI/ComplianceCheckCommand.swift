import ArgumentParser
import DockerEngine
import Foundation
import MarketCore
import Participant

struct ComplianceCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compliance-check",
        abstract: "Check facts about this set-up (terms, opt-in, limits, audit chain, file modes, keys).",
        discussion: """
            Each check reports pass, warn or fail with a remediation. These are facts verified on \
            this machine; they are not, and do not claim to be, legal compliance. Exits 1 when any \
            check fails.
            """
    )

    @Flag(name: .long, help: "Print JSON: {\"checks\": [...], \"summary\": {...}}.") var json = false

    func run() async throws {
        let context = CommandContext()
        let config = try context.config()
        let database = try context.database()
        var checks = try ComplianceChecks(paths: context.paths, database: database, config: config).run()
        do {
            checks += try await context.withDocker { docker in await SandboxChecks.run(config, docker: docker) }
        } catch is DockerError {
            checks += await SandboxChecks.run(config, docker: nil)
        }
        let report = CheckReport(checks: checks)
        try CheckReportPrinter.print(report, json: json)
        if report.hasFailures { throw ExitCode.failure }
    }
}

enum CheckReportPrinter {
    static func print(_ report: CheckReport, json: Bool) throws {
        if json {
            try Output.json(report)
            return
        }
        for check in report.checks {
            Output.line("[\(check.status.rawValue.uppercased())] \(check.id): \(check.message)")
            if check.status != .pass && !check.remediation.isEmpty {
                Output.line("       → \(check.remediation)")
            }
        }
        Output.line(
            "\n\(report.summary.passed) passed, \(report.summary.warned) warned, \(report.summary.failed) failed"
                + " — facts checked on this machine, not a statement of legal compliance")
    }
}
