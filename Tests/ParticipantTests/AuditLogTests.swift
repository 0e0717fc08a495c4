import Foundation
import GRDB
import MarketCrypto
import Participant
import TestSupport
import Testing

@Suite struct AuditLogTests {
    let directory = TemporaryDirectory()

    /// A database with entries of every kind the foundation writes.
    func populated() throws -> StateDatabase {
        let database = try StateDatabase(url: directory.file("state.sqlite"))
        let clock = ManualWallClock(.utc("2026-11-25T10:00:00Z"))
        let consent = ConsentStore(database: database)
        try consent.acceptTerms(actor: "user", at: clock.now)
        clock.advance(by: 1)
        try consent.optIn(scope: "claude-jobs", actor: "user", at: clock.now)
        clock.advance(by: 1)
        try database.audit(actor: "user", kind: "limits.set", details: ["limits.dailyTasks": "3"], at: clock.now)
        clock.advance(by: 1)
        try database.audit(actor: "user", kind: "config.set", details: ["docker.memory": "1g"], at: clock.now)
        clock.advance(by: 1)
        try consent.optOut(actor: "user", at: clock.now)
        return database
    }

    /// Runs raw SQL the way an attacker with file access would: triggers dropped first.
    func tamper(_ database: StateDatabase, _ sql: String, _ arguments: StatementArguments = []) throws {
        try database.pool.write { db in
            try db.execute(sql: "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete")
            try db.execute(sql: sql, arguments: arguments)
        }
    }

    @Test func anUntouchedChainVerifies() throws {
        let database = try populated()
        let result = try database.verifyAudit()
        #expect(result.intact)
        #expect(result.entries == 5)
        let kinds = try database.auditEntries().map(\.kind)
        #expect(kinds == ["terms.accepted", "consent.opt-in", "limits.set", "config.set", "consent.opt-out"])
    }

    @Test func theTableRefusesUpdatesAndDeletes() throws {
        let database = try populated()
        #expect(throws: (any Error).self) {
            try database.pool.write { db in try db.execute(sql: "UPDATE audit SET actor = 'x' WHERE seq = 1") }
        }
        #expect(throws: (any Error).self) {
            try database.pool.write { db in try db.execute(sql: "DELETE FROM audit WHERE seq = 1") }
        }
        #expect(try database.verifyAudit().intact)
    }

    @Test(arguments: ["at_ms", "actor", "kind", "details", "prev_hash", "hash"])
    func editingAnyFieldOfAnyEntryIsDetected(column: String) throws {
        for seq in 1...5 {
            let database = try populated()
            let value: DatabaseValueConvertible = column == "at_ms" ? 1 : "tampered"
            try tamper(database, "UPDATE audit SET \(column) = ? WHERE seq = ?", [value, seq])
            let result = try database.verifyAudit()
            #expect(!result.intact, "editing \(column) of entry \(seq)")
            #expect(result.firstBrokenSeq == Int64(seq), "first broken entry for \(column) of \(seq)")
            try FileManager.default.removeItem(at: directory.file("state.sqlite"))
        }
    }

    @Test func deletingAMiddleEntryIsDetected() throws {
        let database = try populated()
        try tamper(database, "DELETE FROM audit WHERE seq = 3")
        let result = try database.verifyAudit()
        #expect(!result.intact)
        #expect(result.firstBrokenSeq == 3)
    }

    @Test func deletingTheLastEntryIsDetected() throws {
        let database = try populated()
        try tamper(database, "DELETE FROM audit WHERE seq = 5")
        let result = try database.verifyAudit()
        #expect(!result.intact)
        #expect(result.reason?.contains("removed from the end") == true)
    }

    /// With an identity, every head is signed: removing entries from the end and rewriting the
    /// head to match (what only the chain would have let through), or emptying the log with its
    /// head, is caught; an untouched log still verifies.
    @Test func aRewrittenOrRemovedHeadIsCaughtOnceThereIsAnIdentity() throws {
        let keys = KeyStore(directory: directory.url.appending(path: "keys"))
        _ = try keys.loadOrCreate(now: .utc("2026-11-25T09:00:00Z"), rotationDays: 30)
        func signed() throws -> StateDatabase {
            try? FileManager.default.removeItem(at: directory.file("state.sqlite"))
            _ = try populated()
            return try StateDatabase(url: directory.file("state.sqlite"), keyStore: keys)
        }
        // Entries written without the key (populated) leave the head unsigned: one more append
        // with the key signs it, and the whole chain with it.
        let database = try signed()
        #expect(!(try database.verifyAudit().intact), "an unsigned head is not accepted once there is an identity")
        try database.audit(actor: "user", kind: "config.set", details: ["k": "v"], at: .utc("2026-11-25T11:00:00Z"))
        #expect(try database.verifyAudit().intact)

        // Tail removed, head rewritten to the new end (valid chain, valid head pointer).
        let tail = try signed()
        try tail.audit(actor: "user", kind: "config.set", details: ["k": "v"], at: .utc("2026-11-25T11:00:00Z"))
        let end = try #require(try tail.auditEntries().dropLast().last)
        try tamper(tail, "DELETE FROM audit WHERE seq = 6")
        try tamper(tail, "UPDATE meta SET value = ? WHERE key = 'audit.head'", ["\(end.seq):\(end.hash)"])
        let truncated = try tail.verifyAudit()
        #expect(!truncated.intact)
        #expect(truncated.reason?.contains("not signed by this home's identity") == true, "\(truncated)")

        // Everything removed, head and signature too.
        let emptied = try signed()
        try emptied.audit(actor: "user", kind: "config.set", details: ["k": "v"], at: .utc("2026-11-25T11:00:00Z"))
        try tamper(emptied, "DELETE FROM audit; DELETE FROM meta WHERE key LIKE 'audit.head%'")
        let empty = try emptied.verifyAudit()
        #expect(!empty.intact)
        #expect(empty.reason?.contains("the log is empty") == true)
    }

    @Test func reorderingEntriesIsDetected() throws {
        let database = try populated()
        try tamper(database, "UPDATE audit SET seq = 100 WHERE seq = 2")
        try tamper(database, "UPDATE audit SET seq = 2 WHERE seq = 3")
        try tamper(database, "UPDATE audit SET seq = 3 WHERE seq = 100")
        let result = try database.verifyAudit()
        #expect(!result.intact)
        #expect(result.firstBrokenSeq == 2)
    }

    @Test func swappingContentBetweenEntriesIsDetected() throws {
        let database = try populated()
        try tamper(
            database,
            """
            UPDATE audit SET kind = CASE seq WHEN 3 THEN 'config.set' ELSE 'limits.set' END,
                             details = CASE seq WHEN 3 THEN (SELECT details FROM audit WHERE seq = 4)
                                                ELSE (SELECT details FROM audit WHERE seq = 3) END
            WHERE seq IN (3, 4)
            """)
        let result = try database.verifyAudit()
        #expect(!result.intact)
        #expect(result.firstBrokenSeq == 3)
    }

    @Test func secretsNeverReachTheLog() throws {
        let database = try StateDatabase(url: directory.file("state.sqlite"))
        let key = "sk-ant-api03-" + String(repeating: "A1b2", count: 10)
        try database.audit(actor: "user", kind: "test", details: ["note": "key is \(key)"], at: Date())
        let details = try database.auditEntries().map(\.details).joined()
        #expect(!details.contains(key))
        #expect(details.contains("[REDACTED]"))
    }
}
