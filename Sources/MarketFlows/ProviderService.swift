import DockerEngine
import Foundation
import JobRunner
import Logging
import MarketClient
import MarketCore
import MarketProtocol
import Participant
import ServiceLifecycle
import UnixSignals

/// The provider daemon with everything around it, as `provide` runs it:
/// - one daemon per home (`ProvideLock`);
/// - what a daemon that died left behind is removed first;
/// - the warm pool, the market session and the daemon run as the services of one `ServiceGroup`,
///   started in that order;
/// - on a stop signal (or when `until` returns) they stop in reverse: the daemon withdraws the
///   offer, gives running jobs the drain time and hands back the rest while the session still
///   carries its frames; then the session drains its outbox; then the pool removes its containers.
///
/// The command only parses and renders; tests start it in-process.
public struct ProviderService: Sendable {
    public var database: StateDatabase
    public var config: ResolvedConfig
    public var paths: ParticipantPaths
    public var backend: JobBackend
    public var offer: AdvertiseBody
    public var settings = ProviderDaemon.Settings()
    /// Credentials this tool knows: never in an event, a result or a frame.
    public var knownSecrets: [String] = []
    /// The config as it is now (another terminal may change it); nil keeps the one given.
    public var reloadConfig: @Sendable () -> ResolvedConfig? = { nil }
    /// Manual approval; see `JobPipeline.Hooks.ask`.
    public var ask: @Sendable (ApprovalQuestion) async throws -> Bool = { _ in false }
    public var report: @Sendable (ProviderEvent) -> Void = { _ in }

    public init(
        database: StateDatabase, config: ResolvedConfig, paths: ParticipantPaths, backend: JobBackend,
        offer: AdvertiseBody
    ) {
        self.database = database
        self.config = config
        self.paths = paths
        self.backend = backend
        self.offer = offer
    }

    /// Builds the market session, given the hooks the daemon needs on each (re)connection and
    /// loss of it.
    public typealias SessionFactory =
        @Sendable (
            _ onConnect: @escaping @Sendable (MarketSession) async -> Void,
            _ onDisconnect: @escaping @Sendable (String) -> Void
        ) -> MarketSession

    /// Runs the daemon until one of `signals` arrives or `until` returns, then stops it as
    /// described above.
    public func run(
        docker: DockerClient, makeSession: SessionFactory, signals: [UnixSignal] = [],
        until: (@Sendable () async -> Void)? = nil
    ) async throws {
        let lock = try ProvideLock(directory: paths.runDirectory)
        defer { lock.release() }
        // Jobs of a daemon that died hold no limits any more, and their containers go below.
        let released = try JobStore(database: database).abandonedJobIDs(at: Date())
        let removed = await Self.removeLeftovers(docker, owner: paths.ownerID, jobs: released)
        if removed > 0 { note("removed \(removed) container(s) left by a provider that died") }
        // ... and the egress socket directories it could not remove.
        _ = EgressProxy.removeStale(runDirectory: paths.runDirectory)

        let sandbox = SandboxSettings(config: config)
        guard try await docker.inspectImage(sandbox.image) != nil else {
            throw ProviderServiceError.imageMissing(sandbox.image)
        }
        let pipeline = JobPipeline(
            database: database, config: config, paths: paths, docker: docker, actor: "provider")
        let pool = makePool(docker: docker, sandbox: sandbox)
        let holder = DaemonHolder()
        let report = self.report
        let session = makeSession(
            { _ in await holder.daemon?.connected() }, { report(ProviderEvent(taskId: nil, message: $0)) })
        let daemon = ProviderDaemon(
            session: session, pipeline: pipeline, backend: backend, pool: pool, offer: offer,
            settings: settings, knownSecrets: knownSecrets, reloadConfig: reloadConfig, ask: ask, report: report)
        holder.daemon = daemon
        note(
            "provider \(session.keys.peerID.rawValue) on \(session.settings.url): \(offer.slots) slot(s) at \(Credits(micro: offer.price)), \(backend.name) backend, approval \(config.text(.approvalMode)), warm pool \(pool?.size ?? 0)"
        )

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let pool { services.append(.init(service: pool)) }
        services.append(.init(service: SessionService(session: session)))
        let drain = String(format: "%g", settings.drainTimeout.inSeconds)
        services.append(
            .init(
                service: DaemonService(daemon: daemon) {
                    note("stopping: offer withdrawn, running jobs get \(drain) s to finish")
                }))
        var logger = Logger(label: "cmm.provide")
        logger.logLevel = .warning
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: signals, logger: logger))
        async let stopper: Void = {
            guard let until else { return }
            await until()
            await group.triggerGracefulShutdown()
        }()
        try await group.run()
        await stopper
        note("provider stopped")
    }

    func note(_ message: String) { report(ProviderEvent(taskId: nil, message: message)) }

    /// A pool of `docker.warmPool` containers shaped like this provider's jobs, or nil for none.
    func makePool(docker: DockerClient, sandbox: SandboxSettings) -> WarmPool? {
        let size = Int(config.integer(.dockerWarmPool))
        guard size > 0 else { return nil }
        let allowlist = config.list(.egressAllowlist)
        let egress =
            allowlist.isEmpty ? nil : EgressPolicy(allowlist: allowlist, byteBudget: config.bytes(.egressByteBudget))
        return WarmPool(
            docker: docker, template: .init(sandbox: sandbox, backend: backend, egress: egress), size: size,
            runDirectory: paths.runDirectory, owner: paths.ownerID)
    }

    /// Containers of this home whose daemon is gone: every warm-pool container (one daemon per
    /// home, see `ProvideLock`) and those of jobs released as abandoned.
    static func removeLeftovers(_ docker: DockerClient, owner: String, jobs: Set<String>) async -> Int {
        guard let containers = try? await docker.listContainers(labels: ["\(Labels.owner)=\(owner)"], all: true)
        else { return 0 }
        var removed = 0
        for container in containers where Labels.isManagedContainer(container.Labels) {
            let kind = container.Labels?[Labels.kind]
            guard kind == "pool" || jobs.contains(container.Labels?[Labels.job] ?? "") else { continue }
            if (try? await docker.removeContainer(container.Id, force: true)) != nil { removed += 1 }
        }
        return removed
    }
}

