import ArgumentParser
import Foundation
import MarketCrypto
import Participant

struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Your identity (Ed25519) and sealing keys (HPKE X25519, X-Wing, RSA-OAEP).",
        subcommands: [Show.self, ExportPublic.self, Rotate.self],
        defaultSubcommand: Show.self
    )

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show", abstract: "Peer id, public keys, created / rotated times, suites.")

        @OptionGroup var output: JSONOutput

        struct Report: Codable {
            struct Generation: Codable {
                var created: Date
                var retired: Date?
                var expires: Date?
                var keyIds: [String: String]
            }

            var peerId: String
            var signingSuite = "ed25519"
            var signingKey: String
            var identityCreated: Date
            var identityRotations: Int
            var sealingSuites: [String]
            var sealingKeys: [String: String]
            var sealingCreated: Date
            var lastRotated: Date?
            var rotationDays: Int
            var nextRotation: Date
            var generations: [Generation]
        }

        func run() async throws {
            let context = CommandContext()
            let config = try context.config()
            let ring = try context.keyRing(database: try context.database(), config: config)
            let days = Int(config.integer(.keyRotationDays))
            var keys: [String: String] = [:]
            for suite in SealSuite.allCases {
                keys[suite.name] = ring.current.publicKeys.key(for: suite).base64EncodedString()
            }
            let report = Report(
                peerId: ring.peerID.rawValue,
                signingKey: ring.identity.publicKey.rawRepresentation.base64EncodedString(),
                identityCreated: ring.identity.created, identityRotations: ring.identityHistory.count,
                sealingSuites: SealSuite.allCases.map(\.name), sealingKeys: keys, sealingCreated: ring.current.created,
                lastRotated: ring.generations.count > 1 ? ring.current.created : nil, rotationDays: days,
                nextRotation: ring.current.created.addingTimeInterval(Double(days) * 86_400),
                generations: ring.generations.map { generation in
                    var ids: [String: String] = [:]
                    for suite in SealSuite.allCases {
                        ids[suite.name] =
                            SealSuite.keyID(suite: suite, publicKey: generation.publicKeys.key(for: suite)).hexString
                    }
                    return Report.Generation(
                        created: generation.created, retired: generation.retired,
                        expires: generation.retired?.addingTimeInterval(Double(days) * 86_400), keyIds: ids)
                })
            if output.json {
                try Output.json(report)
                return
            }
            Output.line("peer id:        \(report.peerId)")
            Output.line("signing key:    ed25519 \(report.signingKey)")
            Output.line("identity since: \(report.identityCreated.ISO8601Format())")
            Output.line("sealing keys:   created \(report.sealingCreated.ISO8601Format()), rotates after \(days) days")
            for suite in SealSuite.allCases {
                let key = keys[suite.name]!
                Output.line(
                    "  \(suite.name.padding(toLength: 14, withPad: " ", startingAt: 0)) \(key.prefix(44))\(key.count > 44 ? "…" : "")"
                )
            }
            let retired = report.generations.filter { $0.retired != nil }
            if !retired.isEmpty {
                Output.line(
                    "retired keys:   \(retired.count) (kept to open older ciphertext until their grace period ends)")
            }
        }
    }

    struct ExportPublic: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export-public",
            abstract: "Write your signed public key document, which others use as --recipient.")

        @Option(name: .long, help: ArgumentHelp("Write to FILE instead of stdout.", valueName: "FILE"))
        var output: String?

        func run() async throws {
            let context = CommandContext()
            let ring = try context.keyRing(database: try context.database(), config: try context.config())
            let data = try PublicKeyDocument(ring: ring).encoded()
            try Output.write(data, to: output ?? "-")
            if let output, output != "-" { Output.note("wrote the public key document of \(ring.peerID) to \(output)") }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate",
            abstract: "Make a new sealing key (old ones open older ciphertext for security.keyRotationDays).",
            discussion:
                "--identity replaces the signing key instead: the old key signs the new one, and the peer id changes.")

        @Flag(name: .long, help: "Rotate the identity (signing) key; the peer id changes.") var identity = false
        @Flag(name: .long, help: "Do not ask for confirmation (for scripts).") var yes = false
        @OptionGroup var output: JSONOutput

        func run() async throws {
            let context = CommandContext()
            let config = try context.config()
            let database = try context.database()
            let days = Int(config.integer(.keyRotationDays))
            let before = try context.keyRing(database: database, config: config)
            if identity {
                guard
                    try Output.confirm(
                        "Replace your identity key? Your peer id \(before.peerID) will change.", assumeYes: yes)
                else { throw CLIError("identity not rotated: not confirmed") }
                let (ring, rotation) = try context.keyStore.rotateIdentity(now: context.now, rotationDays: days)
                try context.auditKeyEvent(
                    .identityRotated(oldPeerID: rotation.oldPeerID, newPeerID: rotation.newPeerID), ring: ring,
                    database: database)
                if output.json {
                    try Output.json(rotation)
                } else {
                    Output.line(
                        "identity rotated: \(rotation.oldPeerID) → \(rotation.newPeerID) (signed by the old key)")
                }
                return
            }
            let ring = try context.keyStore.rotateSealing(now: context.now, rotationDays: days)
            try context.auditKeyEvent(
                .sealingRotated(automatic: false, previousCreated: before.current.created), ring: ring,
                database: database)
            if output.json {
                try Output.json([
                    "peerId": ring.peerID.rawValue, "created": ring.current.created.ISO8601Format(),
                    "retiredKeys": String(ring.generations.count - 1),
                ])
            } else {
                Output.line(
                    "sealing keys rotated; the previous ones open older ciphertext for \(days) more days, "
                        + "then `claude-max-market clean` removes them")
            }
        }
    }
}
