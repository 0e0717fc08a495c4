import ArgumentParser
import Foundation
import JobRunner
import MarketFlows
import Participant

/// `--backend` of `execute` and `provide`: Claude Code, or any command given after `--`.
enum BackendChoice: String, ExpressibleByArgument, CaseIterable {
    case claude, command

    /// The command after `--` goes with `--backend command`, and only there.
    func check(command: [String]) throws {
        if self == .command && command.isEmpty {
            throw ValidationError("--backend command needs the command after --, e.g. -- sh -c 'cat'")
        }
        if self == .claude && !command.isEmpty {
            throw ValidationError("a command after -- is only for --backend command")
        }
    }

    /// The backend as configured; a missing credential is a refusal (exit 3).
    func jobBackend(command: [String], config: ResolvedConfig, environment: [String: String]) throws -> JobBackend {
        guard self == .claude else { return .command(command) }
        do {
            return try ClaudeBackendFactory.make(config: config, environment: environment)
        } catch let refusal as JobRefusal {
            throw CLIError(refusal.reason, exitCode: 3)
        }
    }
}

/// `--prompt TEXT` or `--prompt-file FILE` (`-` for stdin); nil when neither was given.
enum PromptInput {
    static func read(text: String?, file: String?) throws -> Data? {
        if let text { return Data(text.utf8) }
        guard let file else { return nil }
        if file == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
        guard let contents = FileManager.default.contents(atPath: file) else {
            throw CLIError("cannot read prompt file \(file)")
        }
        return contents
    }
}
