import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant
import Synchronization

struct TasksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tasks", abstract: "List the market's tasks, or (--mine) the ones you posted or ran.")

    @Flag(help: "Only tasks this home posted or ran (kept locally).") var mine = false
    @Option(help: "Only tasks in this state (open, assigned, running, delivered, settled, refunded, …).") var state:
        String?
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        if let state, !TaskState.allCases.map(\.rawValue).contains(state) && !mine {
            throw CLIError(
                "--state '\(state)' is not one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))",
                exitCode: 2)
        }
        if mine {
            let context = CommandContext()
            let tasks = try MarketTaskStore(database: try context.database()).tasks(
                state: state.map(LocalTaskState.init(rawValue:)))
            // A follow-up names the task whose conversation it continues.
            let conversations = ConversationFiles(directory: context.paths.conversationsDirectory)
            let continues = tasks.map { (try? conversations.chain($0.taskId))?.dropLast().last }
            if output.json {
                struct Mine: Encodable {
                    var task: LocalMarketTask
                    var continues: String?
                    func encode(to encoder: any Encoder) throws {
                        try task.encode(to: encoder)
                        var container = encoder.container(keyedBy: Key.self)
                        try container.encodeIfPresent(continues, forKey: .continues)
                    }
                    enum Key: String, CodingKey { case continues }
                }
                return try Output.json(zip(tasks, continues).map { Mine(task: $0, continues: $1) })
            }
            Output.line(
                Output.table(
                    ["TASK", "ROLE", "STATE", "WITH", "PRICE", "CONTINUES", "UPDATED"],
                    zip(tasks, continues).map { task, parent in
                        [
                            task.taskId, task.role, task.state.rawValue, String((task.counterparty ?? "-").prefix(12)),
                            task.price.map { Credits(micro: $0).description } ?? "≤ \(Credits(micro: task.maxPrice))",
                            parent.map { String($0.prefix(12)) } ?? "-",
                            Date(unixMilliseconds: task.updatedMs).ISO8601Format(),
                        ]
                    }))
            return
        }
        let link = try MarketLink(url: market.url)
        let query = "/v1/tasks?limit=200" + (state.map { "&state=\($0)" } ?? "")
        let tasks = try await link.get([MarketViews.TaskView].self, query) ?? []
        if output.json { return try Output.json(tasks) }
        Output.line(
            Output.table(
                ["TASK", "STATE", "REQUESTER", "PROVIDER", "PRICE"],
                tasks.map {
                    [
                        $0.taskId, $0.state.rawValue, String($0.requester.prefix(12)),
                        String(($0.provider ?? "-").prefix(12)),
                        $0.price.map { Credits(micro: $0).description } ?? "≤ \(Credits(micro: $0.maxPrice))",
                    ]
                }))
    }
}

/// `cancel`, `accept`, `dispute`: one message about one task.
struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel", abstract: "Cancel an open task you posted; its escrow comes back.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        try await TaskMessage.send(
            .taskCancel, TaskRefBody(taskId: taskId), taskId: taskId, url: market.url, json: output.json)
    }
}

struct AcceptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accept", abstract: "Accept a delivered result: the provider is paid from escrow.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        try await TaskMessage.send(
            .jobAccept, TaskRefBody(taskId: taskId), taskId: taskId, url: market.url, json: output.json)
    }
}

struct DisputeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispute",
        abstract: "Dispute a delivered result: the escrow is held until the market's operator decides.")
    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Option(help: "Why (1…1000 characters; the provider sees it).") var reason: String
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func run() async throws {
        try await TaskMessage.send(
            .jobDispute, ReasonBody(taskId: taskId, reason: reason), taskId: taskId, url: market.url, json: output.json)
    }
}

enum TaskMessage {
    static func send(_ type: MessageType, _ body: some WireBody, taskId: String, url: MarketURL?, json: Bool)
        async throws
    {
        do { try body.validate(limits: WireLimits()) } catch { throw CLIError(error.message, exitCode: 2) }
        let link = try MarketLink(url: url)
        let ack = try await link.sendOrQueue(type, body, what: "\(type.rawValue) for task \(taskId)")
        if let state = ack.state {
            try? MarketTaskStore(database: link.database).update(
                taskId, state: LocalTaskState(ack: state), at: Date().unixMilliseconds)
        }
        if json { return try Output.json(ack) }
        Output.line("task \(taskId): \(ack.state?.rawValue ?? "done")")
    }
}

struct BalanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "balance", abstract: "Your credits on the market: available, in escrow, held back.")
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    struct Report: Codable {
        var peerId: String
        var available: Int64
        var inEscrow: Int64
        var heldBack: Int64
        var unit = Credits.unit
    }

    func run() async throws {
        let link = try MarketLink(url: market.url)
        let view: MarketViews.PeerView? = try await link.myself()
        let report = Report(
            peerId: link.me, available: view?.balance ?? 0, inEscrow: view?.inEscrow ?? 0,
            heldBack: view?.heldBack ?? 0)
        if output.json { return try Output.json(report) }
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
    @Argument(help: "The peer id (default: yours).", transform: PeerID.argument) var peer: PeerID?
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    struct Report: Codable {
        var peerId: String
        var score: Double
        var samples: Int
        var tier: String
        var settledJobs: Int
        var outcomes: [MarketViews.OutcomeView]
    }

    func run() async throws {
        let link = try MarketLink(url: market.url)
        let id = peer?.rawValue ?? link.me
        guard let view = try await link.peer(id) else {
            throw CLIError("the market at \(link.url) does not know peer \(id)", exitCode: 1)
        }
        let report = Report(
            peerId: id, score: view.reputation.score, samples: view.reputation.samples,
            tier: view.reputation.tier.rawValue,
            settledJobs: view.settledJobs, outcomes: view.recentOutcomes)
        if output.json { return try Output.json(report) }
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
    /// Clears the flag; whether it was set.
    func take() -> Bool { value.exchange(false, ordering: .relaxed) }
}
