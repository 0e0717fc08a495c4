import Crypto
import Foundation
import Logging
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport

// The market group: a real `market serve` process (the release binary beside this one) on a
// SQLite file, simulated peers on loopback. The server's CPU time comes from /proc, so the
// clients' own work is not counted.

/// A `market serve` child process (TestSupport's `MarketProcess`) in a directory of its own,
/// with the figures the benchmarks read off it.
final class ServerProcess: @unchecked Sendable {
    let market: MarketProcess
    let directory: URL
    /// The books it serves, as `--db` takes them.
    let database: String

    /// A server on `database` (`postgres://…`), or on a fresh SQLite file when nil.
    init(database: String? = nil, extra: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appending(
            path: "cmm-bench-market-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.database = database ?? "sqlite:" + directory.appending(path: "m.sqlite").path
        market = try MarketProcess.start(
            db: self.database, home: directory,
            extra: ["--frame-rate", "100000"] + extra + Self.experiment,
            logFile: directory.appending(path: "market.log"))
    }

    /// `CMM_BENCH_SERVER_ARGS`: more `market serve` options for every server of the run (an
    /// experiment, such as `--commit-batch 1`).
    static var experiment: [String] {
        (ProcessInfo.processInfo.environment["CMM_BENCH_SERVER_ARGS"] ?? "").split(separator: " ").map(String.init)
    }

    var process: Process { market.process }
    var port: Int { market.port }
    var url: String { "ws://127.0.0.1:\(port)/market" }
    var sqlite: MarketDatabaseLocation { .sqlite(path: directory.appending(path: "m.sqlite").path) }

    /// User + system CPU seconds of the server so far.
    var cpuSeconds: Double {
        let stat = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8)) ?? ""
        let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The same to the nanosecond (`cpuSeconds` counts clock ticks of 10 ms, too coarse for one burst).
    var preciseCPUSeconds: Double { threadCPUSeconds(of: "\(process.processIdentifier)") }

    var rssMB: Double {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
    }

    /// Stops the server and removes its directory (kept, with its log, when
    /// `CMM_BENCH_KEEP_LOGS` is set).
    func stop() {
        market.stop()
        if ProcessInfo.processInfo.environment["CMM_BENCH_KEEP_LOGS"] == nil {
            try? FileManager.default.removeItem(at: directory)
        }
    }
}

/// A process's CPU time to the nanosecond, summed over its threads' scheduler statistics
/// (`self` for this one).
func threadCPUSeconds(of pid: String) -> Double {
    let tasks = "/proc/\(pid)/task"
    let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
    return threads.reduce(0) { sum, thread in
        let stat = (try? String(contentsOfFile: "\(tasks)/\(thread)/schedstat", encoding: .utf8)) ?? ""
        return sum + (Double(stat.split(separator: " ").first ?? "") ?? 0) / 1e9
    }
}

/// `market verify` on a benchmark's books (it reads a WAL snapshot, so the server may still be
/// running); a run that leaves them unbalanced fails the benchmark.
func verifyBooks(_ database: String) throws {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appending(path: "claude-max-market").path
    let (status, output) = try runProcess([binary, "market", "verify", "--db", database], withErrors: true)
    guard status == 0 else { throw BenchmarkError("market verify failed on \(database): \(output.suffix(600))") }
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p))]
}

func mint(_ peers: [PeerID], _ location: MarketDatabaseLocation) async throws {
    try await location.withStore(logger: Logger(label: "bench")) { store in
        let book = MarketBook(rules: MarketRules())
        try await store.write { tx in
            for peer in peers {
                _ = try await book.mint(
                    to: peer, amount: try Credits(whole: 1_000_000), memo: "bench", nowMs: 0, in: tx)
            }
        }
    }
}

