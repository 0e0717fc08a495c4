import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import TestSupport

/// A stand-in for the Claude API on loopback, over HTTPS with a throwaway certificate authority:
/// `POST /v1/messages` answers with server-sent events carrying `usage` (or with JSON when the
/// request does not ask to stream), and records what it received. The request's model picks a
/// behaviour: `hang` never answers, `slow` pauses `pause` between the first event and the rest.
final class TestUpstream: Sendable {
    struct Received: Sendable, Equatable {
        var apiKey: String?
        var model: String
        var maxTokens: Int?
        var path: String
    }

    /// What one answer reports (also what the gateway must meter).
    static let usageStart = (input: 11, cacheRead: 3, cacheWrite: 2, output: 1)
    static let finalOutput = 7
    static var tokensPerAnswer: Int64 {
        Int64(usageStart.input + usageStart.cacheRead + usageStart.cacheWrite + finalOutput)
    }

    let port: Int
    let caPEM: String
    let directory: TemporaryDirectory
    private let box: LockedBox<[Received]>
    var received: [Received] { box.withLock { $0 } }
    /// A `slow` answer holds the rest back until `release()` (or `pause` has passed); whether
    /// the last one was released, not timed out.
    private let gate: LockedBox<(released: Bool, releasedInTime: Bool)>
    func release() { gate.withLock { $0.released = true } }
    var releasedInTime: Bool { gate.withLock { $0.releasedInTime } }
    var url: URL { URL(string: "https://127.0.0.1:\(port)")! }

    private init(
        port: Int, caPEM: String, directory: TemporaryDirectory, box: LockedBox<[Received]>,
        gate: LockedBox<(released: Bool, releasedInTime: Bool)>
    ) {
        self.gate = gate
        self.port = port
        self.caPEM = caPEM
        self.directory = directory
        self.box = box
    }

    /// A certificate authority and a server certificate for 127.0.0.1, made with openssl.
    static func makeCertificates(in directory: URL) throws -> (ca: String, certificate: String, key: String) {
        func path(_ name: String) -> String { directory.appending(path: name).path }
        func openssl(_ arguments: [String]) throws {
            let result = try CLIRunner.runProcess(
                URL(fileURLWithPath: "/usr/bin/openssl"), arguments, environment: [:])
            guard result.exitCode == 0 else { throw CLIRunnerError(description: "openssl: \(result.stderr)") }
        }
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(
            toFile: path("san.cnf"), atomically: true, encoding: .utf8)
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("ca.key"),
            "-out", path("ca.pem"), "-days", "2", "-subj", "/CN=cmm test CA",
        ])
        try openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", path("server.key"),
            "-out", path("server.csr"), "-subj", "/CN=127.0.0.1",
        ])
        try openssl([
            "x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-set_serial",
            "2", "-out", path("server.pem"), "-days", "2", "-extfile", path("san.cnf"),
        ])
        return (
            try String(contentsOf: directory.appending(path: "ca.pem"), encoding: .utf8),
            directory.appending(path: "server.pem").path, directory.appending(path: "server.key").path
        )
    }

    /// `answerHeaders(n)` are added to the `n`th answer to `POST /v1/messages` (from 0).
    static func with<T: Sendable>(
        pause: Duration = .zero, answerHeaders: @escaping @Sendable (Int) -> [(String, String)] = { _ in [] },
        _ body: (TestUpstream) async throws -> T
    ) async throws -> T {
        let directory = TemporaryDirectory("cmm-upstream")
        let (ca, certificate, key) = try makeCertificates(in: directory.url)
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        let box = LockedBox<[Received]>([])
        let gate = LockedBox<(released: Bool, releasedInTime: Bool)>((false, false))
        let stopped = LockedBox(false)
        let answers = LockedBox(0)
        let router = Router()
        router.post("/v1/messages") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 32 << 20)
            let object = (try? JSONSerialization.jsonObject(with: Data(buffer: body))) as? [String: Any] ?? [:]
            let model = object["model"] as? String ?? "?"
            let answer = answers.withLock { count in
                defer { count += 1 }
                return count
            }
            func headers(_ contentType: String) -> HTTPFields {
                var fields: HTTPFields = [.contentType: contentType]
                for (name, value) in answerHeaders(answer) { fields[.init(name)!] = value }
                return fields
            }
            box.withLock {
                $0.append(
                    Received(
                        apiKey: request.headers[.init("x-api-key")!], model: model,
                        maxTokens: object["max_tokens"] as? Int, path: request.uri.path))
            }
            if model == "hang" {
                // Until the test is over (a cancelled handler would hold up the server's shutdown).
                while !stopped.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(50)) }
                return Response(status: .serviceUnavailable)
            }
            let start = TestUpstream.usageStart
            guard object["stream"] as? Bool == true else {
                let json = """
                    {"id":"msg_1","type":"message","role":"assistant","model":"\(model)","content":[{"type":"text","text":"hello"}],\
                    "usage":{"input_tokens":\(start.input),"cache_read_input_tokens":\(start.cacheRead),\
                    "cache_creation_input_tokens":\(start.cacheWrite),"output_tokens":\(TestUpstream.finalOutput)}}
                    """
                return Response(
                    status: .ok, headers: headers("application/json"),
                    body: ResponseBody(byteBuffer: ByteBuffer(string: json)))
            }
            let pauseHere = model == "slow" ? pause : .zero
            return Response(
                status: .ok, headers: headers("text/event-stream"),
                body: ResponseBody { writer in
                    try await writer.write(
                        ByteBuffer(
                            string: """
                                event: message_start
                                data: {"type":"message_start","message":{"id":"msg_1","model":"\(model)","usage":{"input_tokens":\(start.input),"cache_read_input_tokens":\(start.cacheRead),"cache_creation_input_tokens":\(start.cacheWrite),"output_tokens":\(start.output)}}}


                                """))
                    let until = ContinuousClock.now + pauseHere
                    while ContinuousClock.now < until && !gate.withLock({ $0.released }) {
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    gate.withLock { $0.releasedInTime = $0.released }
                    try await writer.write(
                        ByteBuffer(
                            string: """
                                event: content_block_delta
                                data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello from upstream"}}

                                event: message_delta
                                data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":\(TestUpstream.finalOutput)}}

                                event: message_stop
                                data: {"type":"message_stop"}


                                """))
                    try await writer.finish(nil)
                })
        }
        router.post("/v1/messages/count_tokens") { request, _ -> Response in
            box.withLock {
                $0.append(
                    Received(
                        apiKey: request.headers[.init("x-api-key")!], model: "-", maxTokens: nil,
                        path: request.uri.path))
            }
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: #"{"input_tokens":5}"#)))
        }
        let portBox = LockedBox<Int?>(nil)
        let application = Application(
            router: router, server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in portBox.withLock { $0 = channel.localAddress?.port } },
            logger: {
                var logger = Logger(label: "test-upstream")
                logger.logLevel = .critical
                return logger
            }())
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await application.runService(gracefulShutdownSignals: []) }
            var port: Int?
            for _ in 0..<200 where port == nil {
                try await Task.sleep(for: .milliseconds(25))
                port = portBox.withLock { $0 }
            }
            guard let port else { throw CLIRunnerError(description: "the test upstream did not start") }
            let upstream = TestUpstream(port: port, caPEM: ca, directory: directory, box: box, gate: gate)
            do {
                let result = try await body(upstream)
                stopped.withLock { $0 = true }
                group.cancelAll()
                return result
            } catch {
                stopped.withLock { $0 = true }
                group.cancelAll()
                throw error
            }
        }
    }
}
