import Foundation

// The cli group: the tool's cold start as a user meets it, `claude-max-market status --json` in
// a fresh process, beside `node -e 0` (the Node wrapper it replaces started at least a Node
// process), both measured in the same run.

func cliBenchmarks(runs: Int) throws {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appending(
        path: "claude-max-market")
    let home = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-cli-\(UUID().uuidString.prefix(8))")
    try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: home) }
    var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CMM_") }
    environment["CMM_HOME"] = home.path
    // Nothing listens here: the market part of `status` answers "unreachable" at once.
    environment["CMM_MARKET_URL"] = "ws://127.0.0.1:9/market"
    func timed(_ executable: URL, _ arguments: [String]) throws -> Double {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let start = ContinuousClock.now
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw BenchmarkError("\(executable.lastPathComponent) \(arguments.joined(separator: " ")) failed")
        }
        return seconds(ContinuousClock.now - start) * 1000
    }
    _ = try timed(binary, ["status", "--json"])  // the first run makes the home and the keys' absence known
    let node = URL(fileURLWithPath: "/usr/bin/env")
    var ours: [Double] = []
    var baseline: [Double] = []
    for _ in 0..<runs {
        ours.append(try timed(binary, ["status", "--json"]))
        baseline.append(try timed(node, ["node", "-e", "0"]))
    }
    report(
        Row(
            name: "CLI cold start, `status --json` (median of \(runs))", ours: median(ours),
            baseline: median(baseline), unit: "ms", target: 0.6, higherIsBetter: false))
}
