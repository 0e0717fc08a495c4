import Foundation
import MarketCore
import MarketProtocol
import MarketStore

/// Everything the dashboard shows, read in one transaction through the same views as the REST
/// API (`MarketViews`) and the same check as `market verify`: public fields only.
public struct DashboardSnapshot: Sendable {
    public var stats: MarketViews.StatsView
    public var offers: [MarketViews.OfferView]
    public var openTasks: [MarketViews.TaskView]
    public var flow: MarketViews.FlowView
    public var providers: [MarketViews.ProviderView]
    public var discrepancies: [LedgerAudit.Discrepancy]
    public var nowMs: Int64

    public static func read(
        in tx: some MarketTransaction, book: MarketBook, backend: String, connections: Int, uptimeSeconds: Int64,
        nowMs: Int64
    ) async throws -> DashboardSnapshot {
        await DashboardSnapshot(
            stats: try MarketViews.stats(
                in: tx, book: book, backend: backend, connections: connections, uptimeSeconds: uptimeSeconds,
                nowMs: nowMs),
            offers: try MarketViews.offers(in: tx, rules: book.rules, nowMs: nowMs),
            openTasks: try tx.tasks(state: .open, limit: 100).map(MarketViews.task),
            flow: try MarketViews.flow(in: tx, nowMs: nowMs),
            providers: try MarketViews.providers(in: tx, rules: book.rules, nowMs: nowMs),
            discrepancies: try book.audit(in: tx).discrepancies, nowMs: nowMs)
    }
}

/// The dashboard page (`GET /`): HTML and CSS rendered here, SVG charts drawn here, so the page
/// works with scripts off; a small script refreshes the content on each server-sent event.
public enum Dashboard {
    public enum ProviderOrder: String, Sendable, CaseIterable {
        case reputation, settled, failures
    }

    public static func page(_ snapshot: DashboardSnapshot, order: ProviderOrder) -> String {
        """
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>claude-max-market — market</title>
        <style>\(style)</style>
        </head>
        <body>
        <header>
        <h1>claude-max-market</h1>
        <span id="live" class="live" data-state="static">updates need scripts; reload to refresh</span>
        </header>
        <main id="content">
        \(content(snapshot, order: order))
        </main>
        <footer>Public fields only: no payload, prompt, result or key beyond the public ones ever reaches this page. \
        The same numbers are at <a href="/v1/stats">/v1/stats</a>, <a href="/v1/offers">/v1/offers</a>, \
        <a href="/v1/tasks">/v1/tasks</a>, <a href="/v1/flow">/v1/flow</a>, <a href="/v1/providers">/v1/providers</a>.</footer>
        <script>\(script)</script>
        </body>
        </html>
        """
    }

    /// The live part, swapped in by the script after each event.
    public static func content(_ snapshot: DashboardSnapshot, order: ProviderOrder) -> String {
        [books(snapshot), book(snapshot), flow(snapshot.flow), providers(snapshot.providers, order: order)]
            .joined(separator: "\n")
    }

    // MARK: Sections

    static func books(_ snapshot: DashboardSnapshot) -> String {
        let stats = snapshot.stats
        let status =
            stats.ledgerBalanced
            ? "<strong id=\"books-status\" class=\"ok\" data-balanced=\"true\">the books balance</strong>"
            : "<strong id=\"books-status\" class=\"bad\" data-balanced=\"false\">the books do NOT balance: \(stats.discrepancies) discrepancies</strong>"
        let problems = snapshot.discrepancies.prefix(10).map {
            "<li>\(escape($0.kind)) \(escape($0.subject)): \(escape($0.detail))</li>"
        }.joined()
        let tasks = TaskState.allCases.map { state in
            "<div class=\"stat\"><span class=\"label\">\(state.rawValue)</span><span class=\"value\" id=\"tasks-\(state.rawValue)\">\(stats.tasks[state.rawValue] ?? 0)</span></div>"
        }.joined()
        return """
            <section id="books">
            <h2>Health of the books</h2>
            <p>\(status) <span class="muted">(the check of <code>market verify</code>)</span></p>
            \(problems.isEmpty ? "" : "<ul class=\"bad\">\(problems)</ul>")
            <div class="stats">
            \(statBox("minted", "minted", Credits(micro: stats.minted).description))
            \(statBox("in escrow", "in-escrow", Credits(micro: stats.inEscrow).description))
            \(statBox("held back", "held-back", Credits(micro: stats.heldBack).description))
            \(statBox("fees", "fees", Credits(micro: stats.fees).description))
            \(statBox("settled volume", "settled-volume", Credits(micro: stats.settledVolume).description))
            </div>
            <div class="stats">
            \(statBox("offers", "offers-count", String(stats.offers)))
            \(statBox("free slots", "free-slots", String(stats.freeSlots)))
            \(statBox("peers", "peers", String(stats.peers)))
            \(statBox("connections", "connections", String(stats.connections)))
            \(statBox("uptime", "uptime", duration(seconds: stats.uptimeSeconds)))
            \(statBox("version", "version", escape(stats.version) + " · " + escape(stats.backend)))
            </div>
            <div class="stats tasks">\(tasks)</div>
            </section>
            """
    }

