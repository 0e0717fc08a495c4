import DockerEngine
import Foundation
import Logging
import MarketCore
import ServiceLifecycle

/// Hardened containers created and started ahead of jobs, each idle and waiting for its job on
/// stdin. A slot is used for exactly one job and then replaced. Same hardening as a cold job:
/// the containers come from the same `SandboxPolicy`.
public actor WarmPool: Service {
    /// What every container of the pool looks like (one model / tool set per pool).
    public struct Template: Sendable {
        public var sandbox: SandboxSettings
        public var backend: JobBackend
        public var egress: EgressPolicy?

        public init(sandbox: SandboxSettings, backend: JobBackend, egress: EgressPolicy?) {
            self.sandbox = sandbox
            self.backend = backend
            self.egress = egress
        }
    }

    /// A started container waiting for its prompt, with its own egress proxy when there is one.
    public struct Slot: Sendable {
        public let containerID: String
        public let proxy: EgressProxy?
        let secrets: [String]
        let token: UUID
        /// The command waits behind a gate (one line on stdin) so that nothing runs before
        /// the job is handed over and its output is attached.
        var gated = false
        /// A claude slot: the CLI already runs under this new session and waits for its first
        /// message; the job's archive (the prompt) is all that is left to send.
        public let conversation: ClaudeConversation?
    }

    /// A command job started ahead would run (and print, unseen) before it is anyone's job:
    /// it waits for one line on stdin first, then becomes the command. Claude Code starts, reads
    /// its settings and waits for its first stream-json message before it does anything a job
    /// could see, so it needs no gate (the entrypoint's warm mode). Needs `/bin/sh` in the image.
    static func gate(_ command: [String]) -> [String] {
        ["/bin/sh", "-c", "read -r _ && exec \"$@\"", "cmm-gate"] + command
    }

    let docker: DockerClient
    let template: Template
    public nonisolated let size: Int
    let runDirectory: URL
    let owner: String?
    let logger: Logger
    /// Labels this pool's containers (as `io.claude-max-market.job`) so several pools never mix.
    public let poolID = UUID().uuidString.lowercased()
    private var idle: [Slot] = []
    private var starting = 0
    private var releases: [UUID: CheckedContinuation<Void, Never>] = [:]
    private var readyWaiters: [CheckedContinuation<Void, Never>] = []
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    /// `owner` goes on every container as the `owner` label (see `Labels.owner`).
    public init(
        docker: DockerClient, template: Template, size: Int, runDirectory: URL, owner: String? = nil,
        logger: Logger = Logger(label: "pool")
    ) {
        self.docker = docker
        self.template = template
        self.size = size
        self.runDirectory = runDirectory
        self.owner = owner
        self.logger = logger
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Keeps `size` slots ready until cancelled (or the service group shuts down); then removes
    /// the idle containers.
    public func run() async throws {
        await withDiscardingTaskGroup { group in
            wakeContinuation.yield()
            for await _ in wake.cancelOnGracefulShutdown() {
                while idle.count + starting < size {
                    starting += 1
                    group.addTask { await self.makeSlot() }
                }
            }
            for continuation in releases.values { continuation.resume() }
            releases = [:]
            group.cancelAll()
        }
        let leftovers = idle
        idle = []
        let docker = self.docker
        await Task {
            for slot in leftovers { try? await docker.removeContainer(slot.containerID, force: true) }
        }.value
    }

    /// An idle slot whose container still runs, or nil when none is ready (the caller then runs
    /// the job cold). A slot whose container died while it waited (the engine restarted, someone
    /// removed it) goes, and the pool makes another.
    public func take() async -> Slot? {
        while !idle.isEmpty {
            let slot = idle.removeFirst()
            wakeContinuation.yield()
            if (try? await docker.inspectContainer(slot.containerID))?.State.Running == true { return slot }
            logger.warning(
                "warm pool: a waiting container is gone; discarding it", metadata: ["container": "\(slot.containerID)"])
            let docker = self.docker
            await Task { try? await docker.removeContainer(slot.containerID, force: true) }.value
            release(slot)
        }
        return nil
    }

    /// Ends a slot after its job: stops its egress proxy. The executor has removed the container.
    public func release(_ slot: Slot) {
        releases.removeValue(forKey: slot.token)?.resume()
    }

    /// Waits until every slot is ready.
    public func waitUntilFull() async {
        if idle.count >= size { return }
        await withCheckedContinuation { readyWaiters.append($0) }
    }

    public var idleCount: Int { idle.count }

    private func makeSlot() async {
        let token = UUID()
        let gateway: ClaudeGateway?
        do {
            gateway = try template.backend.makeGateway(logger: logger)
        } catch {
            starting -= 1
            logger.error("warm pool: could not set up the API gateway", metadata: ["error": "\(error)"])
            return
        }
        defer { if let gateway { Task { await gateway.shutdown() } } }
        let conversation = template.backend.name == "claude" ? ClaudeConversation() : nil
        let prepared = template.backend.prepared(gateway: gateway, conversation: conversation ?? .init())
        let gated = conversation == nil
        let command = gated ? Self.gate(prepared.command) : prepared.command
        let environment = prepared.environment + (gated ? [] : ["CMM_WARM=1"])
        let labels = Labels.make(kind: "pool", job: poolID, owner: owner, version: ToolVersion.current)
        let docker = self.docker
        func start(egressDirectory: String?) async throws -> String {
            let spec = SandboxPolicy.containerSpec(
                template.sandbox, command: command, environment: environment, labels: labels,
                egressDirectory: egressDirectory)
            let id = try await docker.createContainer(spec)
            do {
                try await docker.startContainer(id)
                try Task.checkCancellation()
            } catch {
                // A container that will never be used must not outlive the attempt.
                await Task { try? await docker.removeContainer(id, force: true) }.value
                throw error
            }
            return id
        }
        do {
            if template.egress != nil || gateway != nil {
                try await EgressProxy.withProxy(
                    directory: runDirectory.appending(path: "egress-pool-\(token.uuidString.lowercased())"),
                    policy: template.egress
                        ?? EgressPolicy(allowlist: [], byteBudget: JobExecutor.gatewayOnlyByteBudget),
                    gateway: gateway, logger: logger
                ) { proxy in
                    let id = try await start(egressDirectory: proxy.socketPath.deletingLastPathComponent)
                    await self.awaitRelease(
                        Slot(
                            containerID: id, proxy: proxy, secrets: prepared.secrets, token: token, gated: gated,
                            conversation: conversation))
                }
            } else {
                let id = try await start(egressDirectory: nil)
                await awaitRelease(
                    Slot(
                        containerID: id, proxy: nil, secrets: prepared.secrets, token: token, gated: gated,
                        conversation: conversation))
            }
        } catch {
            starting -= 1
            if Task.isCancelled { return }  // the pool is stopping: not an error
            logger.error("warm pool: could not start a container", metadata: ["error": "\(error)"])
            try? await Task.sleep(for: .seconds(1))
            wakeContinuation.yield()
        }
    }

    /// Publishes the slot and keeps its proxy alive until the slot is released or the pool stops.
    private func awaitRelease(_ slot: Slot) async {
        if Task.isCancelled {
            starting -= 1
            let docker = self.docker
            await Task { try? await docker.removeContainer(slot.containerID, force: true) }.value
            return
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                releases[slot.token] = continuation
                starting -= 1
                idle.append(slot)
                if idle.count >= size {
                    for waiter in readyWaiters { waiter.resume() }
                    readyWaiters = []
                }
            }
        } onCancel: {
            Task { await self.release(slot) }
        }
    }
}
