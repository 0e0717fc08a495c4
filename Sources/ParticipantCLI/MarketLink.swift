import ArgumentParser
import Foundation
import Logging
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant

/// Exit codes of the market commands beyond 0/1: the market could not be reached (nothing was
/// done), or it could not be reached and the message waits in the outbox.
enum MarketExit {
    static let unreachable: Int32 = 69
    static let queued: Int32 = 75
}

/// What a market command needs: this participant's keys and outbox, and the market's URL.
struct MarketLink {
    let context: CommandContext
    let config: ResolvedConfig
    let database: StateDatabase
    let ring: KeyRing
    let url: String

    init(url: MarketURL? = nil, context: CommandContext = CommandContext()) throws {
        self.context = context
        config = try context.config()
        database = try context.database()
        ring = try context.keyRing(database: database, config: config)
        self.url = url?.text ?? config.text(.marketURL)
    }

    var me: String { ring.peerID.rawValue }

    /// Credentials this tool knows: no frame carrying one is ever sent.
    var knownSecrets: [String] {
        var secrets: [String] = []
        for secret in [
            try? ClaudeBackendFactory.apiKey(config: config, environment: context.environment),
            try? ClaudeBackendFactory.oauthToken(config: config, environment: context.environment),
        ] {
            if let secret { secrets.append(secret) }
        }
        for name in ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"] {
            if let value = context.environment[name], !value.isEmpty { secrets.append(value) }
        }
        return secrets
    }

    func makeSession(
        settings: SessionSettings? = nil, onConnect: @escaping @Sendable (MarketSession) async -> Void = { _ in },
        onDisconnect: @escaping @Sendable (String) -> Void = { _ in }
    ) -> MarketSession {
        var hooks = MarketSession.Hooks()
        let database = self.database
        hooks.auditHead = { try? database.signedAuditHead() }
        hooks.onRefusal = { type, reason in
            _ = try? database.audit(
                actor: "market-client", kind: "market.frame-refused", details: ["type": type, "reason": reason],
                at: Date())
        }
        hooks.onConnect = onConnect
        hooks.onDisconnect = onDisconnect
        var logger = Logger(label: "cmm.session")
        logger.logLevel = .critical
        return MarketSession(
            keys: ring, settings: settings ?? SessionSettings(url: url), outbox: Outbox(database: database),
            knownSecrets: knownSecrets, hooks: hooks, logger: logger)
    }

    /// Runs `body` with a connected session (or, with `requireConnection: false`, a session
    /// that may still be trying); queued messages get a moment to go out before it closes.
    func withSession<T: Sendable>(
        requireConnection: Bool = true, connectTimeout: Duration = .seconds(5),
        _ body: @Sendable (MarketSession) async throws -> T
    ) async throws -> T {
        let session = makeSession()
        let runner = Task { await session.run() }
        do {
            do {
                try await session.waitUntilConnected(timeout: connectTimeout)
            } catch  where requireConnection {
                throw CLIError("\(error)", exitCode: MarketExit.unreachable)
            } catch {}
            let result = try await body(session)
            await session.drainOutbox(timeout: .seconds(3))
            runner.cancel()
            await runner.value
            return result
        } catch {
            runner.cancel()
            await runner.value
            throw error
        }
    }

    /// Sends one message and prints what the market said; when the market is unreachable the
    /// message waits in the outbox (an expired one is never sent) and the command exits 75.
    func sendOrQueue(
        _ type: MessageType, _ body: some Encodable & Sendable, expiresMs: Int64? = nil, what: String,
        connectTimeout: Duration = .seconds(5)
    ) async throws -> AckBody {
        let answer: AckBody? = try await withSession(requireConnection: false, connectTimeout: connectTimeout) {
            session in
            if await session.isConnected {
                do {
                    return try await session.request(type, body, expiresMs: expiresMs, timeout: .seconds(15))
                } catch  where error is MarketError || error is MarketClientError {
                    throw CLIError("the market refused \(what): \(error)")
                }
            }
            try await session.enqueue(type, body, expiresMs: expiresMs)
            return nil
        }
        guard let answer else {
            throw CLIError(
                "the market at \(url) is unreachable: \(what) is queued and goes out on the next connection"
                    + (expiresMs.map { ", unless it expires first (\(Date(unixMilliseconds: $0).ISO8601Format()))" }
                        ?? ""),
                exitCode: MarketExit.queued)
        }
        return answer
    }

    // MARK: Read views

    func get<T: Decodable & Sendable>(_ type: T.Type, _ path: String) async throws -> T? {
        do {
            return try await MarketViewsClient.with(url: url) { try await $0.get(type, path) }
        } catch let error as MarketViewsError {
            if case .notMarketURL = error { throw CLIError(error.description, exitCode: 2) }
            throw CLIError(error.description)
        } catch {
            throw CLIError("the market at \(url) is unreachable (\(error))", exitCode: MarketExit.unreachable)
        }
    }

    func peer(_ id: String) async throws -> MarketViews.PeerView? {
        try await get(MarketViews.PeerView.self, "/v1/peers/\(id)")
    }

    /// This participant as the market sees it; a first handshake introduces it (credits minted
    /// before that are already on its account).
    func myself() async throws -> MarketViews.PeerView {
        if let view = try await peer(me) { return view }
        try await withSession { _ in }
        guard let view = try await peer(me) else {
            throw CLIError("the market at \(url) does not list \(me) after a handshake", exitCode: 1)
        }
        return view
    }

    func offers() async throws -> [MarketViews.OfferView] {
        try await get([MarketViews.OfferView].self, "/v1/offers") ?? []
    }
}

