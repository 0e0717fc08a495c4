import DockerEngine
import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import Participant
import TestSupport

try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)

// MARK: Main

print("claude-max-market fault suite\(quick ? " (quick)" : "") — real processes on loopback")
var results: [ScenarioResult] = []

/// Every scenario, registered once: its name is the one its result and the table show.
struct Scenario {
    let name: String
    let run: (inout ScenarioResult) async throws -> Void
}

let scenarios: [Scenario] = [
    Scenario(name: "market server SIGKILLed mid-lifecycle (SQLite)", run: marketKilled),
    Scenario(name: "provider daemon SIGKILLed mid-job") { result in
        try await ensureImage()
        try await providerKilled(&result)
    },
    Scenario(name: "client clock 10 minutes off", run: clockSkew),
    Scenario(name: "participant's disk full (home on an 8 MB tmpfs)", run: diskFull),
    Scenario(name: "Docker engine restarted mid-job", run: engineRestarted),
    Scenario(name: "egress proxy socket removed mid-job", run: egressSocketRemoved),
    Scenario(name: "one of two instances SIGKILLed (PostgreSQL)") {
        try await twoInstancesOneKilled(&$0, try postgres())
    },
    Scenario(name: "PostgreSQL restarted under load") { try await postgresRestarted(&$0, try postgres()) },
    Scenario(name: "hostile market: mutated frames of every kind to provide and submit --wait") { result in
        try await ensureImage()
        try await hostileMarket(&result)
    },
]

/// The run's PostgreSQL cluster, started on first use and stopped at the end. One that cannot
/// run here is a skip outside CI.
nonisolated(unsafe) var cluster: PostgresCluster?
func postgres() throws -> PostgresCluster {
    if let cluster { return cluster }
    do {
        cluster = try PostgresCluster(directory: root.appending(path: "postgres"))
    } catch let failure as PostgresCluster.Failure {
        throw ScenarioSkipped(description: failure.description)
    }
    return cluster!
}
stopEverythingOnSignals()

/// `--only TEXT`: the scenarios whose name contains TEXT.
let only = CommandLine.arguments.firstIndex(of: "--only").flatMap {
    $0 + 1 < CommandLine.arguments.count ? CommandLine.arguments[$0 + 1] : nil
}
for scenario in scenarios where only.map({ scenario.name.localizedCaseInsensitiveContains($0) }) ?? true {
    let name = scenario.name
    let started = ContinuousClock.now
    do {
        var result = ScenarioResult(name: name)
        try await scenario.run(&result)
        results.append(result)
    } catch let skip as ScenarioSkipped {
        var skipped = ScenarioResult(name: name)
        if servicesRequired {
            skipped.problems.append("cannot run\(inCI ? " in CI" : ""), and its services are required: \(skip)")
        } else {
            skipped.skipped = "\(skip)"
        }
        results.append(skipped)
    } catch {
        var failed = ScenarioResult(name: name)
        failed.problems.append("\(error)")
        results.append(failed)
    }
    let verdict = results.last!.skipped != nil ? "skip" : results.last!.passed ? "pass" : "FAIL"
    print(
        String(
            format: "  %@ %@ (%.1f s)", verdict, name,
            (ContinuousClock.now - started).inSeconds))
    for problem in results.last!.problems { print("      \(problem)") }
    if let reason = results.last!.skipped { print("      skipped: \(reason)") }
}

cluster?.remove()

print("")
print(
    "scenario".padding(toLength: 50, withPad: " ", startingAt: 0)
        + " faults  lifecycles  minted      accounted   lost  result"
)
for result in results {
    print(
        result.name.padding(toLength: 50, withPad: " ", startingAt: 0)
            + String(
                format: " %6d  %10d  %-10@  %-10@  %4lld  %@", result.faults, result.lifecycles,
                Credits(micro: result.minted).description, Credits(micro: result.accounted).description,
                result.lost / Credits.scale,
                result.skipped != nil ? "skip" : result.passed ? "pass" : "FAIL"))
}
let lost = results.map(\.lost).reduce(0, +)
let skips = results.filter { $0.skipped != nil }.count
print(
    "credits lost in all: \(Credits(micro: lost)); scenarios passed: "
        + "\(results.filter { $0.passed && $0.skipped == nil }.count) of \(results.count)"
        + (skips > 0 ? " (\(skips) skipped)" : "")
)
if results.allSatisfy(\.passed) {
    try? FileManager.default.removeItem(at: root)
    exit(0)
}
print("the logs of this run are kept in \(root.path)")
exit(1)
