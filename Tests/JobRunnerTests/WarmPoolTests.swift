import DockerEngine
import Foundation
import JobRunner
import MarketCore
import TestSupport
import Testing

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct WarmPoolTests {
    let runDirectory = TemporaryDirectory("cmm-run")

    @Test func slotsAreHardenedUsedOnceAndReplaced() async throws {
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            try await TestRunnerImage.ensureBuilt()
            let backend = JobBackend.claude(
                ClaudeOptions(model: "m", maxTurns: 2, allowedTools: ["Read"], credential: .none))
            let template = WarmPool.Template(
                sandbox: JobExecutorTests.settings, backend: backend,
                egress: EgressPolicy(allowlist: ["api.anthropic.com:443"], byteBudget: 1 << 20))
            let pool = WarmPool(docker: docker, template: template, size: 2, runDirectory: runDirectory.url)
            let executor = JobExecutor(docker: docker, runDirectory: runDirectory.url)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pool.run() }
                await pool.waitUntilFull()
                let pooled = try await docker.listContainers(labels: ["\(Labels.job)=\(pool.poolID)"], all: false)
                #expect(pooled.count == 2)
                for container in pooled {
                    let inspect = try await docker.inspectContainer(container.Id)
                    #expect(inspect.State.Running)
                    #expect(SandboxPolicy.violations(of: inspect, settings: JobExecutorTests.settings) == [])
                }
                let slot = try #require(await pool.take())
                let request = JobRequest(
                    id: UUID().uuidString.lowercased(), prompt: Data("fixture: success-text".utf8), backend: backend,
                    sandbox: JobExecutorTests.settings, egress: template.egress)
                let report = try await executor.run(request, on: slot) { _ in }
                await pool.release(slot)
                #expect(
                    report.state == .succeeded && report.result?.text == "The capital of France is Paris.",
                    "\(report.state) \(report.error ?? "")")
                // The used container is gone and a fresh one takes its place.
                await pool.waitUntilFull()
                let after = try await docker.listContainers(labels: ["\(Labels.job)=\(pool.poolID)"], all: true)
                #expect(after.count == 2 && !after.contains { $0.Id == slot.containerID })
                group.cancelAll()
            }
            let left = try await docker.listContainers(labels: ["\(Labels.job)=\(pool.poolID)"], all: true)
            #expect(left.isEmpty)
        }
    }

    /// A waiting container that died (the engine restarted, someone removed it) is never handed
    /// out: `take` discards it, and the pool makes another.
    @Test func aDeadWaitingContainerIsDiscardedNotHandedOut() async throws {
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            try await TestRunnerImage.ensureBuilt()
            let template = WarmPool.Template(
                sandbox: JobExecutorTests.settings, backend: .command(["sh", "-c", "cat"]), egress: nil)
            let pool = WarmPool(docker: docker, template: template, size: 1, runDirectory: runDirectory.url)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pool.run() }
                await pool.waitUntilFull()
                let first = try await docker.listContainers(labels: ["\(Labels.job)=\(pool.poolID)"], all: false)
                try #require(first.count == 1)
                try await docker.killAndWait(first[0].Id)
                // Never the dead one: `take` discards it and hands out nothing, or the replacement
                // if the pool made it while the dead one was being removed (a slow machine).
                var taken = await pool.take()
                #expect(taken?.containerID != first[0].Id, "a dead container was handed out")
                if taken == nil {
                    await pool.waitUntilFull()
                    taken = await pool.take()
                }
                let slot = try #require(taken)
                #expect(slot.containerID != first[0].Id)
                #expect(try await docker.inspectContainer(slot.containerID).State.Running)
                try await docker.removeContainer(slot.containerID, force: true)
                await pool.release(slot)
                group.cancelAll()
            }
        }
    }

    /// A slot whose container dies after `take` (while its job waits for approval, say): the
    /// hand-over fails at once with `WarmContainerGone` (waiting out the wall-clock limit on a
    /// dead container would end in a timed-out report instead), nothing ran, the container is gone.
    @Test func aSlotThatDiesAfterTakeIsRefusedAtOnce() async throws {
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            try await TestRunnerImage.ensureBuilt()
            let template = WarmPool.Template(
                sandbox: JobExecutorTests.settings, backend: .command(["sh", "-c", "cat"]), egress: nil)
            let pool = WarmPool(docker: docker, template: template, size: 1, runDirectory: runDirectory.url)
            let executor = JobExecutor(docker: docker, runDirectory: runDirectory.url)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pool.run() }
                await pool.waitUntilFull()
                let slot = try #require(await pool.take())
                try await docker.killAndWait(slot.containerID)
                var sandbox = JobExecutorTests.settings
                sandbox.timeout = .seconds(60)
                let request = JobRequest(
                    id: UUID().uuidString.lowercased(), prompt: Data("hello".utf8), backend: template.backend,
                    sandbox: sandbox, egress: nil)
                let output = Collected()
                await #expect(throws: WarmContainerGone.self) {
                    try await executor.run(request, on: slot) { output.add($0) }
                }
                await pool.release(slot)
                #expect(output.all.isEmpty, "nothing of the job ran")
                await #expect(throws: DockerError.self) { try await docker.inspectContainer(slot.containerID) }
                group.cancelAll()
            }
        }
    }

    /// A deep home puts the egress socket past the 107 bytes a Unix socket path may have: the
    /// pool still fills (the socket goes to a short private directory) and the slot works.
    @Test func aDeepRunDirectoryStillGetsItsSockets() async throws {
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            try await TestRunnerImage.ensureBuilt()
            let deep = runDirectory.url.appending(path: String(repeating: "d", count: 80))
            let backend = JobBackend.command(["sh", "-c", "echo \"got $(cat)\""])
            let template = WarmPool.Template(
                sandbox: JobExecutorTests.settings, backend: backend,
                egress: EgressPolicy(allowlist: ["api.anthropic.com:443"], byteBudget: 1 << 20))
            let pool = WarmPool(docker: docker, template: template, size: 1, runDirectory: deep)
            let executor = JobExecutor(docker: docker, runDirectory: deep)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await pool.run() }
                await pool.waitUntilFull()
                let slot = try #require(await pool.take())
                let socket = try #require(slot.proxy?.socketPath)
                #expect(socket.hasPrefix("/tmp/cmm-egress-") && socket.utf8.count <= 100)
                let lines = LockedBox<[String]>([])
                let request = JobRequest(
                    id: UUID().uuidString.lowercased(), prompt: Data("in".utf8), backend: backend,
                    sandbox: JobExecutorTests.settings, egress: template.egress)
                let report = try await executor.run(request, on: slot) { output in
                    if case .line(_, let text) = output { lines.withLock { $0.append(text) } }
                }
                await pool.release(slot)
                #expect(report.state == .succeeded && lines.value == ["got in"])
                group.cancelAll()
            }
        }
    }
}

extension DockerClient {
    /// Kills a container and waits (up to 30 s) until the engine reports it stopped: the engine
    /// answers the kill before the container's state says so.
    func killAndWait(_ id: String) async throws {
        try await killContainer(id)
        for _ in 0..<600 where try await inspectContainer(id).State.Running {
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
