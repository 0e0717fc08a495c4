import Foundation
import TestSupport
import TestTraits
import Testing

/// Capacity that follows the account's windows, through the market with the real Claude Code
/// CLI on subscription tokens held by the providers' gateways, against the stand-in sending the
/// plan's window headers: the offer leaves the market past its share and comes back by itself
/// at the reset; a 429 during a job hands the task to another provider, which settles it.
@Suite(
    .enabled(
        if: ClaudeCLITestEnvironment.shouldRun, "no Docker engine or no Claude Code binary (scripts/test.sh fetches it)"
    ),
    .serialized, .heavy)
struct CapacityFlowTests {
    /// The real-CLI runner image, built once per test run (a fresh machine has none).
    init() async throws { try await ClaudeCLITestEnvironment.ensureImage() }

    static func token(_ name: String) -> String {
        "sk-ant-oat01-" + String(repeating: name, count: 48 / name.count + 1)
    }

    static func unified(fiveHour: Double, reset: Date, status: String = "allowed") -> [(String, String)] {
        let epoch = String(Int(reset.timeIntervalSince1970.rounded(.up)))
        return [
            ("anthropic-ratelimit-unified-status", status), ("anthropic-ratelimit-unified-reset", epoch),
            ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
            ("anthropic-ratelimit-unified-5h-utilization", String(fiveHour)),
            ("anthropic-ratelimit-unified-5h-reset", epoch), ("anthropic-ratelimit-unified-5h-status", status),
        ]
    }

    func provide(_ flow: Flow, _ name: String, standIn: MessagesAPIStandIn, price: String, extra: [String] = [])
        async throws -> (URL, Daemon)
    {
        let home = try await flow.provider(
            name, price: price,
            settings: ConversationFlowTests.settings(
                standIn,
                extra: ["claude.credentialMode=subscription", "market.allowSubscriptionLogin=true"] + extra))
        let daemon = try Daemon(
            arguments: ["provide", "--backend", "claude"], home: home,
            environment: ["CLAUDE_CODE_OAUTH_TOKEN": Self.token(name)], log: home.appending(path: "provide.log"))
        try await daemon.waitFor("offer live", timeout: 30)
        return (home, daemon)
    }

    func offer(_ flow: Flow, of home: URL) async throws -> [String: Any]? {
        let id = try await flow.peerID(home)
        let offers = try await flow.get("/v1/offers") as? [[String: Any]] ?? []
        return offers.first { $0["provider"] as? String == id }
    }

    /// The first job's answers say the 5-hour window is at 70 %; the provider shares 60 %: its
    /// offer stays in the book paused until the window's reset, a task posted meanwhile waits
    /// (the requester is told when capacity returns), and at the reset the provider's timer puts
    /// the offer back, which takes the waiting task.
    @Test func theOfferLeavesPastItsShareAndReturnsAtTheReset() async throws {
        // The window resets 45 s after the first request the API sees, however long set-up took.
        let resetBox = LockedBox<Date?>(nil)
        try await MessagesAPIStandIn.with(
            defaultText: "answered",
            answer: { _ in
                let reset = resetBox.withLock { box in
                    if box == nil { box = Date().addingTimeInterval(45) }
                    return box!
                }
                return Date() < reset
                    ? .init(headers: Self.unified(fiveHour: 0.7, reset: reset))
                    : .init(headers: Self.unified(fiveHour: 0.05, reset: reset.addingTimeInterval(5 * 3600)))
            }
        ) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (home, provider) = try await provide(
                flow, "pia", standIn: standIn, price: "2", extra: ["capacity.fiveHourShare=0.6"])
            defer { provider.stop() }
            let requester = try await flow.requester("rhea")
            let first = try await flow.cli(requester, ["submit", "--prompt", "first", "--max-price", "5", "--wait"])
            #expect(first.stdout.contains("answered"), "\(first.stdout) \(first.stderr)")
            let reset = try #require(resetBox.withLock { $0 })
            try await provider.waitFor("the offer is paused until", timeout: 30)
            #expect(
                provider.output.contains("five_hour window is at 70 %, past the share of 60 %"), "\(provider.output)")
            let paused = try #require(try await offer(flow, of: home))
            let until = try #require(paused["pausedUntilMs"] as? Int, "\(paused)")
            #expect(abs(Double(until) / 1000 - reset.timeIntervalSince1970) < 2)
            #expect(paused["pausedFor"] as? String == "five_hour")
            let status = try await flow.cli(home, ["status", "--json"]).jsonObject()
            let capacity = try #require(status["capacity"] as? [String: Any])
            #expect(capacity["pausedFor"] as? String == "five_hour" && capacity["fiveHourShare"] as? Double == 0.6)

