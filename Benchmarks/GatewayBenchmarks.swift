import AsyncHTTPClient
import DockerEngine
import Foundation
import Hummingbird
import HummingbirdTLS
import JobRunner
import Logging
import MarketCore
import NIOCore
import NIOSSL
import Participant
import TestSupport

// The API gateway against the upstream directly, and a flooding job's output against `docker run`.

/// A loopback HTTPS stand-in for the Claude API: `model: "big"` streams `bigBytes`, anything
/// else a short event stream with usage.
struct BenchUpstream {
    static let bigBytes = scaled(64 << 20, quick: 4 << 20)

    static func with<T: Sendable>(_ body: @Sendable (URL, String) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-tls-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func path(_ name: String) -> String { directory.appending(path: name).path }
        try "subjectAltName=IP:127.0.0.1\n".write(toFile: path("san.cnf"), atomically: true, encoding: .utf8)
        for arguments in [
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                path("ca.key"), "-out", path("ca.pem"), "-days", "1", "-subj", "/CN=bench CA",
            ],
            [
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("server.key"),
                "-out", path("server.csr"), "-subj", "/CN=127.0.0.1",
            ],
            [
                "x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                "-set_serial", "2", "-out", path("server.pem"), "-days", "1", "-extfile", path("san.cnf"),
            ],
        ] {
            let (status, output) = try runProcess(["openssl"] + arguments, withErrors: true)
            guard status == 0 else { throw BenchmarkError("openssl: \(output)") }
        }
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(path("server.pem")).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: path("server.key"), format: .pem)))
        let router = Router()
        let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 64 << 10)
        router.post("/v1/messages") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let big = String(buffer: body).contains(#""model":"big""#)
            return Response(
                status: .ok, headers: [.contentType: "text/event-stream"],
                body: ResponseBody { writer in
                    try await writer.write(
                        ByteBuffer(
                            string:
                                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"
                        ))
                    if big {
                        for _ in 0..<(bigBytes / chunk.readableBytes) { try await writer.write(chunk) }
                    }
                    try await writer.write(
                        ByteBuffer(
                            string:
                                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n"
                        ))
                    try await writer.finish(nil)
                })
        }
        let port = LockedBox<Int?>(nil)
        var quiet = Logger(label: "bench-upstream")
        quiet.logLevel = .critical
        let application = Application(
            router: router, server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in port.value = channel.localAddress?.port }, logger: quiet)
        let ca = try String(contentsOfFile: path("ca.pem"), encoding: .utf8)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await application.runService(gracefulShutdownSignals: []) }
            while port.value == nil { try await Task.sleep(for: .milliseconds(20)) }
            let result = try await body(URL(string: "https://127.0.0.1:\(port.value!)")!, ca)
            group.cancelAll()
            return result
        }
    }
}

/// One request: time to the first body byte and to the end, in seconds, and the bytes.
func timedRequest(_ client: HTTPClient, url: String, headers: [(String, String)], model: String) async throws -> (
    first: Double, total: Double, bytes: Int
) {
    var request = HTTPClientRequest(url: url)
    request.method = .POST
    for (name, value) in headers { request.headers.add(name: name, value: value) }
    request.body = .bytes(ByteBuffer(string: #"{"model":"\#(model)","max_tokens":10,"stream":true,"messages":[]}"#))
    let start = ContinuousClock.now
    let response = try await client.execute(request, timeout: .seconds(120))
    guard response.status == .ok else { throw BenchmarkError("status \(response.status) from \(url)") }
    var first: Double?
    var bytes = 0
    for try await chunk in response.body {
        if first == nil { first = seconds(ContinuousClock.now - start) }
        bytes += chunk.readableBytes
    }
    return (first ?? 0, seconds(ContinuousClock.now - start), bytes)
}

func gatewayBenchmarks() async throws {
    try await BenchUpstream.with { upstream, ca in
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8)))
        let direct = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        let local = HTTPClient(eventLoopGroupProvider: .singleton)
        var silent = Logger(label: "bench-gateway")
        silent.logLevel = .critical
        let gateway = try ClaudeGateway(
            apiKey: "sk-ant-bench", models: ["m", "big"], tokenBudget: .max,
            settings: GatewaySettings(upstream: upstream, trustRootsPEM: ca), logger: silent)
        let directory = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-gw-\(getpid())")
        defer { try? FileManager.default.removeItem(at: directory) }
        try await EgressProxy.withProxy(
            directory: directory, policy: EgressPolicy(allowlist: [], byteBudget: .max), gateway: gateway,
            logger: silent
        ) { proxy in
            let socket = proxy.socketPath.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            let viaGateway = "http+unix://\(socket)/v1/messages"
            let directURL = upstream.absoluteString + "/v1/messages"
            let headers = [("x-api-key", gateway.token), ("content-type", "application/json")]
            let runs = scaled(200, quick: 10)
            // Warm both paths (connections, TLS sessions) before measuring.
            for _ in 0..<10 {
                _ = try await timedRequest(direct, url: directURL, headers: headers, model: "m")
                _ = try await timedRequest(local, url: viaGateway, headers: headers, model: "m")
            }
            var directFirst: [Double] = []
            var gatewayFirst: [Double] = []
            for _ in 0..<runs {
                directFirst.append(try await timedRequest(direct, url: directURL, headers: headers, model: "m").first)
                gatewayFirst.append(try await timedRequest(local, url: viaGateway, headers: headers, model: "m").first)
            }
            let added = (median(gatewayFirst) - median(directFirst)) * 1000
            print(
                String(
                    format:
                        "  time to first byte, median of %d: direct %.2f ms, through the gateway %.2f ms (+%.2f ms)",
                    runs, median(directFirst) * 1000, median(gatewayFirst) * 1000, added))
            report(
                Row(
                    name: "gateway: added time to first byte, p50 (vs 1 ms)", ours: max(0, added), baseline: 1,
                    unit: "ms", target: 1, higherIsBetter: false))
            var directRates: [Double] = []
            var gatewayRates: [Double] = []
            for _ in 0..<3 {
                let d = try await timedRequest(direct, url: directURL, headers: headers, model: "big")
                directRates.append(Double(d.bytes) / d.total / 1e6)
                let g = try await timedRequest(local, url: viaGateway, headers: headers, model: "big")
                gatewayRates.append(Double(g.bytes) / g.total / 1e6)
            }
            report(
                Row(
                    name: "gateway: streamed throughput, 64 MiB answer (median of 3)", ours: median(gatewayRates),
                    baseline: median(directRates), unit: "MB/s", target: 0.8, higherIsBetter: true))
            print(String(format: "  metered through the gateway: %lld tokens", gateway.tokensUsed))
        }
        try await direct.shutdown()
        try await local.shutdown()
        await gateway.shutdown()
    }
}

