import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import TestSupport

/// The books' guarantees after many lifecycles on `instances` sharing one database, while
/// `fault` is injected `count` times, spread over the run.
func sharedBooks(
    _ result: inout ScenarioResult, instances: [Market], lifecycles total: Int, faults count: Int,
    fault: @escaping @Sendable (Int) async throws -> Void
) async throws {
    let sealing = try SealingKeySet.generate(at: Date())
    let pairs = (0..<4).map { _ in (KeyRing.inMemory(sealing: sealing), KeyRing.inMemory(sealing: sealing)) }
    for (requester, _) in pairs {
        try mint(instances[0], requester.peerID, 1000)
        result.minted += 1000 * Credits.scale
    }
    let urls = instances.map(\.url)
    let done = LockedBox(0)
    let prefix = UUID().uuidString.prefix(4)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, (requester, provider)) in pairs.enumerated() {
            group.addTask {
                for n in 0..<(total / pairs.count) {
                    _ = await lifecycle(
                        urls: urls, requester: requester, provider: provider, id: "\(prefix)\(index)-\(n)")
                    done.withLock { $0 += 1 }
                }
            }
        }
        group.addTask {
            for index in 0..<count {
                let due = (index + 1) * total / (count + 1)
                let wait = ContinuousClock.now + .seconds(120)
                while done.value < due && ContinuousClock.now < wait { try await Task.sleep(for: .milliseconds(20)) }
                try await Task.sleep(for: .milliseconds(Int.random(in: 0...150)))
                try await fault(index)
            }
        }
        try await group.waitForAll()
    }
    result.faults = count
    result.lifecycles = total
    try instances[0].waitUntilAllFinal(seconds: 40)
    let books = try instances[0].verify()
    result.accounted = books.accounted
    if !books.balanced { result.problems.append("market verify: \(books.detail)") }
    if books.minted != result.minted { result.problems.append("minted \(books.minted), expected \(result.minted)") }
}

let marketTimeouts = [
    "--approval-timeout", "4s", "--acceptance-window", "3s", "--open-timeout", "6s", "--heartbeat-timeout", "30s",
    "--run-grace", "2s", "--sweep-interval", "200ms",
]

/// `sharedBooks` on two instances of one market on a new PostgreSQL database; both must still
/// run at the end.
func twoInstances(
    _ result: inout ScenarioResult, cluster: PostgresCluster, database: String, faults: (quick: Int, full: Int),
    fault: @escaping @Sendable (_ index: Int, _ instances: [Market]) async throws -> Void
) async throws {
    let db = try cluster.createDatabase(database)
    var instances: [Market] = []
    defer { for market in instances { market.stop() } }
    for name in ["a", "b"] {
        instances.append(try Market(name: "\(database)-\(name)", arguments: marketTimeouts, db: db))
    }
    let both = instances
    try await sharedBooks(
        &result, instances: both, lifecycles: quick ? 40 : 100, faults: quick ? faults.quick : faults.full
    ) { try await fault($0, both) }
    for market in both where market.server?.process.isRunning != true {
        result.problems.append("\(market.home.lastPathComponent) is not running at the end")
    }
}

/// Two `market serve` instances on one PostgreSQL database; one of them SIGKILLed again and
/// again mid-lifecycle and started again, while the other goes on.
func twoInstancesOneKilled(_ result: inout ScenarioResult, _ cluster: PostgresCluster) async throws {
    try await twoInstances(&result, cluster: cluster, database: "faults_two", faults: (2, 6)) { index, instances in
        let victim = instances[index % 2]
        victim.kill9()
        try victim.start()
    }
}

/// PostgreSQL itself stopped (fast shutdown) and started again under load: the market
/// processes stay up, reconnect, and the books balance.
func postgresRestarted(_ result: inout ScenarioResult, _ cluster: PostgresCluster) async throws {
    try await twoInstances(&result, cluster: cluster, database: "faults_restart", faults: (1, 3)) { _, _ in
        cluster.stop()
        try await Task.sleep(for: .milliseconds(500))
        try cluster.start()
    }
}
