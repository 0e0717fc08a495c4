import Foundation
import MarketCore
import Participant

/// What every command needs: the paths, the environment, the resolved config and the local
/// database, opened on first use.
struct CommandContext {
    let environment: [String: String]
    let paths: ParticipantPaths
    let configStore: ConfigStore
    /// Who is acting, for audit entries.
    let actor = "user"

    init(flags: [String: String] = [:]) {
        environment = ProcessInfo.processInfo.environment
        paths = ParticipantPaths(environment: environment)
        configStore = ConfigStore(paths: paths, environment: environment, flags: flags)
    }

    func config() throws -> ResolvedConfig {
        try configStore.resolve()
    }

    func database() throws -> StateDatabase {
        try StateDatabase(paths: paths)
    }

    var now: Date { Date() }
}

/// An error the CLI reports as `error: <message>` with a chosen exit code.
struct CLIError: Error, CustomStringConvertible {
    let message: String
    var exitCode: Int32 = 1

    init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    var description: String { message }
}