    /// "now", or when the provider's capacity returns and for which window (its offer's public fields).
    static func capacity(_ offer: MarketViews.OfferView) -> String {
        guard let until = offer.pausedUntilMs else { return "now" }
        return "returns \(escape(Matching.time(until)))" + (offer.pausedFor.map { " (\(escape($0)))" } ?? "")
    }

    static func book(_ snapshot: DashboardSnapshot) -> String {
        let offers = snapshot.offers.map { offer in
            """
            <tr data-provider="\(offer.provider)"><td><code title="\(offer.provider)">\(short(offer.provider))</code></td>\
            <td class="num">\(escape(offer.priceText))</td><td class="num">\(offer.freeSlots) / \(offer.slots)</td>\
            <td>\(offer.models.isEmpty ? "any" : offer.models.map(escape).joined(separator: ", "))</td>\
            <td>\(reputation(offer.reputation))</td><td class="capacity">\(capacity(offer))</td></tr>
            """
        }.joined(separator: "\n")
        let paused = snapshot.offers.filter { $0.pausedUntilMs != nil }
        let liveSlots = snapshot.offers.filter { $0.pausedUntilMs == nil }.map(\.freeSlots).reduce(0, +)
        let returning =
            paused.isEmpty
            ? ""
            : "; \(paused.map(\.slots).reduce(0, +)) more return, the first at \(Matching.time(paused.compactMap(\.pausedUntilMs).min()!))"
        let tasks = snapshot.openTasks.map { task in
            """
            <tr><td><code title="\(escape(task.taskId))">\(escape(String(task.taskId.prefix(12))))</code></td>\
            <td class="num">\(Credits(micro: task.maxPrice))</td>\
            <td class="num">\(duration(seconds: max(0, (snapshot.nowMs - task.createdMs) / 1000)))</td>\
            <td class="num">\(String(format: "%.2f", task.minReputation))</td><td>\(escape(task.model ?? "any"))</td></tr>
            """
        }.joined(separator: "\n")
        return """
            <section id="book">
            <h2>Live book</h2>
            <h3>Standing offers</h3>
            <p id="capacity-now">capacity now: \(liveSlots) free slot(s)\(escape(returning))</p>
            <div class="scroll"><table id="offers">
            <thead><tr><th>provider</th><th>price</th><th>free / slots</th><th>models</th><th>reputation</th><th>capacity</th></tr></thead>
            <tbody>\(offers.isEmpty ? "<tr><td colspan=\"6\" class=\"muted\">no offers</td></tr>" : offers)</tbody>
            </table></div>
            <h3>Open tasks</h3>
            <div class="scroll"><table id="open-tasks">
            <thead><tr><th>task</th><th>max price</th><th>age</th><th>min reputation</th><th>model</th></tr></thead>
            <tbody>\(tasks.isEmpty ? "<tr><td colspan=\"5\" class=\"muted\">no open tasks</td></tr>" : tasks)</tbody>
            </table></div>
            </section>
            """
    }

    static func flow(_ flow: MarketViews.FlowView) -> String {
        let median = flow.medianMatchMs.map { "\($0) ms" } ?? "—"
        return """
            <section id="flow">
            <h2>Flow, last 24 hours</h2>
            <p>Median time from post to match: <strong id="median-match">\(median)</strong> \
            <span class="muted">(\(flow.matchedInWindow) matched)</span></p>
            \(barChart(flow.hours))
            <h3>Median settled price by hour</h3>
            \(priceChart(flow.hours))
            </section>
            """
    }

