import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketCrypto
import MarketFlows
import Participant

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Sign in with your own Claude subscription; the token stays with your gateway.",
        discussion: """
            Runs the unmodified Claude Code CLI's own `claude setup-token` in a hardened runner \
            container (open the address it shows, sign in, paste the code). The long-lived token \
            it prints is kept in claude.oauthTokenFile (0600; by default oauth-token in the data \
            directory) and shown to no one, this terminal included. With --token-stdin, a token \
            you already have (from `claude setup-token` elsewhere) is read from standard input \
            instead. Job containers never see it: the provider's gateway holds it, and each job \
            gets a per-job token worth nothing elsewhere. Needs claude.credentialMode=subscription. \
            Market jobs on it stay off unless market.allowSubscriptionLogin=true (see `terms`).
            """
    )

    @Flag(name: .long, help: "Read a `claude setup-token` token from standard input instead of signing in.")
    var tokenStdin = false
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
        let token = tokenStdin ? try Self.readToken() : try await signIn(context: context, config: config)
        let file = try Self.store(token, context: context, config: config)
        try context.database().audit(
            actor: context.actor, kind: "login",
            details: ["method": tokenStdin ? "token-stdin" : "setup-token", "file": file.path], at: context.now)
        Output.note(
            "signed in: the subscription token is kept in \(file.path) (0600); jobs get a per-job token from the gateway, never this one"
        )
    }

    /// `claude setup-token` in the runner container, the user's typing forwarded; the token it
    /// prints is taken before its output is shown (redacted).
    func signIn(context: CommandContext, config: ResolvedConfig) async throws -> String {
        var sandbox = SandboxSettings(config: config)
        sandbox.timeout = .seconds(600)
        let allowlist = config.list(.egressAllowlist)
        let egress =
            allowlist.isEmpty ? nil : EgressPolicy(allowlist: allowlist, byteBudget: config.bytes(.egressByteBudget))
        let report = try await context.withDocker { docker in
            let executor = JobExecutor(
                docker: docker, runDirectory: context.paths.runDirectory, owner: context.paths.ownerID)
            var request = JobRequest(
                id: "login-\(UUID().uuidString.lowercased().prefix(8))", prompt: Data(),
                backend: .command(["claude", "setup-token"]), sandbox: sandbox, egress: egress)
            request.kind = "login"
            // The CLI's state is thrown away with the container: only the printed token is kept.
            request.environment = ["CLAUDE_CONFIG_DIR=/tmp", "HOME=/tmp"]
            request.input = Self.terminalInput()
            request.keepsSubscriptionTokens = true
            return try await executor.run(request) { output in
                if case .line(let stream, let text) = output {
                    if stream == .stderr { Output.note(text) } else { Output.line(text) }
                }
            }
        }
        guard report.state == .succeeded else {
            throw CLIError("the sign-in did not complete (\(report.state.rawValue))")
        }
        guard let token = report.subscriptionTokens.last else {
            throw CLIError("`claude setup-token` finished without printing a token (sk-ant-oat…): nothing was kept")
        }
        return token
    }

    static func readToken() throws -> String {
        let data = FileHandle.standardInput.readDataToEndOfFile()
        let text = String(decoding: data.prefix(4096), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let token = SecretRedactor.anthropicShaped(in: text).first, token == text, token.hasPrefix("sk-ant-oat")
        else {
            throw CLIError(
                "standard input is not a subscription token: expected one line sk-ant-oat… as `claude setup-token` prints it"
            )
        }
        return token
    }

    /// Writes the token to claude.oauthTokenFile (0600), or to `oauth-token` in the data
    /// directory when that key is '-', and points the key there.
    static func store(_ token: String, context: CommandContext, config: ResolvedConfig) throws -> URL {
        let configured = config.text(.claudeOAuthTokenFile)
        let file =
            configured == "-"
            ? context.paths.dataDirectory.appending(path: "oauth-token") : URL(fileURLWithPath: configured)
        try FileManager.default.createDirectory(
            at: file.deletingLastPathComponent(), withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o700])
        try AtomicFile.write(Data((token + "\n").utf8), to: file, permissions: 0o600)
        if configured == "-" {
            _ = try context.configStore.set([(ConfigKey.claudeOAuthTokenFile.name, file.path)], source: "login")
        }
        return file
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
