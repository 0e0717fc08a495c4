import Crypto
import Foundation
import GRDB
import MarketCore
import MarketCrypto

/// One entry of the append-only audit log.
public struct AuditEntry: Codable, Sendable, Equatable {
    public var seq: Int64
    public var at: Date
    public var actor: String
    public var kind: String
    /// A JSON object with sorted keys. Never holds a secret: values pass the redactor first.
    public var details: String
    public var prevHash: String
    public var hash: String

    static let domain = "claude-max-market/audit/v1\u{0}"
    public static let genesisHash = String(repeating: "0", count: 64)

    /// SHA-256 over the previous hash and this entry's canonical bytes.
    public static func computeHash(
        seq: Int64, atMs: Int64, actor: String, kind: String, details: String, prevHash: String
    ) -> String {
        let bytes = CanonicalBytes.lengthPrefixed(
            domain: domain, fields: [prevHash, String(seq), String(atMs), actor, kind, details])
        return SHA256.hash(data: bytes).hexString
    }
}

extension AuditEntry {
    init(row: Row) {
        seq = row["seq"]
        at = Date(unixMilliseconds: row["at_ms"])
        actor = row["actor"]
        kind = row["kind"]
        details = row["details"]
        prevHash = row["prev_hash"]
        hash = row["hash"]
    }
}

/// The outcome of `audit --verify`.
public struct AuditVerification: Codable, Sendable, Equatable {
    public var intact: Bool
    public var entries: Int
    /// The first entry that does not verify (or the position where one is missing).
    public var firstBrokenSeq: Int64?
    public var reason: String?
    /// The head a market witnessed (`seq:hash:signature`), when one was checked.
    public var anchor: String?
}

/// Appends to and verifies the SHA-256 chain. Appends happen inside the caller's transaction so
/// that a state change and its audit entry commit together or not at all.
public enum AuditLog {
    static let headKey = "audit.head"
    static let headSignatureKey = "audit.head.sig"

    /// What the identity signs: the head, `seq:hash`, under a fixed label.
    static func headMessage(_ head: String) -> Data { Data("claude-max-market audit head\n\(head)".utf8) }

