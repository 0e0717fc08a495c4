import Foundation
import Logging
import MarketCore
import TestSupport
import Testing

@testable import MarketStore

/// PostgreSQL going away under a store whose connections are all open, with writes arriving
/// while it is down: the process lives through it, every write lands once or fails whole, and the
/// books take writes again once it is back. (The store's pool keeps no minimum of connections:
/// postgres-nio 1.33.2's, with one, stops the process on a precondition when a lease comes while
/// failed reconnections have left it below that minimum, which once ended the fault suite's
/// "PostgreSQL restarted under load" in a SIGILL.)
@Suite(.enabled(if: PostgresTestDatabase.shouldRun)) struct PostgresOutageTests {
    @Test func writesDuringAnOutageNeitherStopTheProcessNorOutliveIt() async throws {
        // A directory the postgres user can reach (a TemporaryDirectory is its owner's alone).
        let cluster = try PostgresCluster(
            directory: FileManager.default.temporaryDirectory.appending(path: "cmm-pg-outage-\(UUID().uuidString)"))
        defer { cluster.remove() }
        let store = try await PostgresMarketStore.connect(
            url: cluster.url("postgres"), size: 4, logger: Logger(label: "test.postgres"))
        defer { Task { try? await store.close() } }
        @Sendable func spend(_ nonce: String) async throws -> Bool {
            try await store.write { try await $0.insertNonce(peer: "p", nonce: nonce, expiresMs: 1) }
        }
        // Every connection of the pool open and in use at once.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                group.addTask {
                    try await store.write { tx in
                        _ = try await tx.insertNonce(peer: "p", nonce: "warm\(index)", expiresMs: 1)
                        try await (tx as! SQLMarketTransaction).run("SELECT pg_sleep(0.05)")
                    }
                }
            }
            try await group.waitForAll()
        }
        cluster.stop()
        // Writes keep coming while it is down (the pool sees its connections close and its
        // reconnections refused and backing off), then it starts again.
        let outcomes = try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<40 {
                group.addTask {
                    do {
                        return try await spend("down\(index)") ? "spent" : "replayed"
                    } catch {
                        return "failed"
                    }
                }
                try await Task.sleep(for: .milliseconds(25))
            }
            try cluster.start()
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(outcomes.count == 40 && !outcomes.contains("replayed"), "\(outcomes)")
        #expect(try await spend("after"), "the books take writes again")
        let spent = try await store.read { tx in
            try await (tx as! SQLMarketTransaction).one(SQL("SELECT count(*) FROM nonces WHERE nonce LIKE 'down%'"))?
                .int(0)
        }
        #expect(spent == outcomes.filter { $0 == "spent" }.count, "a write that failed left nothing behind")
    }
}
