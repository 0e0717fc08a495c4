import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import TestSupport

/// SIGKILL of the market server at random points of many lifecycles, each time started again.
func marketKilled(_ result: inout ScenarioResult) async throws {
    let market = try Market(name: "killed", arguments: marketTimeouts)
    defer { market.stop() }
    try await sharedBooks(&result, instances: [market], lifecycles: quick ? 40 : 100, faults: quick ? 3 : 10) { _ in
        market.kill9()
        try market.start()
    }
}

/// A provider daemon killed mid-job: the requester is refunded, the provider blamed, and when it
/// comes back its container is gone and its books are whole.
func providerKilled(_ result: inout ScenarioResult) async throws {
    let market = try Market(
        name: "provider",
        arguments: [
            "--heartbeat-timeout", "3s", "--open-timeout", "6s", "--run-grace", "1s", "--sweep-interval", "200ms",
        ])
    defer { market.stop() }
    let provider = root.appending(path: "provider-home")
    let requester = root.appending(path: "requester-home")
    try tool(["terms", "--accept"], home: provider)
    try tool(["opt-in", "--claude-jobs", "--yes"], home: provider)
    try tool(
        [
            "config", "--set", "market.url=\(market.url)", "--set", "approval.mode=policy", "--set",
            "docker.image=\(image)", "--set", "docker.warmPool=1",
        ], home: provider)
    try tool(["advertise", "--slots", "1", "--price", "2"], home: provider)
    try tool(["config", "--set", "market.url=\(market.url)"], home: requester)
    let keys = try JSONSerialization.jsonObject(
        with: Data(try tool(["keys", "show", "--json"], home: requester).out.utf8))
    let requesterID = try PeerID(validating: (keys as! [String: Any])["peerId"] as! String)
    try mint(market, requesterID, 20)
    result.minted = 20 * Credits.scale
    let daemon = try Background(
        ["provide", "--backend", "command", "--", "sh", "-c", "echo working; sleep 120"], home: provider,
        log: root.appending(path: "provide.log"))
    try daemon.waitFor("offer live", seconds: 30)
    let submit = try Background(
        ["submit", "--prompt", "a long job", "--max-price", "5", "--wait", "--json"], home: requester,
        log: root.appending(path: "submit.log"))
    try daemon.waitFor("approved and started", seconds: 30)
    try submit.waitFor("working", seconds: 30)
    daemon.stop(SIGKILL)
    result.faults = 1
    result.lifecycles = 1
    let deadline = Date().addingTimeInterval(60)
    while submit.process.isRunning && Date() < deadline { usleep(100_000) }
    if !submit.output.contains("\"state\":\"refunded\"") {
        result.problems.append("the requester was not refunded: \(submit.output.suffix(400))")
    }
    submit.stop(SIGKILL)
    // The provider comes back: its dead job's container and its old warm container go.
    let again = try Background(
        ["provide", "--backend", "command", "--", "cat"], home: provider, log: root.appending(path: "provide-2.log"))
    try again.waitFor("offer live", seconds: 30)
    again.stop()
    try await finish(&result, market: market, homes: [provider, requester], provider: provider, socket: dockerSocket)
}

/// A client whose clock is ten minutes off is refused at once, with the reason.
func clockSkew(_ result: inout ScenarioResult) async throws {
    let market = try Market(name: "skew", arguments: [])
    defer { market.stop() }
    let keys = KeyRing.inMemory(sealing: try SealingKeySet.generate(at: Date()))
    for offset: Int64 in [600_000, -600_000] {
        result.faults += 1
        let started = ContinuousClock.now
        do {
            try await MarketConnection.with(
                url: market.url, keys: keys, clock: { Int64(Date().timeIntervalSince1970 * 1000) + offset }
            ) { _ in }
            result.problems.append("a clock \(offset / 60_000) min off was accepted")
        } catch {
            let elapsed = ContinuousClock.now - started
            if !"\(error)".contains("timestamp") {
                result.problems.append("refused without naming the clock: \(error)")
            }
            if elapsed > .seconds(5) { result.problems.append("the refusal took \(elapsed)") }
        }
    }
}
