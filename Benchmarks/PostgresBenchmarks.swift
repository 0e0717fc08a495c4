import Foundation
import MarketClient
import MarketCore
import MarketCrypto
import MarketProtocol
import MarketStore
import TestSupport

// The market on PostgreSQL against pgbench running the same SQL. A throwaway cluster is started
// here (as the `postgres` user when run as root). One lifecycle is captured from the server's own
// statements (`log_statement=all` on a capture database, read back from the JSON log), turned
// into a pgbench script, and replayed by one pgbench client per requester/provider pair: the
// baseline is what PostgreSQL alone does with exactly the transactions a lifecycle makes.

extension PostgresCluster {
    /// The settings of the benchmarks' cluster: the tests' own, and a JSON log to capture statements from.
    static let benchmarkSettings = [
        "fsync=off", "synchronous_commit=off", "max_connections=100", "logging_collector=on",
        "log_destination=jsonlog", "log_directory=log",
    ]

    /// Every line of the cluster's JSON logs, decoded.
    func logRecords() throws -> [[String: Any]] {
        let logs = directory.appending(path: "data/log")
        let names = try FileManager.default.contentsOfDirectory(atPath: logs.path).filter { $0.hasSuffix(".json") }
            .sorted()
        return try names.flatMap { name in
            try String(contentsOf: logs.appending(path: name), encoding: .utf8).split(separator: "\n").compactMap {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
    }
}

/// Busy CPU seconds of the whole machine so far (all cores), from /proc/stat.
func machineCPUSeconds() -> Double {
    let stat = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? ""
    let fields = stat.split(separator: "\n").first?.split(separator: " ").dropFirst().compactMap { Double($0) } ?? []
    guard fields.count >= 8 else { return 0 }
    // user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// User + system CPU seconds of this process so far.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

func freePort() throws -> Int { try LoopbackSocket.freePort() }

/// The statements of one lifecycle as PostgreSQL logged them, turned into a pgbench script.
struct CapturedLifecycle {
    /// Each transaction's statements with their parameters written in as literals.
    var transactions: [[String]]

    /// Reads the log records of `database` and keeps the transactions that touch `taskID`.
    init(records: [[String: Any]], database: String, taskID: String) throws {
        var open: [Int: [String]] = [:]
        var found: [[String]] = []
        for record in records where record["dbname"] as? String == database {
            guard let pid = record["pid"] as? Int, let message = record["message"] as? String,
                let colon = message.range(of: ": "),
                message.hasPrefix("execute") || message.hasPrefix("statement")
            else { continue }
            var sql = String(message[colon.upperBound...])
            if let detail = record["detail"] as? String, detail.hasPrefix("parameters: ") {
                let values = try Self.parameters(String(detail.dropFirst("parameters: ".count)))
                // Highest number first, so that $1 does not eat the start of $10.
                for (number, literal) in values.sorted(by: { $0.key > $1.key }) {
                    sql = sql.replacingOccurrences(of: "$\(number)", with: literal)
                }
            }
            switch sql.uppercased() {
            case "BEGIN": open[pid] = []
            case "COMMIT":
                if let statements = open.removeValue(forKey: pid), statements.contains(where: { $0.contains(taskID) }) {
                    found.append(statements)
                }
            case "ROLLBACK": open[pid] = nil
            default: open[pid]?.append(sql)
            }
        }
        guard !found.isEmpty else { throw BenchmarkError("no transaction of task \(taskID) in the log") }
        transactions = found
    }

    /// `$1 = 'a', $2 = NULL` → [1: "'a'", 2: "NULL"]; literals stay quoted as logged.
    static func parameters(_ text: String) throws -> [Int: String] {
        var values: [Int: String] = [:]
        var rest = Substring(text)
        while !rest.isEmpty {
            guard rest.hasPrefix("$"), let equals = rest.range(of: " = "),
                let number = Int(rest[rest.index(after: rest.startIndex)..<equals.lowerBound])
            else { throw BenchmarkError("cannot read parameters: \(text)") }
            rest = rest[equals.upperBound...]
            var literal = ""
            if rest.hasPrefix("NULL") {
                literal = "NULL"
                rest = rest.dropFirst(4)
            } else if rest.hasPrefix("'") {
                var index = rest.index(after: rest.startIndex)
                while true {
                    guard index < rest.endIndex else { throw BenchmarkError("unterminated literal: \(text)") }
                    if rest[index] == "'" {
                        let next = rest.index(after: index)
                        if next < rest.endIndex, rest[next] == "'" {
                            index = rest.index(after: next)
                            continue
                        }
                        literal = String(rest[rest.startIndex...index])
                        rest = rest[next...]
                        break
                    }
                    index = rest.index(after: index)
                }
            } else {
                throw BenchmarkError("cannot read parameters: \(text)")
            }
            values[number] = literal
            if rest.hasPrefix(", ") { rest = rest.dropFirst(2) }
        }
        return values
    }

    var statementCount: Int { transactions.reduce(0) { $0 + $1.count } }

    /// A pgbench script of the lifecycle for one pair. What must be new for every lifecycle (the
    /// task id, message ids and nonces) gets the pgbench variable `cmmuid`, random per run of
    /// the script; the captured pair's peer ids become this pair's.
    func pgbenchScript(taskID: String, client: Int, peers: [(from: String, to: String)]) -> String {
        var text = "\\set cmmuid random(1, 9000000000000000000)\n"
        for statements in transactions {
            text += "BEGIN;\n" + statements.map { $0 + ";\n" }.joined() + "COMMIT;\n"
        }
        // Nonces are 16 random bytes in base64.
        let nonces = Set(
            text.matches(of: /[A-Za-z0-9+\/]{22}==/).map { String($0.output) })
        for (index, nonce) in nonces.sorted().enumerated() {
            text = text.replacingOccurrences(of: nonce, with: "n\(index)c\(client)x:cmmuid")
        }
        text = text.replacingOccurrences(of: taskID, with: "cmmtask\(client)x:cmmuid")
        for (from, to) in peers { text = text.replacingOccurrences(of: from, with: to) }
        return text
    }
}

func postgresBenchmarks() async throws {
    guard PostgresCluster.binDirectory() != nil else {
        print("  skipped: PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)")
        return
    }
    let cluster = try PostgresCluster(
        directory: FileManager.default.temporaryDirectory.appending(
            path: "cmm-bench-pg-\(UUID().uuidString.prefix(8))"),
        settings: PostgresCluster.benchmarkSettings)
    defer { cluster.remove() }
    let sealing = try SealingKeySet.generate(at: Date())
    let pairs = (0..<8).map { _ in (KeyRing.inMemory(sealing: sealing), KeyRing.inMemory(sealing: sealing)) }

    // 1. Capture: the first pair's lifecycle on a database whose sessions log every statement.
    try cluster.psql("CREATE DATABASE capture")
    try cluster.psql("ALTER DATABASE capture SET log_statement = 'all'")
    let captureServer = try ServerProcess(database: cluster.url("capture"))
    try await mint([pairs[0].0.peerID], .postgres(url: cluster.url("capture")))
    let captureID = "cmmcapture"
    try await MarketConnection.with(url: captureServer.url, keys: pairs[0].1) { p in
        try await MarketConnection.with(url: captureServer.url, keys: pairs[0].0) { r in
            try await p.request(.offerAdvertise, AdvertiseBody(price: 1_000_000, slots: 1, models: ["m0"]))
                .throwIfError()
            try await lifecycle(requester: r, provider: p, taskID: "cmmwarm", model: "m0")
            try await lifecycle(requester: r, provider: p, taskID: captureID, model: "m0")
        }
    }
    captureServer.stop()
    try await Task.sleep(for: .milliseconds(500))  // the log collector writes asynchronously
    let captured = try CapturedLifecycle(records: try cluster.logRecords(), database: "capture", taskID: captureID)
    print(
        "  captured one lifecycle: \(captured.transactions.count) transactions, \(captured.statementCount) statements")

    // 2. Ours: the same lifecycles as the SQLite run, on PostgreSQL.
    try cluster.psql("CREATE DATABASE bench")
    let server = try ServerProcess(database: cluster.url("bench"))
    defer { server.stop() }
    try await mint(pairs.map(\.0.peerID), .postgres(url: cluster.url("bench")))
    let perPair = Int(ProcessInfo.processInfo.environment["CMM_BENCH_LIFECYCLES"] ?? "250") ?? 250
    _ = try await runLifecycles(url: server.url, pairs: pairs, perPair: 10, prefix: "warm")
    let cpuBefore = (server: server.cpuSeconds, machine: machineCPUSeconds(), own: ownCPUSeconds())
    let wall = try await runLifecycles(url: server.url, pairs: pairs, perPair: perPair, prefix: "pg")
    let count = Double(pairs.count * perPair)
    let serverCPU = (server.cpuSeconds - cpuBefore.server) / count
    let clientCPU = (ownCPUSeconds() - cpuBefore.own) / count
    let machineCPU = (machineCPUSeconds() - cpuBefore.machine) / count
    let ours = Double(pairs.count * perPair) / wall

    // 3. pgbench: one client per pair, each with its own peers, the same number of lifecycles.
    let scripts = try pairs.enumerated().map { index, pair in
        let script = captured.pgbenchScript(
            taskID: captureID, client: index,
            peers: [
                (pairs[0].0.peerID.rawValue, pair.0.peerID.rawValue),
                (pairs[0].1.peerID.rawValue, pair.1.peerID.rawValue),
            ])
        let file = server.directory.appending(path: "lifecycle-\(index).sql")
        if index == 0, let keep = ProcessInfo.processInfo.environment["CMM_BENCH_KEEP_SCRIPT"] {
            try script.write(toFile: keep, atomically: true, encoding: .utf8)
        }
        try script.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }
    let pgbenchBefore = machineCPUSeconds()
    let start = ContinuousClock.now
    let runs = try await withThrowingTaskGroup(of: (Int32, String).self) { group in
        for script in scripts {
            group.addTask {
                try runProcess(
                    [
                        "\(cluster.bin)/pgbench", "-n", "-M", "simple", "-c", "1", "-t", "\(perPair)", "-f", script,
                        "--random-seed", "rand",
                        cluster.url("bench"),
                    ], withErrors: true)
            }
        }
        return try await group.reduce(into: []) { $0.append($1) }
    }
    let pgbenchWall = seconds(ContinuousClock.now - start)
    let pgbenchCPU = (machineCPUSeconds() - pgbenchBefore) / count
    for (status, output) in runs where status != 0 || !output.contains("number of failed transactions: 0") {
        throw BenchmarkError("pgbench failed (\(status)): \(output.suffix(600))")
    }
    let baseline = Double(pairs.count * perPair) / pgbenchWall
    try verifyBooks(cluster.url("bench"))
    print(
        String(
            format:
                "  %d lifecycles: server %.0f/s (%.2f s), pgbench of the same SQL %.0f/s (%.2f s); the books balance",
            pairs.count * perPair, ours, wall, baseline, pgbenchWall))
    print(
        String(
            format:
                "  CPU per lifecycle: server run %.2f ms on the machine (server %.2f ms, its simulated peers %.2f ms, PostgreSQL and the rest %.2f ms); pgbench run %.2f ms",
            machineCPU * 1e3, serverCPU * 1e3, clientCPU * 1e3, (machineCPU - serverCPU - clientCPU) * 1e3,
            pgbenchCPU * 1e3))
    report(
        Row(
            name: "market on PostgreSQL: lifecycles/s vs pgbench of its SQL", ours: ours, baseline: baseline,
            unit: "/s", target: 0.6, higherIsBetter: true))
}
