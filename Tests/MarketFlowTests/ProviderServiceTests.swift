import DockerEngine
import Foundation
import JobRunner
import MarketClient
import MarketCore
import MarketCrypto
import MarketFlows
import MarketProtocol
import Participant
import TestSupport
import Testing

/// `ProviderService` in-process, against a real `market serve` and the Docker engine: what
/// `provide` does around the daemon.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct ProviderServiceTests {
    init() async throws { try await Flow.ensureImage() }

    /// The provider of `home` in-process (a `cat` backend at 3 RUV), the session it connects
    /// with, and what it reports.
    static func service(_ home: URL, flow: Flow) throws -> (ProviderService, ProviderService.SessionFactory, EventLog) {
        let environment = CLIRunner.baseEnvironment(home: home)
        let paths = ParticipantPaths(environment: environment)
        let database = try StateDatabase(paths: paths)
        let config = try ConfigStore(paths: paths, environment: environment).resolve()
        let (keys, _) = try KeyStore(directory: paths.keysDirectory).loadOrCreate(now: Date(), rotationDays: 90)
        let url = flow.url
        let makeSession: ProviderService.SessionFactory = { onConnect, onDisconnect in
            var hooks = MarketSession.Hooks()
            hooks.onConnect = onConnect
            hooks.onDisconnect = onDisconnect
            return MarketSession(
                keys: keys, settings: SessionSettings(url: url), outbox: Outbox(database: database), hooks: hooks)
        }
        let events = EventLog()
        var service = ProviderService(
            database: database, config: config, paths: paths, backend: .command(["cat"]),
            offer: AdvertiseBody(price: 3_000_000, slots: 1))
        service.report = { events.append($0.message) }
        return (service, makeSession, events)
    }

    @Test func oneDaemonPerHomeWhatADeadOneLeftGoesAndAStopWithdrawsTheOffer() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let home = try await flow.provider("vera", price: "3")
        let (service, makeSession, events) = try Self.service(home, flow: flow)
        let (paths, environment) = (service.paths, CLIRunner.baseEnvironment(home: home))
        let daemon = service
        let stop = Latch()

        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            // A warm container that a SIGKILLed daemon of this home left, and one of another home.
            func leftover(owner: String) async throws -> String {
                try await docker.createContainer(
                    ContainerSpec(
                        image: Flow.image, command: ["sleep", "60"],
                        labels: Labels.make(kind: "pool", owner: owner, version: ToolVersion.current)))
            }
            let mine = try await leftover(owner: paths.ownerID)
            let theirs = try await leftover(owner: "another-home")
            do {
                let running = Task { try await daemon.run(docker: docker, makeSession: makeSession, until: stop.wait) }
                try await events.waitFor("offer live", timeout: 30)
                #expect(events.contains("removed 1 container(s) left by a provider that died"))
                await #expect(throws: DockerError.self) { try await docker.inspectContainer(mine) }
                #expect(try await docker.inspectContainer(theirs).Id == theirs)
                #expect((try await flow.get("/v1/offers") as? [Any])?.count == 1)

                // A second daemon in the same home is refused, in-process and as `provide`.
                await #expect(throws: ProviderServiceError.alreadyRunning(pid: String(getpid()))) {
                    try await daemon.run(docker: docker, makeSession: makeSession, until: {})
                }
                let second = try await flow.cli(home, ["provide", "--backend", "command", "--", "cat"], expect: 3)
                #expect(second.stderr.contains("another `provide` already runs in this home (pid \(getpid()))"))

                stop.open()
                try await running.value
                #expect(events.last == "provider stopped")
                #expect((try await flow.get("/v1/offers") as? [Any])?.isEmpty == true)

                // The lock went with it; a missing image is named before anything starts.
                var missing = daemon
                missing.config = try ConfigStore(
                    paths: paths, environment: environment, flags: ["docker.image": "cmm-test/absent:1"]
                ).resolve()
                await #expect(throws: ProviderServiceError.imageMissing("cmm-test/absent:1")) {
                    try await missing.run(docker: docker, makeSession: makeSession, until: {})
                }
            } catch {
                try? await docker.removeContainer(theirs, force: true)
                throw error
            }
            try await docker.removeContainer(theirs, force: true)
        }
    }

    /// Capacity on an injected clock: the stored windows say the 5-hour window is 90 % used
    /// until three hours from now and the provider shares 60 %: its offer is in the book paused
    /// until then. The clock moves three hours on, the reset's timer fires at once, and the
    /// offer is back — with no one sleeping for hours.
    @Test func theOfferReturnsAtTheResetOnAnInjectedClock() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let home = try await flow.provider("cleo", price: "3", settings: ["capacity.fiveHourShare=0.6"])
        let (base, makeSession, events) = try Self.service(home, flow: flow)
        var service = base
        let start = Date()
        let reset = start.addingTimeInterval(3 * 3600)
        try AccountLimitStore(database: service.database).record([
            LimitReading(window: "five_hour", status: "allowed", utilization: 0.9, resetsAt: reset, observedAt: start)
        ])
        let clock = LockedBox(start)
        let woken = Latch()
        service.settings.now = { clock.withLock { $0 } }
        service.settings.sleepUntil = { date in
            await woken.wait()
            #expect(date.unixMilliseconds == reset.unixMilliseconds)
        }
        let daemon = service
        let stop = Latch()
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            let running = Task { try await daemon.run(docker: docker, makeSession: makeSession, until: stop.wait) }
            try await events.waitFor("offer paused in the book until", timeout: 30)
            #expect(events.contains("five_hour window is at 90 %, past the share of 60 %"))
            let offers = try await flow.get("/v1/offers") as? [[String: Any]] ?? []
            #expect(offers.first?["pausedUntilMs"] as? Int == Int(reset.unixMilliseconds), "\(offers)")
            // Three hours later, by the injected clock: the timer's wait ends, the offer is back.
            clock.withLock { $0 = reset.addingTimeInterval(1) }
            woken.open()
            try await events.waitFor("capacity returned", timeout: 30)
            try await events.waitFor("offer live", timeout: 30)
            let back = try await flow.get("/v1/offers") as? [[String: Any]] ?? []
            #expect(back.count == 1 && back.first?["pausedUntilMs"] == nil, "\(back)")
            stop.open()
            try await running.value
        }
    }
}

/// The daemon's events, in order.
typealias EventLog = LockedBox<[String]>

extension LockedBox where Value == [String] {
    convenience init() { self.init([]) }

    func append(_ message: String) { withLock { $0.append(message) } }
    var last: String? { value.last }
    func contains(_ text: String) -> Bool { value.contains { $0.contains(text) } }

    func waitFor(_ text: String, timeout: TimeInterval) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !contains(text) {
            guard Date() < deadline else {
                throw CLIRunnerError(description: "no '\(text)' within \(timeout) s: \(value)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// Opens once; everyone waiting goes on.
final class Latch: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream(of: Void.self) }

    func open() { continuation.finish() }
    @Sendable func wait() async { for await _ in stream {} }
}
