import DockerEngine
import Foundation
import JobRunner
import MarketCore
import TestSupport
import TestTraits
import Testing

/// Conversations with the real Claude Code CLI: every job runs under a session of its own, its
/// transcript comes back in the report and nowhere else, and a later job in another container
/// continues it from that transcript alone.
@Suite(
    .enabled(
        if: ClaudeCLITestEnvironment.shouldRun, "no Docker engine or no Claude Code binary (scripts/test.sh fetches it)"
    ),
    .serialized, .heavy)
struct ClaudeConversationTests {
    let runDirectory = TemporaryDirectory("cmm-conversation-run")

    func run(
        _ prompt: String, credential: ClaudeCredential, upstream: URL?, conversation: ClaudeConversation? = nil,
        egress: EgressPolicy? = nil
    ) async throws -> (JobReport, Collected) {
        try await ClaudeCLITestEnvironment.ensureImage()
        return try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
            docker in
            let options = ClaudeOptions(
                model: "claude-sonnet-4-6", maxTurns: 4, allowedTools: ["Read", "Grep", "Glob"], credential: credential,
                gateway: GatewaySettings(
                    upstream: upstream ?? URL(string: "http://127.0.0.1:9")!, timeout: .seconds(30)),
                tokenBudget: 1_000_000)
            var job = JobRequest(
                id: UUID().uuidString.lowercased(), prompt: Data(prompt.utf8), backend: .claude(options),
                sandbox: ClaudeCLITests.settings, egress: egress)
            job.conversation = conversation
            let collected = Collected()
            let report = try await JobExecutor(docker: docker, runDirectory: runDirectory.url).run(job) {
                collected.add($0)
            }
            return (report, collected)
        }
    }

    @Test func aConversationContinuesInAnotherContainerFromItsTranscriptAlone() async throws {
        let script: [MessagesAPIStandIn.Turn] = [.text("Noted: the code word is PAPAYA."), .text("It was PAPAYA.")]
        try await MessagesAPIStandIn.with(scripts: ["chat": script]) { standIn in
            let (first, firstOutput) = try await run(
                "script: chat — remember the code word PAPAYA", credential: .apiKey(ClaudeCLITests.key),
                upstream: URL(string: standIn.url))
            #expect(first.state == .succeeded, "\(first.error ?? "") \(firstOutput.lines.suffix(5))")
            #expect(first.result?.text == "Noted: the code word is PAPAYA.")
            let transcript = try #require(first.transcript, "\(first.transcriptError ?? "")")
            #expect(transcript.sessionID == first.sessionID)
            #expect(transcript.turns.map(\.role) == ["user", "assistant"], "\(transcript.turns)")
            #expect(!String(decoding: transcript.data, as: UTF8.self).contains(ClaudeCLITests.key))

            let (second, secondOutput) = try await run(
                "What was the code word?", credential: .apiKey(ClaudeCLITests.key), upstream: URL(string: standIn.url),
                conversation: ClaudeConversation(continuing: transcript))
            #expect(second.state == .succeeded, "\(second.error ?? "") \(secondOutput.lines.suffix(5))")
            #expect(second.result?.text == "It was PAPAYA.")
            #expect(second.sessionID == first.sessionID)
            // The second container's request carried the first turn, question and answer.
            let last = try #require(standIn.conversation.last)
            let messages = last.body["messages"] as? [any Sendable] ?? []
            let text = "\(messages)"
            #expect(text.contains("remember the code word PAPAYA") && text.contains("Noted: the code word is PAPAYA."))
            #expect(text.contains("What was the code word?"))
            let continued = try #require(second.transcript, "\(second.transcriptError ?? "")")
            #expect(continued.turns.map(\.role) == ["user", "assistant", "user", "assistant"], "\(continued.turns)")
        }
    }

    /// A warm slot runs the real CLI started ahead, waiting for its first stream-json message:
    /// it calls nothing before the job is handed over, answers it under the slot's session, and
    /// the slot's gateway (its token) is gone once the job ends.
    @Test func aWarmSlotRunsTheRealCLIStartedAheadAndItsTokenEndsWithTheJob() async throws {
        try await ClaudeCLITestEnvironment.ensureImage()
        try await MessagesAPIStandIn.with(scripts: ["warm": [.text("warm answer")]]) { standIn in
            try await DockerClient.withClient(configuration: .init(socketPath: DockerTestEnvironment.socketPath)) {
                docker in
                let backend = JobBackend.claude(
                    ClaudeOptions(
                        model: "claude-sonnet-4-6", maxTurns: 4, allowedTools: ["Read"],
                        credential: .apiKey(ClaudeCLITests.key),
                        gateway: GatewaySettings(upstream: URL(string: standIn.url)!, timeout: .seconds(30)),
                        tokenBudget: 1_000_000))
                let template = WarmPool.Template(sandbox: ClaudeCLITests.settings, backend: backend, egress: nil)
                let pool = WarmPool(docker: docker, template: template, size: 1, runDirectory: runDirectory.url)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await pool.run() }
                    await pool.waitUntilFull()
                    try await Task.sleep(for: .seconds(3))
                    #expect(standIn.received.filter { $0.path == "/v1/messages" }.isEmpty)
                    let slot = try #require(await pool.take())
                    let conversation = try #require(slot.conversation)
                    let request = JobRequest(
                        id: UUID().uuidString.lowercased(), prompt: Data("script: warm — hello".utf8),
                        backend: backend, sandbox: ClaudeCLITests.settings, egress: nil)
                    let collected = Collected()
                    let report = try await JobExecutor(docker: docker, runDirectory: runDirectory.url).run(
                        request, on: slot
                    ) { collected.add($0) }
                    await pool.release(slot)
                    #expect(report.state == .succeeded, "\(report.error ?? "") \(collected.lines.suffix(5))")
                    #expect(report.result?.text == "warm answer")
                    #expect(report.sessionID == conversation.sessionID)
                    #expect(report.transcript?.sessionID == conversation.sessionID, "\(report.transcriptError ?? "")")
                    // The slot's gateway, and with it its token, ends with the job.
                    let socket = try #require(slot.proxy?.socketPath)
                    var gone = false
                    for _ in 0..<100 where !gone {
                        gone = !FileManager.default.fileExists(atPath: socket)
                        if !gone { try await Task.sleep(for: .milliseconds(50)) }
                    }
                    #expect(gone, "the slot's gateway socket is still there")
                    group.cancelAll()
                }
            }
        }
    }

    /// `execute --follow-up JOB_ID` continues a local conversation kept in the home.
    @Test func executeFollowUpContinuesALocalConversation() async throws {
        try await ClaudeCLITestEnvironment.ensureImage()
        let script: [MessagesAPIStandIn.Turn] = [.text("Noted: KIWI."), .text("It was KIWI.")]
        try await MessagesAPIStandIn.with(scripts: ["local": script]) { standIn in
            let home = TemporaryDirectory("cmm-conversation-home")
            let environment = ["ANTHROPIC_API_KEY": ClaudeCLITests.key]
            // Off the concurrency pool: a CLI job takes seconds, and the pool has a thread per core.
            func run(_ arguments: [String], expect code: Int32 = 0) async throws -> CLIResult {
                let result = try await offPool {
                    try CLIRunner.run(arguments, home: home.url, environment: environment)
                }
                #expect(result.exitCode == code, "\(arguments): \(result.stderr)")
                return result
            }
            _ = try await run(["terms", "--accept"])
            _ = try await run(["opt-in", "--claude-jobs", "--yes"])
            for setting in [
                "docker.image=\(ClaudeCLITestEnvironment.image)", "claude.apiBaseURL=\(standIn.url)",
                "limits.dailyTokens=100000000", "limits.maxTokensPerTask=1000000", "docker.memory=1g",
                "docker.pidsLimit=256",
            ] {
                _ = try await run(["config", "--set", setting])
            }
            let first = try await run(["execute", "--prompt", "script: local — remember KIWI", "--yes", "--json"])
            let summary = try #require(
                first.stdout.split(separator: "\n").compactMap {
                    (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
                }.first { $0["type"] as? String == "result" })
            let jobID = try #require(summary["job"] as? String)
            #expect(summary["transcriptTurns"] as? Int == 2, "\(summary)")
            let second = try await run(["execute", "--follow-up", jobID, "--prompt", "Which fruit?", "--yes"])
            #expect(second.stdout.contains("It was KIWI."), "\(second.stdout) \(second.stderr)")
            #expect(second.stderr.contains("continues the conversation of job \(jobID) (2 turns)"))
            let missing = try await run(
                ["execute", "--follow-up", UUID().uuidString.lowercased(), "--prompt", "x", "--yes"], expect: 2)
            #expect(missing.stderr.contains("left no conversation in this home"), "\(missing.stderr)")
        }
    }

    @Test func aTranscriptIsCheckedBeforeItIsUsed() throws {
        let session = UUID().uuidString.lowercased()
        let good = Data(
            """
            {"type":"user","sessionId":"\(session)","message":{"role":"user","content":"hi"}}
            {"type":"assistant","sessionId":"\(session)","message":{"role":"assistant","content":[{"type":"text","text":"hello"}]}}

            """.utf8)
        let transcript = try ClaudeTranscript(checking: good, sessionID: session, maxBytes: 1 << 20)
        #expect(transcript.turns.map(\.text) == ["hi", "hello"])
        func refusal(_ data: Data, _ id: String = session, max: Int64 = 1 << 20) -> String {
            do {
                _ = try ClaudeTranscript(checking: data, sessionID: id, maxBytes: max)
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(refusal(good, max: 10).contains("limits.maxTranscriptBytes allows 10"))
        #expect(refusal(good, "not-a-uuid").contains("not a lowercase UUID"))
        #expect(refusal(good, session.uppercased()).contains("not a lowercase UUID"))
        #expect(refusal(Data("{\"type\":\"user\"}\nnot json\n".utf8)).contains("line 2"))
        #expect(refusal(Data("[1,2]\n".utf8)).contains("line 1 of the transcript is not a JSON object"))
        let other = UUID().uuidString.lowercased()
        #expect(refusal(Data("{\"type\":\"user\",\"sessionId\":\"\(other)\"}\n".utf8)).contains("another session"))
        #expect(refusal(Data("{\"type\":\"summary\"}\n".utf8)).contains("no user turn"))
        #expect(refusal(Data([0xff, 0xfe, 0x0a])).contains("not UTF-8"))
    }
}
