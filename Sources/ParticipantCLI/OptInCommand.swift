import ArgumentParser
import Foundation
import MarketCore
import MarketProtocol
import Participant

struct OptInCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opt-in",
        abstract: "Offer your capacity: allow jobs from the market to be asked of you (needs accepted terms)."
    )

    @Flag(name: .customLong("claude-jobs"), help: "Opt in to running Claude Code jobs for others.")
    var claudeJobs = false
    @Flag(name: .long, help: "Do not ask for confirmation (for scripts).")
    var yes = false
    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func validate() throws {
        guard claudeJobs else { throw ValidationError("name what you opt in to: --claude-jobs") }
    }

    func run() async throws {
        let context = CommandContext()
        let store = ConsentStore(database: try context.database())
        guard try store.current().termsAccepted else {
            throw CLIError(
                "opt-in needs the current terms accepted: read `claude-max-market terms`, "
                    + "then run `claude-max-market terms --accept`")
        }
        let config = try context.config()
        let question = """
            Opt in to running Claude Code jobs for other people on this machine?
            Each job still needs your approval (approval.mode=\(config.text(.approvalMode))) and stays within your limits.
            """
        guard try Output.confirm(question, assumeYes: yes) else { throw CLIError("not opted in: not confirmed") }
        try store.optIn(scope: ConsentStore.claudeJobsScope, actor: context.actor, at: context.now)
        let state = try store.current()
        if json {
            try Output.json(state)
        } else {
            Output.line("opted in to \(ConsentStore.claudeJobsScope); `claude-max-market opt-out` stops at once")
        }
    }
}

struct OptOutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opt-out",
        abstract: "Stop offering capacity at once: new jobs are refused and the market offer is withdrawn."
    )

    @Flag(name: .long, help: "Do not ask for confirmation (for scripts).")
    var yes = false
    @Flag(name: .long, help: "Print JSON.")
    var json = false

    func run() async throws {
        let context = CommandContext()
        let store = ConsentStore(database: try context.database())
        guard try Output.confirm("Opt out: refuse all new jobs from now on?", assumeYes: yes) else {
            throw CLIError("still opted in: not confirmed")
        }
        let wasOptedIn = try store.optOut(actor: context.actor, at: context.now)
        // The offer goes too: a running `provide` sees the opt-out within a second and withdraws
        // it itself; this also reaches the market when no daemon runs (or queues it).
        let database = try context.database()
        var offer = "none"
        if try OfferStore(database: database).load() != nil {
            try OfferStore(database: database).clear()
            do {
                let ack = try await MarketLink(context: context).sendOrQueue(
                    .offerWithdraw, EmptyBody(), what: "the withdrawal of the offer", connectTimeout: .seconds(2))
                offer = ack.state?.rawValue ?? "withdrawn"
            } catch let error as CLIError {
                offer = "queued"
                Output.note(error.message)
            }
        }
        if json {
            struct Report: Encodable {
                var optedIn = false
                var wasOptedIn: Bool
                var offer: String
            }
            try Output.json(Report(wasOptedIn: wasOptedIn, offer: offer))
        } else {
            Output.line(
                (wasOptedIn ? "opted out: new jobs are refused" : "opted out (you were not opted in)")
                    + (offer == "none" ? "" : "; market offer \(offer)"))
        }
    }
}
