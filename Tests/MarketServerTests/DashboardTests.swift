import Foundation
import MarketClient
import MarketCore
import MarketProtocol
import MarketServer
import TestSupport
import Testing

/// The dashboard page as the server renders it: the same numbers as the REST views, for a
/// seeded market, and nothing private.
@Suite struct DashboardTests {
    static let secretPayload = "c2VjcmV0cGF5bG9hZA=="
    static let sealedResult = "c2VhbGVkcmVzdWx0"

    /// One settled task, one assigned (with a payload), one open below the offer's price.
    static func seed(_ market: TestMarket) async throws -> (provider: String, requester: String) {
        let requester = TestMarket.newPeer()
        let provider = TestMarket.newPeer()
        try await market.mint(requester.peerID, 10)
        try await market.connect(provider) { p in
            try await p.ok(.offerAdvertise, AdvertiseBody(price: micro(2), slots: 3, models: ["claude-sonnet-4-5"]))
            try await market.connect(requester) { r in
                try await r.ok(.taskPost, PostBody(taskId: "d1", maxPrice: micro(3)))
                try await r.ok(.payloadDeliver, SealedBody(taskId: "d1", sealed: secretPayload))
                try await p.ok(.jobApproved, TaskRefBody(taskId: "d1"))
                try await p.ok(
                    .jobResult,
                    ResultBody(taskId: "d1", sealed: sealedResult, resultHash: String(repeating: "b", count: 64)))
                try await r.ok(.jobAccept, TaskRefBody(taskId: "d1"))
                try await r.ok(.taskPost, PostBody(taskId: "d2", maxPrice: micro(3)))
                try await r.ok(.payloadDeliver, SealedBody(taskId: "d2", sealed: secretPayload))
                try await r.ok(.taskPost, PostBody(taskId: "d3", maxPrice: micro(1)))
            }
        }
        return (provider.peerID.rawValue, requester.peerID.rawValue)
    }

    func value(_ html: String, id: String) -> String? {
        guard let range = html.range(of: "id=\"\(id)\">") else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "<" })
    }

    @Test func thePageShowsWhatTheReadViewsSayAndNothingPrivate() async throws {
        try await TestMarket.with(configure: TimeoutAndRelayTests.manualSweeps) { market in
            let (provider, _) = try await Self.seed(market)
            let page = try await LoopbackHTTP.fetch(market.httpBase + "/")
            #expect(page.status == 200)
            let html = String(decoding: page.body, as: UTF8.self)
            let stats = try await LoopbackHTTP.fetchJSON(market.httpBase + "/v1/stats") as! [String: Any]
            let tasks = stats["tasks"] as! [String: Int]
            for state in TaskState.allCases {
                #expect(value(html, id: "tasks-\(state.rawValue)") == String(tasks[state.rawValue] ?? -1), "\(state)")
            }
            #expect(tasks["settled"] == 1 && tasks["assigned"] == 1 && tasks["open"] == 1)
            #expect(value(html, id: "offers-count") == String(stats["offers"] as! Int))
            #expect(value(html, id: "free-slots") == String(stats["freeSlots"] as! Int))
            #expect(value(html, id: "minted") == Credits(micro: stats["minted"] as! Int64).description)
            #expect(value(html, id: "in-escrow") == Credits(micro: stats["inEscrow"] as! Int64).description)
            #expect(html.contains("data-balanced=\"true\"") && stats["ledgerBalanced"] as? Bool == true)

            // The flow chart's totals are those of /v1/flow.
            let flow = try await LoopbackHTTP.fetchJSON(market.httpBase + "/v1/flow") as! [String: Any]
            let hours = flow["hours"] as! [[String: Any]]
            #expect(hours.count == 24)
            for name in ["posted", "matched", "settled", "refunded"] {
                let total = hours.map { $0[name] as! Int }.reduce(0, +)
                #expect(html.contains("id=\"flow-\(name)\" data-total=\"\(total)\""), "\(name) \(total)")
            }
            #expect(hours.map { $0["posted"] as! Int }.reduce(0, +) == 3)
            #expect(hours.map { $0["matched"] as! Int }.reduce(0, +) == 2)
            #expect(html.contains("<svg class=\"chart\""))

            // The book and the providers, as /v1/offers and /v1/providers say.
            #expect(html.contains("<tr data-provider=\"\(provider)\">"))
            #expect(html.contains("claude-sonnet-4-5"))
            let providers = try await LoopbackHTTP.fetchJSON(market.httpBase + "/v1/providers") as! [[String: Any]]
            #expect(providers.count == 1 && providers[0]["settledJobs"] as? Int == 1)
            #expect(html.contains("id=\"providers-table\""))
            let sorted = String(
                decoding: try await LoopbackHTTP.fetch(market.httpBase + "/?sort=failures").body, as: UTF8.self)
            #expect(sorted.contains("failure rate ▾"))

            // Public fields only: no payload, no result, no key document.
            for secret in [Self.secretPayload, Self.sealedResult, "keyDocument", "signingKey"] {
                #expect(!html.contains(secret), "\(secret) on the page")
            }
            let content = String(
                decoding: try await LoopbackHTTP.fetch(market.httpBase + "/dashboard/content").body, as: UTF8.self)
            #expect(content.contains("id=\"tasks-settled\">1<") && !content.contains("<html"))
        }
    }

    @Test func changesAreAnnouncedAsServerSentEvents() async throws {
        try await TestMarket.with(configure: TimeoutAndRelayTests.manualSweeps) { market in
            let url = market.httpBase + "/v1/events"
            let stream = try await offPool {
                try CLIRunner.runProcess(
                    // The first 34 bytes, however long a loaded machine takes to send them.
                    URL(fileURLWithPath: "/usr/bin/env"),
                    [
                        "python3", "-c",
                        "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=30).read(34).decode(), end='')",
                        url,
                    ],
                    environment: ProcessInfo.processInfo.environment)
            }
            #expect(stream.stdout.hasPrefix("retry: 2000\n\nevent: update\ndata: "))
        }
    }

    /// The read views carry peer-written text (dispute reasons, key documents): a browser is
    /// told never to sniff them as anything but JSON.
    @Test func theReadViewsAreNeverSniffed() async throws {
        try await TestMarket.with { market in
            for path in ["/v1/offers", "/v1/stats", "/v1/tasks", "/v1/peers/nobody"] {
                let headers = try await LoopbackHTTP.headers(market.httpBase + path)
                #expect(headers.contains("x-content-type-options: nosniff"), "\(path): \(headers)")
                #expect(headers.contains { $0.hasPrefix("content-type: application/json") }, "\(path)")
            }
        }
    }

    @Test func noDashboardMeansNoPage() async throws {
        try await TestMarket.with(configure: { $0.dashboard = false }) { market in
            let page = try await LoopbackHTTP.fetch(market.httpBase + "/")
            let stats = try await LoopbackHTTP.fetch(market.httpBase + "/v1/stats")
            #expect(page.status == 404 && stats.status == 200)
        }
    }

    @Test func everythingShownIsEscaped() {
        #expect(
            Dashboard.escape(#"<script>alert("x") & 'y'</script>"#)
                == "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;")
    }
}