    static func providers(_ providers: [MarketViews.ProviderView], order: ProviderOrder) -> String {
        let sorted: [MarketViews.ProviderView] =
            switch order {
            case .reputation: providers
            case .settled: providers.sorted { ($0.settledJobs, $0.provider) > ($1.settledJobs, $1.provider) }
            case .failures: providers.sorted { ($0.failureRate, $0.provider) > ($1.failureRate, $1.provider) }
            }
        let rows = sorted.map { provider in
            """
            <tr data-provider="\(provider.provider)"><td><code title="\(provider.provider)">\(short(provider.provider))</code></td>\
            <td>\(reputation(provider.reputation))</td><td class="num">\(provider.settledJobs)</td>\
            <td class="num">\(String(format: "%.0f %%", provider.failureRate * 100)) <span class="muted">(\(provider.failures) of \(provider.successes + provider.failures))</span></td>\
            <td class="num">\(provider.handBacks)</td><td>\(provider.hasOffer ? "offering" : "—")</td></tr>
            """
        }.joined(separator: "\n")
        func header(_ title: String, _ key: ProviderOrder) -> String {
            key == order
                ? "<th aria-sort=\"descending\">\(title) ▾</th>"
                : "<th><a href=\"?sort=\(key.rawValue)#providers\">\(title)</a></th>"
        }
        return """
            <section id="providers">
            <h2>Providers</h2>
            <div class="scroll"><table id="providers-table">
            <thead><tr><th>provider</th>\(header("reputation", .reputation))\(header("settled jobs", .settled))\
            \(header("failure rate", .failures))<th title="tasks handed back at the account's limit: no fault">capacity hand-backs</th><th>now</th></tr></thead>
            <tbody>\(rows.isEmpty ? "<tr><td colspan=\"6\" class=\"muted\">no providers yet</td></tr>" : rows)</tbody>
            </table></div>
            </section>
            """
    }

    // MARK: Charts (SVG, drawn here)

    static let series: [(name: String, color: String, value: @Sendable (MarketViews.HourView) -> Int)] = [
        ("posted", "var(--posted)", { $0.posted }), ("matched", "var(--matched)", { $0.matched }),
        ("settled", "var(--settled)", { $0.settled }), ("refunded", "var(--refunded)", { $0.refunded }),
    ]

    static func barChart(_ hours: [MarketViews.HourView]) -> String {
        let width = 720.0
        let height = 160.0
        let top = max(1, hours.map { hour in series.map { $0.value(hour) }.max() ?? 0 }.max() ?? 0)
        let group = width / Double(max(1, hours.count))
        let bar = (group - 4) / Double(series.count)
        var shapes: [String] = []
        for (index, hour) in hours.enumerated() {
            for (position, line) in series.enumerated() {
                let value = line.value(hour)
                guard value > 0 else { continue }
                let barHeight = Double(value) / Double(top) * (height - 20)
                let x = Double(index) * group + 2 + Double(position) * bar
                shapes.append(
                    String(
                        format:
                            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"><title>%@: %d at %@</title></rect>",
                        x, height - 16 - barHeight, bar, barHeight, line.color, line.name, value,
                        hourLabel(hour.startMs)))
            }
        }
        for (index, hour) in hours.enumerated() where index % 6 == 0 {
            shapes.append(
                String(
                    format: "<text x=\"%.1f\" y=\"%.1f\" class=\"axis\">%@</text>", Double(index) * group + 2,
                    height - 2, hourLabel(hour.startMs)))
        }
        let legend = series.map { "<span><i style=\"background:\($0.color)\"></i>\($0.name)</span>" }.joined()
        let totals = series.map { line in
            "<span id=\"flow-\(line.name)\" data-total=\"\(hours.map(line.value).reduce(0, +))\">\(line.name) \(hours.map(line.value).reduce(0, +))</span>"
        }.joined(separator: " · ")
        return """
            <svg class="chart" viewBox="0 0 \(Int(width)) \(Int(height))" role="img" aria-label="tasks per hour">\
            <line x1="0" y1="\(Int(height - 16))" x2="\(Int(width))" y2="\(Int(height - 16))" class="base"/>\
            <text x="4" y="12" class="axis">up to \(top) an hour</text>\(shapes.joined())</svg>
            <p class="legend">\(legend)</p>
            <p class="muted">in 24 h: \(totals)</p>
            """
    }

    static func priceChart(_ hours: [MarketViews.HourView]) -> String {
        let width = 720.0
        let height = 120.0
        let priced = hours.enumerated().compactMap { index, hour in hour.medianSettledPrice.map { (index, $0) } }
        guard let top = priced.map(\.1).max(), top > 0 else {
            return "<p class=\"muted\" id=\"price-chart\">no settled tasks in the last 24 hours</p>"
        }
        let group = width / Double(max(1, hours.count))
        let points = priced.map { index, price in
            String(
                format: "%.1f,%.1f", Double(index) * group + group / 2,
                height - 16 - Double(price) / Double(top) * (height - 28))
        }
        let dots = zip(priced, points).map { entry, point in
            let xy = point.split(separator: ",")
            return
                "<circle cx=\"\(xy[0])\" cy=\"\(xy[1])\" r=\"3\" fill=\"var(--settled)\"><title>\(Credits(micro: entry.1)) at \(hourLabel(hours[entry.0].startMs))</title></circle>"
        }.joined()
        return """
            <svg id="price-chart" class="chart" viewBox="0 0 \(Int(width)) \(Int(height))" role="img" aria-label="median settled price">\
            <line x1="0" y1="\(Int(height - 16))" x2="\(Int(width))" y2="\(Int(height - 16))" class="base"/>\
            <text x="4" y="12" class="axis">up to \(Credits(micro: top))</text>\
            <polyline fill="none" stroke="var(--settled)" stroke-width="2" points="\(points.joined(separator: " "))"/>\(dots)</svg>
            """
    }

