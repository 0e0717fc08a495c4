import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketServer
import Participant
import Synchronization

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Post a job to the market with its maximum price held in escrow.",
        discussion: """
            Shows the estimated price and wait from the live book first (and why no provider could \
            take it, when none could). With --wait it seals the prompt to the provider that wins, \
            streams the job's decrypted events, checks the provider's signature and the result hash, \
            prints the result and accepts it when the job succeeded (a result that does not check \
            out is disputed; a job that failed or timed out is left to `accept` or `dispute`). Exit \
            codes: 0 settled, 1 refunded, disputed, refused or left for you to decide, 2 bad input, 69 \
            market unreachable, 124 not finished within --wait-timeout (pick it up with `result \
            --task-id`).
            """
    )

    @Option(help: "The prompt text.") var prompt: String?
    @Option(
        name: .customLong("prompt-file"),
        help: ArgumentHelp("Read the prompt from FILE ('-' for stdin).", valueName: "FILE"))
    var promptFile: String?
    @Option(name: .customLong("max-price"), help: "Most you pay, whole credits (held in escrow until settled).")
    var maxPrice: String
    @Option(name: .customLong("min-reputation"), help: "Only providers with at least this reputation (0…1).")
    var minReputation: Double?
    @Option(help: "The model the job needs (a provider offering it, or any).") var model: String?
    @Option(help: "Seconds the job may run (1…86400, default 300).") var timeout: Int64?
    @Flag(help: "Follow the job until it is settled: stream, check, accept.") var wait = false
    @Option(name: .customLong("wait-timeout"), help: "With --wait: give up following after this long.")
    var waitTimeout = "30m"
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON lines.") var json = false

    func validate() throws {
        guard (prompt == nil) != (promptFile == nil) else {
            throw ValidationError("give the prompt with exactly one of --prompt TEXT or --prompt-file FILE")
        }
        if let minReputation, !(0...1).contains(minReputation) {
            throw ValidationError("--min-reputation \(minReputation) must be 0…1")
        }
        if let timeout, !(1...86_400).contains(timeout) {
            throw ValidationError("--timeout \(timeout) must be 1…86400 seconds")
        }
        if let model {
            do { try WireField.model(model) } catch { throw ValidationError(error.message) }
        }
    }

    func readPrompt() throws -> Data {
        let data = try PromptInput.read(text: prompt, file: promptFile) ?? Data()
        // Sealed, base64, in one frame: at most 900 000 bytes of base64.
        guard data.count <= 600_000 else {
            throw CLIError("the prompt is \(data.count) bytes; a market job takes at most 600000", exitCode: 2)
        }
        return data
    }

    func run() async throws {
        let micro = try PriceArgument.micro(maxPrice, option: "--max-price")
        let waitMs = try DurationArgument.milliseconds(waitTimeout, option: "--wait-timeout")
        let promptData = try readPrompt()
        let link = try MarketLink(url: url)
        let printer = RequesterPrinter(json: json)
        // Refused before anything is sent: the balance, then what the book says.
        let me = try await link.myself()
        guard me.balance >= micro else {
            throw CLIError(
                "--max-price \(Credits(micro: micro)) is more than your available balance \(Credits(micro: me.balance)): nothing was posted"
                    + (me.balance == 0
                        ? " (credits come from the market's operator: `market mint --to \(link.me)`)" : ""),
                exitCode: 1)
        }
        let estimate = BookEstimate(
            offers: try await link.offers(), me: link.me, maxPrice: micro, minReputation: minReputation ?? 0,
            model: model, myReputation: me.reputation.score)
        printer.estimate(estimate, maxPrice: micro)
        let options = SubmitOptions(
            prompt: promptData, maxPrice: micro, minReputation: minReputation, model: model, timeoutSeconds: timeout)
        let follow = wait
        let outcome: RequesterOutcome? = try await link.withSession { session in
            let requester = Requester(session: session, database: link.database)
            let ack: AckBody
            do { ack = try await requester.post(options) } catch let error as MarketClientError {
                throw CLIError("the market refused the task: \(error)")
            }
            printer.posted(ack)
            guard let taskId = ack.taskId else { return nil }
            guard follow else {
                // The prompt goes to a provider that took the task at once; one that takes it
                // later gets it from `result --task-id`, which seals it then.
                guard ack.state == "assigned" else { return nil }
                _ = try? await requester.follow(taskId, accept: false, timeout: .seconds(30), untilDelivered: true) {
                    printer.update($0)
                }
                return nil
            }
            do {
                return try await requester.follow(taskId, accept: true, timeout: .milliseconds(waitMs)) {
                    printer.update($0)
                }
            } catch let error as MarketClientError {
                throw CLIError("\(error)", exitCode: 124)
            }
        }
        guard let outcome else {
            if !json {
                Output.note(
                    "follow it with `claude-max-market result --task-id <task>` (it seals the prompt to a provider that takes it later)"
                )
            }
            return
        }
        printer.finished(outcome)
        if outcome.state != "settled" { throw ExitCode(1) }
    }
}