    /// Appends one entry and moves the head; with a signer (the identity, once it exists) the new
    /// head is signed, so that removing entries from the end and rewriting the head cannot go
    /// unnoticed by someone without the key file.
    @discardableResult
    public static func append(
        _ db: Database, actor: String, kind: String, details: [String: String], at: Date, signer: PeerIdentity?
    ) throws -> AuditEntry {
        let redactor = SecretRedactor()
        let cleaned = details.mapValues { redactor.redact($0).text }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let detailsJSON = String(decoding: try encoder.encode(cleaned), as: UTF8.self)
        let last = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        let seq: Int64 = (last?["seq"] ?? 0) + 1
        let prevHash: String = last?["hash"] ?? AuditEntry.genesisHash
        let atMs = at.unixMilliseconds
        let hash = AuditEntry.computeHash(
            seq: seq, atMs: atMs, actor: actor, kind: kind, details: detailsJSON, prevHash: prevHash)
        try db.execute(
            sql: "INSERT INTO audit (seq, at_ms, actor, kind, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            arguments: [seq, atMs, actor, kind, detailsJSON, prevHash, hash])
        let head = "\(seq):\(hash)"
        try db.execute(
            sql: "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            arguments: [headKey, head])
        if let signer {
            try db.execute(
                sql:
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                arguments: [headSignatureKey, try signer.sign(headMessage(head)).base64EncodedString()])
        } else {
            try db.execute(sql: "DELETE FROM meta WHERE key = ?", arguments: [headSignatureKey])
        }
        return AuditEntry(
            seq: seq, at: Date(unixMilliseconds: atMs), actor: actor, kind: kind, details: detailsJSON,
            prevHash: prevHash, hash: hash)
    }

    public struct Filter: Sendable {
        public var since: Date?
        public var kind: String?
        public init(since: Date? = nil, kind: String? = nil) {
            self.since = since
            self.kind = kind
        }
    }

    public static func entries(_ db: Database, filter: Filter = Filter()) throws -> [AuditEntry] {
        var clauses: [String] = []
        var arguments: StatementArguments = []
        if let since = filter.since {
            clauses.append("at_ms >= ?")
            arguments += [since.unixMilliseconds]
        }
        if let kind = filter.kind {
            clauses.append("(kind = ? OR kind LIKE ?)")
            arguments += [kind, kind + ".%"]
        }
        let condition = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        return try Row.fetchAll(db, sql: "SELECT * FROM audit \(condition) ORDER BY seq", arguments: arguments)
            .map(AuditEntry.init(row:))
    }

    /// Recomputes the chain from the first entry. Edited, deleted, inserted or reordered rows
    /// all break it; a removed tail is caught by the head pointer kept beside the chain, and once
    /// the participant has an identity (`signer`), the head must carry its signature: a head
    /// rewritten after entries were removed, or a log emptied with its head, does not.
    public static func verify(_ db: Database, identity: Curve25519.Signing.PublicKey? = nil) throws
        -> AuditVerification
    {
        let rows = try Row.fetchAll(db, sql: "SELECT * FROM audit ORDER BY rowid")
        var expectedPrev = AuditEntry.genesisHash
        var expectedSeq: Int64 = 1
        for row in rows {
            let entry = AuditEntry(row: row)
            func broken(_ reason: String) -> AuditVerification {
                AuditVerification(intact: false, entries: rows.count, firstBrokenSeq: expectedSeq, reason: reason)
            }
            if entry.seq != expectedSeq {
                return broken("expected entry \(expectedSeq) here, found \(entry.seq) (missing, inserted or reordered)")
            }
            if entry.prevHash != expectedPrev {
                return broken("its previous-hash does not match entry \(expectedSeq - 1)")
            }
            let recomputed = AuditEntry.computeHash(
                seq: entry.seq, atMs: row["at_ms"], actor: entry.actor, kind: entry.kind,
                details: entry.details, prevHash: entry.prevHash)
            if recomputed != entry.hash {
                return broken("its content does not match its hash (edited)")
            }
            expectedPrev = entry.hash
            expectedSeq += 1
        }
        let head = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [headKey])
        let actualHead = rows.isEmpty ? nil : "\(expectedSeq - 1):\(expectedPrev)"
        if head != actualHead {
            let recorded = head.flatMap { Int64($0.split(separator: ":").first ?? "") }
            return AuditVerification(
                intact: false, entries: rows.count,
                firstBrokenSeq: recorded.map { min($0, expectedSeq) } ?? expectedSeq,
                reason: "the chain ends at entry \(expectedSeq - 1) but the recorded head is \(head ?? "absent")"
                    + " (entries removed from the end)")
        }
        if let identity {
            let signature = try String.fetchOne(
                db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [headSignatureKey])
            guard let head, let signature, let bytes = Data(base64Encoded: signature),
                identity.isValidSignature(bytes, for: headMessage(head))
            else {
                return AuditVerification(
                    intact: false, entries: rows.count, firstBrokenSeq: expectedSeq,
                    reason: head == nil
                        ? "the log is empty but this home has an identity, which signs every head (entries removed)"
                        : "the head \(head ?? "") is not signed by this home's identity (entries removed and the head rewritten)"
                )
            }
        }
        return AuditVerification(intact: true, entries: rows.count, firstBrokenSeq: nil, reason: nil)
    }
}

extension StateDatabase {
    /// Appends one audit entry in its own transaction.
    @discardableResult
    public func audit(actor: String, kind: String, details: [String: String], at: Date) throws -> AuditEntry {
        let signer = try auditSigner()
        return try immediateWrite { db in
            try AuditLog.append(db, actor: actor, kind: kind, details: details, at: at, signer: signer)
        }
    }

    public func auditEntries(filter: AuditLog.Filter = AuditLog.Filter()) throws -> [AuditEntry] {
        try pool.read { db in try AuditLog.entries(db, filter: filter) }
    }

    public func verifyAudit() throws -> AuditVerification {
        let identity = try auditSigner()?.publicKey
        return try pool.read { db in try AuditLog.verify(db, identity: identity) }
    }
}
