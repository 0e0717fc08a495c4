import Foundation
import TestSupport
import TestTraits
import Testing

/// Conversations through the market with the real Claude Code CLI: the requester owns the
/// transcript, and a follow-up continues it on whichever provider wins, here another one,
/// whose request to the API carries the first turn. Nothing of the conversation stays with a
/// provider or the market.
@Suite(
    .enabled(
        if: ClaudeCLITestEnvironment.shouldRun, "no Docker engine or no Claude Code binary (scripts/test.sh fetches it)"
    ),
    .serialized, .heavy)
struct ConversationFlowTests {
    /// The real-CLI runner image, built once per test run (a fresh machine has none).
    init() async throws { try await ClaudeCLITestEnvironment.ensureImage() }

    static func settings(_ standIn: MessagesAPIStandIn, extra: [String] = []) -> [String] {
        [
            "docker.image=\(ClaudeCLITestEnvironment.image)", "claude.apiBaseURL=\(standIn.url)",
            "limits.maxTokensPerTask=1000000", "limits.dailyTokens=100000000", "docker.memory=1g",
            "docker.pidsLimit=256",
        ] + extra
    }

    static func key(_ name: String) -> String { "sk-ant-api03-" + String(repeating: name, count: 60 / name.count + 1) }

    func provide(_ flow: Flow, _ name: String, standIn: MessagesAPIStandIn, extra: [String] = []) async throws
        -> (URL, Daemon)
    {
        let home = try await flow.provider(name, settings: Self.settings(standIn, extra: extra))
        let daemon = try Daemon(
            arguments: ["provide", "--backend", "claude"], home: home,
            environment: ["ANTHROPIC_API_KEY": Self.key(name)], log: home.appending(path: "provide.log"))
        try await daemon.waitFor("offer live", timeout: 30)
        return (home, daemon)
    }

    @Test func aFollowUpContinuesTheConversationOnAnotherProvider() async throws {
        let script: [MessagesAPIStandIn.Turn] = [.text("Noted: the word is PAPAYA."), .text("The word was PAPAYA.")]
        try await MessagesAPIStandIn.with(scripts: ["memo": script]) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (annaHome, anna) = try await provide(flow, "anna", standIn: standIn)
            let requester = try await flow.requester("rex")
            let first = try await flow.cli(
                requester,
                ["submit", "--prompt", "script: memo — remember the word PAPAYA", "--max-price", "5", "--wait"])
            #expect(first.stdout.contains("Noted: the word is PAPAYA."), "\(first.stdout) \(first.stderr)")
            #expect(first.stderr.contains("conversation kept (2 turns)"), "\(first.stderr)")
            let firstTask = try WorkspaceFlowTests.taskID(first.stderr)
            #expect(standIn.conversation.allSatisfy { $0.headers["x-api-key"] == Self.key("anna") })
            await anna.stopAsync()

            // Another provider wins the follow-up: it gets the transcript sealed, and its
            // request to the API carries the first turn.
            let (bertHome, bert) = try await provide(flow, "bert", standIn: standIn)
            defer { bert.stop() }
            let second = try await flow.cli(
                requester,
                ["submit", "--follow-up", firstTask, "--prompt", "Which word was it?", "--max-price", "5", "--wait"])
            #expect(second.stdout.contains("The word was PAPAYA."), "\(second.stdout) \(second.stderr)")
            #expect(second.stderr.contains("continues the conversation of task \(firstTask) (2 turns)"))
            #expect(bert.output.contains("waiting for its conversation (2 turns"), "\(bert.output)")
            let last = try #require(standIn.conversation.last)
            #expect(last.headers["x-api-key"] == Self.key("bert"))
            let messages = last.body["messages"].map { "\($0)" } ?? ""
            #expect(messages.contains("remember the word PAPAYA") && messages.contains("Noted: the word is PAPAYA."))
            #expect(messages.contains("Which word was it?"))
            let secondTask = try WorkspaceFlowTests.taskID(second.stderr)

            // `result --transcript` shows the whole conversation and the chain of tasks.
            let shown = try await flow.cli(requester, ["result", "--task-id", secondTask, "--transcript", "--json"])
            let object = try shown.jsonObject()
            #expect(object["conversation"] as? [String] == [firstTask, secondTask])
            let turns = (object["transcript"] as? [[String: Any]] ?? []).map { $0["role"] as? String ?? "" }
            #expect(turns == ["user", "assistant", "user", "assistant"], "\(shown.stdout)")
            let human = try await flow.cli(requester, ["result", "--task-id", secondTask, "--transcript"])
            #expect(human.stdout.contains("claude: The word was PAPAYA."), "\(human.stdout)")
            #expect(human.stderr.contains("conversation: \(firstTask) → \(secondTask)"))
            let mine = try await flow.cli(requester, ["tasks", "--mine", "--json"])
            let listed = try #require(
                try JSONSerialization.jsonObject(with: Data(mine.stdout.utf8)) as? [[String: Any]], "\(mine.stdout)")
            #expect(listed.first { $0["taskId"] as? String == secondTask }?["continues"] as? String == firstTask)
            #expect(listed.first { $0["taskId"] as? String == firstTask }?["continues"] == nil)