/// Renders a requester's progress for people (stderr notes, the output on stdout) or as JSON lines.
struct RequesterPrinter: Sendable {
    let json: Bool
    /// Whether any output was streamed: the result's output is printed only when none was.
    let streamed = OnceFlag()

    struct Line: Encodable {
        var type: String
        var taskId: String?
        var state: String?
        var provider: String?
        var price: Int64?
        var stream: String?
        var text: String?
        var note: String?
        var result: JobContent.Result?
        var estimate: BookEstimate?
    }

    func emit(_ line: Line) { Output.jsonLine(line) }

    func estimate(_ estimate: BookEstimate, maxPrice: Int64) {
        if json { return emit(Line(type: "estimate", estimate: estimate)) }
        if let price = estimate.price {
            Output.note(
                "estimate: \(Credits(micro: price)) (of at most \(Credits(micro: maxPrice))), \(estimate.freeSlots) free slot(s): it should start at once"
            )
        } else {
            Output.note("no provider can take it now: \(estimate.why ?? "?"); it waits in the book")
        }
    }

    func posted(_ ack: AckBody) {
        if json { return emit(Line(type: "posted", taskId: ack.taskId, state: ack.state, note: ack.note)) }
        Output.note("task \(ack.taskId ?? "?") posted: \(ack.state ?? "?")" + (ack.note.map { " (\($0))" } ?? ""))
    }

    func update(_ update: RequesterUpdate) {
        switch update {
        case .assigned(let provider, let price):
            if json { return emit(Line(type: "assigned", provider: provider, price: price)) }
            Output.note("assigned to \(provider) at \(Credits(micro: price)); payload sealed to its key")
        case .approved(let provider):
            if json { return emit(Line(type: "approved", provider: provider)) }
            Output.note("approved by the provider; running")
        case .items(let items):
            if items.contains(where: { $0.kind != "started" }) { streamed.set() }
            for item in items {
                if json {
                    emit(Line(type: "event", stream: item.stream, text: item.text, note: item.kind))
                } else if item.kind == "line" && item.stream == "stderr" {
                    Output.note(item.text ?? "")
                } else if item.kind == "line" || item.kind == "text" {
                    Output.line(item.text ?? "")
                } else if item.kind == "tool" {
                    Output.line("[tool: \(item.text ?? "")]")
                }
            }
        case .rejected(let provider, let reason), .failed(let provider, let reason):
            if json { return emit(Line(type: "provider-fault", provider: provider, note: reason)) }
            Output.note("the provider \(provider) gave the job back: \(reason)")
        case .result(let result, let provider):
            if json { return emit(Line(type: "result", provider: provider, result: result)) }
            if !streamed.isSet && !result.output.isEmpty { Output.stdout(Data(result.output.utf8)) }
            Output.note(
                "result from \(provider): \(result.state), signature and hash verified"
                    + (result.metered
                        ? ", \(result.usage.inputTokens) in / \(result.usage.outputTokens) out tokens (metered)" : ""))
        case .badResult(let provider, let problem):
            if json { return emit(Line(type: "bad-result", provider: provider, note: problem)) }
            Output.note("REFUSED the result from \(provider): \(problem); disputing")
        case .settlement(let settlement):
            if json {
                return emit(
                    Line(
                        type: "settlement", taskId: settlement.taskId, state: settlement.state, note: settlement.reason)
                )
            }
            Output.note("task \(settlement.taskId) \(settlement.state)" + (settlement.reason.map { ": \($0)" } ?? ""))
        }
    }