/// A job printing 16 MiB of 100-byte lines: the executor (redaction, line splitting, the output
/// limit) with the lines written to a job log in batches as `execute` does, against `docker run`
/// of the same command with its output sent to /dev/null.
func outputBenchmark(_ docker: DockerClient, runs: Int) async throws {
    try await ensureImage(docker)
    let directory = FileManager.default.temporaryDirectory.appending(path: "cmm-bench-out-\(getpid())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let executor = JobExecutor(docker: docker, runDirectory: directory)
    let line = String(repeating: "0123456789", count: 10).dropLast()
    let script = "yes \(line) | head -c \(scaled(16 << 20, quick: 1 << 20))"
    var big = settings
    big.maxOutputBytes = 17 << 20
    var ours: [Double] = []
    var cli: [Double] = []
    for index in 0..<max(3, runs / 5) {
        let database = try StateDatabase(url: directory.appending(path: "state-\(index).sqlite"))
        let jobs = JobStore(database: database)
        let writer = JobEventWriter(jobs: jobs)
        let id = UUID().uuidString.lowercased()
        _ = try jobs.reserve(
            JobReservation(
                id: id, role: "local", backend: "command", model: nil, requester: "bench", image: image,
                promptBytes: 0, estimatedTokens: 0),
            limits: Limits(
                dailyTasks: 1000, weeklyTasks: 1000, monthlyTasks: 1000, dailyTokens: 1, maxTokensPerTask: 1,
                concurrentJobs: 10),
            actor: "bench", at: Date())
        let start = ContinuousClock.now
        let report = try await executor.run(
            JobRequest(id: id, prompt: Data(), backend: .command(["sh", "-c", script]), sandbox: big, egress: nil)
        ) { output in
            guard case .line(_, let text) = output else { return }
            writer.append(NewJobEvent(jobID: id, stream: "stdout", kind: "line", line: text, at: Date()))
        }
        await writer.finish()
        ours.append(seconds(ContinuousClock.now - start))
        guard report.state == .succeeded else { throw BenchmarkError("the output job ended \(report.state)") }
        let cliStart = ContinuousClock.now
        _ = try runProcess(["docker", "run", "--rm"] + hardenedRunFlags() + [image, "sh", "-c", script])
        cli.append(seconds(ContinuousClock.now - cliStart))
    }
    // Informational: the executor alone, lines dropped, to split the figure.
    let bare = ContinuousClock.now
    _ = try await executor.run(
        JobRequest(
            id: UUID().uuidString.lowercased(), prompt: Data(), backend: .command(["sh", "-c", script]), sandbox: big,
            egress: nil)
    ) { _ in }
    print(String(format: "  the executor alone (lines not logged): %.2f s", seconds(ContinuousClock.now - bare)))
    report(
        Row(
            name: "output: 16 MiB of lines handled and logged vs docker run > /dev/null", ours: median(ours),
            baseline: median(cli), unit: "s", target: 1.5, higherIsBetter: false))
}
