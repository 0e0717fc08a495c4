import ArgumentParser
import Foundation
import Logging
import MarketClient
import MarketCore
import MarketProtocol
import Participant

// `market status` and `market sync`: this participant's view of the market at market.url.

struct MarketStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "What the market at market.url reports: health, counts, books, version."
    )

    @OptionGroup var market: MarketURLOption
    @OptionGroup var output: JSONOutput

    struct Participant: Codable {
        var peerId: String?
        /// The market knows this peer (it has connected at least once).
        var known: Bool
        var balance: Int64?
        /// Messages waiting in this home's outbox for the market's answer.
        var outbox: Int
    }

    struct Report: Codable {
        var participant: Participant?
        var url: String
        var health: MarketViews.HealthView
        var stats: MarketViews.StatsView
    }

    func run() async throws {
        let context = CommandContext()
        let marketURL = try market.url?.text ?? context.config().text(.marketURL)
        do {
            _ = try MarketViewsClient.httpBase(of: marketURL)
        } catch {
            throw CLIError(error.description, exitCode: 2)
        }
        do {
            let database = try? context.database()
            let peer = try? context.keyStore.identityKey()?.peerID.rawValue
            let (health, stats, view) = try await MarketViewsClient.with(url: marketURL, timeout: .seconds(5)) {
                views in
                let health = try await views.require(MarketViews.HealthView.self, "/health")
                let stats = try await views.require(MarketViews.StatsView.self, "/v1/stats")
                let view = try? await peer.asyncMap {
                    try await views.get(MarketViews.PeerView.self, "/v1/peers/\($0)")
                }
                return (health, stats, view ?? nil)
            }
            let participant = database.map {
                Participant(
                    peerId: peer, known: view != nil, balance: view?.balance,
                    outbox: (try? Outbox(database: $0).count()) ?? 0)
            }
            let report = Report(participant: participant, url: marketURL, health: health, stats: stats)
            if output.json {
                try Output.json(report)
                return
            }
            Output.line("market       \(marketURL) (\(health.status), version \(health.version), \(health.backend))")
            Output.line(
                "uptime       \(health.uptimeSeconds) s, \(health.connections) connections, \(stats.peers) peers")
            Output.line("offers       \(stats.offers) (\(stats.freeSlots) free slots)")
            let tasks = stats.tasks.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            Output.line("tasks        \(tasks)")
            Output.line(
                "minted       \(Credits(micro: stats.minted)); in escrow \(Credits(micro: stats.inEscrow)); held back \(Credits(micro: stats.heldBack)); fees \(Credits(micro: stats.fees))"
            )
            Output.line(
                "books        \(stats.ledgerBalanced ? "balanced" : "NOT balanced (\(stats.discrepancies) discrepancies)")"
            )
            if let participant {
                Output.line(
                    "you          \(participant.peerId ?? "no identity yet"): "
                        + (participant.known
                            ? "known, balance \(Credits(micro: participant.balance ?? 0))"
                            : "not seen by this market yet")
                        + ", outbox \(participant.outbox)")
            }
        } catch let error as MarketViewsError {
            throw CLIError(error.description)
        } catch {
            if let error = error as? CLIError { throw error }
            throw CLIError("the market at \(marketURL) did not answer: \(error)")
        }
    }
}

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let self else { return nil }
        return try await transform(self)
    }
}

struct MarketSyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Sends this home's queued messages (the outbox) now and waits for the market's answers.",
        discussion: """
            Messages queued while the market was unreachable (exit code 75) go out on the next \
            connection of any market command or of `provide`; this sends them now. A message past \
            its expiry is dropped, never sent. Exits 0 when the outbox is empty, 69 when the market \
            cannot be reached, 1 when messages are still waiting for an answer.
            """
    )

    @OptionGroup var output: JSONOutput

    struct Report: Codable {
        var url: String
        /// Messages in the outbox before: each was answered by the market, or dropped as expired.
        var before: Int
        var left: Int
    }

    func run() async throws {
        let link = try MarketLink()
        let before = try Outbox(database: link.database).count()
        let left = try await link.withSession(connectTimeout: .seconds(10)) { session in
            await session.drainOutbox(timeout: .seconds(20))
        }
        let report = Report(url: link.url, before: before, left: left)
        if output.json {
            try Output.json(report)
        } else {
            Output.line(
                "outbox: \(before - left) of \(before) message(s) answered or expired, \(left) waiting (\(link.url))")
        }
        if left > 0 { throw ExitCode(1) }
    }
}
