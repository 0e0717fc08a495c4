import ArgumentParser
import Foundation
import JobRunner
import MarketCore
import MarketFlows
import MarketProtocol
import Participant
import UnixSignals

/// `--slots`, `--price`, `--models`, `--min-requester-reputation`: the standing offer.
struct OfferOptions: ParsableArguments {
    @Option(help: "Jobs this provider runs at once for the market (1…64).") var slots: Int?
    @Option(
        help: "Price asked per job, whole credits (default: market.defaultPrice).", transform: CreditsArgument.argument)
    var price: CreditsArgument?
    @Option(help: ArgumentHelp("Models offered, comma-separated (default: any).", valueName: "M,…")) var models: String?
    @Option(
        name: .customLong("min-requester-reputation"),
        help: "Only take jobs from requesters with at least this reputation (0…1).")
    var minRequesterReputation: Double?

    var given: Bool { slots != nil || price != nil || models != nil || minRequesterReputation != nil }

    /// The offer: these options over the stored one, over the config's defaults.
    func offer(config: ResolvedConfig, stored: AdvertiseBody?) throws -> AdvertiseBody {
        var offer =
            stored
            ?? AdvertiseBody(
                price: config.credits(.marketDefaultPrice).micro, slots: Int(config.integer(.concurrentJobs)))
        if let slots { offer.slots = slots }
        if let price { offer.price = price.micro }
        if let models {
            let list = models.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter {
                !$0.isEmpty
            }
            offer.models = list.isEmpty ? nil : list
        }
        if let minRequesterReputation { offer.minRequesterReputation = minRequesterReputation }
        // The workspaces this provider takes, from its config (`provide` sends them again as
        // the config is on every connection).
        offer.maxWorkspaceBytes = config.bytes(.maxWorkspaceBytes)
        offer.maxWorkspaceFiles = config.integer(.maxWorkspaceFiles)
        do { try offer.validate(limits: WireLimits()) } catch { throw CLIError(error.message, exitCode: 2) }
        return offer
    }
}

/// Market jobs need accepted terms and an opt-in, like `execute`.
func requireOptIn(_ database: StateDatabase) throws {
    let consent = try ConsentStore(database: database).current()
    guard consent.termsAccepted, consent.optIn != nil else {
        throw CLIError(
            consent.termsAccepted
                ? "not opted in: run `claude-max-market opt-in --claude-jobs` first"
                : "the terms are not accepted: read `claude-max-market terms`, then `terms --accept` and `opt-in --claude-jobs`",
            exitCode: 3)
    }
}

struct AdvertiseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "advertise",
        abstract: "Put up (or change) this provider's standing offer on the market.",
        discussion: """
            The offer is kept in this home: `provide` advertises it again on every connection and keeps \
            it live with heartbeats. A market that is unreachable gets it on the next connection (exit 75).
            """
    )

    @OptionGroup var offer: OfferOptions
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        let link = try MarketLink(url: market.url)
        try requireOptIn(link.database)
        let store = OfferStore(database: link.database)
        let body = try offer.offer(config: link.config, stored: try store.load())
        let concurrent = link.config.integer(.concurrentJobs)
        if Int64(body.slots) > concurrent {
            Output.note(
                "note: \(body.slots) slots but limits.concurrentJobs is \(concurrent): a job beyond \(concurrent) at once is refused (and the requester refunded)"
            )
        }
        try store.save(body)
        try link.database.audit(
            actor: "user", kind: "market.advertise",
            details: ["price": String(body.price), "slots": String(body.slots)], at: Date())
        let ack = try await link.sendOrQueue(.offerAdvertise, body, what: "the offer")
        if output.json {
            try Output.json(ack)
        } else {
            Output.line(
                "offer live on \(link.url): \(body.slots) slot(s) at \(Credits(micro: body.price))"
                    + (ack.note.map { " (\($0))" } ?? ""))
            Output.line("run `claude-max-market provide` to take the jobs it wins")
        }
    }
}

struct WithdrawCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "withdraw", abstract: "Take this provider's offer off the market (running jobs continue).")

    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        let link = try MarketLink(url: market.url)
        try OfferStore(database: link.database).clear()
        try link.database.audit(actor: "user", kind: "market.withdraw", details: [:], at: Date())
        let ack = try await link.sendOrQueue(.offerWithdraw, EmptyBody(), what: "the withdrawal")
        if output.json { try Output.json(ack) } else { Output.line("offer \(ack.state?.rawValue ?? "withdrawn")") }
    }
}

