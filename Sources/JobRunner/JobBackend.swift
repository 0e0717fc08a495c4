import Foundation

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

/// Where a claude job's credential comes from. The tool hands it over; it never reads a login.
public enum ClaudeCredential: Sendable, Equatable {
    /// An API key (Commercial Terms), put only in the job container's environment.
    case apiKey(String)
    /// The provider's own subscription login, kept by Claude Code in this Docker volume.
    case loginVolume(String)
    /// No credential (tests, or a claude that needs none).
    case none
}

public struct ClaudeOptions: Sendable, Equatable {
    public var model: String
    public var maxTurns: Int
    public var allowedTools: [String]
    public var credential: ClaudeCredential

    /// Tools that are off unless the provider names them: shell, file writes and the web.
    public static let riskyTools = [
        "Bash", "Edit", "Write", "MultiEdit", "NotebookEdit", "WebFetch", "WebSearch", "Task",
    ]

    public init(model: String, maxTurns: Int, allowedTools: [String], credential: ClaudeCredential) {
        self.model = model
        self.maxTurns = maxTurns
        self.allowedTools = allowedTools
        self.credential = credential
    }

    /// `claude -p` headless, stream-json, `dontAsk` with an allowlist of tools; reading the
    /// credential directory is denied by rule, and shell / write / web tools are denied unless allowed.
    public var command: [String] {
        let credentialRules = ["Read", "Grep", "Glob"].map { "\($0)(/\(SandboxPolicy.credentialDirectory)/**)" }
        let denied = Self.riskyTools.filter { !allowedTools.contains($0) } + credentialRules
        return [
            "claude", "-p", "--output-format", "stream-json", "--verbose", "--max-turns", String(maxTurns), "--model",
            model, "--permission-mode", "dontAsk", "--allowedTools", allowedTools.joined(separator: ","),
            "--disallowedTools", denied.joined(separator: ","),
        ]
    }

    /// The container environment: the API key (if that is the mode) and the config dir.
    public var environment: [String] {
        var environment = ["CLAUDE_CONFIG_DIR=\(SandboxPolicy.credentialDirectory)", "DISABLE_AUTOUPDATER=1"]
        if case .apiKey(let key) = credential { environment.append("ANTHROPIC_API_KEY=\(key)") }
        return environment
    }

    public var loginVolume: String? {
        if case .loginVolume(let volume) = credential { return volume }
        return nil
    }

    /// Secrets the redaction filter must remove from everything that leaves the provider.
    public var secrets: [String] {
        if case .apiKey(let key) = credential { return [key] }
        return []
    }
}

/// What a backend needs of its container.
struct PreparedBackend: Sendable {
    var command: [String]
    var environment: [String]
    var loginVolume: String?
    var secrets: [String]
}

extension JobBackend {
    var prepared: PreparedBackend {
        switch self {
        case .claude(let options):
            PreparedBackend(
                command: options.command, environment: options.environment, loginVolume: options.loginVolume,
                secrets: options.secrets)
        case .command(let command):
            PreparedBackend(command: command, environment: [], loginVolume: nil, secrets: [])
        }
    }
}
