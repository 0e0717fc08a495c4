import Foundation
import MarketCore
import MarketCrypto
import TestSupport
import Testing

/// The provider daemon's own life: hand-back on SIGTERM, opt-out while it runs, manual bids,
/// and the audit head the market witnesses.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct DaemonLifecycleTests {
    init() async throws { try await Flow.ensureImage() }

    @Test func sigtermHandsARunningJobBackAndAnotherProviderFinishesIt() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let first = try await flow.provider("olga", price: "2")
        let stopping = try await flow.provide(
            first, command: ["sh", "-c", "echo slow; sleep 60"], extra: ["--drain", "1s"])
        let requester = try await flow.requester("pat")
        let submit = try Daemon(
            arguments: ["submit", "--prompt", "handed over", "--max-price", "5", "--wait", "--json"],
            home: requester, log: flow.directory.file("submit.log"))
        try await stopping.waitFor("approved and started", timeout: 30)
        // The whole maximum stays in escrow: the task re-opens to any provider within it, here
        // one asking more than the first did.
        let second = try await flow.provider("quinn", price: "3")
        _ = try await flow.provide(second, command: ["sh", "-c", "echo \"finished: $(cat)\""])

        await stopping.stopAsync(SIGTERM)
        #expect(stopping.output.contains("handing back task"))
        #expect(stopping.process.terminationStatus == 0)
        #expect(try await submit.wait(timeout: 60) == 0)
        let lines = jsonLines(submit.output)
        #expect(lines.contains { $0["type"] as? String == "provider-fault" })
        let result = try #require(lines.first { $0["type"] as? String == "result" })
        #expect((result["result"] as? [String: Any])?["output"] as? String == "finished: handed over\n")
        #expect(lines.last?["state"] as? String == "settled")
        // The requester paid the second provider's price only (the rest of its maximum came back
        // at settlement); the first earned nothing.
        #expect(try await flow.balance(requester)["available"] as? Int == 17_000_000)
        #expect(try await flow.balance(requester)["inEscrow"] as? Int == 0)
        #expect(try await flow.balance(first)["available"] as? Int == 0)
        try await flow.cli(flow.home("operator"), ["market", "verify", "--db", flow.db])
    }

    @Test func optOutFromAnotherTerminalWithdrawsTheRunningDaemonsOffer() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("rita")
        let daemon = try await flow.provide(provider, command: ["cat"])
        #expect((try await flow.get("/v1/offers") as? [Any])?.count == 1)
        let out = try await flow.cli(provider, ["opt-out", "--yes", "--json"]).jsonObject()
        #expect(out["optedIn"] as? Bool == false)
        try await daemon.waitFor("opted out", timeout: 10)
        #expect((try await flow.get("/v1/offers") as? [Any])?.isEmpty == true)

        // A task posted now waits: nobody takes it.
        let requester = try await flow.requester("sam")
        let posted = try await flow.cli(requester, ["submit", "--prompt", "p", "--max-price", "5"])
        #expect(posted.stderr.contains("no provider has an offer"))
        #expect(posted.stderr.contains("posted: open"))
        try await Task.sleep(for: .seconds(1))
        #expect(daemon.count("won task") == 0)
        #expect(try await flow.tasks(state: "open").count == 1)
    }

    @Test func aManualBidWinsAnOpenTask() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("tom", price: "4")
        let daemon = try await flow.provide(
            provider, command: ["sh", "-c", "echo \"bid: $(cat)\""], extra: ["--no-bid"])
        let requester = try await flow.requester("uma")
        // Below the standing price: it stays open, and the daemon does not bid by itself.
        let posted = try await flow.cli(requester, ["submit", "--prompt", "cheap", "--max-price", "3"])
        #expect(posted.stderr.contains("below every offer"))
        let taskId = try #require(try await flow.tasks(state: "open").first?["taskId"] as? String)
        let tooDear = try await flow.cli(provider, ["bid", "--task-id", taskId, "--price", "5"], expect: 1)
        #expect(tooDear.stderr.contains("price_above_max"))
        try await flow.cli(provider, ["bid", "--task-id", taskId, "--price", "3"])
        try await daemon.waitFor("won task", timeout: 10)
        // The requester comes back for it: the prompt is sealed to the winner then.
        let result = try await flow.cli(requester, ["result", "--task-id", taskId, "--json"]).jsonObject()
        #expect((result["result"] as? [String: Any])?["output"] as? String == "bid: cheap\n")
        #expect(try await flow.balance(requester)["available"] as? Int == 17_000_000)
    }

    @Test func theOfferLeavesTheMarketWhenTheLimitsAreReached() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("yann", settings: ["limits.dailyTasks=1"])
        let daemon = try await flow.provide(provider, command: ["cat"])
        let requester = try await flow.requester("zoe")
        try await flow.cli(requester, ["submit", "--prompt", "one", "--max-price", "5", "--wait"])
        try await daemon.waitFor("offer withdrawn until they allow another job", timeout: 10)
        #expect((try await flow.get("/v1/offers") as? [Any])?.isEmpty == true)
        let second = try await flow.cli(requester, ["submit", "--prompt", "two", "--max-price", "5"])
        #expect(second.stderr.contains("posted: open"))
        #expect(daemon.count("won task") == 1)

        // A higher limit (from another terminal) puts the offer back, and the open task is taken.
        try await flow.cli(provider, ["config", "--set", "limits.dailyTasks=5"])
        try await daemon.waitFor("won task", times: 2, timeout: 15)
    }

    @Test func cancelRefundsAnOpenTaskAndAnExpiredBidIsNeverSent() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let requester = try await flow.requester("ada")
        try await flow.cli(requester, ["submit", "--prompt", "nobody takes this", "--max-price", "4"])
        #expect(try await flow.balance(requester)["inEscrow"] as? Int == 4_000_000)
        let taskId = try #require(try await flow.tasks(state: "open").first?["taskId"] as? String)
        let cancelled = try await flow.cli(requester, ["cancel", "--task-id", taskId, "--json"]).jsonObject()
        #expect(cancelled["state"] as? String == "cancelled")
        let balance = try await flow.balance(requester)
        #expect(balance["available"] as? Int == 20_000_000 && balance["inEscrow"] as? Int == 0)

        // A bid queued while the market is down, expired by the time it is back: never sent.
        let provider = try await flow.provider("bea")
        try await flow.stopMarket()
        let queued = try await flow.cli(
            provider, ["bid", "--task-id", "some-task", "--price", "1", "--expires", "1s"], expect: 75)
        #expect(queued.stderr.contains("unless it expires first"))
        try await Task.sleep(for: .seconds(2))
        try await flow.restartMarket()
        try await flow.cli(provider, ["withdraw"])  // connects: the outbox is gone through
        let status = try await flow.cli(provider, ["status", "--json"]).jsonObject()
        #expect((status["market"] as? [String: Any])?["outbox"] as? Int == 0)
        #expect(occurrences(of: "bid.place", in: try await flow.marketBytesAsync()) == 0)
    }

    @Test func aJobThatFailsIsDeliveredButLeftToTheRequester() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("wes")
        _ = try await flow.provide(provider, command: ["sh", "-c", "echo oops; exit 3"])
        let requester = try await flow.requester("xena")
        let run = try await flow.cli(
            requester, ["submit", "--prompt", "p", "--max-price", "5", "--wait", "--json"], expect: 1)
        let lines = jsonLines(run.stdout)
        let result = try #require(lines.first { $0["type"] as? String == "result" }?["result"] as? [String: Any])
        #expect(result["state"] as? String == "failed" && result["exitCode"] as? Int == 3)
        #expect(lines.last?["state"] as? String == "delivered")
        let taskId = try #require(try await flow.tasks(state: "delivered").first?["taskId"] as? String)
        // The requester decides: here it accepts, and the provider is paid.
        let accepted = try await flow.cli(requester, ["accept", "--task-id", taskId, "--json"]).jsonObject()
        #expect(accepted["state"] as? String == "settled")
        #expect(try await flow.balance(requester)["available"] as? Int == 18_000_000)
    }

    @Test func theMarketWitnessesTheAuditHeadSoAKeyHolderCannotCutTheLog() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let home = try await flow.requester("vic")
        for _ in 0..<3 { try await flow.cli(home, ["config", "--set", "limits.dailyTasks=7"]) }
        try await flow.cli(home, ["balance"])  // connects: the heartbeat carries the signed head
        let id = try await flow.peerID(home)
        let anchor = try #require((try await flow.get("/v1/peers/\(id)") as? [String: Any])?["auditHead"] as? String)
        let witnessed = try #require(Int(anchor.split(separator: ":")[0]))
        #expect(try await flow.cli(home, ["audit", "--verify"]).stdout.contains("it extends the head the market"))

        // Someone with the key file cuts the log before the witnessed entry and signs the
        // shortened head: the local checks alone cannot tell.
        let database = home.appending(path: "state.sqlite")
        let keep = witnessed - 2
        let hash = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "python3", "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT hash FROM audit WHERE seq=?', (int(sys.argv[2]),)).fetchone()[0])",
                database.path, String(keep),
            ], environment: ProcessInfo.processInfo.environment
        ).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let identity = try #require(try KeyStore(directory: home.appending(path: "keys")).identityKey())
        let head = "\(keep):\(hash)"
        let signature = try identity.sign(Data("claude-max-market audit head\n\(head)".utf8)).base64EncodedString()
        try Sqlite.execute(
            database,
            """
            DROP TRIGGER audit_no_delete;
            DELETE FROM audit WHERE seq > \(keep);
            UPDATE meta SET value = '\(head)' WHERE key = 'audit.head';
            UPDATE meta SET value = '\(signature)' WHERE key = 'audit.head.sig';
            """)
        let caught = try await flow.cli(home, ["audit", "--verify", "--json"], expect: 1).jsonObject()
        #expect((caught["reason"] as? String)?.contains("witnessed") == true)
        #expect(caught["firstBrokenSeq"] as? Int == witnessed)

        // Without the market the cut goes unnoticed: that is what the witness is for.
        try await flow.stopMarket()
        try await flow.cli(home, ["audit", "--verify"])
    }
}
