import Crypto
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketCrypto
import TestSupport

// Benchmarks: each line puts our number beside a baseline measured in the same run, as a ratio
// against the issue's target. Run with `swift run -c release cmm-benchmarks [crypto|docker|dispatch|output|workspace|claude|gateway|market|postgres|echo|e2e|conversation|cli|all]`.

struct Row {
    var name: String
    var ours: Double
    var baseline: Double
    var unit: String
    /// How the ratio is judged: ours / baseline must be ≥ this (throughput) or ≤ this (latency).
    var target: Double
    var higherIsBetter: Bool

    var ratio: Double { ours / baseline }
    var passes: Bool { higherIsBetter ? ratio >= target : ratio <= target }
}

let results = LockedBox<[Row]>([])

/// `CMM_BENCH_QUICK=1` (`scripts/bench.sh --quick`): every figure with small sizes — to prove
/// the harness, or for a first look; the full sizes are what docs/BENCHMARKS.md records.
let quickBench = ProcessInfo.processInfo.environment["CMM_BENCH_QUICK"] == "1"
func scaled(_ full: Int, quick: Int) -> Int { quickBench ? quick : full }

/// Unbuffered: each figure shows as soon as it is measured, also through a pipe (`tee`).
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    let text = items.map { "\($0)" }.joined(separator: separator) + terminator
    try? FileHandle.standardOutput.write(contentsOf: Data(text.utf8))
}

func report(_ row: Row) {
    results.withLock { $0.append(row) }
    let comparison = row.higherIsBetter ? "≥" : "≤"
    print(
        String(
            format: "%-44@ ours %12.1f %@  baseline %12.1f %@  ratio %6.3f (target %@ %.2f) %@", row.name as NSString,
            row.ours, row.unit, row.baseline, row.unit, row.ratio, comparison, row.target, row.passes ? "PASS" : "MISS")
    )
}

func seconds(_ duration: Duration) -> Double { duration.inSeconds }

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1
        ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func runProcess(_ arguments: [String], stdin: Data? = nil, withErrors: Bool = false) throws -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = withErrors ? out : FileHandle.nullDevice
    let input = Pipe()
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(stdin) }
    try input.fileHandleForWriting.close()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

// MARK: Crypto

struct OneKey: SealingKeyLookup {
    let keys: SealingKeySet
    func keySet(forKeyID keyID: Data, suite: SealSuite) throws(SealError) -> SealingKeySet { keys }
}

func cryptoBenchmarks() throws {
    let keys = try SealingKeySet.generate(at: Date())
    let payload = Data((0..<1024).map { UInt8(truncatingIfNeeded: $0) })
    let count = scaled(5000, quick: 200)
    let clock = ContinuousClock()
    var sealed = Data()
    let sealTime = clock.measure {
        for _ in 0..<count { sealed = try! Sealer.seal(payload, to: keys.publicKeys, purpose: .payload) }
    }
    let openTime = clock.measure {
        for _ in 0..<count { _ = try! Sealer.open(sealed, keys: OneKey(keys: keys)) }
    }
    let python = """
        import os, time
        from cryptography.hazmat.primitives.hpke import Suite, KEM, KDF, AEAD
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        s = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
        sk = X25519PrivateKey.generate(); pk = sk.public_key(); pt = os.urandom(1024); n = 3000
        t = time.perf_counter()
        for _ in range(n): ct = s.encrypt(pt, pk, b"claude-max-market/bench")
        seal = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n): s.decrypt(ct, sk, b"claude-max-market/bench")
        print(seal, n / (time.perf_counter() - t))
        """
    let (status, output) = try runProcess(["python3", "-c", python])
    let parts = output.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    guard status == 0, parts.count == 2 else {
        throw BenchmarkError("python cryptography HPKE baseline failed: \(output)")
    }
    report(
        Row(
            name: "HPKE seal, 1 KiB payloads", ours: Double(count) / seconds(sealTime), baseline: parts[0],
            unit: "op/s", target: 0.8, higherIsBetter: true))
    report(
        Row(
            name: "HPKE open, 1 KiB payloads", ours: Double(count) / seconds(openTime), baseline: parts[1],
            unit: "op/s", target: 0.8, higherIsBetter: true))

    try streamBenchmark()
    let (_, speed) = try runProcess(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "3"])
    guard let line = speed.split(separator: "\n").last(where: { $0.lowercased().hasPrefix("aes-256-gcm") }),
        let kilobytes = line.split(separator: " ").last.flatMap({ Double($0.replacingOccurrences(of: "k", with: "")) })
    else { throw BenchmarkError("openssl speed baseline failed: \(speed)") }
    print(String(format: "  openssl speed -evp aes-256-gcm, 16 KiB blocks: %.0f MB/s (reference)", kilobytes / 1000))
}

