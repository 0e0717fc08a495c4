import DockerEngine
import Foundation
import MarketCore
import TestSupport

/// A `FROM scratch` image holding busybox, built once per test process.
enum TestImage {
    static let name = "cmm-test/busybox:latest"

    static func context(extraDockerfileLines: [String] = []) throws -> Data {
        var tar = TarArchive()
        let dockerfile =
            (["FROM scratch", "COPY busybox /bin/busybox", #"RUN ["/bin/busybox", "--install", "-s", "/bin"]"#]
            + extraDockerfileLines + ["USER 65534:65534"]).joined(separator: "\n") + "\n"
        try tar.addFile("Dockerfile", contents: Data(dockerfile.utf8))
        try tar.addFile("busybox", from: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath))
        return tar.finish()
    }

    static func ensure(_ client: DockerClient) async throws {
        if try await client.inspectImage(name) != nil { return }
        _ = try await client.buildImage(
            context: try context(), tags: [name], labels: Labels.make(kind: "test-image", version: ToolVersion.current))
    }
}

extension DockerClient {
    static func forTests() -> DockerClient.Configuration {
        DockerClient.Configuration(socketPath: DockerTestEnvironment.socketPath)
    }
}