            // Neither provider nor the market kept anything of the conversation.
            for home in [annaHome, bertHome] {
                #expect(occurrences(of: "PAPAYA", in: try flow.homeBytes(home)) == 0, "\(home.lastPathComponent)")
            }
            #expect(occurrences(of: "PAPAYA", in: try await flow.marketBytesAsync()) == 0)
            #expect(occurrences(of: "PAPAYA", in: try flow.homeBytes(requester)) > 0)
        }
    }

    /// A workspace job's follow-up without `--dir` sends the workspace as the earlier task left
    /// it: the archive it sent with its patch applied (here never applied to the directory).
    @Test func aWorkspaceFollowUpStartsFromTheEarlierPatch() async throws {
        let script: [MessagesAPIStandIn.Turn] = [
            .toolUse("Read", #"{"file_path":"/work/a.txt"}"#),
            .toolUse("Edit", #"{"file_path":"/work/a.txt","old_string":"one","new_string":"two"}"#),
            .text("Changed one to two."),
            .toolUse("Read", #"{"file_path":"/work/a.txt"}"#),
            .text("It says two now."),
        ]
        try await MessagesAPIStandIn.with(scripts: ["ws": script]) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (_, provider) = try await provide(flow, "gina", standIn: standIn)
            defer { provider.stop() }
            let requester = try await flow.requester("hank")
            let dir = flow.directory.file("hank-project")
            try WorkspaceFlowTests.write(dir, ["a.txt": "one\n"])
            let first = try await flow.cli(
                requester,
                ["submit", "--prompt", "script: ws — change it", "--max-price", "5", "--dir", dir.path, "--wait"])
            #expect(first.stdout.contains("Changed one to two."), "\(first.stdout) \(first.stderr)")
            let task = try WorkspaceFlowTests.taskID(first.stderr)
            #expect(try String(contentsOf: dir.appending(path: "a.txt"), encoding: .utf8) == "one\n")
            let second = try await flow.cli(
                requester,
                ["submit", "--follow-up", task, "--prompt", "What does it say?", "--max-price", "5", "--wait"])
            #expect(second.stdout.contains("It says two now."), "\(second.stdout) \(second.stderr)")
            #expect(second.stderr.contains("its workspace as that task left it (1 files)"), "\(second.stderr)")
            let results = standIn.conversation.last?.toolResults ?? []
            #expect(results.last?.contains("two") == true, "\(results)")
        }
    }

    /// `submit --wait` shows Claude's words as they stream from the API, not when the message
    /// ends: with the stand-in pausing 2 s after every word, the first words are at the requester
    /// while the rest are still to come.
    @Test func textReachesTheRequesterAsItStreams() async throws {
        let text = "one two three four five"
        try await MessagesAPIStandIn.with(scripts: ["slow": [.text(text)]], deltaPause: .seconds(2)) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (_, provider) = try await provide(flow, "ella", standIn: standIn)
            defer { provider.stop() }
            let requester = try await flow.requester("sam")
            let submit = try Daemon(
                arguments: ["submit", "--prompt", "script: slow — count", "--max-price", "5", "--wait", "--json"],
                home: requester, log: requester.appending(path: "submit.log"))
            defer { submit.stop() }
            try await submit.waitFor(#""note":"delta""#, timeout: 90)
            try await submit.waitFor(#""text":"two ""#, timeout: 30)
            #expect(!submit.output.contains(#""type":"result""#), "\(submit.output)")
            #expect(!submit.output.contains("five"))
            try await submit.waitFor(#""type":"finished""#, timeout: 60)
            let deltas = submit.output.split(separator: "\n").filter { $0.contains(#""note":"delta""#) }
            #expect(deltas.count >= 3, "\(submit.output)")
            #expect(submit.output.contains(#""note":"text""#) && submit.output.contains(text))
        }
    }

    /// A provider checks a follow-up's transcript against its own limit before anything runs: one
    /// over it is refused as the requester's doing, and no container is started.
    @Test func aTranscriptOverTheProvidersLimitIsRefusedBeforeAnythingRuns() async throws {
        try await MessagesAPIStandIn.with(scripts: [:]) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let (_, first) = try await provide(flow, "carl", standIn: standIn)
            let requester = try await flow.requester("ruth")
            let posted = try await flow.cli(
                requester,
                ["submit", "--prompt", String(repeating: "long prompt ", count: 200), "--max-price", "5", "--wait"])
            let task = try WorkspaceFlowTests.taskID(posted.stderr)
            await first.stopAsync()
            let (_, strict) = try await provide(flow, "dora", standIn: standIn, extra: ["limits.maxTranscriptBytes=1k"])
            defer { strict.stop() }
            let requests = standIn.received.count
            try await flow.cli(
                requester, ["submit", "--follow-up", task, "--prompt", "and then?", "--max-price", "5"], expect: nil)
            try await strict.waitFor("the conversation was refused", timeout: 60)
            #expect(strict.output.contains("limits.maxTranscriptBytes allows 1024"), "\(strict.output)")
            #expect(!strict.output.contains("approved and started"))
            #expect(standIn.received.count == requests)
        }
    }
}
