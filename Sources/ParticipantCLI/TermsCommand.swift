import ArgumentParser
import Foundation
import Participant

struct TermsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "terms",
        abstract: "Print the notice on terms, data and responsibility; --accept records that you accept it."
    )

    @Flag(name: .long, help: "Record acceptance of this notice (its version and SHA-256).")
    var accept = false
    @Flag(name: .long, help: "Print JSON: version, sha256, accepted, text.")
    var json = false

    struct Report: Codable {
        var version: String
        var sha256: String
        var accepted: Bool
        var acceptedAt: Date?
        var text: String
    }

    func run() async throws {
        let context = CommandContext()
        let store = ConsentStore(database: try context.database())
        if accept {
            try store.acceptTerms(actor: context.actor, at: context.now)
        }
        let state = try store.current()
        if json {
            try Output.json(
                Report(
                    version: TermsNotice.version, sha256: TermsNotice.sha256, accepted: state.termsAccepted,
                    acceptedAt: state.termsAccepted ? state.lastAcceptance?.at : nil, text: TermsNotice.text))
            return
        }
        if !accept { Output.line(TermsNotice.text + "\n") }
        Output.line("notice version \(TermsNotice.version), sha256 \(TermsNotice.sha256)")
        if state.termsAccepted {
            Output.line("accepted at \(state.lastAcceptance!.at.ISO8601Format())")
        } else {
            Output.line("not accepted: run `claude-max-market terms --accept` once you have read it")
        }
    }
}