/// Runs `perPair` signed lifecycles (post, approve, result, accept) for each requester/provider
/// pair at once, the provider with a standing offer; returns the wall time in seconds.
func runLifecycles(url: String, pairs: [(KeyRing, KeyRing)], perPair: Int, prefix: String) async throws -> Double {
    let start = ContinuousClock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for (index, (requester, provider)) in pairs.enumerated() {
            group.addTask {
                try await MarketConnection.with(url: url, keys: provider) { p in
                    try await MarketConnection.with(url: url, keys: requester) { r in
                        try await p.request(
                            .offerAdvertise, AdvertiseBody(price: 1_000_000, slots: 1, models: ["m\(index)"])
                        ).throwIfError()
                        for n in 0..<perPair {
                            try await lifecycle(
                                requester: r, provider: p, taskID: "\(prefix)\(index)-\(n)", model: "m\(index)")
                        }
                    }
                }
            }
        }
        try await group.waitForAll()
    }
    return seconds(ContinuousClock.now - start)
}

/// Mints for the requesters, runs the lifecycles on `server`, and returns the wall time and the
/// server's CPU seconds per lifecycle.
func measuredLifecycles(
    on server: ServerProcess, pairs: [(KeyRing, KeyRing)], perPair: Int, prefix: String
) async throws -> (wall: Double, cpuPerLifecycle: Double) {
    try await mint(pairs.map(\.0.peerID), server.sqlite)
    let cpuBefore = server.cpuSeconds
    let wall = try await runLifecycles(url: server.url, pairs: pairs, perPair: perPair, prefix: prefix)
    return (wall, (server.cpuSeconds - cpuBefore) / Double(pairs.count * perPair))
}

/// One signed lifecycle; each frame's id is the task id with a suffix.
func lifecycle(requester r: MarketConnection, provider p: MarketConnection, taskID id: String, model: String)
    async throws
{
    try await r.request(.taskPost, PostBody(taskId: id, maxPrice: 2_000_000, model: model), id: id + "-m1")
        .throwIfError()
    try await p.request(.jobApproved, TaskRefBody(taskId: id), id: id + "-m2").throwIfError()
    try await p.request(
        .jobResult, ResultBody(taskId: id, sealed: "eA==", resultHash: String(repeating: "a", count: 64)),
        id: id + "-m3"
    ).throwIfError()
    try await r.request(.jobAccept, TaskRefBody(taskId: id), id: id + "-m4").throwIfError()
}

