import ArgumentParser
import Foundation
import JobRunner
import MarketCore
import Participant
import Workspace

/// `--dir` and what goes with it, shared by `execute` and `submit`.
struct WorkspaceArguments: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Send this directory with the job as its workspace (/work); the change comes back as a patch.",
            valueName: "DIR"))
    var dir: String?
    @Flag(name: .customLong("include-ignored"), help: "In a git work tree, also send the files git ignores.")
    var includeIgnored = false
    @Flag(name: .long, help: "Apply the job's patch to DIR (refused, changing nothing, if DIR changed under it).")
    var apply = false
    @Option(
        name: .customLong("patch-out"),
        help: ArgumentHelp("Write the job's patch (a git diff; `git apply` reads it) to FILE.", valueName: "FILE"))
    var patchOut: String?

    func validate() throws {
        if dir == nil && (apply || includeIgnored) {
            throw ValidationError("--apply and --include-ignored need --dir DIR")
        }
    }

    var directory: URL? { dir.map { URL(fileURLWithPath: $0).standardizedFileURL } }

    /// Packs DIR within the requester's limits, before anything runs or is posted.
    func pack(config: ResolvedConfig) throws -> WorkspacePacker.Packed? {
        guard let directory else { return nil }
        var options = WorkspacePacker.Options(
            includeIgnored: includeIgnored,
            limits: WorkspaceLimits(
                maxBytes: config.bytes(.maxWorkspaceBytes), maxFiles: Int(config.integer(.maxWorkspaceFiles))))
        options.maxBytesKey = ConfigKey.maxWorkspaceBytes.name
        options.maxFilesKey = ConfigKey.maxWorkspaceFiles.name
        do {
            return try WorkspacePacker(options: options).pack(directory)
        } catch {
            throw CLIError("--dir \(directory.path): \(error)")
        }
    }
}

/// What is said about a workspace and done with its patch, the same for `execute` and `submit`.
enum WorkspaceReport {
    /// Said plainly, the first time this home sends a workspace.
    static func noticeOnce(paths: ParticipantPaths, json: Bool) {
        let marker = paths.dataDirectory.appending(path: "workspace-notice-shown")
        guard !FileManager.default.fileExists(atPath: marker.path) else { return }
        let text =
            "note: the provider's machine reads your workspace as it reads your prompt: sealing protects it on the way, not there. Send only what you would show that provider."
        if json {
            struct Notice: Encodable {
                var type = "notice"
                var note: String
            }
            Output.jsonLine(Notice(note: text))
        } else {
            Output.note(text)
        }
        _ = FileManager.default.createFile(atPath: marker.path, contents: Data())
    }

    static func packed(_ packed: WorkspacePacker.Packed, directory: URL) {
        Output.note(
            "workspace \(directory.path): \(packed.tree.fileCount) files, \(packed.tree.byteCount) bytes"
                + (packed.usedGit ? " (git decides what is ignored; --include-ignored sends everything)" : ""))
        for line in packed.leftOutSummary { Output.note("  left out: \(TerminalText.line(line))") }
    }

    /// Prints the diffstat, writes `--patch-out`, applies with `--apply`. Throws when applying
    /// was refused (nothing was changed) or the patch could not be read.
    static func handle(
        patch: WorkspacePatch, arguments: WorkspaceArguments, base: WorkspaceTree?, json: Bool
    ) throws {
        if !json {
            Output.note(
                patch.isEmpty ? "the job changed nothing in the workspace" : "the job's change:\n" + diffstat(patch))
        }
        if let file = arguments.patchOut {
            do {
                try patch.data.write(to: URL(fileURLWithPath: file))
            } catch {
                throw CLIError("--patch-out \(file): \(error.localizedDescription)")
            }
            Output.note("patch written to \(file) (\(patch.data.count) bytes; `git apply \(file)` applies it)")
        }
        guard arguments.apply, let directory = arguments.directory, !patch.isEmpty else { return }
        try apply(patch, to: directory, includeIgnored: arguments.includeIgnored, base: base)
    }

    /// Applies, after saying whether DIR is still the tree that was sent: when other files
    /// changed the patch still applies (each file it touches is checked); when one it touches
    /// changed, nothing is applied.
    static func apply(_ patch: WorkspacePatch, to directory: URL, includeIgnored: Bool, base: WorkspaceTree?) throws {
        let now = try? WorkspacePacker(
            options: .init(includeIgnored: includeIgnored, limits: .init(maxBytes: .max, maxFiles: .max))
        )
        .pack(directory).tree
        if let now, now.baseHash != patch.baseHash {
            var changed: [String] = []
            if let base {
                let before = Dictionary(uniqueKeysWithValues: base.files.map { ($0.path, $0) })
                let after = Dictionary(uniqueKeysWithValues: now.files.map { ($0.path, $0) })
                changed = Set(before.keys).union(after.keys).filter { before[$0] != after[$0] }.sorted()
            }
            Output.note(
                "\(directory.path) changed since the job was sent"
                    + (changed.isEmpty
                        ? ""
                        : " (\(changed.prefix(5).map(TerminalText.line).joined(separator: ", "))\(changed.count > 5 ? ", …" : ""))")
                    + "; applying only if none of the files the patch touches changed")
        }
        do {
            let applied = try patch.apply(to: directory)
            Output.note(
                "applied to \(directory.path): \(applied.written.count) written, \(applied.deleted.count) deleted")
        } catch  where error.code == .partial {
            throw CLIError(
                "the patch was applied to \(directory.path) only in part: \(TerminalText.line("\(error)"))",
                exitCode: 1)
        } catch {
            throw CLIError(
                "the patch was not applied to \(directory.path), nothing was changed: \(TerminalText.line("\(error)"))",
                exitCode: 1)
        }
    }

    /// The diffstat with each file's name as one line: the names are the job's, and one
    /// holding a line break must not add a line to the list.
    static func diffstat(_ patch: WorkspacePatch) -> String {
        var shown = patch
        for index in shown.files.indices { shown.files[index].path = TerminalText.line(shown.files[index].path) }
        return shown.diffstat
    }
}
