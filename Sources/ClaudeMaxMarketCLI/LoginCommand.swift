import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketFlows
import Participant

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Sign in with your own Claude subscription, inside the runner container.",
        discussion: """
            Runs the unmodified Claude Code CLI's own sign-in (`claude setup-token`, or `claude \
            /login` with --method login) in a hardened runner container. Claude Code keeps the \
            login in the Docker volume claude.loginVolume, mounted at CLAUDE_CONFIG_DIR; this tool \
            never reads, copies or prints it. Needs claude.credentialMode=subscription. Market jobs \
            on it stay off unless market.allowSubscriptionLogin=true (see `terms`).
            """
    )

    enum Method: String, ExpressibleByArgument, CaseIterable {
        case setupToken = "setup-token"
        case login
    }

    @Option(name: .long, help: "setup-token (default) or login.") var method: Method = .setupToken
    @Option(name: .long, help: ArgumentHelp("Image (default: docker.image).", valueName: "IMAGE")) var image: String?

    func run() async throws {
        let context = CommandContext(flags: image.map { [ConfigKey.dockerImage.name: $0] } ?? [:])
        let config = try context.config()
        guard config.text(.claudeCredentialMode) == "subscription" else {
            throw CLIError(
                "login is for claude.credentialMode=subscription (now \(config.text(.claudeCredentialMode))); "
                    + "with an API key there is nothing to sign in to. Set it with "
                    + "`claude-max-market config --set claude.credentialMode=subscription`")
        }
        let volume = config.text(.claudeLoginVolume)
        var sandbox = SandboxSettings(config: config)
        sandbox.timeout = .seconds(600)
        let allowlist = config.list(.egressAllowlist)
        let egress =
            allowlist.isEmpty ? nil : EgressPolicy(allowlist: allowlist, byteBudget: config.bytes(.egressByteBudget))
        let command = method == .setupToken ? ["claude", "setup-token"] : ["claude", "/login"]
        let state = try await context.withDocker { docker in
            if try await docker.inspectVolume(volume) == nil {
                try await docker.createVolume(
                    volume, labels: Labels.make(kind: "login-volume", version: ToolVersion.current))
                Output.note("created Docker volume \(volume) for the login")
            }
            let executor = JobExecutor(
                docker: docker, runDirectory: context.paths.runDirectory, owner: context.paths.ownerID)
            var request = JobRequest(
                id: "login-\(UUID().uuidString.lowercased().prefix(8))", prompt: Data(),
                backend: .command(command), sandbox: sandbox, egress: egress)
            request.input = Self.terminalInput()
            request.loginVolume = volume
            let report = try await executor.run(request) { output in
                if case .line(let stream, let text) = output {
                    if stream == .stderr { Output.note(text) } else { Output.line(text) }
                }
            }
            return report.state
        }
        try context.database().audit(
            actor: context.actor, kind: "login",
            details: ["volume": volume, "method": method.rawValue, "state": state.rawValue],
            at: context.now)
        guard state == .succeeded else { throw CLIError("the sign-in did not complete (\(state.rawValue))") }
        Output.note("signed in; the login stays in Docker volume \(volume) and never leaves it through this tool")
    }

    /// What the user types (e.g. the code from the browser), forwarded as it is typed.
    static func terminalInput() -> AsyncStream<Data> {
        let (stream, continuation) = AsyncStream.makeStream(of: Data.self)
        let reader = Thread {
            while true {
                let data = FileHandle.standardInput.availableData
                if data.isEmpty { break }
                continuation.yield(data)
            }
            continuation.finish()
        }
        reader.start()
        return stream
    }
}