struct BidCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bid",
        abstract: "Bid on an open task by hand (needs a standing offer; the first valid bid wins).")

    @Option(name: .customLong("task-id"), help: "The open task.") var taskId: String
    @Option(help: "Your price, whole credits, at most the task's maximum.", transform: CreditsArgument.argument)
    var price: CreditsArgument
    @Option(
        help: "A queued bid older than this is never sent, e.g. 60s (default: 5m).",
        transform: DurationArgument.argument)
    var expires = DurationArgument(5, .m)
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        do { try WireField.taskID(taskId) } catch { throw CLIError(error.message, exitCode: 2) }
        let micro = price.micro
        let expiresMs = Date().unixMilliseconds + expires.milliseconds
        let link = try MarketLink(url: market.url)
        try requireOptIn(link.database)
        let ack = try await link.sendOrQueue(
            .bidPlace, BidBody(taskId: taskId, price: micro), expiresMs: expiresMs, what: "the bid")
        if output.json {
            try Output.json(ack)
        } else {
            Output.line(
                "task \(taskId) \(ack.state?.rawValue ?? "bid sent"): `provide` runs it when the payload arrives")
        }
    }
}

struct ProvideCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "provide",
        abstract: "The provider daemon: stay on the market, take jobs, run them in hardened containers.",
        discussion: """
            Keeps the standing offer live (see `advertise`), bids on open tasks that fit it, takes \
            sealed payloads, asks for approval on this terminal (or applies approval.mode=policy), \
            reserves limits, runs each job exactly as `execute` does (on the warm pool when \
            docker.warmPool > 0), streams sealed events to the requester, and sends the signed result \
            with the usage the gateway metered. `opt-out` (from any terminal) withdraws the offer and \
            refuses new jobs at once. SIGTERM or Ctrl-C: the offer is withdrawn, running jobs get \
            --drain to finish, and the rest are handed back to the market.
            """
    )

    @Option(help: "claude (Claude Code, headless) or command (any image + command).") var backend: BackendChoice =
        .claude
    @Option(help: ArgumentHelp("Image (default: docker.image).", valueName: "IMAGE")) var image: String?
    @OptionGroup var offer: OfferOptions
    @OptionGroup var market: MarketURLOption
    @Option(
        help: "On stop: how long running jobs may finish before they are handed back (default: 30s).",
        transform: DurationArgument.argument)
    var drain = DurationArgument(30, .s)
    @Flag(name: .customLong("no-bid"), help: "Do not bid on open tasks (only standing-offer matches).") var noBid =
        false
    @Flag(help: "Print one JSON line per event.") var json = false
    @Argument(parsing: .postTerminator, help: "With --backend command: the command to run, after --.")
    var command: [String] = []

    func validate() throws {
        try backend.check(command: command)
    }

    func run() async throws {
        var flags: [String: String] = [:]
        if let image { flags[ConfigKey.dockerImage.name] = image }
        let context = CommandContext(flags: flags)
        let link = try MarketLink(url: market.url, context: context)
        try requireOptIn(link.database)
        let offerStore = OfferStore(database: link.database)
        let stored = try offerStore.load()
        let standing = try (offer.given || stored == nil) ? offer.offer(config: link.config, stored: stored) : stored!
        try offerStore.save(standing)
        var service = ProviderService(
            database: link.database, config: link.config, paths: context.paths,
            backend: try backend.jobBackend(command: command, config: link.config, environment: context.environment),
            offer: standing)
        service.settings.autoBid = !noBid
        service.settings.drainTimeout = .milliseconds(drain.milliseconds)
        service.knownSecrets = link.knownSecrets
        service.reloadConfig = { try? context.config() }
        let desk = ApprovalDesk()
        service.ask = { question in
            guard Output.stdinIsTerminal else {
                throw JobRefusal(.approval, "approval needs a terminal (or approval.mode=policy)")
            }
            return try await desk.ask(question.text)
        }
        service.report = Self.printer(json: json)
        if link.config.text(.approvalMode) == "manual" && !Output.stdinIsTerminal {
            Output.note(
                "warning: approval.mode=manual without a terminal: every job will be refused (set approval.mode=policy)"
            )
        }
        do {
            try await context.withDocker { docker in
                try await service.run(
                    docker: docker, makeSession: { link.makeSession(onConnect: $0, onDisconnect: $1) },
                    signals: [.sigterm, .sigint])
            }
        } catch let error as ProviderServiceError {
            if case .alreadyRunning = error { throw CLIError(error.description, exitCode: 3) }
            throw CLIError(error.description)
        }
    }

    /// One line per event: a timestamp and the message, or a JSON object with `--json`.
    static func printer(json: Bool) -> @Sendable (ProviderEvent) -> Void {
        { event in
            if json {
                struct Line: Encodable {
                    var at: String
                    var task: String?
                    var message: String
                }
                Output.jsonLine(Line(at: Date().ISO8601Format(), task: event.taskId, message: event.message))
            } else {
                Output.line("[\(Date().ISO8601Format())] \(event.message)")
            }
        }
    }
}

/// One approval question on the terminal at a time, in the order the jobs arrived.
actor ApprovalDesk {
    private var last: Task<Bool, any Error>?

    func ask(_ text: String) async throws -> Bool {
        let previous = last
        let next = Task {
            _ = try? await previous?.value
            return try await Output.onOwnThread { try Output.confirm(text, assumeYes: false) }
        }
        last = next
        return try await next.value
    }
}
