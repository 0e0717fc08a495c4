import AsyncHTTPClient
import Foundation
import NIOCore

public struct DockerVersion: Decodable, Sendable {
    public var Version: String
    public var ApiVersion: String
    public var MinAPIVersion: String?
    public var Os: String
    public var Arch: String
    public var KernelVersion: String?
}

public struct DockerInfo: Decodable, Sendable {
    public var ServerVersion: String?
    public var Driver: String?
    public var DockerRootDir: String?
    public var Containers: Int?
    public var Images: Int?
    public var MemTotal: Int64?
    public var NCPU: Int?
    public var SecurityOptions: [String]?
    /// The engine's clock, RFC 3339 with nanoseconds.
    public var SystemTime: String?
}

extension DockerClient {
    /// `GET /_ping`: throws `.unreachable` when no engine answers.
    public func ping() async throws {
        let response = try await send(request(.GET, "/_ping"), what: "ping")
        let body = String(buffer: try await response.body.collect(upTo: 1024))
        guard body == "OK" else { throw DockerError(.malformed, "ping answered '\(body)' instead of OK") }
    }

    public func version() async throws -> DockerVersion {
        try await json(DockerVersion.self, request(.GET, "/version"), what: "version")
    }

    public func info() async throws -> DockerInfo {
        try await json(DockerInfo.self, request(.GET, "/info"), what: "info")
    }
}
