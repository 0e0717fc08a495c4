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

struct MarketServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the market server until SIGTERM or Ctrl-C.",
        discussion: """
            Serves the signed WebSocket protocol at /market (docs/PROTOCOL.md), the read views \
            /v1/stats, /v1/offers, /v1/tasks and /v1/peers/ID (docs/openapi.yaml), /health and /metrics. \
            On SIGTERM it stops accepting, tells connected peers why, and finishes writes in flight.
            """
    )

    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0 picks a free one and prints it).") var port = 8080
    @OptionGroup var database: MarketDatabaseOptions
    @Option(name: .customLong("tls-cert"), help: "PEM certificate chain: serve wss:// and https://.") var tlsCert:
        String?
    @Option(name: .customLong("tls-key"), help: "PEM private key for --tls-cert.") var tlsKey: String?
    @Flag(name: .customLong("no-dashboard"), help: "Do not serve the dashboard page at /.") var noDashboard = false
    @Option(name: .customLong("fee-bp"), help: "Market fee in basis points of the price (0…10000).") var feeBasisPoints:
        Int64 = 0
    @Option(
        help: "How long a requester has to accept a result before it is accepted.", transform: DurationArgument.argument
    )
    var acceptanceWindow = DurationArgument(24, .h)
    @Option(help: "How long an assigned provider has to approve (default: 10m).", transform: DurationArgument.argument)
    var approvalTimeout = DurationArgument(10, .m)
    @Option(
        help: "How long an open task waits for a provider, unless it says otherwise (default: 1h).",
        transform: DurationArgument.argument)
    var openTimeout = DurationArgument(1, .h)
    @Option(
        help: "A provider silent this long loses its offers and its running tasks (default: 90s).",
        transform: DurationArgument.argument)
    var heartbeatTimeout = DurationArgument(90, .s)
    @Option(
        help: "How long a disputed task waits for `market resolve` (default: 7d).", transform: DurationArgument.argument
    )
    var disputeWindow = DurationArgument(7, .d)
    @Option(
        help: "Added to a task's own timeout before a running task counts as failed (default: 60s).",
        transform: DurationArgument.argument)
    var runGrace = DurationArgument(60, .s)
    @Option(help: "How often timeouts are applied (default: 1s).", transform: DurationArgument.argument)
    var sweepInterval = DurationArgument(1, .s)
    @Option(help: "Settled jobs before a provider leaves the new tier.") var holdbackJobs = 3
    @Option(name: .customLong("holdback-bp"), help: "Share of a new provider's earnings held back, basis points.")
    var holdbackBasisPoints: Int64 = 2000
    @Option(help: "Reputation half-life (default: 30d).", transform: DurationArgument.argument)
    var reputationHalfLife = DurationArgument(30, .d)
    @Option(help: "Frames a second per connection before rate_limited.") var frameRate: Double = 200
    @Option(help: "Most frames one durable transaction carries (1…10000; default: 64 on SQLite, 1 on PostgreSQL).")
    var commitBatch: Int?
    @Option(help: "How long a transaction waits for more frames (0ms…100ms).", transform: DurationArgument.argument)
    var commitWait = DurationArgument(0, .ms)
    @Option(
        name: .customLong("frame-log"),
        help: ArgumentHelp(
            "Append every frame in and out to FILE (debugging; frames carry only ciphertext).", valueName: "FILE"))
    var frameLog: String?
    @Flag(
        help: ArgumentHelp(
            "Once listening, print one JSON line on stdout: {\"url\", \"port\", \"http\"}.",
            discussion: "For scripts and supervisors: with --port 0, the port the system picked."))
    var json = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port \(port) must be 0…65535") }
        guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
        guard (0...10_000).contains(feeBasisPoints) else {
            throw ValidationError("--fee-bp \(feeBasisPoints) must be 0…10000")
        }
        guard (0...10_000).contains(holdbackBasisPoints) else {
            throw ValidationError("--holdback-bp \(holdbackBasisPoints) must be 0…10000")
        }
        guard (0...1000).contains(holdbackJobs) else {
            throw ValidationError("--holdback-jobs \(holdbackJobs) must be 0…1000")
        }
        guard frameRate > 0, frameRate <= 100_000 else {
            throw ValidationError("--frame-rate \(frameRate) must be 1…100000")
        }
        if let commitBatch, !(1...10_000).contains(commitBatch) {
            throw ValidationError("--commit-batch \(commitBatch) must be 1…10000")
        }
        guard commitWait.milliseconds <= 100 else {
            throw ValidationError("--commit-wait \(commitWait.milliseconds)ms must be 0ms…100ms")
        }
    }

    func run() async throws {
        let rules = MarketRules(
            feeBasisPoints: feeBasisPoints,
            acceptanceWindowMs: acceptanceWindow.milliseconds,
            approvalTimeoutMs: approvalTimeout.milliseconds,
            runGraceMs: runGrace.milliseconds,
            openTimeoutMs: openTimeout.milliseconds,
            heartbeatTimeoutMs: heartbeatTimeout.milliseconds,
            disputeWindowMs: disputeWindow.milliseconds,
            holdbackJobs: holdbackJobs, holdbackBasisPoints: holdbackBasisPoints,
            reputationHalfLifeMs: reputationHalfLife.milliseconds)
        var configuration = MarketServerConfiguration(host: host, port: port, rules: rules)
        configuration.sweepIntervalMs = sweepInterval.milliseconds
        configuration.frameRate = frameRate
        configuration.frameBurst = frameRate * 2
        configuration.commitBatch = commitBatch
        configuration.commitWait = .milliseconds(commitWait.milliseconds)
        configuration.dashboard = !noDashboard
        configuration.tlsCertificatePath = tlsCert
        configuration.tlsKeyPath = tlsKey
        configuration.frameLogPath = frameLog
        var logger = Logger(label: "cmm.market")
        logger.logLevel = .notice
        let location = try database.location()
        let scheme = tlsCert == nil ? "ws" : "wss"
        let host = self.host
        let json = self.json
        try await database.withStore { store in
            let server = try MarketServer(
                configuration: configuration, store: store, logger: logger,
                onRunning: { port in
                    Output.note("market listening on \(scheme)://\(host):\(port)/market (books: \(location))")
                    if json { Output.jsonLine(Listening(host: host, port: port, tls: scheme == "wss")) }
                })
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            do { try await group.run() } catch { throw CLIError("the market stopped: \(error)") }
        }
        Output.note("market stopped")
    }
}

/// `market serve --json`: where the market listens, once it does.
struct Listening: Codable {
    var url: String
    var port: Int
    /// The base of the read views and the dashboard.
    var http: String

    init(host: String, port: Int, tls: Bool) {
        url = "\(tls ? "wss" : "ws")://\(host):\(port)/market"
        self.port = port
        http = "\(tls ? "https" : "http")://\(host):\(port)"
    }
}

struct MarketVerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the books: the ledger balances, every row is sound, final tasks hold no escrow.",
        discussion: "Exits 1 naming each discrepancy. Safe to run beside a running market (SQLite: WAL snapshot)."
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
