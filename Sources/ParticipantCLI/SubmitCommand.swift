import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant
import Synchronization
import Workspace

struct SubmitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Post a job to the market with its maximum price held in escrow.",
        discussion: """
            Shows the estimated price and wait from the live book first (and why no provider could \
            take it, when none could). With --dir DIR the directory goes with the job as its workspace \
            (sealed to the provider, in pieces); its change comes back as a patch: --wait prints the \
            diffstat, --apply applies it to DIR, --patch-out writes it. A claude job's conversation comes \
            back with its result and stays in this home: --follow-up TASK_ID continues it on whichever \
            provider wins (the transcript goes sealed to it; a workspace job's workspace goes as the \
            earlier task left it, patch applied, unless --dir sends a directory as it is now). With --wait it seals the prompt to the provider that wins, \
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
    @Option(
        name: .customLong("max-price"), help: "Most you pay, whole credits (held in escrow until settled).",
        transform: CreditsArgument.argument)
    var maxPrice: CreditsArgument
    @Option(name: .customLong("min-reputation"), help: "Only providers with at least this reputation (0…1).")
    var minReputation: Double?
    @Option(help: "The model the job needs (a provider offering it, or any).") var model: String?
    @Option(help: "Seconds the job may run (1…86400, default 300).") var timeout: Int64?
    @Flag(help: "Follow the job until it is settled: stream, check, accept.") var wait = false
    @Option(
        name: .customLong("wait-timeout"), help: "With --wait: give up following after this long (default: 30m).",
        transform: DurationArgument.argument)
    var waitTimeout = DurationArgument(30, .m)
    @OptionGroup var workspace: WorkspaceArguments
    @Option(
        name: .customLong("follow-up"),
        help: ArgumentHelp("Continue the conversation of an earlier task of this home.", valueName: "TASK_ID"))
    var followUp: String?
    @OptionGroup var market: MarketURLOption
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
        try workspace.validate()
        if let followUp {
            do { try WireField.taskID(followUp) } catch { throw ValidationError("--follow-up: \(error.message)") }
        }
        if workspace.apply && !wait {
            throw ValidationError("--apply needs --wait (or apply later: `result --task-id ID --apply`)")
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
        let micro = maxPrice.micro
        let waitMs = waitTimeout.milliseconds
        let promptData = try readPrompt()
        let link = try MarketLink(url: market.url)
        let printer = RequesterPrinter(json: json)
        // Packed and checked against the limits before anything is posted or escrowed.
        let followUp = try self.followUp.map {
            try FollowUp.load(
                $0, paths: link.context.paths, withWorkspace: workspace.directory == nil,
                limits: WorkspaceLimits(
                    maxBytes: link.config.bytes(.maxWorkspaceBytes),
                    maxFiles: Int(link.config.integer(.maxWorkspaceFiles))))
        }
        if let followUp, !json {
            Output.note(
                "continues the conversation of task \(followUp.parent) (\(followUp.transcript.turns.count) turns)"
                    + (followUp.workspace.map { ", its workspace as that task left it (\($0.tree.fileCount) files)" }
                        ?? ""))
        }
        let packed = try workspace.pack(config: link.config) ?? followUp?.workspace
        if let packed, let directory = workspace.directory {
            if !json { WorkspaceReport.packed(packed, directory: directory) }
            WorkspaceReport.noticeOnce(paths: link.context.paths, json: json)
        }
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
        var submitOptions = SubmitOptions(
            prompt: promptData, maxPrice: micro, minReputation: minReputation, model: model, timeoutSeconds: timeout,
            workspace: packed?.tree)
        submitOptions.workspaceLeftOut = packed?.leftOutSummary ?? []
        if let directory = workspace.directory { submitOptions.workspaceDirectory = directory.path }
        if let followUp {
            submitOptions.conversation = (followUp.transcript, followUp.parent)
            if workspace.directory == nil, followUp.workspace != nil {
                submitOptions.workspaceDirectory = try WorkspaceFiles(
                    directory: link.context.paths.workspacesDirectory
                ).directory(followUp.parent)
            }
        }
        let options = submitOptions
        let follow = wait
        let files = WorkspaceFiles(directory: link.context.paths.workspacesDirectory)
        let conversations = ConversationFiles(directory: link.context.paths.conversationsDirectory)
        let outcome: RequesterOutcome? = try await link.withSession { session in
            let requester = Requester(
                session: session, database: link.database, workspaces: files, conversations: conversations)
            let ack: AckBody
            do { ack = try await requester.post(options) } catch
                where error is MarketError || error is MarketClientError
            {
                throw CLIError("the market refused the task: \(error)")
            }
            printer.posted(ack)
            guard let taskId = ack.taskId else { return nil }
            guard follow else {
                // The prompt goes to a provider that took the task at once; one that takes it
                // later gets it from `result --task-id`, which seals it then.
                guard ack.state == .task(.assigned) else { return nil }
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
        if let patch = outcome.patch {
            try WorkspaceReport.handle(patch: patch, arguments: workspace, base: packed?.tree, json: json)
        } else if let error = outcome.result?.patch?.error {
            Output.note("no patch came back: \(TerminalText.line(error))")
        }
        if outcome.state != .settled { throw ExitCode(1) }
    }
}
