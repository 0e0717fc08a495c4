import Foundation
import Logging
import Workspace

/// How a job's prompt becomes a process in the container.
public enum JobBackend: Sendable, Equatable {
    /// The unmodified Claude Code CLI, headless, prompt on stdin.
    case claude(ClaudeOptions)
    /// Any command; stdin is the prompt, stdout is JSON lines or text. Never gets a credential.
    case command([String])

    public var name: String {
        switch self {
        case .claude: "claude"
        case .command: "command"
        }
    }
}

/// The provider's credential for claude jobs. Either one is held by the job's gateway, which
/// puts it on the requests it forwards: the container gets a per-job token, never this.
public enum ClaudeCredential: Sendable, Equatable {
    /// An API key (Commercial Terms).
    case apiKey(String)
    /// The provider's own subscription, as a `claude setup-token` token.
    case oauthToken(String)
    /// No credential and no gateway (tests, or a claude that needs none).
    case none

    var gatewayCredential: GatewayCredential? {
        switch self {
        case .apiKey(let key): .apiKey(key)
        case .oauthToken(let token): .oauthToken(token)
        case .none: nil
        }
    }
}

public struct ClaudeOptions: Sendable, Equatable {
    public var model: String
    public var maxTurns: Int
    public var allowedTools: [String]
    public var credential: ClaudeCredential
    /// Where the gateway forwards, and the tokens the job may use.
    public var gateway = GatewaySettings()
    public var tokenBudget: Int64 = 1000
    /// A workspace job: the tools it may use on the workspace (`claude.workspaceTools`), the
    /// file-changing ones only under /work. nil for a job without a workspace.
    public var workspaceTools: [String]?
    /// A workspace job whose workspace has a CLAUDE.md: the requester's own instructions, given
    /// to the model as project settings would (which are otherwise not read).
    public var workspaceInstructions = false

    /// Tools that are off unless the provider names them: shell, file writes and the web.
    public static let riskyTools = [
        "Bash", "Edit", "Write", "MultiEdit", "NotebookEdit", "WebFetch", "WebSearch", "Task",
    ]

    public init(
        model: String, maxTurns: Int, allowedTools: [String], credential: ClaudeCredential,
        gateway: GatewaySettings = GatewaySettings(), tokenBudget: Int64 = 1000
    ) {
        self.model = model
        self.maxTurns = maxTurns
        self.allowedTools = allowedTools
        self.credential = credential
        self.gateway = gateway
        self.tokenBudget = tokenBudget
    }

    /// What a workspace job may use unless the provider says otherwise (`claude.workspaceTools`).
    public static let defaultWorkspaceTools = ["Read", "Grep", "Glob", "Edit", "Write", "MultiEdit"]

    /// Tools that change files: in a workspace job they are allowed under /work only.
    public static let fileChangingTools = ["Edit", "Write", "MultiEdit", "NotebookEdit"]

    /// `claude -p` headless, stream-json in and out, `dontAsk` with an allowlist of tools;
    /// reading or changing the CLI's own state (the session's transcript) is denied by rule, and
    /// shell / write / web tools are denied unless allowed. Settings, hooks and MCP servers come
    /// only from the provider's own user settings: a workspace's `.claude/settings*.json` and
    /// `.mcp.json` are the requester's. The prompt arrives as one stream-json user message, so a
    /// CLI started ahead (a warm slot) and a cold one run with the same flags.
    public func command(conversation: ClaudeConversation) -> [String] {
        let credentialRules = ["Read", "Grep", "Glob", "Edit"].map { "\($0)(/\(ClaudeConversation.stateDirectory)/**)" }
        var allowed = allowedTools
        for tool in workspaceTools ?? [] where !allowed.contains(tool) {
            allowed.append(
                Self.fileChangingTools.contains(tool) ? "\(tool)(/\(SandboxPolicy.workDirectory)/**)" : tool)
        }
        let denied =
            Self.riskyTools.filter { !allowedTools.contains($0) && !(workspaceTools ?? []).contains($0) }
            + credentialRules
        return [
            "claude", "-p", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
            "--include-partial-messages",
            "--max-turns", String(maxTurns), "--model", model, "--permission-mode", "dontAsk", "--allowedTools",
            allowed.joined(separator: ","), "--disallowedTools", denied.joined(separator: ","), "--setting-sources",
            "user", "--strict-mcp-config",
        ] + conversation.flags
            + (workspaceInstructions
                ? ["--append-system-prompt-file", "\(SandboxPolicy.workDirectory)/CLAUDE.md"] : [])
    }

