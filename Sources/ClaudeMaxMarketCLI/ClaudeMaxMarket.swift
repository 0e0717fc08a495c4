import ArgumentParser
import Foundation
import MarketCore
import Participant

/// The root command. Each subcommand lives in a file named after it.
public struct ClaudeMaxMarket: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "claude-max-market",
        abstract: "Share your own Claude Code capacity on a market, safely and on your terms.",
        discussion: """
            State lives under $CMM_HOME when set, else $XDG_CONFIG_HOME/claude-max-market and \
            $XDG_DATA_HOME/claude-max-market. Every command that changes state writes an audit entry.
            """,
        version: ToolVersion.current,
        subcommands: [
            ConfigCommand.self, TermsCommand.self, OptInCommand.self, OptOutCommand.self, LimitsCommand.self,
            StatusCommand.self, AuditCommand.self, ComplianceCheckCommand.self, KeysCommand.self, EncryptCommand.self,
            DecryptCommand.self, DockerCommand.self, DockerBuildAlias.self, DockerPullAlias.self, HealthCommand.self,
            CleanCommand.self, ExecuteCommand.self, UsageCommand.self, LogsCommand.self,
            LoginCommand.self, MarketCommand.self, AdvertiseCommand.self, WithdrawCommand.self, BidCommand.self,
            ProvideCommand.self, SubmitCommand.self, TasksCommand.self, ResultCommand.self, CancelCommand.self,
            AcceptCommand.self, DisputeCommand.self, BalanceCommand.self, ReputationCommand.self, DemoCommand.self,
        ]
    )

    public init() {}
}

extension ClaudeMaxMarket {
    /// Parses and runs a command. Called explicitly because, from another module, `main()`
    /// resolves to ArgumentParser's synchronous overload, which refuses async commands.
    public static func runAsMain(_ arguments: [String]? = nil) async {
        // A closed pipe (`… | head`) must end output quietly, not kill the process mid-job.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try await asyncParseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as CLIError {
            Output.note("Error: \(error.message)")  // as ArgumentParser prints the others
            Foundation.exit(error.exitCode)
        } catch let error as CocoaError {
            Output.note("Error: \(describe(error))")
            Foundation.exit(1)
        } catch {
            if let message = DiskFull.message(
                for: error, paths: ParticipantPaths(environment: ProcessInfo.processInfo.environment))
            {
                Output.note("Error: \(message)")
                Foundation.exit(1)
            }
            exit(withError: error)
        }
    }

    /// A file error as a person reads it: the path and the system's reason, not Foundation's dump.
    static func describe(_ error: CocoaError) -> String {
        let path = error.filePath ?? error.url?.path ?? "a file"
        if let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return "\(path): \(String(cString: strerror(Int32(underlying.code))))"
        }
        switch error.code {
        case .fileNoSuchFile, .fileReadNoSuchFile: return "\(path): No such file or directory"
        case .fileWriteNoPermission, .fileReadNoPermission: return "\(path): Permission denied"
        case .fileWriteOutOfSpace: return "\(path): No space left on device"
        default: return "\(path): file error \(error.code.rawValue)"
        }
    }
}
