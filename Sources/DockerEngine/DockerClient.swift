import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// The Docker Engine API (v1.41) over the local Unix socket, with async-http-client.
/// It never shells out to the `docker` CLI.
public struct DockerClient: Sendable {
    public struct Configuration: Sendable {
        public var socketPath: String
        public var apiVersion: String
        /// Time allowed for ordinary calls; streamed calls (build, pull, logs, wait, events) have none.
        public var requestTimeout: TimeAmount

        public init(
            socketPath: String = "/var/run/docker.sock", apiVersion: String = "v1.41",
            requestTimeout: TimeAmount = .seconds(60)
        ) {
            self.socketPath = socketPath
            self.apiVersion = apiVersion
            self.requestTimeout = requestTimeout
        }

        /// Honours `DOCKER_HOST` (`unix://` paths only); the default socket otherwise.
        public init(environment: [String: String]) throws(DockerError) {
            guard let host = environment["DOCKER_HOST"], !host.isEmpty else {
                self.init()
                return
            }
            guard host.hasPrefix("unix://"), host.count > "unix://".count else {
                throw DockerError(
                    .unsupportedHost,
                    "DOCKER_HOST=\(host) is not supported: only a local engine on a unix:// socket is")
            }
            self.init(socketPath: String(host.dropFirst("unix://".count)))
        }
    }

    public let configuration: Configuration
    let http: HTTPClient
    let logger: Logger

    public init(configuration: Configuration, httpClient: HTTPClient, logger: Logger = Logger(label: "docker")) {
        self.configuration = configuration
        self.http = httpClient
        self.logger = logger
    }

    /// Runs `body` with a client whose HTTP connections are shut down afterwards, even on error.
    public static func withClient<T: Sendable>(
        configuration: Configuration, logger: Logger = Logger(label: "docker"),
        _ body: (DockerClient) async throws -> T
    ) async throws -> T {
        let http = HTTPClient(
            eventLoopGroupProvider: .singleton, configuration: .init(timeout: .init(connect: .seconds(5))))
        let client = DockerClient(configuration: configuration, httpClient: http, logger: logger)
        do {
            let result = try await body(client)
            try await http.shutdown()
            return result
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    // MARK: Requests

    func url(_ path: String, query: [(String, String)] = []) -> String {
        var components = URLComponents()
        components.path = "/\(configuration.apiVersion)\(path)"
        if !query.isEmpty { components.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) } }
        // `+` is a space in form encoding; the engine decodes queries that way.
        let uri =
            (components.percentEncodedPath)
            + (components.percentEncodedQuery.map { "?" + $0.replacingOccurrences(of: "+", with: "%2B") } ?? "")
        return URL(httpURLWithSocketPath: configuration.socketPath, uri: uri)!.absoluteString
    }

    func request(
        _ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: HTTPClientRequest.Body? = nil,
        contentType: String? = "application/json", headers extra: [(String, String)] = []
    ) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url(path, query: query))
        request.method = method
        // async-http-client sends no Host header over http+unix, and dockerd refuses a request without one.
        request.headers.add(name: "Host", value: "docker")
        if let body {
            request.body = body
            if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        }
        for (name, value) in extra { request.headers.add(name: name, value: value) }
        return request
    }

    /// Sends a request; maps connection failures and error statuses to `DockerError`.
    func send(_ request: HTTPClientRequest, streaming: Bool = false, what: String) async throws -> HTTPClientResponse {
        let response: HTTPClientResponse
        do {
            response = try await http.execute(
                request, deadline: streaming ? .distantFuture : .now() + configuration.requestTimeout, logger: logger)
        } catch {
            // A cancelled caller is not an unreachable engine.
            if Task.isCancelled || error is CancellationError { throw CancellationError() }
            throw DockerError(
                .unreachable,
                "cannot reach the Docker engine at \(configuration.socketPath): \(error) — is dockerd running? "
                    + "(start it, or point DOCKER_HOST at its unix:// socket)")
        }
        guard (200..<300).contains(Int(response.status.code)) else {
            let body = try? await response.body.collect(upTo: 1 << 20)
            let message =
                body.flatMap { try? JSONDecoder().decode(EngineMessage.self, from: $0).message }
                ?? body.map { String(buffer: $0) } ?? ""
            let code: DockerError.Code =
                switch response.status.code {
                case 404: .notFound
                case 409: .conflict
                default: .engine
                }
            throw DockerError(
                code, "\(what): \(message.trimmingCharacters(in: .whitespacesAndNewlines))",
                status: Int(response.status.code))
        }
        return response
    }

    /// Sends and decodes a JSON answer.
    func json<T: Decodable>(_ type: T.Type, _ request: HTTPClientRequest, what: String) async throws -> T {
        let response = try await send(request, what: what)
        let body = try await response.body.collect(upTo: 64 << 20)
        do {
            return try JSONDecoder().decode(type, from: body)
        } catch {
            throw DockerError(.malformed, "\(what): the engine's answer was not understood (\(error))")
        }
    }

    /// Sends and discards the answer.
    func call(_ request: HTTPClientRequest, what: String) async throws {
        let response = try await send(request, what: what)
        _ = try await response.body.collect(upTo: 64 << 20)
    }

    static func encode(_ value: some Encodable) throws -> HTTPClientRequest.Body {
        .bytes(ByteBuffer(data: try JSONEncoder().encode(value)))
    }
}

struct EngineMessage: Decodable {
    var message: String
}

/// Splits a byte stream into newline-separated lines (the engine's JSON progress streams).
struct LineSplitter {
    private var buffer = Data()

    mutating func append(_ bytes: ByteBuffer) -> [Data] {
        buffer.append(contentsOf: bytes.readableBytesView)
        var lines: [Data] = []
        var start = buffer.startIndex
        while let newline = buffer[start...].firstIndex(of: 0x0a) {
            let line = buffer[start..<newline]
            if !line.allSatisfy({ $0 == 0x20 || $0 == 0x0d }) { lines.append(Data(line)) }
            start = newline + 1
        }
        buffer = Data(buffer[start...])
        return lines
    }

    mutating func finish() -> Data? {
        defer { buffer = Data() }
        return buffer.allSatisfy({ $0 == 0x20 || $0 == 0x0d || $0 == 0x0a }) ? nil : buffer
    }
}
