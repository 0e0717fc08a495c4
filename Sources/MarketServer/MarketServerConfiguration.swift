import MarketCore
import MarketStore

/// Everything `market serve` can be told, with the defaults a small community market wants.
public struct MarketServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port (tests); the bound port is reported through `onServerRunning`.
    public var port: Int
    public var rules: MarketRules
    public var limits: WireLimits
    /// Frames a second per peer, and the burst allowed above it.
    public var frameRate: Double
    public var frameBurst: Double
    /// Frames a connection may send before it has authenticated.
    public var preAuthFrames: Int
    /// Live nonces the replay cache may hold; when full, new frames are refused (never evicted).
    public var replayCapacity: Int
    /// The ±window a frame's timestamp must fall in.
    public var timestampWindowMs: Int64
    /// How often timeouts and silent providers are swept.
    public var sweepIntervalMs: Int64
    /// How long message ids are remembered for idempotency.
    public var messageRetentionMs: Int64
    public var dashboard: Bool
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?
    /// When set, every text frame in and out is appended here (one per line, `in`/`out` and the
    /// frame): a debugging capture, and the proof that the market only ever sees ciphertext.
    public var frameLogPath: String?
    /// The blob pieces (sealed base64) the market keeps: in all, and per task by its price.
    public var storedPieces = StoredPieceLimits()
    /// How many frames one durable transaction may carry (nil: the store's default, 64 on
    /// SQLite, one on PostgreSQL), and how long a batch waits for more.
    public var commitBatch: Int?
    public var commitWait: Duration = .zero

    /// The group commit's limits on `store`.
    func groupCommit(on store: any MarketStore) -> GroupCommit.Limits {
        var limits = store.groupCommitDefaults
        if let commitBatch { limits.maxWrites = max(1, commitBatch) }
        limits.linger = commitWait
        return limits
    }

    public init(
        host: String = "127.0.0.1", port: Int = 8080, rules: MarketRules = MarketRules(),
        limits: WireLimits = WireLimits(), frameRate: Double = 200, frameBurst: Double = 400,
        preAuthFrames: Int = 8, replayCapacity: Int = 2_000_000,
        timestampWindowMs: Int64 = 5 * 60 * 1000, sweepIntervalMs: Int64 = 1000,
        messageRetentionMs: Int64 = 7 * 24 * 3_600_000, dashboard: Bool = true,
        tlsCertificatePath: String? = nil, tlsKeyPath: String? = nil
    ) {
        self.host = host
        self.port = port
        self.rules = rules
        self.limits = limits
        self.frameRate = frameRate
        self.frameBurst = frameBurst
        self.preAuthFrames = preAuthFrames
        self.replayCapacity = replayCapacity
        self.timestampWindowMs = timestampWindowMs
        self.sweepIntervalMs = sweepIntervalMs
        self.messageRetentionMs = messageRetentionMs
        self.dashboard = dashboard
        self.tlsCertificatePath = tlsCertificatePath
        self.tlsKeyPath = tlsKeyPath
    }
}
