import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Consent, limits and usage at a glance."
    )

    @OptionGroup var output: JSONOutput

    struct Report: Codable {
        struct Market: Codable {
            var url: String
            /// The market answered and knows this peer.
            var reachable: Bool
            var outbox: Int
            /// This home's standing offer, as `provide` keeps it live.
            var offer: AdvertiseBody?
            /// Whether the market lists that offer now (a running `provide` keeps it there).
            var offerLive: Bool
            var balance: Int64?
            var note: String?
        }

        var optedIn: Bool
        var optInScope: String?
        var termsAccepted: Bool
        var termsVersionAccepted: String?
        var termsVersionCurrent: String
        var approvalMode: String
        /// The peer id, once keys exist (`keys show` makes them).
        var identity: String?
        var limits: Limits
        var usage: UsageSnapshot
        var market: Market
        var capacity: Capacity
    }

    /// The account's windows as the gateway last read them, the shares given, and whether the
    /// offer is paused for them (and until when).
    struct Capacity: Codable {
        var fiveHourShare: Double
        var weeklyShare: Double
        var perMinuteShare: Double
        var windows: [LimitReading]
        var pausedUntil: Date?
        var pausedFor: String?
        var reason: String?
    }

    func run() async throws {
        let context = CommandContext()
        let config = try context.config()
        let database = try context.database()
        let consent = try ConsentStore(database: database).current()
        let report = Report(
            optedIn: consent.optIn != nil,
            optInScope: consent.optIn?.scope,
            termsAccepted: consent.termsAccepted,
            termsVersionAccepted: consent.lastAcceptance?.version,
            termsVersionCurrent: TermsNotice.version,
            approvalMode: config.text(.approvalMode),
            identity: try context.keyStore.load(now: context.now, rotationDays: Int(config.integer(.keyRotationDays)))?
                .peerID.rawValue,
            limits: Limits(config: config),
            usage: try JobStore(database: database).usage(at: context.now),
            market: await Self.market(context: context, config: config, database: database),
            capacity: try Self.capacity(config: config, database: database, now: context.now)
        )
        if output.json {
            try Output.json(report)
            return
        }
        Output.line("opted in:       \(report.optedIn ? "yes (\(report.optInScope ?? ""))" : "no")")
        Output.line(
            "terms:          "
                + (report.termsAccepted
                    ? "accepted (version \(TermsNotice.version))"
                    : "not accepted (current version \(TermsNotice.version))"))
        Output.line("approval mode:  \(report.approvalMode)")
        Output.line("identity:       \(report.identity ?? "none yet (made on first use, e.g. `keys show`)")")
        let market = report.market
        Output.line(
            "market:         \(market.url) — "
                + (market.reachable ? "reachable" : "unreachable\(market.note.map { " (\($0))" } ?? "")")
                + (market.balance.map { ", balance \(Credits(micro: $0))" } ?? "")
                + ", outbox \(market.outbox)")
        if let offer = market.offer {
            Output.line(
                "offer:          \(offer.slots) slot(s) at \(Credits(micro: offer.price)) — "
                    + (market.offerLive ? "live" : "not live (run `provide`)"))
        } else {
            Output.line("offer:          none (`advertise --slots N --price P`)")
        }
        let capacity = report.capacity
        Output.line(
            "capacity:       "
                + (capacity.pausedUntil.map {
                    "paused until \($0.formatted(.iso8601)): \(capacity.reason ?? "")"
                } ?? "available")
                + " (shares: 5-hour \(capacity.fiveHourShare), weekly \(capacity.weeklyShare), per-minute \(capacity.perMinuteShare))"
        )
        for window in capacity.windows {
            Output.line(
                "  \(window.window): \(window.status)"
                    + (window.utilization.map { ", \(Int(($0 * 100).rounded())) % used" } ?? "")
                    + (window.resetsAt.map { ", resets \($0.formatted(.iso8601))" } ?? ""))
        }
        Output.line("")
        Output.line(LimitsReport.table(limits: report.limits, usage: report.usage))
    }

    static func capacity(config: ResolvedConfig, database: StateDatabase, now: Date) throws -> Capacity {
        let shares = CapacityShares(config: config)
        let windows = try AccountLimitStore(database: database).all()
        let pause = shares.pause(for: windows, now: now)
        return Capacity(
            fiveHourShare: shares.fiveHour, weeklyShare: shares.weekly, perMinuteShare: shares.perMinute,
            windows: windows, pausedUntil: pause?.until, pausedFor: pause?.window, reason: pause?.reason)
    }
}

extension StatusCommand {
    static func market(context: CommandContext, config: ResolvedConfig, database: StateDatabase) async
        -> Report.Market
    {
        let url = config.text(.marketURL)
        var market = Report.Market(
            url: url, reachable: false, outbox: (try? Outbox(database: database).count()) ?? 0,
            offer: try? OfferStore(database: database).load(), offerLive: false)
        guard let identity = try? context.keyStore.identityKey(), (try? MarketViewsClient.httpBase(of: url)) != nil
        else {
            market.note = "no identity yet"
            return market
        }
        let me = identity.peerID.rawValue
        do {
            let (peer, offers) = try await MarketViewsClient.with(
                url: url, connectTimeout: .seconds(1), timeout: .seconds(2)
            ) { views in
                let peer = try await views.require(MarketViews.PeerView.self, "/v1/peers/\(me)")
                return (peer, try await views.require([MarketViews.OfferView].self, "/v1/offers"))
            }
            market.reachable = true
            market.balance = peer.balance
            market.offerLive = offers.contains { $0.provider == me }
        } catch {
            // A 404 for this peer is an answer: the market is there and has not seen it yet.
            let unseen =
                (error as? MarketViewsError).map { if case .status(_, 404) = $0 { true } else { false } } ?? false
            market.note = unseen ? "the market has not seen this peer yet" : "no answer"
            market.reachable = unseen
        }
        return market
    }
}