/// Counts bytes and keeps none: like `openssl speed`, the bulk figure measures sealing, not storage.
struct CountingSink: ByteSink {
    var count = 0
    mutating func write(_ data: Data) throws { count += data.count }
}

struct BenchmarkError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// MARK: Docker

let image = "cmm-bench/busybox:latest"
let settings = SandboxSettings(
    image: image, memoryBytes: 256 << 20, cpuShares: 512, pidsLimit: 64, tmpfsBytes: 16 << 20, timeout: .seconds(60))

func hardenedRunFlags() -> [String] {
    [
        "--network", "none", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory",
        "\(settings.memoryBytes)", "--memory-swap", "\(settings.memoryBytes)", "--cpu-shares", "\(settings.cpuShares)",
        "--pids-limit", "\(settings.pidsLimit)", "--tmpfs",
        "/work:rw,noexec,nosuid,nodev,size=\(settings.tmpfsBytes),uid=10001,gid=10001,mode=0700",
        "--user", SandboxPolicy.user,
    ]
}

func ensureImage(_ docker: DockerClient) async throws {
    if try await docker.inspectImage(image) != nil { return }
    var tar = TarArchive()
    try tar.addFile(
        "Dockerfile",
        contents: Data(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n".utf8))
    try tar.addFile("busybox", from: URL(fileURLWithPath: "/bin/busybox"))
    _ = try await docker.buildImage(
        context: tar.finish(), tags: [image], labels: Labels.make(kind: "test-image", version: ToolVersion.current))
}

func dockerBenchmarks(_ docker: DockerClient, runs: Int) async throws {
    try await ensureImage(docker)
    let (ours, cli) = try await containerCycles(docker, runs: runs, networkMode: "none")
    report(
        Row(
            name: "create+start+wait+remove (median of \(runs))", ours: median(ours), baseline: median(cli), unit: "ms",
            target: 1.0, higherIsBetter: false))
    try await networkModeBreakdown(docker, runs: runs)
}

/// Create+start+wait+remove through the module, then `docker run --rm` with the same flags, `runs`
/// times each, interleaved; milliseconds.
func containerCycles(
    _ docker: DockerClient, runs: Int, networkMode: String
) async throws -> (api: [Double], cli: [Double]) {
    let clock = ContinuousClock()
    var api: [Double] = []
    var cli: [Double] = []
    var flags = hardenedRunFlags()
    flags[1] = networkMode
    for _ in 0..<runs {
        var spec = SandboxPolicy.containerSpec(
            settings, command: ["true"], environment: [],
            labels: Labels.make(kind: "test", version: ToolVersion.current), egressDirectory: nil)
        spec.HostConfig.NetworkMode = networkMode
        let start = clock.now
        let id = try await docker.createContainer(spec)
        try await docker.startContainer(id)
        _ = try await docker.waitContainer(id)
        try await docker.removeContainer(id)
        api.append(seconds(clock.now - start) * 1000)
        let cliStart = clock.now
        _ = try runProcess(["docker", "run", "--rm"] + flags + [image, "true"])
        cli.append(seconds(clock.now - cliStart) * 1000)
    }
    return (api, cli)
}

/// Where the engine's time goes: the same cycle with the job joining an idle loopback-only
/// container's network namespace instead of getting its own (`NetworkMode: none`). Informational,
/// not a target: the product keeps one namespace per job (see docs/BENCHMARKS.md).
func networkModeBreakdown(_ docker: DockerClient, runs: Int) async throws {
    let holderSpec = SandboxPolicy.containerSpec(
        settings, command: ["sleep", "600"], environment: [],
        labels: Labels.make(kind: "test", version: ToolVersion.current), egressDirectory: nil)
    let holder = try await docker.createContainer(holderSpec)
    let cycles: (api: [Double], cli: [Double])
    do {
        try await docker.startContainer(holder)
        cycles = try await containerCycles(docker, runs: runs, networkMode: "container:\(holder)")
    } catch {
        try? await docker.removeContainer(holder)
        throw error
    }
    try await docker.removeContainer(holder)
    print(
        String(
            format:
                "  the same cycle in a shared loopback-only namespace: API %.0f ms, docker run %.0f ms (informational)",
            median(cycles.api), median(cycles.cli)))
}

/// Approved job → first byte back from inside the container (`head -n 1` echoes the prompt).
func dispatchBenchmarks(_ docker: DockerClient, runs: Int) async throws {
    try await ensureImage(docker)
    let run = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-\(getpid())")
    let executor = JobExecutor(docker: docker, runDirectory: run)
    let backend = JobBackend.command(["head", "-n", "1"])
    let clock = ContinuousClock()
    func request() -> JobRequest {
        JobRequest(
            id: UUID().uuidString.lowercased(), prompt: Data("x\n".utf8), backend: backend, sandbox: settings,
            egress: nil)
    }
    /// From approval (the cold path creates the container while the approval is asked, as
    /// `execute` does; the warm path has it started already) to the first byte back.
    func firstByte(
        _ body: (@escaping @Sendable () -> Void, @escaping @Sendable (JobOutput) -> Void) async throws -> JobReport
    ) async throws -> Double {
        let approved = FirstLine()
        let first = FirstLine()
        _ = try await body({ approved.mark(clock.now) }) { output in
            if case .line = output { first.mark(clock.now) }
        }
        guard let start = approved.at, let at = first.at else { throw BenchmarkError("no output from the container") }
        return seconds(at - start) * 1000
    }
    var cold: [Double] = []
    var baseline: [Double] = []
    for _ in 0..<runs {
        cold.append(
            try await firstByte { approve, output in
                try await executor.run(request(), whenCreated: { _ in approve() }, onOutput: output)
            })
        baseline.append(try cliFirstByte())
    }
    let template = WarmPool.Template(sandbox: settings, backend: backend, egress: nil)
    let pool = WarmPool(docker: docker, template: template, size: 2, runDirectory: run)
    var warm: [Double] = []
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await pool.run() }
        for _ in 0..<runs {
            await pool.waitUntilFull()
            guard let slot = await pool.take() else { throw BenchmarkError("the pool had no slot") }
            warm.append(
                try await firstByte { approve, output in
                    approve()
                    return try await executor.run(request(), on: slot, onOutput: output)
                })
            await pool.release(slot)
        }
        group.cancelAll()
    }
    report(
        Row(
            name: "dispatch → first byte, cold (median of \(runs))", ours: median(cold), baseline: median(baseline),
            unit: "ms", target: 1.0, higherIsBetter: false))
    report(
        Row(
            name: "dispatch → first byte, warm pool (median of \(runs))", ours: median(warm),
            baseline: median(baseline), unit: "ms", target: 0.1, higherIsBetter: false))
}

