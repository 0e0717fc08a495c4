import Foundation
import Participant
import TestSupport
import Testing

@Suite struct ConsentTests {
    let directory = TemporaryDirectory()

    @Test func optInNeedsAcceptedTermsAndOptOutRevokes() throws {
        let database = try StateDatabase(url: directory.file("s.sqlite"))
        let store = ConsentStore(database: database)
        let now = Date.utc("2026-11-25T10:00:00Z")
        #expect { try store.optIn(scope: "claude-jobs", actor: "u", at: now) } throws: {
            "\($0)".contains("terms --accept")
        }
        #expect(try store.current().optIn == nil)
        #expect(try database.auditEntries().isEmpty)
        try store.acceptTerms(actor: "u", at: now)
        #expect(try store.current().termsAccepted)
        #expect(try store.current().lastAcceptance?.sha256 == TermsNotice.sha256)
        try store.optIn(scope: "claude-jobs", actor: "u", at: now)
        #expect(try store.current().optIn?.scope == "claude-jobs")
        #expect(try store.optOut(actor: "u", at: now))
        #expect(try store.current().optIn == nil)
        #expect(try store.optOut(actor: "u", at: now) == false)
        #expect(try database.auditEntries().map(\.kind).filter { $0.hasPrefix("consent") }.count == 3)
    }

    @Test func anOldAcceptanceDoesNotCount() throws {
        let database = try StateDatabase(url: directory.file("s.sqlite"))
        try database.pool.write { db in
            try db.execute(
                sql:
                    "INSERT INTO consent_events (kind, terms_version, terms_sha256, at_ms) VALUES ('terms.accepted', '2020-01-01', 'x', 0)"
            )
        }
        let store = ConsentStore(database: database)
        #expect(try store.current().termsAccepted == false)
        #expect { try store.optIn(scope: "claude-jobs", actor: "u", at: Date()) } throws: {
            "\($0)".contains("2020-01-01")
        }
    }

    @Test func theNoticeSaysWhatItMust() {
        let text = TermsNotice.text
        for phrase in [
            "You alone are responsible", "Consumer Terms", "Free, Pro and Max", "forbid making your account available",
            "API keys", "ciphertext", "opt-out", "never claims",
        ] {
            #expect(text.contains(phrase), "\(phrase)")
        }
    }
}