func marketBenchmarks() async throws {
    let sealing = try SealingKeySet.generate(at: Date())
    let clock = ContinuousClock()

    // Ed25519 verification alone, for the same frames a lifecycle makes the server check.
    let signer = KeyRing.inMemory(sealing: sealing)
    let samples = try (0..<2000).map { index in
        try signer.identity.envelope(type: .jobAccept, id: "m\(index)", body: "{\"taskId\":\"t\(index)\"}", nowMs: 1)
    }
    let key = signer.identity.publicKey
    let verifyTime = clock.measure {
        for envelope in samples {
            _ = key.isValidSignature(Data(base64Encoded: envelope.sig)!, for: envelope.signingBytes)
        }
    }
    let verifySeconds = seconds(verifyTime) / Double(samples.count)
    let framesPerLifecycle = 4.0

    // Full signed lifecycles: post, approve, result, accept, by 8 requester/provider pairs at once.
    let pairs = (0..<8).map { _ in (KeyRing.inMemory(sealing: sealing), KeyRing.inMemory(sealing: sealing)) }
    let perPair = Int(ProcessInfo.processInfo.environment["CMM_BENCH_LIFECYCLES"] ?? "250") ?? 250
    // The baseline of group commit, in the same run: a server that commits every frame alone.
    let single = try ServerProcess(extra: ["--commit-batch", "1"])
    let (singleWall, singleCPU) = try await measuredLifecycles(on: single, pairs: pairs, perPair: perPair, prefix: "s")
    try verifyBooks(single.database)
    single.stop()
    print(
        String(
            format: "  a transaction per frame (--commit-batch 1): %.0f lifecycles/s; server CPU %.0f µs per lifecycle",
            Double(pairs.count * perPair) / singleWall, singleCPU * 1e6))

    let server = try ServerProcess()
    defer { server.stop() }
    let url = server.url
    let (wall, cpuPerLifecycle) = try await measuredLifecycles(on: server, pairs: pairs, perPair: perPair, prefix: "p")
    let lifecycles = Double(pairs.count * perPair)
    print(
        String(
            format:
                "  %.0f lifecycles in %.2f s: %.0f lifecycles/s; server CPU %.0f µs per lifecycle, Ed25519 verify %.0f µs per frame",
            lifecycles, wall, lifecycles / wall, cpuPerLifecycle * 1e6, verifySeconds * 1e6))
    // Informational: the smallest write a frame needs (its nonce) as one transaction, in-process.
    let floorStore = try SQLiteMarketStore(path: server.directory.appending(path: "floor.sqlite").path)
    let floorCount = 2000
    let floorTime = try await clock.measure {
        for index in 0..<floorCount {
            _ = try await floorStore.write { try await $0.insertNonce(peer: "p", nonce: "n\(index)", expiresMs: 1) }
        }
    }
    try await floorStore.close()
    print(
        String(
            format: "  one SQLite write transaction (a nonce row) through the store: %.0f µs",
            seconds(floorTime) / Double(floorCount) * 1e6))
    report(
        Row(
            name: "market: lifecycles/s, group commit / a transaction per frame", ours: lifecycles / wall,
            baseline: lifecycles / singleWall, unit: "/s", target: 1, higherIsBetter: true))
    report(
        Row(
            name: "market: server CPU / its signature checks", ours: cpuPerLifecycle * 1e6,
            baseline: verifySeconds * framesPerLifecycle * 1e6, unit: "µs", target: 3, higherIsBetter: false))

    // Matching latency: task.post sent → task.assigned received by a provider with a standing offer.
    // Five providers with standing offers (64 slots each, one model each); 300 posts round-robin.
    let requester = KeyRing.inMemory(sealing: sealing)
    let providers = (0..<5).map { _ in KeyRing.inMemory(sealing: sealing) }
    try await mint([requester.peerID], server.sqlite)
    let latencies = try await MarketConnection.with(url: url, keys: requester) { r in
        try await withConnections(url: url, keys: providers) { connections in
            for (index, connection) in connections.enumerated() {
                try await connection.request(
                    .offerAdvertise, AdvertiseBody(price: 1_000_000, slots: 64, models: ["match\(index)"])
                )
                .throwIfError()
            }
            var values: [Double] = []
            for n in 0..<300 {
                let id = "match-\(n)"
                let sent = ContinuousClock.now
                try await r.send(.taskPost, PostBody(taskId: id, maxPrice: 1_000_000, model: "match\(n % 5)"))
                _ = try await connections[n % 5].next(.taskAssigned, taskId: id)
                values.append(seconds(ContinuousClock.now - sent) * 1000)
                _ = try await r.next(.taskAssigned, taskId: id)
            }
            return values
        }
    }
    report(
        Row(
            name: "market: matching latency p50 (vs 5 ms)", ours: percentile(latencies, 0.5), baseline: 5, unit: "ms",
            target: 1, higherIsBetter: false))
    report(
        Row(
            name: "market: matching latency p99 (vs 20 ms)", ours: percentile(latencies, 0.99), baseline: 20,
            unit: "ms", target: 1, higherIsBetter: false))

    // One event to 1,000 connected peers, and the server's memory with them idle. Several posts,
    // one after another once every peer has the last: one post is a single sample of a burst
    // that a busy neighbour on the machine can spoil.
    let fanServer = try ServerProcess()
    defer { fanServer.stop() }
    let idleRSS = fanServer.rssMB
    let peers = Int(ProcessInfo.processInfo.environment["CMM_BENCH_PEERS"] ?? "1000") ?? 1000
    let rounds = scaled(5, quick: 2)
    let poster = KeyRing.inMemory(sealing: sealing)
    try await mint([poster.peerID], fanServer.sqlite)
    let fanURL = fanServer.url
    let ready = LockedBox(0)
    let go = LockedBox(0)
    let arrivals = LockedBox<[[ContinuousClock.Instant]]>(Array(repeating: [], count: rounds))
    let posted = LockedBox<[ContinuousClock.Instant]>([])
    let serverCPU = LockedBox<[Double]>([])
    let clientCPU = LockedBox<[Double]>([])
    var connectedRSS = 0.0
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<peers {
            group.addTask {
                let keys = KeyRing.inMemory(sealing: sealing)
                try await MarketConnection.with(url: fanURL, keys: keys) { connection in
                    try await connection.request(.offerAdvertise, AdvertiseBody(price: 50_000_000, slots: 1))
                        .throwIfError()
                    ready.increment()
                    for round in 0..<rounds {
                        _ = try await connection.next(.taskOpen, timeout: .seconds(120))
                        let now = ContinuousClock.now
                        arrivals.withLock { $0[round].append(now) }
                    }
                    while go.value == 0 { try await Task.sleep(for: .milliseconds(50)) }
                }
            }
        }
        while ready.value < peers { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .milliseconds(500))
        connectedRSS = fanServer.rssMB
        try await MarketConnection.with(url: fanURL, keys: poster) { r in
            for round in 0..<rounds {
                let cpuBefore = (fanServer.preciseCPUSeconds, threadCPUSeconds(of: "self"))
                posted.append(ContinuousClock.now)
                try await r.request(.taskPost, PostBody(taskId: "fan\(round)", maxPrice: 1_000_000)).throwIfError()
                while arrivals.value[round].count < peers { try await Task.sleep(for: .milliseconds(5)) }
                serverCPU.append(fanServer.preciseCPUSeconds - cpuBefore.0)
                clientCPU.append(threadCPUSeconds(of: "self") - cpuBefore.1)
                try await Task.sleep(for: .milliseconds(300))
            }
        }
        go.increment()
        try await group.waitForAll()
    }
    let perRound = (0..<rounds).map { round in
        arrivals.value[round].map { seconds($0 - posted.value[round]) * 1000 }
    }
    print(
        "  fan-out p99 per post: "
            + perRound.map { String(format: "%.1f", percentile($0, 0.99)) }.joined(separator: ", ")
            + " ms; the server's CPU per post: "
            + serverCPU.value.map { String(format: "%.1f", $0 * 1000) }.joined(separator: ", ")
            + " ms; the peers' (this process): "
            + clientCPU.value.map { String(format: "%.1f", $0 * 1000) }.joined(separator: ", ") + " ms")
    report(
        Row(
            name: "market: fan-out to \(peers) peers, p99 (vs 50 ms)", ours: percentile(perRound.flatMap { $0 }, 0.99),
            baseline: 50, unit: "ms", target: 1, higherIsBetter: false))
    print(
        String(
            format: "  server RSS: %.1f MB idle, %.1f MB with %d authenticated connections", idleRSS, connectedRSS,
            peers))
    report(
        Row(
            name: "market: RSS with \(peers) idle peers (vs 150 MB)", ours: connectedRSS, baseline: 150, unit: "MB",
            target: 1, higherIsBetter: false))
    try verifyBooks(server.database)
    try verifyBooks(fanServer.database)
    print("  market verify: the books balance after every run (frame by frame, group commit, fan-out)")
}

/// Opens one authenticated connection per key ring, nested, and runs `body` with all of them.
func withConnections<T: Sendable>(
    url: String, keys: [KeyRing], opened: [MarketConnection] = [],
    _ body: @escaping @Sendable ([MarketConnection]) async throws -> T
) async throws -> T {
    guard let first = keys.first else { return try await body(opened) }
    let rest = Array(keys.dropFirst())
    return try await MarketConnection.with(url: url, keys: first) { connection in
        try await withConnections(url: url, keys: rest, opened: opened + [connection], body)
    }
}
