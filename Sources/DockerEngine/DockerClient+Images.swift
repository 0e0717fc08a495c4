import AsyncHTTPClient
import Foundation
import NIOCore

public struct ImageSummary: Decodable, Sendable {
    public var Id: String
    public var RepoTags: [String]?
    public var Created: Int64
    public var Size: Int64?
    public var Labels: [String: String]?
}

public struct ImageInspect: Decodable, Sendable {
    public struct Config: Decodable, Sendable {
        public var Labels: [String: String]?
        public var User: String?
    }

    public var Id: String
    public var RepoTags: [String]?
    public var Created: String
    public var Size: Int64?
    public var Config: Config?

    public var createdDate: Date? {
        try? Date(
            Created.replacingOccurrences(of: #"\.\d+"#, with: "", options: .regularExpression), strategy: .iso8601)
    }
}

/// One line of build output, as it arrives.
public enum BuildEvent: Sendable, Equatable {
    case output(String)
    case imageID(String)
}

/// Progress of a pull: per layer `id`, a status and, while downloading, bytes done and total.
public struct PullProgress: Sendable, Equatable {
    public var layer: String?
    public var status: String
    public var current: Int64?
    public var total: Int64?
}

/// A line of the engine's JSON progress streams.
struct ProgressLine: Decodable {
    struct Detail: Decodable {
        var current: Int64?
        var total: Int64?
        var message: String?
    }

    struct Aux: Decodable {
        var ID: String?
    }

    var stream: String?
    var status: String?
    var id: String?
    var progressDetail: Detail?
    var error: String?
    var errorDetail: Detail?
    var aux: Aux?
}

extension DockerClient {
    /// Images with all the given labels; `dangling` selects untagged ones.
    public func listImages(labels: [String], dangling: Bool? = nil) async throws -> [ImageSummary] {
        var extra: [String: [String]] = [:]
        if let dangling { extra["dangling"] = [String(dangling)] }
        return try await json(
            [ImageSummary].self,
            request(.GET, "/images/json", query: [("filters", Labels.filter(labels, extra: extra))]),
            what: "list images")
    }

    /// nil when there is no such image.
    public func inspectImage(_ name: String) async throws -> ImageInspect? {
        do {
            return try await json(
                ImageInspect.self, request(.GET, "/images/\(name)/json"), what: "inspect image \(name)")
        } catch let error as DockerError where error.code == .notFound {
            return nil
        }
    }

    public func removeImage(_ id: String, force: Bool = false) async throws {
        try await call(
            request(.DELETE, "/images/\(id)", query: [("force", force ? "1" : "0")]), what: "remove image \(id)")
    }

    public func tagImage(_ id: String, repository: String, tag: String) async throws {
        try await call(
            request(.POST, "/images/\(id)/tag", query: [("repo", repository), ("tag", tag)]), what: "tag image \(id)")
    }

    /// Builds an image from a tar context, streaming the engine's output to `progress`.
    /// Returns the image id. An error reported inside the stream throws `.stream`.
    public func buildImage(
        context: Data, tags: [String], labels: [String: String], dockerfile: String = "Dockerfile",
        noCache: Bool = false, networkMode: String? = "none", progress: @Sendable (BuildEvent) -> Void = { _ in }
    ) async throws -> String {
        precondition(Labels.isManaged(labels), "every image the tool builds carries its labels")
        var query: [(String, String)] = tags.map { ("t", $0) }
        query += [
            ("dockerfile", dockerfile), ("labels", String(decoding: try JSONEncoder().encode(labels), as: UTF8.self)),
            ("rm", "1"), ("forcerm", "1"),
        ]
        // Without a bridge network (as on these machines) RUN steps must ask for none.
        if let networkMode { query.append(("networkmode", networkMode)) }
        if noCache { query.append(("nocache", "1")) }
        let response = try await send(
            request(
                .POST, "/build", query: query, body: .bytes(ByteBuffer(data: context)), contentType: "application/x-tar"
            ),
            streaming: true, what: "build image \(tags.first ?? "")")
        var imageID: String?
        try await Self.readProgress(response.body) { line in
            if let text = line.stream {
                progress(.output(text))
                if let range = text.range(of: "Successfully built ") {
                    imageID =
                        imageID ?? String(text[range.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
                }
            }
            if let id = line.aux?.ID {
                imageID = id
                progress(.imageID(id))
            }
        }
        guard let imageID else { throw DockerError(.malformed, "build finished without naming an image") }
        return imageID
    }

    /// Pulls `image` (`name:tag`), reporting per-layer progress.
    public func pullImage(_ image: String, progress: @Sendable (PullProgress) -> Void = { _ in }) async throws {
        let (name, tag) = Self.splitReference(image)
        let response = try await send(
            request(.POST, "/images/create", query: [("fromImage", name), ("tag", tag)], body: nil),
            streaming: true, what: "pull \(image)")
        try await Self.readLayerProgress(response.body, progress)
    }

    /// Pushes `image` (`registry/name:tag`) to its registry, reporting per-layer progress.
    /// Registries here need no login, so the auth header is the empty object.
    public func pushImage(_ image: String, progress: @Sendable (PullProgress) -> Void = { _ in }) async throws {
        let (name, tag) = Self.splitReference(image)
        let response = try await send(
            request(.POST, "/images/\(name)/push", query: [("tag", tag)], headers: [("X-Registry-Auth", "e30=")]),
            streaming: true, what: "push \(image)")
        try await Self.readLayerProgress(response.body, progress)
    }

    /// `registry:5000/name:tag` → (`registry:5000/name`, `tag`); no tag means `latest`.
    static func splitReference(_ image: String) -> (String, String) {
        if let colon = image.lastIndex(of: ":"), !image[colon...].contains("/") {
            return (String(image[..<colon]), String(image[image.index(after: colon)...]))
        }
        return (image, "latest")
    }

    /// Pull and push report the same per-layer lines.
    static func readLayerProgress(_ body: HTTPClientResponse.Body, _ progress: @Sendable (PullProgress) -> Void)
        async throws
    {
        try await readProgress(body) { line in
            if let status = line.status {
                progress(
                    PullProgress(
                        layer: line.id, status: status, current: line.progressDetail?.current,
                        total: line.progressDetail?.total))
            }
        }
    }

    static func readProgress(_ body: HTTPClientResponse.Body, _ handle: (ProgressLine) throws -> Void) async throws {
        var splitter = LineSplitter()
        func process(_ line: Data) throws {
            guard let parsed = try? JSONDecoder().decode(ProgressLine.self, from: line) else {
                throw DockerError(
                    .malformed,
                    "the engine sent a progress line that is not JSON: \(String(decoding: line.prefix(200), as: UTF8.self))"
                )
            }
            if let error = parsed.error ?? parsed.errorDetail?.message {
                throw DockerError(.stream, error.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            try handle(parsed)
        }
        for try await chunk in body {
            for line in splitter.append(chunk) { try process(line) }
        }
        if let rest = splitter.finish() { try process(rest) }
    }
}
