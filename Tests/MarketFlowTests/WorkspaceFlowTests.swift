import Foundation
import TestSupport
import TestTraits
import Testing

/// Workspace jobs through the market, every part real: `submit --dir` packs a git work tree,
/// the workspace travels sealed in pieces, the provider runs the job on it in a hardened
/// container, and the patch comes back and is applied in the requester's directory.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct WorkspaceFlowTests {
    init() async throws { try await TestRunnerImage.ensureBuilt() }

    static func git(_ directory: URL, _ arguments: String...) throws {
        let result = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/git"), ["-C", directory.path] + arguments,
            environment: ["GIT_CONFIG_NOSYSTEM": "1", "HOME": directory.path, "PATH": "/usr/bin:/bin"])
        guard result.exitCode == 0 else { throw CLIRunnerError(description: "git \(arguments): \(result.stderr)") }
    }

    static func write(_ directory: URL, _ files: [String: String]) throws {
        for (path, text) in files {
            let url = directory.appending(path: path)
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(text.utf8).write(to: url)
        }
    }

    @Test func aDirectoryGoesInAPatchComesOutAndIsApplied() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("wendy", settings: ["docker.image=\(TestRunnerImage.name)"])
        // The job: what it sees of /work goes to stderr; then it edits, adds and removes files.
        let job = [
            "sh", "-c",
            "ls -a /work >&2; test ! -e /work/secret.env || echo LEAKED >&2; echo 'changed by the job' >> /work/notes.txt; printf 'new\\n' > /work/src/added.txt; rm /work/remove-me.txt; echo done",
        ]
        let daemon = try await flow.provide(provider, command: job)
        let requester = try await flow.requester("walt")
        let marker = "workspacemarker" + UUID().uuidString.prefix(8).lowercased()
        let dir = flow.directory.file("walt-project")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Self.git(dir, "init", "-q")
        try Self.write(
            dir,
            [
                ".gitignore": "secret.env\n", "notes.txt": "\(marker)\n", "remove-me.txt": "bye\n",
                "src/keep.txt": "keep\n", "secret.env": "TOKEN=do-not-send\n",
            ])

        let submitted = try await flow.cli(
            requester,
            ["submit", "--prompt", "edit the notes", "--max-price", "5", "--dir", dir.path, "--wait", "--apply"])
        #expect(submitted.stderr.contains("left out: 1 files git ignores: secret.env"), "\(submitted.stderr)")
        #expect(submitted.stderr.contains("reads your workspace as it reads your prompt"))
        #expect(submitted.stderr.contains("applied to"), "\(submitted.stderr)")
        #expect(
            try String(contentsOf: dir.appending(path: "notes.txt"), encoding: .utf8)
                == "\(marker)\nchanged by the job\n")
        #expect(try String(contentsOf: dir.appending(path: "src/added.txt"), encoding: .utf8) == "new\n")
        #expect(!FileManager.default.fileExists(atPath: dir.appending(path: "remove-me.txt").path))
        #expect(try String(contentsOf: dir.appending(path: "secret.env"), encoding: .utf8) == "TOKEN=do-not-send\n")
        #expect(daemon.count("waiting for its workspace") == 1)
        #expect(!daemon.output.contains("LEAKED"))

        // The market saw ciphertext only, and kept none of it once the task was settled.
        let bytes = try await flow.marketBytesAsync()
        #expect(occurrences(of: "blob.chunk", in: bytes) > 0, "the workspace travelled in pieces")
        #expect(occurrences(of: marker, in: bytes) == 0)
        try await flow.stopMarket()
        let left = try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "python3", "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM blob_chunks').fetchone()[0])",
                flow.directory.file("market.sqlite").path,
            ],
            environment: ProcessInfo.processInfo.environment)
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(left.stderr)")

        // The patch is kept: `result --patch-out` writes it again, and `git apply` agrees it is already in.
        let patchFile = flow.directory.file("walt.diff")
        try await flow.restartMarket()
        try await flow.cli(
            requester, ["result", "--task-id", try Self.taskID(submitted.stderr), "--patch-out", patchFile.path])
        let patch = try String(contentsOf: patchFile, encoding: .utf8)
        #expect(patch.contains("diff --git a/notes.txt b/notes.txt") && patch.contains("+changed by the job"))
        #expect(patch.contains("deleted file mode 100644"))
        try Self.git(dir, "apply", "--reverse", "--check", patchFile.path)
    }

    static func taskID(_ stderr: String) throws -> String {
        let line = try #require(stderr.split(separator: "\n").first { $0.contains("task ") && $0.contains(" posted") })
        return String(line.split(separator: " ")[1])
    }

    @Test func aWorkspaceOverTheProvidersLimitIsNotMatchedAndOneOverTheRequestersIsNotPosted() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider(
            "tiny", settings: ["docker.image=\(TestRunnerImage.name)", "limits.maxWorkspaceBytes=2k"])
        _ = try await flow.provide(provider, command: ["true"])
        let requester = try await flow.requester("big")
        let dir = flow.directory.file("big-project")
        try Self.write(dir, ["a.bin": String(repeating: "x", count: 5000)])
        let before = try await flow.balance(requester)
        let submitted = try await flow.cli(
            requester, ["submit", "--prompt", "p", "--max-price", "5", "--dir", dir.path], expect: 0)
        #expect(submitted.stderr.contains("no provider takes a workspace of this size"), "\(submitted.stderr)")
        let open = try await flow.tasks(state: "open")
        #expect(open.count == 1)
        // Over the requester's own limit: refused before anything is posted or escrowed.
        try await flow.cli(requester, ["config", "--set", "limits.maxWorkspaceBytes=1k"])
        let refused = try await flow.cli(
            requester, ["submit", "--prompt", "p", "--max-price", "5", "--dir", dir.path], expect: 1)
        #expect(refused.stderr.contains("limits.maxWorkspaceBytes"), "\(refused.stderr)")
        #expect(try await flow.tasks(state: "open").count == 1)
        let after = try await flow.balance(requester)
        #expect(
            (before["available"] as! Int) - (after["available"] as! Int) == 5_000_000, "only the first was escrowed")
    }
}

