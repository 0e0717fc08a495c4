import AsyncHTTPClient
import Foundation
import NIOCore

/// One engine event (`GET /events`).
public struct DockerEvent: Decodable, Sendable, Equatable {
    public struct Actor: Decodable, Sendable, Equatable {
        public var ID: String
        public var Attributes: [String: String]?
    }

    public var `Type`: String
    public var Action: String
    public var Actor: Actor
    public var time: Int64?
}

extension DockerClient {
    /// Events for things carrying the given labels, from `since` until `until` (unix seconds;
    /// without `until` the stream stays open).
    public func events(labels: [String], since: Int64? = nil, until: Int64? = nil) async throws
        -> AsyncThrowingStream<DockerEvent, any Error>
    {
        var query = [("filters", Labels.filter(labels))]
        if let since { query.append(("since", String(since))) }
        if let until { query.append(("until", String(until))) }
        let response = try await send(request(.GET, "/events", query: query), streaming: true, what: "events")
        let body = response.body
        return AsyncThrowingStream { continuation in
            let task = Task {
                var splitter = LineSplitter()
                do {
                    for try await chunk in body {
                        for line in splitter.append(chunk) {
                            continuation.yield(try JSONDecoder().decode(DockerEvent.self, from: line))
                        }
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
