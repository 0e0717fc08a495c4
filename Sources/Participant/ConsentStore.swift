import Foundation
import GRDB
import MarketCrypto

/// What the participant has agreed to: terms acceptance and opt-in, derived from an
/// append-only list of consent events.
public struct ConsentState: Codable, Sendable, Equatable {
    public struct TermsAcceptance: Codable, Sendable, Equatable {
        public var version: String
        public var sha256: String
        public var at: Date
    }

    public struct OptIn: Codable, Sendable, Equatable {
        public var scope: String
        public var at: Date
    }

    /// The latest acceptance, of whatever version.
    public var lastAcceptance: TermsAcceptance?
    public var optIn: OptIn?

    /// True only when the current notice (same version and text hash) was accepted.
    public var termsAccepted: Bool {
        lastAcceptance?.version == TermsNotice.version && lastAcceptance?.sha256 == TermsNotice.sha256
    }
}

public struct ConsentError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

public struct ConsentStore: Sendable {
    public static let claudeJobsScope = "claude-jobs"

    let database: StateDatabase

    public init(database: StateDatabase) {
        self.database = database
    }

    public func current() throws -> ConsentState {
        try database.pool.read { db in try Self.current(db) }
    }

    static func current(_ db: Database) throws -> ConsentState {
        var state = ConsentState()
        for row in try Row.fetchAll(db, sql: "SELECT * FROM consent_events ORDER BY id") {
            let at = Date(unixMilliseconds: row["at_ms"])
            switch row["kind"] as String {
            case "terms.accepted":
                state.lastAcceptance = .init(version: row["terms_version"], sha256: row["terms_sha256"], at: at)
            case "opt-in":
                state.optIn = .init(scope: row["scope"], at: at)
            case "opt-out":
                state.optIn = nil
            default:
                continue
            }
        }
        return state
    }

    public func acceptTerms(actor: String, at now: Date) throws {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            try db.execute(
                sql:
                    "INSERT INTO consent_events (kind, terms_version, terms_sha256, at_ms) VALUES ('terms.accepted', ?, ?, ?)",
                arguments: [TermsNotice.version, TermsNotice.sha256, now.unixMilliseconds])
            try AuditLog.append(
                db, actor: actor, kind: "terms.accepted",
                details: ["version": TermsNotice.version, "sha256": TermsNotice.sha256], at: now, signer: signer)
        }
    }

    /// Records an opt-in. Refused unless the current terms were accepted.
    public func optIn(scope: String, actor: String, at now: Date) throws {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            let state = try Self.current(db)
            guard state.termsAccepted else {
                let detail =
                    state.lastAcceptance.map {
                        "you accepted version \($0.version), the current one is \(TermsNotice.version)"
                    }
                    ?? "no terms were accepted yet"
                throw ConsentError(
                    description: "opt-in needs the current terms accepted (\(detail)): run `claude-max-market terms`, "
                        + "then `claude-max-market terms --accept`")
            }
            try db.execute(
                sql: "INSERT INTO consent_events (kind, scope, at_ms) VALUES ('opt-in', ?, ?)",
                arguments: [scope, now.unixMilliseconds])
            try AuditLog.append(
                db, actor: actor, kind: "consent.opt-in", details: ["scope": scope], at: now, signer: signer)
        }
    }

    /// Revokes the opt-in at once. Returns false when there was nothing to revoke (still audited).
    @discardableResult
    public func optOut(actor: String, at now: Date) throws -> Bool {
        let signer = try database.auditSigner()
        return try database.immediateWrite { db in
            let wasOptedIn = try Self.current(db).optIn != nil
            try db.execute(
                sql: "INSERT INTO consent_events (kind, at_ms) VALUES ('opt-out', ?)", arguments: [now.unixMilliseconds]
            )
            try AuditLog.append(
                db, actor: actor, kind: "consent.opt-out", details: ["wasOptedIn": String(wasOptedIn)], at: now,
                signer: signer)
            return wasOptedIn
        }
    }
}