    /// The prompt as the one stream-json user message the CLI reads.
    public static func userMessage(_ prompt: Data, sessionID: String) -> Data {
        let message: [String: Any] = [
            "type": "user", "message": ["role": "user", "content": String(decoding: prompt, as: UTF8.self)],
            "parent_tool_use_id": NSNull(), "session_id": sessionID,
        ]
        var line =
            (try? JSONSerialization.data(withJSONObject: message, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
        line.append(0x0a)
        return line
    }

    /// The container environment. The CLI's state goes to a job-private directory on /tmp;
    /// stdin is an archive (the prompt, a workspace, a transcript); what the job leaves
    /// (`returning`, paths below `/`) comes back after it. The job gets the gateway's address and
    /// its per-job token — as an API key, or as a subscription token in subscription mode, so the
    /// CLI speaks as it would to the real API — never the credential; background work uses the
    /// approved model too.
    public func environment(gatewayToken: String?, returning: [String]) -> [String] {
        var environment = [
            "CLAUDE_CONFIG_DIR=\(ClaudeConversation.stateDirectory)", "CMM_CLAUDE_STATE=1", "DISABLE_AUTOUPDATER=1",
            "CMM_RETURN=\(returning.joined(separator: " "))",
        ]
        environment += SandboxPolicy.workspaceEnvironment
        if let gatewayToken {
            let variable = if case .oauthToken = credential { "CLAUDE_CODE_OAUTH_TOKEN" } else { "ANTHROPIC_API_KEY" }
            environment += [
                "ANTHROPIC_BASE_URL=http://127.0.0.1:3128", "\(variable)=\(gatewayToken)",
                "ANTHROPIC_SMALL_FAST_MODEL=\(model)", "ANTHROPIC_DEFAULT_HAIKU_MODEL=\(model)",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
            ]
        }
        return environment
    }

    /// A gateway holding the credential for one job (or one warm-pool slot).
    public func makeGateway(logger: Logger) throws -> ClaudeGateway? {
        guard let credential = credential.gatewayCredential else { return nil }
        return try ClaudeGateway(
            credential: credential, models: [model], tokenBudget: tokenBudget, settings: gateway, logger: logger)
    }

    /// Secrets the redaction filter must remove from everything that leaves the provider.
    public var secrets: [String] { credential.gatewayCredential.map { [$0.secret] } ?? [] }
}

/// What a backend needs of its container.
struct PreparedBackend: Sendable {
    var command: [String]
    var environment: [String]
    var secrets: [String]
}

extension JobBackend {
    func prepared(
        gateway: ClaudeGateway?, workspace: WorkspaceTree? = nil,
        conversation: ClaudeConversation = ClaudeConversation()
    ) -> PreparedBackend {
        switch self {
        case .claude(var options):
            // The tools follow the request: a job without a workspace never gets the workspace's.
            if workspace == nil { options.workspaceTools = nil }
            if workspace != nil && options.workspaceTools == nil {
                options.workspaceTools = ClaudeOptions.defaultWorkspaceTools
            }
            if case .file = workspace?["CLAUDE.md"]?.kind { options.workspaceInstructions = true }
            let returning = (workspace == nil ? [] : ["work"]) + [conversation.transcriptPath]
            return PreparedBackend(
                command: options.command(conversation: conversation),
                environment: options.environment(gatewayToken: gateway?.token, returning: returning),
                secrets: options.secrets)
        case .command(let command):
            return PreparedBackend(
                command: command,
                environment: workspace != nil ? SandboxPolicy.workspaceEnvironment + ["CMM_RETURN=work"] : [],
                secrets: [])
        }
    }

    /// The gateway this backend needs: a claude job with a credential.
    func makeGateway(logger: Logger) throws -> ClaudeGateway? {
        guard case .claude(let options) = self else { return nil }
        return try options.makeGateway(logger: logger)
    }
}