/// The market path with the real Claude Code CLI: `provide --backend claude` runs it in the
/// runner image made from the pinned wheel's binary, through the gateway, against a loopback
/// stand-in of the Messages API that scripts a Read, an Edit and a Write; `submit --dir --wait
/// --apply` gets the change back into the requester's directory.
@Suite(
    .enabled(
        if: ClaudeCLITestEnvironment.shouldRun, "no Docker engine or no Claude Code binary (scripts/test.sh fetches it)"
    ),
    .serialized, .heavy)
struct ClaudeWorkspaceFlowTests {
    @Test func provideWithTheRealCLIEditsTheRequestersWorkspace() async throws {
        try await ClaudeCLITestEnvironment.ensureImage()
        let script: [MessagesAPIStandIn.Turn] = [
            .toolUse("Read", #"{"file_path":"/work/greet.py"}"#),
            .toolUse("Edit", #"{"file_path":"/work/greet.py","old_string":"Helo","new_string":"Hello"}"#),
            .toolUse("Write", #"{"file_path":"/work/CHANGES.md","content":"- fixed the greeting\n"}"#),
            .text("Fixed the typo and noted it in CHANGES.md."),
        ]
        try await MessagesAPIStandIn.with(scripts: ["typo": script]) { standIn in
            let flow = try await Flow.start()
            defer { flow.stopAll() }
            let provider = try await flow.provider(
                "claudia",
                settings: [
                    "docker.image=\(ClaudeCLITestEnvironment.image)", "claude.apiBaseURL=\(standIn.url)",
                    "limits.maxTokensPerTask=1000000", "limits.dailyTokens=100000000", "docker.memory=1g",
                    "docker.pidsLimit=256",
                ])
            let daemon = try Daemon(
                arguments: ["provide", "--backend", "claude"], home: provider,
                environment: ["ANTHROPIC_API_KEY": "sk-ant-api03-" + String(repeating: "FlowKey", count: 10)],
                log: provider.appending(path: "provide.log"))
            defer { daemon.stop() }
            try await daemon.waitFor("offer live", timeout: 30)
            let requester = try await flow.requester("rita")
            let dir = flow.directory.file("rita-project")
            try WorkspaceFlowTests.write(dir, ["greet.py": "print('Helo, world')\n"])
            let submitted = try await flow.cli(
                requester,
                [
                    "submit", "--prompt", "script: typo — fix the greeting", "--max-price", "5", "--dir", dir.path,
                    "--wait", "--apply",
                ])
            #expect(submitted.stdout.contains("Fixed the typo"), "\(submitted.stdout) \(submitted.stderr)")
            #expect(
                try String(contentsOf: dir.appending(path: "greet.py"), encoding: .utf8) == "print('Hello, world')\n")
            #expect(
                try String(contentsOf: dir.appending(path: "CHANGES.md"), encoding: .utf8) == "- fixed the greeting\n")
            #expect(standIn.conversation.count >= 4)
            try await flow.cli(flow.home("operator"), ["market", "verify", "--db", flow.db])
        }
    }
}

/// Resuming on either side: the pieces wait at the market for a provider that connects later,
/// and the patch waits there for a requester that comes back for it.
@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct WorkspaceResumeTests {
    init() async throws { try await TestRunnerImage.ensureBuilt() }

    @Test func piecesWaitForTheProviderAndThePatchForTheRequester() async throws {
        let flow = try await Flow.start()
        defer { flow.stopAll() }
        let provider = try await flow.provider("late", settings: ["docker.image=\(TestRunnerImage.name)"])
        let requester = try await flow.requester("away")
        let dir = flow.directory.file("away-project")
        // Several pieces: 2 MiB of text that does not compress away (sealing does not compress anyway).
        var generator = SystemRandomNumberGenerator()
        let big = String(
            (0..<(2 << 20)).map { _ in Character(Unicode.Scalar(UInt8.random(in: 0x61...0x7a, using: &generator))) })
        try WorkspaceFlowTests.write(dir, ["big.txt": big, "todo.txt": "one\n"])
        // The offer stands, its daemon is not running: the task is assigned, and the payload and
        // the pieces go to the market, which keeps them.
        let posted = try await flow.cli(requester, ["submit", "--prompt", "p", "--max-price", "5", "--dir", dir.path])
        let taskId = try WorkspaceFlowTests.taskID(posted.stderr)
        #expect(try await flow.tasks(state: "assigned").count == 1, "\(posted.stderr)")
        let daemon = try await flow.provide(provider, command: ["sh", "-c", "echo two >> /work/todo.txt; echo ok"])
        try await daemon.waitFor("result sent", timeout: 60)
        #expect(daemon.output.contains("pieces)"), "\(daemon.output)")
        // The requester was away for the result: `result --apply` takes the patch the market kept.
        let result = try await flow.cli(requester, ["result", "--task-id", taskId, "--apply"])
        #expect(result.stderr.contains("applied to"), "\(result.stderr)")
        #expect(try String(contentsOf: dir.appending(path: "todo.txt"), encoding: .utf8) == "one\ntwo\n")
        // Applying again is refused and changes nothing: the file is no longer what was sent.
        let again = try await flow.cli(requester, ["result", "--task-id", taskId, "--apply"], expect: 1)
        #expect(again.stderr.contains("todo.txt (changed since the job was sent)"), "\(again.stderr)")
        #expect(try String(contentsOf: dir.appending(path: "todo.txt"), encoding: .utf8) == "one\ntwo\n")
    }
}
