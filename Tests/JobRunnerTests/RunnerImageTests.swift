import Foundation
import JobRunner
import Testing

@Suite struct RunnerImageTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appending(path: "docker/runner")

    @Test func theEmbeddedFilesAreTheRepositoryFiles() throws {
        #expect(
            RunnerImage.dockerfile
                == (try String(contentsOf: Self.directory.appending(path: "Dockerfile"), encoding: .utf8)))
        #expect(
            RunnerImage.entrypoint
                == (try String(contentsOf: Self.directory.appending(path: "entrypoint.sh"), encoding: .utf8)))
    }

    @Test func theRunnerImageIsNonRootWithTheCLIAndSocat() {
        #expect(RunnerImage.dockerfile.contains("npm install -g @anthropic-ai/claude-code"))
        #expect(RunnerImage.dockerfile.contains("socat"))
        #expect(RunnerImage.dockerfile.contains("USER 10001:10001"))
        #expect(RunnerImage.entrypoint.contains("UNIX-CONNECT:$SOCKET"))
    }

    @Test func tagsCarryTheVersionAndLatest() {
        #expect(
            RunnerImage.tags(for: "claude-max-market/runner:0.1.0") == [
                "claude-max-market/runner:0.1.0", "claude-max-market/runner:latest",
            ])
        #expect(RunnerImage.tags(for: "127.0.0.1:5000/runner").first?.hasPrefix("127.0.0.1:5000/runner:") == true)
        #expect(RunnerImage.tags(for: "x:latest") == ["x:latest"])
    }
}