/// The price and wait a task would meet in the live book, or why no offer fits.
struct BookEstimate: Codable {
    var eligibleOffers: Int
    var freeSlots: Int
    var price: Int64?
    var why: String?
    /// Offers that fit but are paused for their provider's capacity, and when the first returns.
    var pausedOffers = 0
    var capacityReturnsMs: Int64?

    init(
        offers: [MarketViews.OfferView], me: String, maxPrice: Int64, minReputation: Double, model: String?,
        myReputation: Double
    ) {
        let others = offers.filter { $0.provider != me }
        let priced = others.filter { $0.price <= maxPrice }
        let reputable = priced.filter { $0.reputation.score >= minReputation }
        let accepting = reputable.filter { myReputation >= $0.minRequesterReputation }
        let modelled = accepting.filter { offer in
            model.map { offer.models.isEmpty || offer.models.contains($0) } ?? true
        }
        let paused = modelled.filter { $0.pausedUntilMs != nil }
        let free = modelled.filter { $0.freeSlots > 0 && $0.pausedUntilMs == nil }
        pausedOffers = paused.count
        capacityReturnsMs = paused.compactMap(\.pausedUntilMs).min()
        eligibleOffers = free.count
        // The counts are the market's word: summed without trapping on a hostile one.
        freeSlots = free.map(\.freeSlots).saturatingSum()
        price = free.map(\.price).min()
        if others.isEmpty {
            why = "no provider has an offer on the market"
        } else if priced.isEmpty {
            why =
                "the price \(Credits(micro: maxPrice)) is below every offer (cheapest \(Credits(micro: others.map(\.price).min()!)))"
        } else if reputable.isEmpty {
            why = "no offer within the price has a reputation of at least \(minReputation)"
        } else if accepting.isEmpty {
            why = "every fitting provider asks a requester reputation above yours (\(myReputation))"
        } else if modelled.isEmpty {
            why = "no fitting provider offers the model \(model ?? "")"
        } else if free.isEmpty, let returns = capacityReturnsMs {
            why =
                "capacity returns at \(Matching.time(returns)) (\(paused.count) offer(s) paused for their account's limits)"
        } else if free.isEmpty {
            why = "all \(modelled.map(\.slots).saturatingSum()) slots of the fitting providers are busy"
        } else {
            why = nil
        }
    }
}

/// `--url` is checked when the arguments are parsed: a bad one stops the command, with the
/// reason, before it reads a file or opens a connection.
extension MarketURL {
    static func argument(_ text: String) throws -> MarketURL {
        do { return try MarketURL(validating: text) } catch { throw ValidationError("\(error)") }
    }
}