/// The market session as a service: it connects and reconnects until the group stops; then it
/// gives unanswered messages a moment to be answered.
struct SessionService: Service {
    let session: MarketSession

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await session.run() }
            try? await gracefulShutdown()
            if !Task.isCancelled { await session.drainOutbox(timeout: .seconds(3)) }
            group.cancelAll()
        }
    }
}

/// The daemon as a service: it handles the market's frames until the group stops; then it stops
/// as `ProviderDaemon.stop` says, before the session below it goes.
struct DaemonService: Service {
    let daemon: ProviderDaemon
    let onStop: @Sendable () -> Void

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await daemon.run() }
            try? await gracefulShutdown()
            if !Task.isCancelled {
                onStop()
                await daemon.stop()
            }
            group.cancelAll()
        }
    }
}

public enum ProviderServiceError: Error, CustomStringConvertible, Equatable {
    /// Another daemon holds this home (its PID when it wrote one).
    case alreadyRunning(pid: String?)
    case lockUnavailable(path: String, reason: String)
    case imageMissing(String)

    public var description: String {
        switch self {
        case .alreadyRunning(let pid):
            "another `provide` already runs in this home\(pid.map { " (pid \($0))" } ?? ""): one daemon per home"
        case .lockUnavailable(let path, let reason): "cannot open \(path): \(reason)"
        case .imageMissing(let image):
            "image \(image) is not present: `claude-max-market docker build` (or --image NAME)"
        }
    }
}

/// One daemon per home: a second one would take the same jobs' slots and remove the first
/// one's warm containers. An exclusive lock on a file in the run directory, released by the
/// kernel when the process dies however it dies.
struct ProvideLock {
    let descriptor: Int32

    init(directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appending(path: "provide.lock").path
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw ProviderServiceError.lockUnavailable(path: path, reason: String(cString: strerror(errno)))
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(
                in: .whitespacesAndNewlines)
            close(descriptor)
            throw ProviderServiceError.alreadyRunning(pid: holder.flatMap { $0.isEmpty ? nil : $0 })
        }
        ftruncate(descriptor, 0)
        let pid = Data("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    }

    func release() {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}

/// The daemon, for the session's connect hook, which exists before it.
final class DaemonHolder: @unchecked Sendable {
    private let lock = NSLock()
    private var value: ProviderDaemon?
    var daemon: ProviderDaemon? {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}
