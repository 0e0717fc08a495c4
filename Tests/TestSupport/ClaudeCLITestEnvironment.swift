import Foundation

/// The real Claude Code CLI for the tests: the native binary bundled in PyPI's
/// `claude-agent-sdk` wheel, which `scripts/test.sh` downloads, checks by SHA-256 and unpacks
/// (never committed). `CMM_TEST_CLAUDE_BINARY` names it; in CI (or with `CMM_REQUIRE_CLAUDE=1`)
/// a missing binary fails the tests that need it.
public enum ClaudeCLITestEnvironment {
    public static var binaryPath: String {
        if let path = ProcessInfo.processInfo.environment["CMM_TEST_CLAUDE_BINARY"], !path.isEmpty { return path }
        let cache = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")
        return cache + "/claude-max-market/claude-agent-sdk-0.2.189/claude"
    }

    public static var isRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["CI"] == "true" || environment["CMM_REQUIRE_CLAUDE"] == "1"
    }

    public static var isAvailable: Bool { FileManager.default.isExecutableFile(atPath: binaryPath) }

    public static var shouldRun: Bool { DockerTestEnvironment.shouldRun && (isAvailable || isRequired) }

    /// The runner image assembled from the binary by the tool's own `docker:build --claude-binary`.
    public static let image = "cmm-test/claude-runner:latest"

    public static func ensureImage() async throws {
        try await Builder.shared.ensure()
    }

    actor Builder {
        static let shared = Builder()
        private var built = false

        func ensure() throws {
            if built { return }
            guard isAvailable else {
                throw CLIRunnerError(
                    description: "the real Claude Code CLI is missing at \(binaryPath): scripts/test.sh fetches it")
            }
            // A 400 MB context: built again only when the binary or the entrypoint changed.
            if try isCurrent() {
                built = true
                return
            }
            let home = TemporaryDirectory("cmm-claude-image-home")
            let result = try CLIRunner.run(
                ["docker:build", "--tag", image, "--claude-binary", binaryPath], home: home.url)
            guard result.exitCode == 0 else {
                throw CLIRunnerError(description: "the real-CLI runner image did not build: \(result.stderr)")
            }
            built = true
        }

        /// The image there was made from this binary (its version) and this entrypoint (its hash).
        func isCurrent() throws -> Bool {
            let inspect = try DockerTestEnvironment.curl("GET", "/images/\(image)/json")
            guard let object = try? JSONSerialization.jsonObject(with: inspect.stdoutData) as? [String: Any],
                let labels = (object["Config"] as? [String: Any])?["Labels"] as? [String: String]
            else { return false }
            let version = try CLIRunner.runProcess(URL(fileURLWithPath: binaryPath), ["--version"], environment: [:])
                .stdout.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) }
            let entrypoint = TestRunnerImage.repository.appending(path: "docker/runner/entrypoint.sh")
            let digest = try CLIRunner.runProcess(
                URL(fileURLWithPath: "/usr/bin/sha256sum"), [entrypoint.path], environment: [:]
            ).stdout.split(separator: " ").first.map(String.init)
            return labels["io.claude-max-market.claude-version"] == version
                && labels["io.claude-max-market.entrypoint-sha256"] == digest
        }
    }
}
