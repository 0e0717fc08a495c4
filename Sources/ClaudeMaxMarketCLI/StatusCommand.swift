import ArgumentParser
import Foundation
import MarketCore
import MarketCrypto
import Participant

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Consent, limits and usage at a glance."
    )

    @Flag(name: .long, help: "Print JSON.") var json = false

    struct Report: Codable {
        struct Market: Codable {
            var url: String
            var connected: Bool
            var note: String
        }

        var optedIn: Bool
        var optInScope: String?
        var termsAccepted: Bool
        var termsVersionAccepted: String?
        var termsVersionCurrent: String
        var approvalMode: String
        /// The peer id, once keys exist (`keys show` makes them).
        var identity: String?
        var limits: Limits
        var usage: UsageSnapshot
        var market: Market
    }

    func run() async throws {
        let context = CommandContext()
        let config = try context.config()
        let database = try context.database()
        let consent = try ConsentStore(database: database).current()
        let report = Report(
            optedIn: consent.optIn != nil,
            optInScope: consent.optIn?.scope,
            termsAccepted: consent.termsAccepted,
            termsVersionAccepted: consent.lastAcceptance?.version,
            termsVersionCurrent: TermsNotice.version,
            approvalMode: config.text(.approvalMode),
            identity: try context.keyStore.load(now: context.now, rotationDays: Int(config.integer(.keyRotationDays)))?
                .peerID.rawValue,
            limits: Limits(config: config),
            usage: try JobStore(database: database).usage(at: context.now),
            market: .init(
                url: config.text(.marketURL), connected: false,
                note: "the market client is not built yet; this machine is not connected to any market")
        )
        if json {
            try Output.json(report)
            return
        }
        Output.line("opted in:       \(report.optedIn ? "yes (\(report.optInScope ?? ""))" : "no")")
        Output.line(
            "terms:          "
                + (report.termsAccepted
                    ? "accepted (version \(TermsNotice.version))"
                    : "not accepted (current version \(TermsNotice.version))"))
        Output.line("approval mode:  \(report.approvalMode)")
        Output.line("identity:       \(report.identity ?? "none yet (made on first use, e.g. `keys show`)")")
        Output.line("market:         \(report.market.url) — not connected (market client not built yet)")
        Output.line("")
        Output.line(LimitsReport.table(limits: report.limits, usage: report.usage))
    }
}
