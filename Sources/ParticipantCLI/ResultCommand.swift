import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import Participant
import Synchronization
import Workspace

struct ResultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result",
        abstract: "Show a task's result (decrypted here and checked), or follow the task until there is one.",
        discussion: """
            A result already received is opened from this home. Otherwise this connects, takes what \
            the market kept for you (the assignment, the result), seals the prompt again for a new \
            provider if the task moved, and accepts a result that checks out (--no-accept leaves \
            the decision to `accept` or `dispute`). A claude job's conversation is kept here: \
            --transcript shows it, every turn from its first task on, with the chain of tasks that \
            made it (`submit --follow-up` adds to it).
            """
    )

    @Option(name: .customLong("task-id"), help: "The task.") var taskId: String
    @Flag(name: .customLong("no-accept"), help: "Do not accept the result.") var noAccept = false
    @Option(
        name: .customLong("wait-timeout"), help: "Give up following after this long (default: 10m).",
        transform: DurationArgument.argument)
    var waitTimeout = DurationArgument(10, .m)
    @Flag(help: "A workspace job: apply its patch to the directory it was sent from (or --dir).") var apply = false
    @Option(help: ArgumentHelp("With --apply: apply here instead.", valueName: "DIR")) var dir: String?
    @Option(
        name: .customLong("patch-out"),
        help: ArgumentHelp("A workspace job: write its patch (a git diff) to FILE.", valueName: "FILE"))
    var patchOut: String?
    @Flag(help: "Show the whole conversation (every turn, and the tasks it went through).") var transcript = false
    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    func validate() throws {
        if dir != nil && !apply { throw ValidationError("--dir goes with --apply") }
    }

    func run() async throws {
        do { try WireField.taskID(taskId) } catch { throw CLIError(error.message, exitCode: 2) }
        let link = try MarketLink(url: market.url)
        let store = MarketTaskStore(database: link.database)
        guard let local = try store.task(taskId) else {
            throw CLIError("task \(taskId) was not posted or run from this home", exitCode: 2)
        }
        let files = WorkspaceFiles(directory: link.context.paths.workspacesDirectory)
        if let frame = try store.resultFrame(taskId), local.resultVerified == true {
            let result = try Requester.openStored(frame, keys: link.ring)
            // A result whose patch or transcript had not all arrived is followed again: the
            // market keeps the pieces while the task is delivered. One refused when it arrived
            // will not come again, nor anything once the task is over: said at once.
            let conversations = ConversationFiles(directory: link.context.paths.conversationsDirectory)
            let patchHere = try files.patch(taskId) != nil
            let patchPending = result.patch?.blob != nil && !patchHere && files.patchRefusal(taskId) == nil
            let transcriptPending =
                result.transcript?.blob != nil && (try? conversations.transcript(taskId)) == nil
                && conversations.refusal(taskId) == nil
            if !(patchPending || transcriptPending) || local.state.isFinal {
                try show(result, state: local.state, conversations: conversations, files: files)
                return try handlePatch(result, files: files)
            }
        }
        let waitMs = waitTimeout.milliseconds
        let printer = RequesterPrinter(json: output.json)
        let accept = !noAccept
        let outcome = try await link.withSession { session in
            let requester = Requester(
                session: session, database: link.database, workspaces: files,
                conversations: ConversationFiles(directory: link.context.paths.conversationsDirectory))
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
            try show(
                result, state: outcome.state,
                conversations: ConversationFiles(directory: link.context.paths.conversationsDirectory), files: files)
            try handlePatch(result, files: files)
        } else {
            throw CLIError("task \(taskId) ended \(outcome.state) without a result")
        }
    }

    /// A workspace job's patch, as kept here when it arrived: written and applied as asked.
    func handlePatch(_ result: JobContent.Result, files: WorkspaceFiles) throws {
        guard apply || patchOut != nil else { return }
        guard let info = result.patch else {
            throw CLIError("task \(taskId) was not a workspace job: there is no patch", exitCode: 2)
        }
        if info.blob == nil {
            if let error = info.error { throw CLIError("task \(taskId) has no patch: \(TerminalText.line(error))") }
            return Output.note("the job changed nothing in the workspace")
        }
        guard let data = try files.patch(taskId) else {
            if let refusal = files.patchRefusal(taskId) {
                throw CLIError(
                    "task \(taskId): its patch was refused when it arrived, so there is nothing to apply: \(TerminalText.line(refusal))"
                )
            }
            throw CLIError("the patch of task \(taskId) has not arrived in this home")
        }
        let patch: WorkspacePatch
        do {
            patch = try WorkspacePatch(parsing: data)
        } catch {
            throw CLIError(
                "the patch of task \(taskId) kept here does not parse, so nothing was applied: \(TerminalText.line("\(error)"))"
            )
        }
        let recorded = apply ? try files.directory(taskId) : nil
        guard let target = dir ?? recorded ?? (apply ? nil : "") else {
            throw CLIError(
                "task \(taskId): the directory it was sent from is not known here; give --dir DIR", exitCode: 2)
        }
        let base = try files.load(taskId).flatMap {
            try? WorkspaceTree.read(tar: $0.archive, limits: WorkspaceLimits(maxBytes: .max, maxFiles: .max)).tree
        }
        var arguments = try WorkspaceArguments.parse(apply ? ["--dir", target, "--apply"] : [])
        arguments.patchOut = patchOut
        try WorkspaceReport.handle(patch: patch, arguments: arguments, base: base, json: output.json)
    }

    func show(
        _ result: JobContent.Result, state: LocalTaskState, conversations: ConversationFiles, files: WorkspaceFiles
    )
        throws
    {
        let chain = try conversations.chain(taskId)
        let kept = transcript ? try conversations.transcript(taskId) : nil
        let transcriptRefused = result.transcript?.blob == nil ? nil : conversations.refusal(taskId)
        let patchRefused = result.patch?.blob == nil ? nil : files.patchRefusal(taskId)
        if transcript && kept == nil {
            let why =
                transcriptRefused.map { ": it was refused when it arrived: \($0)" }
                ?? result.transcript.map { ": \($0.error ?? "it has not arrived")" } ?? " (it was not a claude job)"
            throw CLIError("task \(taskId) left no conversation here" + TerminalText.line(why), exitCode: 2)
        }
        if output.json {
            struct Turn: Encodable {
                var role: String
                var text: String
            }
            struct Shown: Encodable {
                var taskId: String
                var taskState: String
                var result: JobContent.Result
                var conversation: [String]
                var transcript: [Turn]?
                /// Why the patch or the transcript was refused when it arrived.
                var patchRefused: String?
                var transcriptRefused: String?
            }
            return try Output.json(
                Shown(
                    taskId: taskId, taskState: state.rawValue, result: result, conversation: chain,
                    transcript: kept?.turns.map { Turn(role: $0.role, text: $0.text) }, patchRefused: patchRefused,
                    transcriptRefused: transcriptRefused))
        }
        if let kept {
            for turn in kept.turns {
                // Written by a job: `Output.line` shows its escape sequences instead of obeying them.
                let label = turn.role == "user" ? "you" : "claude"
                Output.line(
                    "\(label): "
                        + turn.text.split(separator: "\n", omittingEmptySubsequences: false)
                        .joined(separator: "\n" + String(repeating: " ", count: label.count + 2)))
            }
        } else {
            Output.text(result.output)
        }
        if chain.count > 1 { Output.note("conversation: " + chain.joined(separator: " → ")) }
        if let patchRefused { Output.note("the patch was refused when it arrived: \(TerminalText.line(patchRefused))") }
        if let transcriptRefused {
            Output.note("the transcript was refused when it arrived: \(TerminalText.line(transcriptRefused))")
        }
        Output.note(
            "task \(taskId) \(state); job \(TerminalText.line(result.state.rawValue))"
                + (result.exitCode.map { " (exit \($0))" } ?? "") + (result.truncated ? "; output truncated" : "")
                + (result.error.map { " — \(TerminalText.line($0))" } ?? ""))
    }
}
