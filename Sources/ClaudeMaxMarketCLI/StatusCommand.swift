import ArgumentParser
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketServer
import Participant

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Consent, limits and usage at a glance."
    )

    @Flag(name: .long, help: "Print JSON.") var json = false

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
            market: await Self.market(context: context, config: config, database: database)
        )
        if json {
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
        Output.line("")
        Output.line(LimitsReport.table(limits: report.limits, usage: report.usage))
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
            market.note = "\(error)".contains("404") ? "the market has not seen this peer yet" : "no answer"
            market.reachable = "\(error)".contains("404")
        }
        return market
    }
}
