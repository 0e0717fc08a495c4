import Foundation
import Participant
import TestSupport
import Testing

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct DockerCommandTests {
    let home = TemporaryDirectory("cmm-cli")

    func run(_ arguments: String..., environment: [String: String] = [:]) throws -> CLIResult {
        try CLIRunner.run(arguments, home: home.url, environment: environment)
    }

    /// A Dockerfile building a tiny FROM scratch image, in its own context directory.
    func testDockerfile() throws -> URL {
        let directory = home.file("ctx")
        if FileManager.default.fileExists(atPath: directory.path) { return directory.appending(path: "Dockerfile") }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            at: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath), to: directory.appending(path: "busybox"))
        try Data("FROM scratch\nCOPY busybox /bin/busybox\nUSER 65534:65534\nCMD [\"/bin/busybox\", \"true\"]\n".utf8)
            .write(to: directory.appending(path: "Dockerfile"))
        return directory.appending(path: "Dockerfile")
    }

    @Test func buildFromAFileTagsVersionAndLatest() throws {
        let tag = "cmm-test/cli-build:\(UUID().uuidString.prefix(8).lowercased())"
        let result = try run("docker:build", "--tag", tag, "--file", try testDockerfile().path)
        #expect(result.exitCode == 0, "\(result.stderr)")
        #expect(result.stdout.contains(tag) && result.stdout.contains("cmm-test/cli-build:latest"))
        #expect(result.stderr.contains("Step 1/"))
        let inspect = try DockerTestEnvironment.curl("GET", "/images/\(tag)/json")
        #expect(inspect.stdout.contains("\"io.claude-max-market.kind\":\"runner-image\""))
        let alias = try run("docker", "build", "--tag", tag, "--file", try testDockerfile().path)
        #expect(alias.exitCode == 0)
        _ = try DockerTestEnvironment.curl("DELETE", "/images/\(tag)?force=1")
    }

    @Test func pullFailureFallsBackToALocalBuildOrFails() throws {
        // A registry address on loopback where nothing listens: the pull fails at once.
        let image = "127.0.0.1:9/cmm-test/pulled:\(UUID().uuidString.prefix(8).lowercased())"
        let strict = try run("docker:pull", "--image", image, "--no-fallback")
        #expect(strict.exitCode != 0 && strict.stderr.contains("pull of \(image) failed"))
        let fallback = try run("docker", "pull", "--image", image, "--file", try testDockerfile().path)
        #expect(fallback.exitCode == 0, "\(fallback.stderr)")
        #expect(fallback.stderr.contains("building it locally instead"))
        #expect(try DockerTestEnvironment.curl("GET", "/images/\(image)/json").stdout.contains("runner-image"))
        _ = try DockerTestEnvironment.curl("DELETE", "/images/\(image)?force=1")
    }

    @Test(.enabled(if: LocalRegistry.shouldRun, "docker-registry is not installed"))
    func pullFromALoopbackRegistryShowsLayerProgress() throws {
        let registry = try LocalRegistry()
        defer { registry.stop() }
        let image = "\(registry.host)/cmm-test/cli-pull:1"
        let directory = home.file("pullctx")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Data((0..<200_000).map { _ in UInt8.random(in: 0...255) }).write(to: directory.appending(path: "blob"))
        try Data("FROM scratch\nCOPY blob /blob\n".utf8).write(to: directory.appending(path: "Dockerfile"))
        #expect(
            try run("docker:build", "--tag", image, "--file", directory.appending(path: "Dockerfile").path).exitCode
                == 0)
        let push = try DockerTestEnvironment.curl(
            "POST", "/images/\(registry.host)/cmm-test/cli-pull/push?tag=1", headers: ["X-Registry-Auth: e30="])
        #expect(!push.stdout.contains("errorDetail"), "\(push.stdout)")
        _ = try DockerTestEnvironment.curl("DELETE", "/images/\(image)?force=1")
        _ = try DockerTestEnvironment.curl("DELETE", "/images/\(registry.host)/cmm-test/cli-pull:latest?force=1")
        let pulled = try run("docker:pull", "--image", image, "--no-fallback")
        #expect(pulled.exitCode == 0, "\(pulled.stderr)")
        #expect(pulled.stdout.contains("pulled \(image)"))
        #expect(pulled.stderr.contains("Downloading") && pulled.stderr.contains("bytes"))
        #expect(pulled.stderr.contains("Pull complete"))
        _ = try DockerTestEnvironment.curl("DELETE", "/images/\(image)?force=1")
    }

    @Test func healthReportsTheEngineAndFailsWithoutIt() throws {
        let healthy = try run("health", "--json")
        let checks = try #require(try healthy.jsonObject()["checks"] as? [[String: Any]])
        let byID = Dictionary(uniqueKeysWithValues: checks.map { ($0["id"] as! String, $0["status"] as! String) })
        #expect(byID["docker.daemon"] == "pass" && byID["docker.api"] == "pass" && byID["clock"] != "fail")
        for id in ["docker.storage", "docker.disk", "runner.image", "egress.allowlist", "credentials.mode"] {
            #expect(byID[id] != nil, "\(id)")
        }
        let dead = try run("health", environment: ["DOCKER_HOST": "unix://\(home.file("dead.sock").path)"])
        #expect(dead.exitCode == 1)
        #expect(dead.stdout.contains("[FAIL] docker.daemon") && dead.stdout.contains("dead.sock"))
        let tcp = try run("health", environment: ["DOCKER_HOST": "tcp://127.0.0.1:2375"])
        #expect(tcp.exitCode != 0 && (tcp.stdout + tcp.stderr).contains("unix://"))
    }

    /// A runner image whose entrypoint is older than the tool's speaks an older form of what a
    /// job leaves: `health` says to build it again.
    @Test func healthWarnsOfARunnerImageWithAnOlderEntrypoint() throws {
        let directory = home.file("old-ctx")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(
            at: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath), to: directory.appending(path: "busybox"))
        try Data(
            "FROM scratch\nCOPY busybox /bin/busybox\nLABEL io.claude-max-market.entrypoint-sha256=0000\nUSER 65534:65534\n"
                .utf8
        ).write(to: directory.appending(path: "Dockerfile"))
        let tag = "cmm-test/old-entrypoint:\(UUID().uuidString.prefix(8).lowercased())"
        defer { _ = try? DockerTestEnvironment.curl("DELETE", "/images/\(tag)?force=1") }
        #expect(
            try run("docker:build", "--tag", tag, "--file", directory.appending(path: "Dockerfile").path).exitCode == 0)
        let health = try run("health", "--json", environment: ["CMM_DOCKER_IMAGE": tag])
        let checks = try #require(try health.jsonObject()["checks"] as? [[String: Any]])
        let runner = try #require(checks.first { $0["id"] as? String == "runner.image" })
        #expect(runner["status"] as? String == "warn", "\(runner)")
        #expect((runner["message"] as? String)?.contains("older entrypoint") == true, "\(runner)")
    }

    @Test func cleanRemovesOnlyWhatIsOurs() throws {
        // The same image for all: one container labelled as this home's, one as another home's,
        // one not labelled at all (with "claude" in its name).
        _ = try run("docker:build", "--tag", "cmm-test/clean:1", "--file", try testDockerfile().path)
        let suffix = UUID().uuidString.prefix(8).lowercased()
        let owner = ParticipantPaths(environment: ["CMM_HOME": home.url.path]).ownerID
        func create(_ name: String, labels: String) throws -> String {
            let created = try DockerTestEnvironment.curl(
                "POST", "/containers/create?name=\(name)-\(suffix)",
                body: #"{"Image":"cmm-test/clean:1","Labels":{\#(labels)}}"#)
            return try #require(
                (try JSONSerialization.jsonObject(with: created.stdoutData) as? [String: Any])?["Id"] as? String)
        }
        let managed = #""io.claude-max-market.managed":"true","io.claude-max-market.kind":"job""#
        let oursID = try create("cmm-ours", labels: managed + #","io.claude-max-market.owner":"\#(owner)""#)
        let otherHomeID = try create(
            "cmm-other-home", labels: managed + #","io.claude-max-market.owner":"0123456789abcdef""#)
        let theirsID = try create("claude-not-ours", labels: "")
        defer {
            for id in [otherHomeID, theirsID] {
                _ = try? DockerTestEnvironment.curl("DELETE", "/containers/\(id)?force=1")
            }
        }
        // All run and exit; a container that never started is left alone for ten minutes.
        for id in [oursID, otherHomeID, theirsID] {
            _ = try DockerTestEnvironment.curl("POST", "/containers/\(id)/start")
            _ = try DockerTestEnvironment.curl("POST", "/containers/\(id)/wait")
        }

        let dry = try run("clean", "--dry-run", "--json")
        let planned = try #require(try dry.jsonObject()["containers"] as? [String])
        #expect(planned.contains(oursID) && !planned.contains(otherHomeID) && !planned.contains(theirsID))
        #expect(try DockerTestEnvironment.curl("GET", "/containers/\(oursID)/json").stdout.contains(oursID))
        // Every installation's, on request (a dry run: other suites' containers stay untouched).
        let all = try run("clean", "--dry-run", "--all-owners", "--json")
        let allPlanned = try #require(try all.jsonObject()["containers"] as? [String])
        #expect(allPlanned.contains(oursID) && allPlanned.contains(otherHomeID) && !allPlanned.contains(theirsID))

        let cleaned = try run("clean", "--json")
        #expect(cleaned.exitCode == 0)
        #expect((try cleaned.jsonObject()["containers"] as? [String])?.contains(oursID) == true)
        #expect(
            try DockerTestEnvironment.curl("GET", "/containers/\(oursID)/json").stdout.contains("No such container"))
        #expect(try DockerTestEnvironment.curl("GET", "/containers/\(otherHomeID)/json").stdout.contains(otherHomeID))
        #expect(try DockerTestEnvironment.curl("GET", "/containers/\(theirsID)/json").stdout.contains(theirsID))
    }
}
