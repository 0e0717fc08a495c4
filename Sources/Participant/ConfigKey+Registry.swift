import MarketCore

extension ConfigKey {
    public static let dockerMemory = ConfigKey(
        "docker.memory", .byteSize((16 << 20)...(64 << 30)), default: .text("512m"),
        "Memory limit of a job container (swap is capped to the same)")
    public static let dockerCPUShares = ConfigKey(
        "docker.cpuShares", .integer(2...262_144), default: .integer(512),
        "Relative CPU weight of a job container")
    public static let dockerCPUs = ConfigKey(
        "docker.cpus", .decimal(0.1...64), default: .text("1"), "Hard CPU limit of a job container, in CPUs")
    public static let dockerPidsLimit = ConfigKey(
        "docker.pidsLimit", .integer(16...4096), default: .integer(128),
        "Maximum number of processes in a job container")
    public static let dockerTimeoutSeconds = ConfigKey(
        "docker.timeoutSeconds", .integer(5...86_400), default: .integer(300),
        "Wall-clock limit of a job; the container is killed and removed after it")
    public static let dockerImage = ConfigKey(
        "docker.image", .text(maxLength: 255), default: .text("claude-max-market/runner:\(ToolVersion.current)"),
        "Runner image for the claude backend")
    public static let dockerBuildNetwork = ConfigKey(
        "docker.buildNetwork", .choice(["default", "none", "host"]), default: .text("default"),
        "Network for RUN steps of `docker:build` (none on engines without a bridge)")
    public static let dockerTmpfsSize = ConfigKey(
        "docker.tmpfsSize", .byteSize((1 << 20)...(8 << 30)), default: .text("64m"),
        "Size of the job's tmpfs work directory")
    public static let dockerMaxOutput = ConfigKey(
        "docker.maxOutput", .byteSize((64 << 10)...(1 << 30)), default: .text("16m"),
        "Output (stdout + stderr) a job may print; past it the job is stopped as output_limit")
    public static let dockerWarmPool = ConfigKey(
        "docker.warmPool", .integer(0...16), default: .integer(0),
        "Hardened containers kept started ahead of jobs (0 = off)")
    public static let egressAllowlist = ConfigKey(
        "egress.allowlist", .hostPortList,
        default: .list([
            "api.anthropic.com:443", "claude.ai:443", "console.anthropic.com:443", "platform.claude.com:443",
        ]),
        "host:port pairs a job may reach through the egress proxy")
    public static let egressByteBudget = ConfigKey(
        "egress.byteBudget", .byteSize((1 << 10)...(16 << 30)), default: .text("256m"),
        "Bytes one job may move through the egress proxy, both directions")
    public static let dailyTasks = ConfigKey(
        "limits.dailyTasks", .integer(1...10_000), default: .integer(5), "Jobs per day")
    public static let weeklyTasks = ConfigKey(
        "limits.weeklyTasks", .integer(1...70_000), default: .integer(25), "Jobs per ISO week")
    public static let monthlyTasks = ConfigKey(
        "limits.monthlyTasks", .integer(1...310_000), default: .integer(100), "Jobs per calendar month")
    public static let dailyTokens = ConfigKey(
        "limits.dailyTokens", .integer(1...1_000_000_000), default: .integer(5000),
        "Input + output tokens per day")
    public static let maxTokensPerTask = ConfigKey(
        "limits.maxTokensPerTask", .integer(1...100_000_000), default: .integer(1000),
        "Input + output tokens one job may be expected to use")
    public static let maxWorkspaceBytes = ConfigKey(
        "limits.maxWorkspaceBytes", .byteSize((1 << 10)...(4 << 30)), default: .text("64m"),
        "Largest workspace (--dir) a job sends or, as a provider, takes: bytes of files and links")
    public static let maxWorkspaceFiles = ConfigKey(
        "limits.maxWorkspaceFiles", .integer(1...1_000_000), default: .integer(20_000),
        "Most files and links in a workspace a job sends or, as a provider, takes")
    public static let maxPatchBytes = ConfigKey(
        "limits.maxPatchBytes", .byteSize((1 << 10)...(1 << 30)), default: .text("16m"),
        "Largest patch a workspace job hands back")
    public static let maxTranscriptBytes = ConfigKey(
        "limits.maxTranscriptBytes", .byteSize((1 << 10)...(64 << 20)), default: .text("16m"),
        "Largest conversation transcript a claude job hands back or, as a provider, continues")
    public static let concurrentJobs = ConfigKey(
        "limits.concurrentJobs", .integer(1...64), default: .integer(1), "Jobs running at once")
    public static let keyRotationDays = ConfigKey(
        "security.keyRotationDays", .integer(1...365), default: .integer(30),
        "Age after which the sealing key rotates; retired keys are kept this long")
    public static let approvalMode = ConfigKey(
        "approval.mode", .choice(["manual", "policy"]), default: .text("manual"),
        "manual: ask for every job; policy: approve by the approval.* rules")
    public static let approvalMaxPromptBytes = ConfigKey(
        "approval.maxPromptBytes", .integer(1...16 << 20), default: .integer(65_536),
        "policy mode: largest prompt approved without asking")
    public static let approvalAllowedRequesters = ConfigKey(
        "approval.allowedRequesters", .nameList, default: .list([]),
        "policy mode: requester peer ids approved (empty = any not denied)")
    public static let approvalDeniedRequesters = ConfigKey(
        "approval.deniedRequesters", .nameList, default: .list([]),
        "policy mode: requester peer ids always refused")
    public static let marketURL = ConfigKey(
        "market.url", .webSocketURL, default: .text("ws://127.0.0.1:8080/market"), "Market server WebSocket URL")
    public static let marketDefaultPrice = ConfigKey(
        "market.defaultPrice", .credits(0...1_000_000 * Credits.scale), default: .text("5"),
        "Price asked per job as a provider (RUV)")
    public static let marketMaxBidPrice = ConfigKey(
        "market.maxBidPrice", .credits(0...1_000_000 * Credits.scale), default: .text("100"),
        "Highest price offered per job as a requester (RUV)")
    public static let marketAllowSubscriptionLogin = ConfigKey(
        "market.allowSubscriptionLogin", .boolean, default: .boolean(false),
        "Allow market jobs on a subscription login (read `terms` first)")
    public static let claudeCredentialMode = ConfigKey(
        "claude.credentialMode", .choice(["api-key", "subscription"]), default: .text("api-key"),
        "api-key: ANTHROPIC_API_KEY or claude.apiKeyFile; subscription: the token of claude.oauthTokenFile")
    public static let claudeAPIKeyFile = ConfigKey(
        "claude.apiKeyFile", .text(maxLength: 4096), default: .text("-"),
        "0600 file holding the API key ('-' = take ANTHROPIC_API_KEY from the environment)")
    public static let claudeAPIBaseURL = ConfigKey(
        "claude.apiBaseURL", .httpsBaseURL, default: .text("https://api.anthropic.com"),
        "Where the provider's gateway forwards a job's API requests (with the real credential)")
    public static let claudeOAuthTokenFile = ConfigKey(
        "claude.oauthTokenFile", .text(maxLength: 4096), default: .text("-"),
        "subscription mode: 0600 file holding the `claude setup-token` token that `login` keeps ('-' = take CLAUDE_CODE_OAUTH_TOKEN from the environment)"
    )
    public static let capacityFiveHourShare = ConfigKey(
        "capacity.fiveHourShare", .decimal(0...1), default: .text("1"),
        "Offer only while the plan's 5-hour window is used below this fraction (0.6 keeps 40 % for yourself)")
    public static let capacityWeeklyShare = ConfigKey(
        "capacity.weeklyShare", .decimal(0...1), default: .text("1"),
        "Offer only while each of the plan's weekly windows is used below this fraction")
    public static let capacityPerMinuteShare = ConfigKey(
        "capacity.perMinuteShare", .decimal(0...1), default: .text("1"),
        "api-key mode: offer only while the key's requests and tokens per minute are used below this fraction")
    public static let claudeModel = ConfigKey(
        "claude.model", .text(maxLength: 128), default: .text("claude-sonnet-4-6"), "Model for claude jobs")
    public static let claudeMaxTurns = ConfigKey(
        "claude.maxTurns", .integer(1...200), default: .integer(8), "--max-turns for claude jobs")
    public static let claudeAllowedTools = ConfigKey(
        "claude.allowedTools", .nameList, default: .list(["Read", "Grep", "Glob"]),
        "Tools a claude job may use (shell tools are off unless named here)")

