import AsyncHTTPClient
import Foundation
import MarketCore
import NIOCore

/// The market's read views over HTTP (`/health`, `/v1/…`), reached from its WebSocket URL: one
/// HTTP client for a few requests, typed answers.
public struct MarketViewsClient: Sendable {
    public let base: String
    let client: HTTPClient
    let timeout: Duration

    /// `ws://host:port/market` → `http://host:port` (`wss` → `https`).
    public static func httpBase(of url: String) throws(MarketViewsError) -> String {
        let checked: MarketURL
        do { checked = try MarketURL(validating: url) } catch { throw .notMarketURL(error) }
        guard var components = URLComponents(string: checked.text), let scheme = components.scheme?.lowercased()
        else { throw .notMarketURL(MarketURLError(url: url, reason: "it does not parse as a URL")) }
        components.scheme = scheme == "wss" ? "https" : "http"
        components.path = ""
        return components.string ?? url
    }

    /// Runs `body` with a client for the market at `url`, shut down afterwards.
    public static func with<T: Sendable>(
        url: String, connectTimeout: Duration = .seconds(3), timeout: Duration = .seconds(10),
        _ body: (MarketViewsClient) async throws -> T
    ) async throws -> T {
        let base = try httpBase(of: url)
        let client = HTTPClient(
            eventLoopGroupProvider: .singleton,
            configuration: .init(timeout: .init(connect: TimeAmount(connectTimeout), read: TimeAmount(timeout))))
        do {
            let result = try await body(MarketViewsClient(base: base, client: client, timeout: timeout))
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    /// The view at `path`, or nil when the market answers 404.
    public func get<T: Decodable>(_ type: T.Type, _ path: String) async throws -> T? {
        let response = try await client.execute(HTTPClientRequest(url: base + path), timeout: TimeAmount(timeout))
        let body = try await response.body.collect(upTo: 8 << 20)
        if response.status == .notFound { return nil }
        guard response.status == .ok else {
            throw MarketViewsError.status(url: base + path, code: Int(response.status.code))
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView))
        } catch {
            // The market's answer, not the network: said as such, so nobody goes looking for
            // a connection problem.
            throw MarketViewsError.malformed(url: base + path, detail: "\(error)".prefix(300).description)
        }
    }

    /// The view at `path`; a 404 is an error too.
    public func require<T: Decodable>(_ type: T.Type, _ path: String) async throws -> T {
        guard let view = try await get(type, path) else { throw MarketViewsError.status(url: base + path, code: 404) }
        return view
    }
}

public enum MarketViewsError: Error, CustomStringConvertible, Equatable {
    case notMarketURL(MarketURLError)
    case status(url: String, code: Int)
    /// An answer that is not the view the protocol describes.
    case malformed(url: String, detail: String)

    public var description: String {
        switch self {
        case .notMarketURL(let error): error.description
        case .status(let url, let code): "\(url) answered \(code)"
        case .malformed(let url, let detail): "\(url) answered with something that is not the view asked for: \(detail)"
        }
    }
}
