import DockerEngine
import Foundation
import JobRunner
import TestSupport
import Testing
import Workspace

/// Workspace jobs in a real hardened container with the runner's entrypoint: the tree is
/// unpacked in /work, and what the job leaves there comes back as hostile input.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct WorkspaceJobTests {
    let runDirectory = TemporaryDirectory("cmm-ws-run")

    func run(_ script: String, tree: WorkspaceTree, tmpfsBytes: Int64? = nil) async throws -> (JobReport, [String]) {
        try await TestRunnerImage.ensureBuilt()
        return try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            var request = JobRequest(
                id: UUID().uuidString.lowercased(), prompt: Data("the prompt\n".utf8),
                backend: .command(["sh", "-c", script]), sandbox: JobExecutorTests.settings, egress: nil)
            request.workspace = JobWorkspace(tree: tree)
            request.sandbox.workspaceBytes = tree.unpackedBytes
            if let tmpfsBytes { request.sandbox.tmpfsBytes = tmpfsBytes }
            let collected = Collected()
            let report = try await JobExecutor(docker: docker, runDirectory: runDirectory.url).run(request) {
                collected.add($0)
            }
            return (report, collected.lines)
        }
    }

    static let tree = try! WorkspaceTree(entries: [
        .init(path: "src", kind: .directory), .init(path: "src/a.txt", kind: .file(Data("a\n".utf8))),
        .init(path: "link", kind: .symlink("src/a.txt")),
    ])

    @Test func theJobSeesItsTreeAndPromptAndItsLastLineWithoutANewlineSurvives() async throws {
        let (report, lines) = try await run(
            "cat; cat /work/src/a.txt; readlink /work/link; echo HOME=$HOME; printf 'no newline at the end'",
            tree: Self.tree)
        #expect(report.state == .succeeded, "\(report.error ?? "") \(lines)")
        #expect(lines == ["the prompt", "a", "src/a.txt", "HOME=/tmp", "no newline at the end"], "\(lines)")
        #expect(report.workspace?.patch?.isEmpty == true, "\(report.workspace?.error ?? "")")
    }

    @Test func whatAHostileJobLeavesComesBackOnlyAsAPatchCanCarryIt() async throws {
        let script = """
            echo changed > /work/src/a.txt; ln -s /etc/passwd /work/escape; mkfifo /work/fifo; \
            mkdir -p /work/.git && echo '[core]' > /work/.git/config; ln /work/src/a.txt /work/hard; \
            chmod 4755 /work/src/a.txt 2>/dev/null; rm /work/link; echo done
            """
        let (report, lines) = try await run(script, tree: Self.tree)
        #expect(report.state == .succeeded, "\(report.error ?? "") \(lines)")
        let outcome = try #require(report.workspace)
        let patch = try #require(outcome.patch, "\(outcome.error ?? "")")
        #expect(Set(patch.files.map(\.path)) == ["src/a.txt", "hard", "link"], "\(patch.diffstat)")
        #expect(Set(outcome.skipped.map(\.path)) == ["escape", "fifo"], "\(outcome.skipped)")
        let text = String(decoding: patch.data, as: UTF8.self)
        #expect(!text.contains(".git/") && !text.contains("/etc/passwd") && !text.contains("4755"))
        // It applies to the tree that was sent.
        let dir = TemporaryDirectory("cmm-ws-apply")
        try FileManager.default.createDirectory(at: dir.file("src"), withIntermediateDirectories: true)
        try Data("a\n".utf8).write(to: dir.file("src/a.txt"))
        symlink("src/a.txt", dir.file("link").path)
        _ = try WorkspacePatch(parsing: patch.data).apply(to: dir.url)
        #expect(try String(contentsOf: dir.file("hard"), encoding: .utf8) == "changed\n")
        #expect(!FileManager.default.fileExists(atPath: dir.file("link").path))
    }

    @Test func aWorkDirectoryThatGrowsPastItsBoundGivesNoPatchButAClearReason() async throws {
        // More than twice the work tmpfs in tar headers: with a 1 MiB tmpfs, twelve thousand
        // empty files (512 bytes of header each) are about 6 MiB against a bound of about 3 MiB.
        // Kept small so that a loaded machine makes them well inside the wall-clock limit.
        let (report, lines) = try await run(
            "cd /work && i=0; while [ $i -lt 12000 ]; do : > f$i; i=$((i+1)); done; echo done", tree: Self.tree,
            tmpfsBytes: 1 << 20)
        #expect(report.state == .succeeded, "\(report.error ?? "") \(lines)")
        let outcome = try #require(report.workspace)
        #expect(outcome.patch == nil)
        #expect(
            outcome.error?.contains("larger than") == true || outcome.error?.contains("more than") == true,
            "\(outcome.error ?? "")")
    }
}
