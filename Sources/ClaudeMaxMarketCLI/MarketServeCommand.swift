import ArgumentParser
import Logging
import MarketCore
import MarketServer
import ParticipantCLI
import ServiceLifecycle

/// `market serve`: the market server, until SIGTERM or Ctrl-C.
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
        help: ArgumentHelp(
            "Most bytes of blob pieces (sealed workspaces, patches, transcripts) kept for all tasks together.",
            discussion: "1048576…1125899906842624; default 4294967296 (4 GiB).", valueName: "bytes"))
    var maxStoredPieceBytes = StoredPieceLimits().maxTotalBytes
    @Option(
        help: ArgumentHelp(
            "Bytes of pieces one party of a task may keep per RUV of the task's price.",
            discussion: "0…1099511627776; default 268435456 (256 MiB).", valueName: "bytes"))
    var pieceBytesPerCredit = StoredPieceLimits().bytesPerCredit
    @Option(
        help: ArgumentHelp(
            "Bytes of pieces one party of any task may keep, whatever its price.",
            discussion: "0…1099511627776, at most --max-stored-piece-bytes; default 4194304 (4 MiB).",
            valueName: "bytes"))
    var minPieceBytesPerTask = StoredPieceLimits().minBytesPerTask
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
        for (name, value, range) in [
            ("--max-stored-piece-bytes", maxStoredPieceBytes, StoredPieceLimits.totalRange),
            ("--piece-bytes-per-credit", pieceBytesPerCredit, StoredPieceLimits.perCreditRange),
            ("--min-piece-bytes-per-task", minPieceBytesPerTask, StoredPieceLimits.minimumRange),
        ] where !range.contains(value) {
            throw ValidationError("\(name) \(value) must be \(range.lowerBound)…\(range.upperBound)")
        }
        guard minPieceBytesPerTask <= maxStoredPieceBytes else {
            throw ValidationError(
                "--min-piece-bytes-per-task \(minPieceBytesPerTask) must be at most --max-stored-piece-bytes \(maxStoredPieceBytes)"
            )
        }
    }

    var storedPieces: StoredPieceLimits {
        StoredPieceLimits(
            maxTotalBytes: maxStoredPieceBytes, bytesPerCredit: pieceBytesPerCredit,
            minBytesPerTask: minPieceBytesPerTask)
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
        configuration.storedPieces = storedPieces
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
