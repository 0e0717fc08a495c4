import ArgumentParser
import Foundation
import Logging
import MarketCore
import MarketServer
import MarketStore
import Participant
import ParticipantCLI
import ServiceLifecycle

/// `market …`: run a market server and look after its books.
struct MarketCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "market",
        abstract: "Run a market server, check its ledger, credit accounts, and ask a market how it is.",
        subcommands: [
            MarketServeCommand.self, MarketVerifyCommand.self, MarketMintCommand.self, MarketResolveCommand.self,
        ] + ParticipantCommands.market
    )
}

/// `--db`, shared by the commands that open the books directly.
struct MarketDatabaseOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where the books are: sqlite:PATH or postgres://USER@HOST:PORT/DATABASE.",
            discussion: "Default: sqlite:<data directory>/market.sqlite.", valueName: "db"))
    var db: String?

    func location() throws -> MarketDatabaseLocation {
        if let db {
            do { return try MarketDatabaseLocation(parsing: db) } catch { throw CLIError(error.message, exitCode: 2) }
        }
        let paths = ParticipantPaths(environment: ProcessInfo.processInfo.environment)
        return .sqlite(path: paths.dataDirectory.appending(path: "market.sqlite").path)
    }

    /// The books, open for `body` and closed after it; a refusal of the rules becomes a CLI error.
    func withStore<T>(_ body: (any MarketStore) async throws -> T) async throws -> T {
        do {
            return try await location().withStore(logger: Logger(label: "cmm.market.store"), body)
        } catch let error as MarketError {
            throw CLIError(error.message)
        }
    }
}

struct MarketVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the books: the ledger balances, every row is sound, each task's escrow holds what it should.",
        discussion: """
            A task in a final state holds nothing; any other holds exactly what its books say (the requester's \
            maximum, or the price of a task assigned before the escrow stayed whole). Exits 1 naming each \
            discrepancy. Safe to run beside a running market (SQLite: WAL snapshot).
            """
    )

    @OptionGroup var database: MarketDatabaseOptions
    @OptionGroup var output: JSONOutput

    func run() async throws {
        let book = MarketBook(rules: MarketRules())
        let audit = try await database.withStore { try await book.audit(on: $0) }
        if output.json {
            try Output.json(audit)
        } else {
            Output.line("minted        \(audit.minted)")
            Output.line("in accounts   \(audit.accountsTotal)")
            Output.line("in escrow     \(audit.inEscrow)")
            Output.line("held back     \(audit.heldBack)")
            Output.line("fees          \(audit.fees)")
            Output.line("ledger rows   \(audit.movements)")
            for problem in audit.discrepancies {
                Output.line("DISCREPANCY   \(problem.kind) \(problem.subject): \(problem.detail)")
            }
            Output.line(
                audit.balanced
                    ? "the books balance" : "the books do NOT balance: \(audit.discrepancies.count) discrepancies")
        }
        if !audit.balanced { throw ExitCode(1) }
    }
}

struct MarketMintCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mint",
        abstract: "Credit a peer's account from the mint (an operator action, one ledger row with a memo)."
    )

    @Option(help: "The peer id to credit (32 characters of base32).", transform: PeerID.argument) var to: PeerID
    @Option(help: "Whole credits, up to six decimals (e.g. 100 or 2.5).", transform: CreditsArgument.argument)
    var amount: CreditsArgument
    @Option(help: "Why, kept on the ledger row.") var memo = "operator mint"
    @OptionGroup var database: MarketDatabaseOptions
    @OptionGroup var output: JSONOutput

    func validate() throws {
        guard memo.count <= 200 else { throw ValidationError("--memo is longer than 200 characters") }
    }

    struct Report: Codable {
        var peer: String
        var amount: String
        var balance: String
        var balanceMicro: Int64
    }

    func run() async throws {
        let (peer, credits) = (to, amount.credits)
        let book = MarketBook(rules: MarketRules())
        let memo = self.memo
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let balance = try await database.withStore {
            try await book.mint(to: peer, amount: credits, memo: memo, nowMs: nowMs, on: $0)
        }
        let report = Report(
            peer: peer.rawValue, amount: credits.description, balance: balance.description, balanceMicro: balance.micro)
        if output.json {
            try Output.json(report)
        } else {
            Output.line("minted \(credits) to \(peer); balance \(balance)")
        }
    }
}

struct MarketResolveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract:
            "Decide a disputed task: pay the provider, or refund the requester (the provider's reputation records a failure)."
    )

    @Option(name: .customLong("task-id"), help: "The disputed task.") var taskID: String
    @Option(name: .customLong("for"), help: "provider or requester.") var side: String
    @Option(help: "Why, kept with the task.") var memo: String
    @OptionGroup var database: MarketDatabaseOptions

    func validate() throws {
        guard side == "provider" || side == "requester" else {
            throw ValidationError("--for '\(side)' must be provider or requester")
        }
        do { try WireField.taskID(taskID) } catch { throw ValidationError(error.message) }
        guard !memo.isEmpty, memo.count <= 500 else { throw ValidationError("--memo must be 1–500 characters") }
    }

    func run() async throws {
        let book = MarketBook(rules: MarketRules())
        let (taskID, forProvider, memo) = (self.taskID, side == "provider", self.memo)
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        let transitions = try await database.withStore {
            try await book.apply(.resolve(forProvider: forProvider, memo: memo), toTask: taskID, nowMs: nowMs, on: $0)
        }
        Output.line("task \(taskID) is \(transitions.last?.task.state.rawValue ?? "unchanged")")
    }
}
