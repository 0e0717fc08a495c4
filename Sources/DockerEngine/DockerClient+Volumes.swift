import AsyncHTTPClient
import Foundation

public struct VolumeInspect: Decodable, Sendable {
    public var Name: String
    public var Labels: [String: String]?
    public var Mountpoint: String?
}

extension DockerClient {
    /// nil when there is no such volume.
    public func inspectVolume(_ name: String) async throws -> VolumeInspect? {
        do {
            return try await json(VolumeInspect.self, request(.GET, "/volumes/\(name)"), what: "inspect volume \(name)")
        } catch let error as DockerError where error.code == .notFound {
            return nil
        }
    }

    public func createVolume(_ name: String, labels: [String: String]) async throws {
        precondition(Labels.isManaged(labels), "every volume the tool creates carries its labels")
        struct Body: Encodable {
            var Name: String
            var Labels: [String: String]
        }
        try await call(
            request(.POST, "/volumes/create", body: Self.encode(Body(Name: name, Labels: labels))),
            what: "create volume \(name)")
    }
}
