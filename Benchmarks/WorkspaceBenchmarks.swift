import DockerEngine
import Foundation
import JobRunner
import MarketCrypto
import MarketFlows
import TestSupport
import Workspace

/// A workspace from `submit` to extracted in the provider's /work: packed from disk, archived,
/// sealed to the provider, cut into pieces and put back together, opened, read as hostile
/// input, and unpacked by the runner's entrypoint in a hardened container (until the job's
/// command prints its first line) — against `tar -c | tar -x` of the same tree between two
/// directories. The market's relay of the pieces is not in it (a loopback WebSocket at
/// hundreds of MB/s: `echo`).
func workspaceBenchmarks(_ docker: DockerClient) async throws {
    let megabytes = scaled(50, quick: 5)
    let files = scaled(5000, quick: 500)
    let root = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-ws-\(UUID().uuidString.prefix(8))")
    let source = root.appending(path: "src")
    defer { try? FileManager.default.removeItem(at: root) }
    let perFile = megabytes << 20 / files
    var generator = SystemRandomNumberGenerator()
    for index in 0..<files {
        let url = source.appending(path: "d\(index % 50)/f\(index).txt")
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data((0..<perFile).map { _ in UInt8.random(in: 0x20...0x7e, using: &generator) }).write(to: url)
    }
    try await TestRunnerImage.ensureBuilt()
    let (keys, _) = try KeyStore(directory: root.appending(path: "keys")).loadOrCreate(now: Date(), rotationDays: 30)
    let document = try PublicKeyDocument(ring: keys)
    let run = root.appending(path: "run")
    try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
    let executor = JobExecutor(docker: docker, runDirectory: run)
    var ours: [Double] = []
    var baseline: [Double] = []
    for round in 0..<3 {
        let clock = ContinuousClock()
        let started = clock.now
        let packed = try WorkspacePacker(
            options: .init(includeIgnored: true, limits: .init(maxBytes: 1 << 30, maxFiles: 1_000_000))
        ).pack(source)
        let archive = packed.tree.tar()
        let (info, chunks) = try SealedBlob.seal(archive, to: document, purpose: .payload)
        var assembler = SealedBlob.Assembler()
        for (index, chunk) in chunks.enumerated() {
            try assembler.add(
                .init(taskId: "bench", blob: .workspace, index: index, count: chunks.count, sealed: chunk))
        }
        let opened = try assembler.open(info, keys: keys)
        let tree = try WorkspaceTree.read(tar: opened, limits: .init(maxBytes: 1 << 30, maxFiles: 1_000_000)).tree
        var request = JobRequest(
            id: "bench-ws-\(round)-\(UUID().uuidString.prefix(8).lowercased())", prompt: Data(),
            backend: .command(["sh", "-c", "echo extracted"]),
            sandbox: SandboxSettings(
                image: TestRunnerImage.name, memoryBytes: 1 << 30, cpuShares: 512, pidsLimit: 64, tmpfsBytes: 16 << 20,
                timeout: .seconds(120)),
            egress: nil)
        request.workspace = JobWorkspace(tree: tree)
        request.sandbox.workspaceBytes = tree.unpackedBytes
        let firstLine = LockedBox<Duration?>(nil)
        _ = try await executor.run(request) { output in
            if case .line(_, let text) = output, text == "extracted" {
                firstLine.withLock { if $0 == nil { $0 = clock.now - started } }
            }
        }
        ours.append(seconds(firstLine.withLock { $0 } ?? (clock.now - started)))

        let target = root.appending(path: "copy-\(round)")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        let tarStart = clock.now
        _ = try runProcess(["sh", "-c", "tar -c -C \"$0\" . | tar -x -C \"$1\"", source.path, target.path])
        baseline.append(seconds(clock.now - tarStart))
        try? FileManager.default.removeItem(at: target)
    }
    report(
        Row(
            name: "workspace \(megabytes) MiB / \(files) files → /work (vs tar | tar)", ours: median(ours),
            baseline: median(baseline), unit: "s", target: 2, higherIsBetter: false))
}

/// A real Claude Code job through the executor (cold: a new hardened container, the gateway)
/// against `claude -p` run directly on this machine, both against the same loopback stand-in
/// of the Messages API. Needs the binary `scripts/test.sh` fetches (else it says so).
func claudeBenchmarks(_ docker: DockerClient, runs: Int) async throws {
    guard ClaudeCLITestEnvironment.isAvailable else {
        print(
            "claude: skipped, no Claude Code binary at \(ClaudeCLITestEnvironment.binaryPath) (scripts/test.sh fetches it)"
        )
        return
    }
    try await ClaudeCLITestEnvironment.ensureImage()
    let count = max(3, min(runs, 7))
    try await MessagesAPIStandIn.with(defaultText: "4") { standIn in
        let run = FileManager.default.temporaryDirectory.appending(
            path: "cmm-bench-claude-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: run) }
        let executor = JobExecutor(docker: docker, runDirectory: run)
        var ours: [Double] = []
        var baseline: [Double] = []
        for index in 0..<count {
            let options = ClaudeOptions(
                model: "claude-sonnet-4-6", maxTurns: 2, allowedTools: ["Read"],
                credential: .apiKey("sk-ant-api03-" + String(repeating: "BenchKey", count: 8)),
                gateway: GatewaySettings(upstream: URL(string: standIn.url)!, timeout: .seconds(30)),
                tokenBudget: 1_000_000)
            let request = JobRequest(
                id: "bench-claude-\(index)-\(UUID().uuidString.prefix(8).lowercased())", prompt: Data("2+2?".utf8),
                backend: .claude(options),
                sandbox: SandboxSettings(
                    image: ClaudeCLITestEnvironment.image, memoryBytes: 1 << 30, cpuShares: 512, pidsLimit: 256,
                    tmpfsBytes: 64 << 20, timeout: .seconds(120)),
                egress: nil)
            let clock = ContinuousClock()
            let started = clock.now
            let report = try await executor.run(request) { _ in }
            guard report.state == .succeeded else {
                throw RunnerImageError("the claude job \(report.state): \(report.error ?? "")")
            }
            ours.append(seconds(clock.now - started))

            let config = run.appending(path: "config-\(index)")
            try FileManager.default.createDirectory(at: config, withIntermediateDirectories: true)
            let direct = clock.now
            let (status, _) = try runProcess(
                [
                    "env", "CLAUDE_CONFIG_DIR=\(config.path)", "ANTHROPIC_BASE_URL=\(standIn.url)",
                    "ANTHROPIC_API_KEY=sk-ant-api03-direct", "DISABLE_AUTOUPDATER=1",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", ClaudeCLITestEnvironment.binaryPath, "-p",
                    "--output-format", "stream-json", "--verbose", "--max-turns", "2", "--model", "claude-sonnet-4-6",
                ], stdin: Data("2+2?".utf8))
            guard status == 0 else { throw RunnerImageError("claude -p on the host exited \(status)") }
            baseline.append(seconds(clock.now - direct))
        }
        report(
            Row(
                name: "claude job via execute, cold (vs claude -p on the host)", ours: median(ours),
                baseline: median(baseline), unit: "s", target: 2, higherIsBetter: false))
    }
}