    func finished(_ outcome: RequesterOutcome) {
        if json { return emit(Line(type: "finished", taskId: outcome.taskId, state: outcome.state)) }
        if outcome.state == "delivered", let result = outcome.result {
            Output.note(
                "the job ended \(result.state), so it was not accepted: `claude-max-market accept --task-id \(outcome.taskId)` "
                    + "or `dispute --task-id \(outcome.taskId) --reason …` (the acceptance window accepts it otherwise)"
            )
        }
    }
}

struct TasksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tasks", abstract: "List the market's tasks, or (--mine) the ones you posted or ran.")

    @Flag(help: "Only tasks this home posted or ran (kept locally).") var mine = false
    @Option(help: "Only tasks in this state (open, assigned, running, delivered, settled, refunded, …).") var state:
        String?
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        if let state, !TaskState.allCases.map(\.rawValue).contains(state) && !mine {
            throw CLIError(
                "--state '\(state)' is not one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))",
                exitCode: 2)
        }
        if mine {
            let context = CommandContext()
            let tasks = try MarketTaskStore(database: try context.database()).tasks(state: state)
            if json { return try Output.json(tasks) }
            Output.line(
                Output.table(
                    ["TASK", "ROLE", "STATE", "WITH", "PRICE", "UPDATED"],
                    tasks.map {
                        [
                            $0.taskId, $0.role, $0.state, String(($0.counterparty ?? "-").prefix(12)),
                            $0.price.map { Credits(micro: $0).description } ?? "≤ \(Credits(micro: $0.maxPrice))",
                            Date(unixMilliseconds: $0.updatedMs).ISO8601Format(),
                        ]
                    }))
            return
        }
        let link = try MarketLink(url: url)
        let query = "/v1/tasks?limit=200" + (state.map { "&state=\($0)" } ?? "")
        let tasks = try await link.get([MarketViews.TaskView].self, query) ?? []
        if json { return try Output.json(tasks) }
        Output.line(
            Output.table(
                ["TASK", "STATE", "REQUESTER", "PROVIDER", "PRICE"],
                tasks.map {
                    [
                        $0.taskId, $0.state, String($0.requester.prefix(12)), String(($0.provider ?? "-").prefix(12)),
                        $0.price.map { Credits(micro: $0).description } ?? "≤ \(Credits(micro: $0.maxPrice))",
                    ]
                }))
    }
}

struct ResultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result",
        abstract: "Show a task's result (decrypted here and checked), or follow the task until there is one.",
        discussion: """
            A result already received is opened from this home. Otherwise this connects, takes what \
            the market kept for you (the assignment, the result), seals the prompt again for a new \
            provider if the task moved, and accepts a result that checks out (--no-accept leaves \
            the decision to `accept` or `dispute`).
            """
    )

    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Flag(name: .customLong("no-accept"), help: "Do not accept the result.") var noAccept = false
    @Option(name: .customLong("wait-timeout"), help: "Give up following after this long.") var waitTimeout = "10m"
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        do { try WireField.taskID(taskId) } catch { throw CLIError(error.message, exitCode: 2) }
        let link = try MarketLink(url: url)
        let store = MarketTaskStore(database: link.database)
        guard let local = try store.task(taskId) else {
            throw CLIError("task \(taskId) was not posted or run from this home", exitCode: 2)
        }
        if let frame = try store.resultFrame(taskId), local.resultVerified == true {
            let result = try Requester.openStored(frame, keys: link.ring)
            return try show(result, state: local.state)
        }
        let waitMs = try DurationArgument.milliseconds(waitTimeout, option: "--wait-timeout")
        let printer = RequesterPrinter(json: json)
        let accept = !noAccept
        let outcome = try await link.withSession { session in
            let requester = Requester(session: session, database: link.database)
            do {
                return try await requester.follow(taskId, accept: accept, timeout: .milliseconds(waitMs)) {
                    // With --json, stdout holds the one result object; progress is for people.
                    if case .result = $0 { return }
                    if !printer.json { printer.update($0) }
                }
            } catch let error as MarketClientError {
                throw CLIError("\(error)", exitCode: 124)
            }
        }
        if let result = outcome.result {
            try show(result, state: outcome.state)
        } else {
            throw CLIError("task \(taskId) ended \(outcome.state) without a result")
        }
    }

    func show(_ result: JobContent.Result, state: String) throws {
        if json {
            struct Shown: Encodable {
                var taskId: String
                var taskState: String
                var result: JobContent.Result
            }
            return try Output.json(Shown(taskId: taskId, taskState: state, result: result))
        }
        Output.stdout(Data(result.output.utf8))
        Output.note(
            "task \(taskId) \(state); job \(result.state)\(result.exitCode.map { " (exit \($0))" } ?? "")"
                + (result.truncated ? "; output truncated" : "") + (result.error.map { " — \($0)" } ?? ""))
    }
}