    public static let claudeWorkspaceTools = ConfigKey(
        "claude.workspaceTools", .nameList, default: .list(["Read", "Grep", "Glob", "Edit", "Write", "MultiEdit"]),
        "Tools a workspace job may use; the ones that change files only under /work")

    /// Every key, in the order `config --list` shows them.
    public static let all: [ConfigKey] = [
        dockerMemory, dockerCPUShares, dockerCPUs, dockerPidsLimit, dockerTimeoutSeconds, dockerImage,
        dockerBuildNetwork,
        dockerTmpfsSize, dockerMaxOutput,
        dockerWarmPool, egressAllowlist, egressByteBudget, dailyTasks, weeklyTasks, monthlyTasks, dailyTokens,
        maxTokensPerTask, maxWorkspaceBytes, maxWorkspaceFiles, maxPatchBytes, maxTranscriptBytes, concurrentJobs,
        keyRotationDays,
        approvalMode, approvalMaxPromptBytes,
        approvalAllowedRequesters, approvalDeniedRequesters, marketURL, marketDefaultPrice, marketMaxBidPrice,
        marketAllowSubscriptionLogin, claudeCredentialMode, claudeAPIKeyFile, claudeAPIBaseURL,
        claudeOAuthTokenFile, claudeModel, claudeMaxTurns, claudeAllowedTools, claudeWorkspaceTools,
        capacityFiveHourShare, capacityWeeklyShare, capacityPerMinuteShare,
    ]

    /// Keys this tool no longer has, and what took their place: a config that names one gets
    /// this in its error, and `config --unset` removes it.
    public static let retired: [String: String] = [
        "claude.loginVolume":
            "subscription jobs no longer mount a login volume: the gateway holds a `claude setup-token` token from claude.oauthTokenFile (run `claude-max-market login` again)"
    ]

    public static func named(_ name: String) -> ConfigKey? { all.first { $0.name == name } }
}