/// The first instant something happened, shared by the tasks that watch for it.
typealias FirstLine = LockedBox<ContinuousClock.Instant?>

extension LockedBox where Value == ContinuousClock.Instant? {
    convenience init() { self.init(nil) }
    func mark(_ now: ContinuousClock.Instant) { withLock { if $0 == nil { $0 = now } } }
    var at: ContinuousClock.Instant? { value }
}

/// `docker run -i --rm` with the same flags: time until the echoed byte is read back.
func cliFirstByte() throws -> Double {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["docker", "run", "-i", "--rm"] + hardenedRunFlags() + [image, "head", "-n", "1"]
    let out = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardInput = input
    process.standardError = FileHandle.nullDevice
    let start = ContinuousClock.now
    try process.run()
    input.fileHandleForWriting.write(Data("x\n".utf8))
    _ = try out.fileHandleForReading.read(upToCount: 1)
    let elapsed = seconds(ContinuousClock.now - start) * 1000
    try input.fileHandleForWriting.close()
    process.waitUntilExit()
    return elapsed
}

// MARK: Main

/// Where a seal's time goes: the X25519 operations underneath HPKE, alone.
func cryptoBreakdown() {
    let clock = ContinuousClock()
    let agreement = Curve25519.KeyAgreement.PrivateKey()
    let peer = Curve25519.KeyAgreement.PrivateKey().publicKey
    let n = scaled(3000, quick: 100)
    let dh = clock.measure { for _ in 0..<n { _ = try! agreement.sharedSecretFromKeyAgreement(with: peer) } }
    let gen = clock.measure { for _ in 0..<n { _ = Curve25519.KeyAgreement.PrivateKey().publicKey } }
    print(
        String(
            format: "  x25519: shared secret %.1f µs, key generation %.1f µs", seconds(dh) / Double(n) * 1e6,
            seconds(gen) / Double(n) * 1e6))
}