    // MARK: Pieces

    static func statBox(_ label: String, _ id: String, _ value: String) -> String {
        "<div class=\"stat\"><span class=\"label\">\(label)</span><span class=\"value\" id=\"\(id)\">\(value)</span></div>"
    }

    static func reputation(_ view: MarketViews.ReputationView) -> String {
        let tier = escape(view.tier.rawValue)
        return
            "<span class=\"tier \(tier)\">\(tier)</span> \(String(format: "%.2f", view.score)) <span class=\"muted\">(\(view.samples))</span>"
    }

    static func short(_ id: String) -> String { escape(String(id.prefix(8))) + "…" }

    static func hourLabel(_ ms: Int64) -> String {
        let date = Date(timeIntervalSince1970: Double(ms) / 1000)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return String(format: "%02d:00", calendar.component(.hour, from: date))
    }

    static func duration(seconds: Int64) -> String {
        if seconds < 60 { return "\(seconds) s" }
        if seconds < 3600 { return "\(seconds / 60) min" }
        if seconds < 86_400 { return "\(seconds / 3600) h \(seconds % 3600 / 60) min" }
        return "\(seconds / 86_400) d \(seconds % 86_400 / 3600) h"
    }

    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    static let style = """
        :root{--bg:#fbfbfa;--fg:#1d1d1f;--muted:#6b6b70;--line:#d9d9de;--card:#ffffff;--ok:#17803d;--bad:#b42318;\
        --posted:#8e8e93;--matched:#2f6fdf;--settled:#17803d;--refunded:#d97706}
        @media (prefers-color-scheme: dark){:root{--bg:#141416;--fg:#ececf0;--muted:#9a9aa2;--line:#33333a;\
        --card:#1d1d21;--ok:#4ade80;--bad:#f87171;--posted:#a1a1aa;--matched:#60a5fa;--settled:#4ade80;--refunded:#fbbf24}}
        *{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;\
        background:var(--bg);color:var(--fg)}
        header,main,footer{max-width:980px;margin:0 auto;padding:0 16px}
        header{display:flex;align-items:baseline;justify-content:space-between;gap:12px;flex-wrap:wrap}
        h1{font-size:20px;margin:18px 0 6px}h2{font-size:17px;margin:26px 0 8px}h3{font-size:14px;margin:14px 0 6px;\
        color:var(--muted)}
        section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:4px 16px 14px;margin:14px 0}
        .stats{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}.stat{border:1px solid var(--line);border-radius:8px;\
        padding:6px 10px;min-width:110px}.stat .label{display:block;font-size:12px;color:var(--muted)}\
        .stat .value{font-weight:600}
        .scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;\
        padding:5px 8px;border-bottom:1px solid var(--line);white-space:nowrap}th a{color:inherit}.num{text-align:right}
        .muted{color:var(--muted)}.ok{color:var(--ok)}.bad{color:var(--bad)}
        .tier{font-size:12px;border:1px solid var(--line);border-radius:999px;padding:0 6px}.tier.trusted{color:var(--ok)}\
        .tier.poor{color:var(--bad)}
        .chart{width:100%;height:auto;display:block}.chart .base{stroke:var(--line)}.chart .axis{fill:var(--muted);\
        font-size:11px}
        .legend span{margin-right:14px;font-size:13px}.legend i{display:inline-block;width:10px;height:10px;\
        border-radius:2px;margin-right:5px}
        .live{font-size:13px;color:var(--muted)}.live[data-state=live]{color:var(--ok)}.live[data-state=lost]{color:var(--bad);\
        font-weight:600}
        footer{font-size:12px;color:var(--muted);padding-bottom:24px}footer a{color:inherit}
        """

    /// Live updates: each server-sent event fetches the content again; a lost connection is
    /// shown, and the browser's EventSource reconnects by itself.
    static let script = """
        (function(){
          var live=document.getElementById('live');
          function state(s,text){live.dataset.state=s;live.textContent=text;}
          function refresh(){
            fetch('/dashboard/content'+location.search,{cache:'no-store'}).then(function(r){
              if(!r.ok)throw new Error(r.status);return r.text();
            }).then(function(html){
              document.getElementById('content').innerHTML=html;
              state('live','live · updated '+new Date().toLocaleTimeString());
            }).catch(function(){state('lost','connection lost — retrying');});
          }
          if(!window.EventSource){return;}
          state('connecting','connecting…');
          var source=new EventSource('/v1/events');
          source.addEventListener('update',refresh);
          source.onopen=function(){refresh();};
          source.onerror=function(){state('lost','connection lost — retrying');};
        })();
        """
}
