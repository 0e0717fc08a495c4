import Foundation
import MarketCore
import MarketCrypto
import Participant

/// What every command needs: the paths, the environment, the resolved config and the local
/// database, opened on first use.
struct CommandContext {
    let environment: [String: String]
    let paths: ParticipantPaths
    let configStore: ConfigStore
    /// Who is acting, for audit entries.
    let actor = "user"

    init(flags: [String: String] = [:]) {
        environment = ProcessInfo.processInfo.environment
        paths = ParticipantPaths(environment: environment)
        configStore = ConfigStore(paths: paths, environment: environment, flags: flags)
    }

    func config() throws -> ResolvedConfig {
        try configStore.resolve()
    }

    func database() throws -> StateDatabase {
        try StateDatabase(paths: paths)
    }

    var now: Date { Date() }
}

/// An error the CLI reports as `error: <message>` with a chosen exit code.
package struct CLIError: Error, CustomStringConvertible {
    package let message: String
    package var exitCode: Int32 = 1

    package init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    package var description: String { message }
}

extension CommandContext {
    var keyStore: KeyStore { KeyStore(directory: paths.keysDirectory) }

    /// The participant's keys, created on first use and rotated when the sealing key is older
    /// than `security.keyRotationDays`; whatever happened is written to the audit log.
    func keyRing(database: StateDatabase, config: ResolvedConfig) throws -> KeyRing {
        try paths.prepare()
        let (ring, events) = try keyStore.loadOrCreate(now: now, rotationDays: Int(config.integer(.keyRotationDays)))
        for event in events {
            try auditKeyEvent(event, ring: ring, database: database)
        }
        return ring
    }

    func auditKeyEvent(_ event: KeyEvent, ring: KeyRing, database: StateDatabase) throws {
        switch event {
        case .identityCreated(let peerID):
            try database.audit(actor: "system", kind: "keys.created", details: ["peerId": peerID], at: now)
        case .sealingRotated(let automatic, let previousCreated):
            try database.audit(
                actor: automatic ? "system" : actor, kind: "keys.rotated",
                details: [
                    "peerId": ring.peerID.rawValue, "automatic": String(automatic),
                    "previousCreated": previousCreated.ISO8601Format(),
                ], at: now)
        case .sealingRecovered:
            try database.audit(
                actor: "system", kind: "keys.sealing-recovered",
                details: [
                    "peerId": ring.peerID.rawValue,
                    "reason":
                        "identity found without its sealing key (an interrupted first run); a new sealing key was made",
                ], at: now)
        case .identityRotated(let old, let new):
            try database.audit(
                actor: actor, kind: "keys.identity-rotated", details: ["oldPeerId": old, "newPeerId": new], at: now)
        case .retiredRemoved(let count):
            try database.audit(
                actor: actor, kind: "keys.removed", details: ["peerId": ring.peerID.rawValue, "count": String(count)],
                at: now)
        }
    }
}
