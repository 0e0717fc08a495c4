import AsyncHTTPClient
import Foundation
import NIOCore

extension DockerClient {
    struct Created: Decodable {
        var Id: String
    }

    /// Creates a container; the spec must carry the tool's labels.
    public func createContainer(_ spec: ContainerSpec, name: String? = nil) async throws -> String {
        precondition(Labels.isManagedContainer(spec.Labels), "every container the tool creates carries its labels")
        let query = name.map { [("name", $0)] } ?? []
        return try await json(
            Created.self, request(.POST, "/containers/create", query: query, body: Self.encode(spec)),
            what: "create container from \(spec.Image)"
        ).Id
    }

    public func startContainer(_ id: String) async throws {
        try await call(request(.POST, "/containers/\(id)/start"), what: "start container \(id.prefix(12))")
    }

    /// Waits until the container stops; returns its exit code. `condition` is `not-running`
    /// (returns at once for a created container) or `next-exit`.
    public func waitContainer(_ id: String, condition: String = "not-running") async throws -> Int {
        struct Result: Decodable {
            struct WaitError: Decodable { var Message: String? }
            var StatusCode: Int
            var Error: WaitError?
        }
        let response = try await send(
            request(.POST, "/containers/\(id)/wait", query: [("condition", condition)]), streaming: true,
            what: "wait for container \(id.prefix(12))")
        let body = try await response.body.collect(upTo: 1 << 20)
        guard let result = try? JSONDecoder().decode(Result.self, from: body) else {
            throw DockerError(.malformed, "wait: the engine's answer was not understood")
        }
        if let message = result.Error?.Message, !message.isEmpty { throw DockerError(.engine, "wait: \(message)") }
        return result.StatusCode
    }

    public func killContainer(_ id: String, signal: String = "KILL") async throws {
        try await call(
            request(.POST, "/containers/\(id)/kill", query: [("signal", signal)]),
            what: "kill container \(id.prefix(12))")
    }

    public func removeContainer(_ id: String, force: Bool = true) async throws {
        try await call(
            request(.DELETE, "/containers/\(id)", query: [("force", force ? "1" : "0"), ("v", "1")]),
            what: "remove container \(id.prefix(12))")
    }

    public func inspectContainer(_ id: String) async throws -> ContainerInspect {
        try await json(
            ContainerInspect.self, request(.GET, "/containers/\(id)/json"), what: "inspect container \(id.prefix(12))")
    }

    /// The raw inspect document, for checks that read fields this module does not model.
    public func inspectContainerJSON(_ id: String) async throws -> [String: Any] {
        let response = try await send(
            request(.GET, "/containers/\(id)/json"), what: "inspect container \(id.prefix(12))")
        let body = try await response.body.collect(upTo: 16 << 20)
        guard let object = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw DockerError(.malformed, "inspect: not a JSON object")
        }
        return object
    }

    /// Containers with all the given labels (`key` or `key=value`); `all` includes stopped ones.
    public func listContainers(labels: [String], all: Bool = true) async throws -> [ContainerSummary] {
        try await json(
            [ContainerSummary].self,
            request(.GET, "/containers/json", query: [("all", all ? "1" : "0"), ("filters", Labels.filter(labels))]),
            what: "list containers")
    }

    /// The container's output so far (and, with `follow`, until it stops), demultiplexed.
    public func logs(_ id: String, follow: Bool = false) async throws -> AsyncThrowingStream<OutputFrame, any Error> {
        let response = try await send(
            request(
                .GET, "/containers/\(id)/logs",
                query: [("stdout", "1"), ("stderr", "1"), ("follow", follow ? "1" : "0")]),
            streaming: true, what: "logs of container \(id.prefix(12))")
        return Self.demultiplex(response.body)
    }

    static func demultiplex(_ body: HTTPClientResponse.Body) -> AsyncThrowingStream<OutputFrame, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                var decoder = MultiplexedStreamDecoder()
                do {
                    for try await chunk in body {
                        for frame in try decoder.decode(chunk) { continuation.yield(frame) }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