/// `cancel`, `accept`, `dispute`: one message about one task.
struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel an open task you posted; its escrow comes back.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await TaskMessage.send(.taskCancel, TaskRefBody(taskId: taskId), taskId: taskId, url: url, json: json)
    }
}

struct AcceptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accept", abstract: "Accept a delivered result: the provider is paid from escrow.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await TaskMessage.send(.jobAccept, TaskRefBody(taskId: taskId), taskId: taskId, url: url, json: json)
    }
}

struct DisputeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispute",
        abstract: "Dispute a delivered result: the escrow is held until the market's operator decides.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Option(help: "Why (1…1000 characters; the provider sees it).") var reason: String
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await TaskMessage.send(
            .jobDispute, ReasonBody(taskId: taskId, reason: reason), taskId: taskId, url: url, json: json)
    }
}

enum TaskMessage {
    static func send(_ type: MessageType, _ body: some WireBody, taskId: String, url: String?, json: Bool)
        async throws
    {
        do { try body.validate(limits: WireLimits()) } catch { throw CLIError(error.message, exitCode: 2) }
        let link = try MarketLink(url: url)
        let ack = try await link.sendOrQueue(type, body, what: "\(type.rawValue) for task \(taskId)")
        if let state = ack.state {
            try? MarketTaskStore(database: link.database).update(taskId, state: state, at: Date().unixMilliseconds)
        }
        if json { return try Output.json(ack) }
        Output.line("task \(taskId): \(ack.state ?? "done")")
    }
}

struct BalanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balance", abstract: "Your credits on the market: available, in escrow, held back.")
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    struct Report: Codable {
        var peerId: String
        var available: Int64
        var inEscrow: Int64
        var heldBack: Int64
        var unit = Credits.unit
    }

    func run() async throws {
        let link = try MarketLink(url: url)
        let view: MarketViews.PeerView? = try await link.myself()
        let report = Report(
            peerId: link.me, available: view?.balance ?? 0, inEscrow: view?.inEscrow ?? 0,
            heldBack: view?.heldBack ?? 0)
        if json { return try Output.json(report) }
        Output.line("peer        \(link.me)")
        Output.line("available   \(Credits(micro: report.available))")
        Output.line("in escrow   \(Credits(micro: report.inEscrow))")
        Output.line("held back   \(Credits(micro: report.heldBack))")
    }
}

struct ReputationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reputation",
        abstract: "A peer's reputation (yours by default): score, outcomes counted, tier, and the outcomes.")
    @Argument(help: "The peer id (default: yours).") var peer: String?
    @Option(help: "The market's WebSocket URL (default: market.url).") var url: String?
    @Flag(help: "Print JSON.") var json = false

    struct Report: Codable {
        var peerId: String
        var score: Double
        var samples: Int
        var tier: String
        var settledJobs: Int
        var outcomes: [MarketViews.OutcomeView]
    }

    func run() async throws {
        if let peer {
            do { _ = try PeerID(validating: peer) } catch { throw CLIError("'\(peer)': \(error)", exitCode: 2) }
        }
        let link = try MarketLink(url: url)
        let id = peer ?? link.me
        guard let view = try await link.peer(id) else {
            throw CLIError("the market at \(link.url) does not know peer \(id)", exitCode: 1)
        }
        let report = Report(
            peerId: id, score: view.reputation.score, samples: view.reputation.samples, tier: view.reputation.tier,
            settledJobs: view.settledJobs, outcomes: view.recentOutcomes)
        if json { return try Output.json(report) }
        Output.line("peer        \(id)")
        Output.line(
            "reputation  \(String(format: "%.3f", report.score)) (\(report.tier), \(report.samples) outcomes, \(report.settledJobs) settled jobs)"
        )
        for outcome in report.outcomes {
            Output.line(
                "  \(Date(unixMilliseconds: outcome.atMs).ISO8601Format())  \(outcome.role)  \(outcome.success ? "success" : "failure")  \(outcome.taskId)"
            )
        }
    }
}

final class OnceFlag: Sendable {
    private let value = Atomic(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}
