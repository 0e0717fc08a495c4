import DockerEngine
import Foundation
import JobRunner
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// A TCP server on 127.0.0.1 that answers every connection with one line, after reading the
/// client's first line (or its end): closing a socket with unread input sends a reset, and a reset
/// that arrives first makes the peer's kernel drop the answer before anyone reads it. The client
/// half-closes after its line, so the server must keep writing after its input ends.
func withLoopbackServer<T: Sendable>(
    answer: String, after delay: Duration = .zero, _ body: (Int) async throws -> T
) async throws -> T {
    let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        .bind(host: "127.0.0.1", port: 0) { child in
            child.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: child)
            }
        }
    let port = server.channel.localAddress!.port!
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            try await server.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { connections in
                    for try await connection in inbound {
                        connections.addTask {
                            try? await connection.executeThenClose { inbound, outbound in
                                for try await chunk in inbound
                                where chunk.readableBytesView.contains(UInt8(ascii: "\n")) {
                                    break
                                }
                                try await Task.sleep(for: delay)
                                try await outbound.write(ByteBuffer(string: answer + "\n"))
                            }
                        }
                    }
                }
            }
        }
        let result = try await body(port)
        group.cancelAll()
        try? await server.channel.close()
        return result
    }
}

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct EgressTests {
    let runDirectory = TemporaryDirectory("cmm-run")

    func run(_ prompt: String, egress: EgressPolicy?) async throws -> (JobReport, [String]) {
        try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            try await TestRunnerImage.ensureBuilt()
            let executor = JobExecutor(docker: docker, runDirectory: runDirectory.url)
            let collected = Collected()
            let job = JobRequest(
                id: UUID().uuidString.lowercased(), prompt: Data(prompt.utf8),
                backend: .claude(ClaudeOptions(model: "m", maxTurns: 1, allowedTools: [], credential: .none)),
                sandbox: JobExecutorTests.settings, egress: egress)
            let report = try await executor.run(job) { collected.add($0) }
            return (report, collected.lines)
        }
    }

    @Test func anAllowedHostIsReachableThroughTheProxyOnly() async throws {
        try await withLoopbackServer(answer: "pong-from-allowed") { port in
            let policy = EgressPolicy(allowlist: ["127.0.0.1:\(port)"], byteBudget: 1 << 20)
            let (report, lines) = try await run("egress: 127.0.0.1:\(port)", egress: policy)
            #expect(lines.contains { $0.contains("egress answer: pong-from-allowed") }, "\(lines)")
            #expect(
                report.egress == [
                    EgressDecision(host: "127.0.0.1", port: port, allowed: true, reason: "on the allowlist")
                ])
            #expect(report.egressBytes > 0)
            // Straight to the host's port, without the proxy: the container's loopback is its own.
            let (_, direct) = try await run("direct: 127.0.0.1:\(port)", egress: policy)
            #expect(!direct.contains { $0.contains("pong-from-allowed") })
        }
    }

    /// The client half-closes after its request; a slow answer must still arrive through the
    /// container's bridge and the proxy.
    @Test func aSlowAnswerAfterAHalfCloseArrives() async throws {
        try await withLoopbackServer(answer: "late-pong", after: .milliseconds(1500)) { port in
            let policy = EgressPolicy(allowlist: ["127.0.0.1:\(port)"], byteBudget: 1 << 20)
            let (_, lines) = try await run("egress: 127.0.0.1:\(port)", egress: policy)
            #expect(lines.contains { $0.contains("egress answer: late-pong") }, "\(lines)")
        }
    }

    @Test func aHostNotOnTheListIsRefused() async throws {
        try await withLoopbackServer(answer: "secret-server") { port in
            let policy = EgressPolicy(allowlist: ["api.anthropic.com:443"], byteBudget: 1 << 20)
            let (report, lines) = try await run("egress: 127.0.0.1:\(port)", egress: policy)
            #expect(!lines.contains { $0.contains("secret-server") })
            #expect(lines.contains { $0.contains("egress answer:") && $0.contains("Forbidden") }, "\(lines)")
            #expect(report.egress.first?.allowed == false && report.egress.first?.port == port)
        }
    }

    @Test func withoutTheProxyNothingIsReachable() async throws {
        try await withLoopbackServer(answer: "pong") { port in
            let (report, lines) = try await run("egress: 127.0.0.1:\(port)", egress: nil)
            #expect(!lines.contains { $0.contains("pong") })
            #expect(report.egress.isEmpty)
        }
    }

    @Test func theByteBudgetIsEnforced() async throws {
        try await withLoopbackServer(answer: String(repeating: "x", count: 4096)) { port in
            let policy = EgressPolicy(allowlist: ["127.0.0.1:\(port)"], byteBudget: 100)
            let (report, lines) = try await run("egress: 127.0.0.1:\(port)", egress: policy)
            #expect(!lines.contains { $0.contains(String(repeating: "x", count: 200)) })
            #expect(report.egressBytes > 100)
        }
    }
}
