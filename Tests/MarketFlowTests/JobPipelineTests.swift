import DockerEngine
import Foundation
import JobRunner
import MarketFlows
import Participant
import TestSupport
import Testing

/// The job pipeline that `execute` and the daemon share, with a warm pool.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct JobPipelineTests {
    init() async throws { try await Flow.ensureImage() }

    /// The warm container handed to a job dies while a person approves the job: the job runs
    /// cold instead, and succeeds; it neither fails nor waits out its wall-clock limit (which
    /// would end it as timed out).
    @Test func aWarmContainerThatDiesDuringApprovalLeavesTheJobToAColdRun() async throws {
        let directory = TemporaryDirectory("cmm-pipeline")
        let home = directory.file("home")
        for arguments in [
            ["terms", "--accept"], ["opt-in", "--claude-jobs", "--yes"],
            ["config", "--set", "docker.image=\(Flow.image)", "--set", "approval.mode=manual"],
        ] {
            let result = try await CLIRunner.runAsync(arguments, home: home)
            try #require(result.exitCode == 0, "\(arguments): \(result.stderr)")
        }
        let environment = CLIRunner.baseEnvironment(home: home)
        let paths = ParticipantPaths(environment: environment)
        let database = try StateDatabase(paths: paths)
        let config = try ConfigStore(paths: paths, environment: environment).resolve()
        let backend = JobBackend.command(["sh", "-c", "echo \"ran: $(cat)\""])

        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            let pool = WarmPool(
                docker: docker,
                template: .init(sandbox: SandboxSettings(config: config), backend: backend, egress: nil),
                size: 1, runDirectory: paths.runDirectory, owner: paths.ownerID)
            let pipeline = JobPipeline(database: database, config: config, paths: paths, docker: docker)
            let killed = LockedBox<[String]>([])
            var hooks = JobPipeline.Hooks()
            hooks.ask = { _ in
                // The person takes their time; meanwhile the engine kills the waiting container.
                for container in try await docker.listContainers(labels: ["\(Labels.job)=\(pool.poolID)"], all: false) {
                    try await docker.killContainer(container.Id)
                    for _ in 0..<600 where try await docker.inspectContainer(container.Id).State.Running {
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    killed.withLock { $0.append(container.Id) }
                }
                return true
            }
            let lines = LockedBox<[String]>([])
            hooks.output = { if case .line(_, let text) = $0 { lines.withLock { $0.append(text) } } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pool.run() }
                await pool.waitUntilFull()
                let report = try await pipeline.run(
                    PipelineJob(
                        id: UUID().uuidString.lowercased(), role: .local, prompt: Data("cold".utf8), backend: backend,
                        requester: "me"),
                    pool: pool, hooks: hooks)
                #expect(!killed.value.isEmpty)
                #expect(report.state == .succeeded, "\(report.error ?? "")")
                #expect(lines.value == ["ran: cold"])
                group.cancelAll()
            }
        }
    }
}