/// Bulk: 256 MiB streamed in 16 KiB chunks, against swift-crypto's own `AES.GCM.seal` on the
/// same chunks (the floor of any stream built on it). `cmm-benchmarks stream` runs it alone.
func streamBenchmark() throws {
    let keys = try SealingKeySet.generate(at: Date())
    let clock = ContinuousClock()
    // Written through before anything is timed: untouched pages of a fresh buffer fault in on
    // first read, and that cost once fell on whichever side ran first.
    var bulk = Data(count: scaled(256 << 20, quick: 8 << 20))
    bulk.withUnsafeMutableBytes { buffer in
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in stride(from: 0, to: buffer.count, by: 8) {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            buffer.storeBytes(of: state, toByteOffset: index, as: UInt64.self)
        }
    }
    let key = SymmetricKey(size: .bits256)
    let chunkSize = 16 << 10
    // Alternating, three of each; the median of each side.
    var oursTimes: [Duration] = []
    var aesTimes: [Duration] = []
    for _ in 0..<3 {
        var sink = CountingSink()
        oursTimes.append(
            clock.measure {
                var source = DataSource(bulk)
                try! Sealer.seal(
                    from: &source, to: &sink, recipient: keys.publicKeys, purpose: .file, chunkExponent: 14)
            })
        // The same 16 KiB chunks of the same input, in order (not one chunk kept hot in the
        // cache), each with a counter nonce as the stream uses (a random one costs a syscall).
        aesTimes.append(
            clock.measure {
                var offset = bulk.startIndex
                var counter: UInt64 = 0
                while offset < bulk.endIndex {
                    let end = min(offset + chunkSize, bulk.endIndex)
                    var nonce = [UInt8](repeating: 0, count: 12)
                    withUnsafeBytes(of: counter.bigEndian) { nonce.replaceSubrange(3..<11, with: $0) }
                    _ = try! AES.GCM.seal(bulk[offset..<end], using: key, nonce: try! AES.GCM.Nonce(data: nonce))
                    counter += 1
                    offset = end
                }
            })
    }
    let ours = Double(bulk.count) / seconds(oursTimes.sorted()[1]) / 1e6
    let aes = Double(bulk.count) / seconds(aesTimes.sorted()[1]) / 1e6
    report(
        Row(
            name: "sealed stream, 16 KiB chunks (vs AES.GCM.seal)", ours: ours, baseline: aes, unit: "MB/s",
            target: 0.75, higherIsBetter: true))
}

let which = CommandLine.arguments.dropFirst().first ?? "all"
let runs = Int(ProcessInfo.processInfo.environment["CMM_BENCH_RUNS"] ?? "20") ?? 20
print("claude-max-market benchmarks (\(which)); ratios are ours / baseline measured now, on this machine")
do {
    if which == "crypto" || which == "all" {
        try cryptoBenchmarks()
        cryptoBreakdown()
    }
    if which == "stream" {
        try streamBenchmark()
    }
    if which == "gateway" || which == "all" {
        try await gatewayBenchmarks()
    }
    if ["docker", "dispatch", "output", "workspace", "claude", "all"].contains(which) {
        let host = ProcessInfo.processInfo.environment["DOCKER_HOST"] ?? ""
        let socket = host.hasPrefix("unix://") ? String(host.dropFirst(7)) : "/var/run/docker.sock"
        try await DockerClient.withClient(configuration: .init(socketPath: socket)) { docker in
            if which == "docker" || which == "all" { try await dockerBenchmarks(docker, runs: runs) }
            if which == "dispatch" || which == "all" { try await dispatchBenchmarks(docker, runs: runs) }
            if which == "output" || which == "all" { try await outputBenchmark(docker, runs: runs) }
            if which == "workspace" || which == "all" { try await workspaceBenchmarks(docker) }
            if which == "claude" || which == "all" { try await claudeBenchmarks(docker, runs: runs) }
        }
    }
    if which == "market" || which == "all" {
        try await marketBenchmarks()
    }
    if which == "market" || which == "postgres" || which == "all" {
        try await postgresBenchmarks()
    }
    if which == "echo" || which == "all" {
        try await echoBenchmarks()
    }
    if which == "e2e" || which == "all" {
        try await e2eBenchmarks(runs: runs)
    }
    if which == "conversation" || which == "all" {
        try await conversationBenchmarks(runs: runs)
    }
    if which == "cli" || which == "all" {
        try cliBenchmarks(runs: runs)
    }
} catch {
    print("benchmark failed: \(error)")
    exit(2)
}
print("\(results.value.filter(\.passes).count) of \(results.value.count) targets met")
