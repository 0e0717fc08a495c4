import ArgumentParser
import Foundation
import MarketClient
import MarketProtocol
import Participant

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Show the append-only audit log, or verify its SHA-256 chain with --verify.",
        discussion: """
            Each entry holds the hash of the one before it, so editing, deleting, inserting or \
            reordering entries breaks the chain; --verify names the first broken entry and exits 1.
            """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case table, json, csv
    }

    @Option(name: .long, help: "Output format: table, json or csv.") var format: Format = .table
    @Option(
        name: .long,
        help: ArgumentHelp("Only entries at or after this time: \(DateArgument.allowed).", valueName: "DATE"))
    var since: String?
    @Option(name: .long, help: ArgumentHelp("Only entries of this kind (or its sub-kinds).", valueName: "KIND"))
    var kind: String?
    @Option(name: .long, help: ArgumentHelp("Write to FILE instead of stdout.", valueName: "FILE"))
    var output: String?
    @Flag(name: .long, help: "Recompute the hash chain; exit 0 when intact, 1 otherwise.")
    var verify = false
    @Flag(name: .long, help: "With --verify: print JSON.") var json = false

    func run() async throws {
        let context = CommandContext()
        let database = try context.database()
        if verify {
            var result = try database.verifyAudit()
            let anchor = await Self.marketAnchor(context: context)
            result.anchor = anchor.map(\.anchor)
            if result.intact, let anchor {
                let check = try database.auditExtends(anchor: anchor.anchor)
                if !check.ok {
                    result.intact = false
                    result.reason = "\(check.reason ?? "") — witnessed by \(anchor.url)"
                    result.firstBrokenSeq = Int64(anchor.anchor.split(separator: ":").first ?? "")
                }
            }
            if json || format == .json {
                try Output.json(result)
            } else if result.intact {
                Output.line(
                    "audit chain intact: \(result.entries) entries"
                        + (anchor.map {
                            "; it extends the head the market at \($0.url) witnessed (\($0.anchor.split(separator: ":").prefix(1).joined()))"
                        } ?? ""))
            } else {
                Output.line(
                    "audit chain BROKEN at entry \(result.firstBrokenSeq ?? 0): \(result.reason ?? "") "
                        + "(\(result.entries) entries)")
            }
            if !result.intact { throw ExitCode.failure }
            return
        }
        var filter = AuditLog.Filter(kind: kind)
        if let since {
            guard let date = DateArgument.parse(since, now: context.now) else {
                throw ValidationError("--since '\(since)' is not \(DateArgument.allowed)")
            }
            filter.since = date
        }
        let entries = try database.auditEntries(filter: filter)
        let data: Data
        switch format {
        case .json:
            data = try Output.jsonData(entries)
        case .csv:
            var lines = ["seq,at,actor,kind,details,prev_hash,hash"]
            for entry in entries {
                lines.append(
                    [
                        String(entry.seq), entry.at.ISO8601Format(), entry.actor, entry.kind, entry.details,
                        entry.prevHash, entry.hash,
                    ]
                    .map(Output.csvField).joined(separator: ","))
            }
            data = Data((lines.joined(separator: "\n") + "\n").utf8)
        case .table:
            let table = Output.table(
                ["SEQ", "AT", "ACTOR", "KIND", "DETAILS"],
                entries.map { [String($0.seq), $0.at.ISO8601Format(), $0.actor, $0.kind, $0.details] })
            data = Data((table + "\n").utf8)
        }
        if let output {
            try Output.write(data, to: output)
        } else {
            Output.stdout(data)
        }
    }
}

extension AuditCommand {
    /// The head of this home's log that the market last saw, when a market is configured and
    /// answers within a second; nil otherwise (offline, the local checks stand alone).
    static func marketAnchor(context: CommandContext) async -> (url: String, anchor: String)? {
        guard let config = try? context.config(), let identity = try? context.keyStore.identityKey() else {
            return nil
        }
        let url = config.text(.marketURL)
        let path = "/v1/peers/\(identity.peerID.rawValue)"
        guard
            let view = try? await MarketViewsClient.with(
                url: url, connectTimeout: .seconds(1), timeout: .seconds(2),
                { try await $0.get(MarketViews.PeerView.self, path) }),
            let anchor = view.auditHead
        else { return nil }
        return (url, anchor)
    }
}
