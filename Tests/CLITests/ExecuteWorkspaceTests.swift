import Foundation
import TestSupport
import Testing

/// `execute --dir` as a user runs it: the directory goes in, the change comes out as a patch
/// that `--patch-out` writes and `--apply` applies; bad input gets a clear error and changes nothing.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct ExecuteWorkspaceTests {
    let home = TemporaryDirectory("cmm-exec-ws")
    let project = TemporaryDirectory("cmm-exec-project")

    func run(_ arguments: [String]) throws -> CLIResult {
        try CLIRunner.run(
            arguments, home: home.url,
            environment: ["CMM_DOCKER_IMAGE": TestRunnerImage.name, "CMM_EGRESS_ALLOWLIST": ""])
    }

    func optIn() async throws {
        try await TestRunnerImage.ensureBuilt()
        #expect(try run(["terms", "--accept"]).exitCode == 0)
        #expect(try run(["opt-in", "--claude-jobs", "--yes"]).exitCode == 0)
    }

    @Test func aCommandJobChangesTheDirectoryThroughAPatch() async throws {
        try await optIn()
        try Data("one\n".utf8).write(to: project.file("list.txt"))
        let patchFile = home.file("change.diff")
        let job = [
            "--", "sh", "-c", "echo two >> /work/list.txt; echo '#!/bin/sh' > /work/run.sh; chmod +x /work/run.sh",
        ]
        let result = try run(
            [
                "execute", "--backend", "command", "--dir", project.path, "--apply", "--patch-out", patchFile.path,
                "--yes",
            ]
                + job)
        #expect(result.exitCode == 0, "\(result.stderr)")
        #expect(
            result.stderr.contains("list.txt | 2 +") || result.stderr.contains("list.txt | 1 +"), "\(result.stderr)")
        #expect(try String(contentsOf: project.file("list.txt"), encoding: .utf8) == "one\ntwo\n")
        #expect(FileManager.default.isExecutableFile(atPath: project.file("run.sh").path))
        let patch = try String(contentsOf: patchFile, encoding: .utf8)
        #expect(patch.contains("new file mode 100755") && patch.contains("+two"))

        let json = try run(["execute", "--backend", "command", "--dir", project.path, "--json", "--yes", "--", "true"])
        let lines = json.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
        let patchLine = try #require(lines.first { $0["type"] as? String == "patch" }, "\(json.stdout)")
        #expect((patchLine["files"] as? [Any])?.isEmpty == true)
    }

    @Test func badWorkspaceInputIsRefusedBeforeAnythingRuns() async throws {
        try await optIn()
        let missing = try run(["execute", "--backend", "command", "--dir", "/nonexistent/dir", "--yes", "--", "true"])
        #expect(
            missing.exitCode == 1 && missing.stderr.contains("/nonexistent/dir is not a directory"), "\(missing.stderr)"
        )
        let noDir = try run(["execute", "--backend", "command", "--apply", "--yes", "--", "true"])
        #expect(
            noDir.exitCode != 0 && noDir.stderr.contains("--apply and --include-ignored need --dir"), "\(noDir.stderr)")
        try Data(repeating: 0x61, count: 4096).write(to: project.file("big.txt"))
        #expect(try run(["config", "--set", "limits.maxWorkspaceBytes=1k"]).exitCode == 0)
        let tooBig = try run(["execute", "--backend", "command", "--dir", project.path, "--yes", "--", "true"])
        #expect(tooBig.exitCode == 1 && tooBig.stderr.contains("limits.maxWorkspaceBytes"), "\(tooBig.stderr)")
        let jobs = try run(["logs", "--all"])
        #expect(!jobs.stdout.contains("started"), "nothing ran: \(jobs.stdout)")
    }
}

/// `docker:build` from a native binary or the pinned wheel refuses what it cannot check, before
/// anything is built.
struct NativeRunnerBuildTests {
    @Test func aWrongWheelOrBinaryIsRefusedWithWhatWasWrong() throws {
        let home = TemporaryDirectory("cmm-native-build")
        let wheel = home.file("claude_agent_sdk-0.2.189-py3-none-manylinux_2_17_x86_64.whl")
        try Data("not the wheel".utf8).write(to: wheel)
        let badWheel = try CLIRunner.run(["docker:build", "--claude-wheel", wheel.path], home: home.url)
        #expect(badWheel.exitCode != 0 && badWheel.stderr.contains("SHA-256"), "\(badWheel.stderr)")
        let noBinary = try CLIRunner.run(["docker:build", "--claude-binary", "/nonexistent/claude"], home: home.url)
        #expect(noBinary.exitCode != 0 && noBinary.stderr.contains("not an executable file"), "\(noBinary.stderr)")
        let both = try CLIRunner.run(
            ["docker:build", "--claude-binary", "/bin/true", "--claude-wheel", wheel.path], home: home.url)
        #expect(both.exitCode != 0 && both.stderr.contains("give one of"), "\(both.stderr)")
    }
}