            // Posted while paused: it waits in the book, and the requester is told until when.
            let second = try Daemon(
                arguments: ["submit", "--prompt", "second", "--max-price", "5", "--wait"], home: requester,
                log: requester.appending(path: "second.log"))
            defer { second.stop() }
            try await second.waitFor("capacity returns at", timeout: 30)
            try await second.waitFor("posted: open", timeout: 30)
            #expect(second.output.contains("(no provider can take it now; capacity returns at"), "\(second.output)")
            #expect(!second.output.contains("answered"))
            #expect(try await flow.tasks(state: "open").count == 1)
            // At the reset the offer comes back by itself and takes the task.
            try await provider.waitFor("capacity returned", timeout: 60)
            try await second.waitFor("answered", timeout: 90)
            #expect(Date() >= reset)
            #expect(try await offer(flow, of: home)?["pausedUntilMs"] == nil)
        }
    }

    /// The first provider's account is at its limit: its job meets a 429 and is handed back
    /// (no charge, no blame), the task goes to the other provider, which asks more but within the
    /// requester's maximum (all of it still in escrow), and settles it; the requester pays that
    /// price, and the first provider's offer is paused until the reset the answer named. (The
    /// cheaper offer, Ada's, wins first.)
    @Test func a429DuringAJobHandsTheTaskToAnotherProvider() async throws {
        let reset = Date().addingTimeInterval(3600)
        let limited = "Bearer \(Self.token("ada"))"
        try await MessagesAPIStandIn.with(
            defaultText: "answered by the second provider",
            answer: { request in
                request.headers["authorization"] == limited
                    ? .init(
                        status: 429,
                        headers: Self.unified(fiveHour: 1, reset: reset, status: "rejected") + [("retry-after", "3600")]
                    )
                    : .init(headers: Self.unified(fiveHour: 0.1, reset: reset))
            }
        ) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (adaHome, ada) = try await provide(flow, "ada", standIn: standIn, price: "1")
            defer { ada.stop() }
            let (benHome, ben) = try await provide(flow, "ben", standIn: standIn, price: "2")
            defer { ben.stop() }
            let requester = try await flow.requester("rita")
            let result = try await flow.cli(
                requester, ["submit", "--prompt", "anything", "--max-price", "5", "--wait"])
            #expect(result.stdout.contains("answered by the second provider"), "\(result.stdout) \(result.stderr)")
            #expect(result.stderr.contains("is at its account's limit and handed the job back"), "\(result.stderr)")
            #expect(ada.output.contains("handing task") && ada.output.contains("five_hour limit"), "\(ada.output)")
            try await ben.waitFor("settled", timeout: 30)
            // Ada was paid nothing, and its reputation took no failure; Ben was paid.
            func peer(_ home: URL) async throws -> [String: Any] {
                let id = try await flow.peerID(home)
                return try #require(try await flow.get("/v1/peers/\(id)") as? [String: Any])
            }
            let adaPeer = try await peer(adaHome)
            let benPeer = try await peer(benHome)
            #expect(adaPeer["balance"] as? Int == 0 && adaPeer["heldBack"] as? Int == 0, "\(adaPeer)")
            #expect((benPeer["balance"] as? Int ?? 0) + (benPeer["heldBack"] as? Int ?? 0) > 0, "\(benPeer)")
            #expect((adaPeer["reputation"] as? [String: Any])?["samples"] as? Int == 0, "\(adaPeer)")
            #expect(adaPeer["handBacks"] as? Int == 1 && benPeer["handBacks"] as? Int == 0)
            // Ben's price, not Ada's, and no more: the rest of the 5 came back at settlement.
            #expect(try await flow.balance(requester)["available"] as? Int == 18_000_000)
            let dashboard = try await offPool { try LoopbackHTTP.get(flow.market.httpBase + "/").body }
            let page = String(decoding: dashboard, as: UTF8.self)
            #expect(page.contains("capacity hand-backs") && page.contains("returns 20"), "dashboard")
            #expect(page.contains("capacity now: 1 free slot(s); 1 more return, the first at"))
            let paused = try #require(try await offer(flow, of: adaHome))
            let until = try #require(paused["pausedUntilMs"] as? Int, "\(paused)")
            #expect(abs(Double(until) / 1000 - reset.timeIntervalSince1970) < 2)
            let audit = try await flow.cli(adaHome, ["audit", "--format", "json"]).stdout
            #expect(audit.contains("capacity.stop") && audit.contains("market.handed-back"))
        }
    }
}
