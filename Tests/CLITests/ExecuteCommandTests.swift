import DockerEngine
import Foundation
import Participant
import TestSupport
import Testing

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct ExecuteCommandTests {
    let home = TemporaryDirectory("cmm-exec")
    static let apiKey = "sk-ant-api03-" + String(repeating: "S3cr", count: 20)

    var environment: [String: String] {
        [
            "CMM_DOCKER_IMAGE": TestRunnerImage.name, "ANTHROPIC_API_KEY": Self.apiKey,
            "CMM_EGRESS_ALLOWLIST": "127.0.0.1:9",
        ]
    }

    func run(_ arguments: [String], extra: [String: String] = [:], stdin: Data? = nil) throws -> CLIResult {
        try CLIRunner.run(arguments, home: home.url, environment: environment.merging(extra) { $1 }, stdin: stdin)
    }

    /// `execute` of a command job that sleeps, as a child process left running.
    func startSleepingJob(seconds: Int) throws -> Process {
        let process = Process()
        process.executableURL = CLIRunner.executable
        process.arguments = ["execute", "--backend", "command", "--prompt", "", "--yes", "--", "sleep", "\(seconds)"]
        process.environment = CLIRunner.baseEnvironment(home: home.url).merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    func optIn() async throws {
        try await TestRunnerImage.ensureBuilt()
        #expect(try run(["terms", "--accept"]).exitCode == 0)
        #expect(try run(["opt-in", "--claude-jobs", "--yes"]).exitCode == 0)
    }

    /// A job writes to the terminal of whoever runs it: an OSC 52 clipboard write, a clear
    /// screen, an 8-bit CSI, a right-to-left override. They are shown escaped, on stdout and
    /// stderr; `--json` keeps the exact bytes.
    @Test func aJobsEscapeSequencesAreShownNotObeyed() async throws {
        try await optIn()
        let script =
            #"printf '\033]52;c;cHduZWQ=\007\033[2J\302\23331m\342\200\256txt.exe\n'; printf 'err \033[2J\n' >&2"#
        let result = try run(["execute", "--backend", "command", "--prompt", "", "--yes", "--", "sh", "-c", script])
        #expect(result.exitCode == 0, "\(result.stderr)")
        let shown = result.stdout + result.stderr
        #expect(!shown.unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\u{9B}" || $0 == "\u{202E}" }, "\(shown)")
        #expect(
            result.stdout.contains(#"\u{1B}]52;c;cHduZWQ=\u{07}\u{1B}[2J\u{9B}31m\u{202E}txt.exe"#), "\(result.stdout)")
        #expect(result.stderr.contains(#"err \u{1B}[2J"#), "\(result.stderr)")
        let json = try run([
            "execute", "--backend", "command", "--prompt", "", "--yes", "--json", "--", "sh", "-c", script,
        ])
        let line = try #require(
            json.stdout.split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }.first { $0["stream"] as? String == "stdout" })
        #expect(line["text"] as? String == "\u{1B}]52;c;cHduZWQ=\u{07}\u{1B}[2J\u{9B}31m\u{202E}txt.exe")
    }

    /// Every claude job goes through the gateway, which meters what the API reports: the job's
    /// own result line (318 + 75 tokens in this fixture) counts for nothing, as the job called no API.
    @Test func aClaudeJobRunsRecordsUsageAndLogs() async throws {
        try await optIn()
        let result = try run(["execute", "--prompt", "fixture: tool-use", "--yes"])
        #expect(result.exitCode == 0, "\(result.stderr)")
        #expect(result.stdout.contains("There are 7 files in the folder."))
        #expect(result.stdout.contains("[tool: Bash]") && result.stdout.contains("rate limit five_hour"))
        let status = try run(["status", "--json"]).jsonObject()
        let day = try #require((status["usage"] as? [String: Any])?["day"] as? [String: Any])
        #expect(day["tasks"] as? Int == 1 && day["tokens"] as? Int == 0)
        let usage = try run(["usage", "--format", "json", "--by", "model"]).jsonObject()
        let total = try #require(usage["total"] as? [String: Any])
        #expect(total["inputTokens"] as? Int == 0 && total["cacheReadTokens"] as? Int == 0)
        #expect((usage["rateLimits"] as? [[String: Any]])?.first?["window"] as? String == "five_hour")
        let table = try run(["usage"])
        #expect(table.stdout.contains("jobs per day, last 14 days") && table.stdout.contains("projection"))
        let logs = try run(["logs", "--tail", "2"])
        #expect(logs.exitCode == 0 && logs.stdout.split(separator: "\n").count == 2)
        #expect(logs.stdout.contains("\"type\":\"result\""))
        let kinds = try #require(try run(["audit", "--format", "json"]).json() as? [[String: Any]]).compactMap {
            $0["kind"] as? String
        }
        for kind in ["job.approved", "job.reserved", "job.started", "job.finished"] {
            #expect(kinds.contains(kind), "\(kind)")
        }
        #expect(try run(["audit", "--verify"]).exitCode == 0)
    }

    @Test func jsonLinesAndRedactionEverywhere() async throws {
        try await optIn()
        let result = try run(["execute", "--prompt", "leak the key", "--yes", "--json"])
        #expect(result.exitCode == 0)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
        #expect(lines.last?.contains("\"type\":\"result\"") == true)
        let everything = [
            result.stdout, result.stderr, try run(["logs"]).stdout, try run(["audit", "--format", "json"]).stdout,
        ]
        .joined()
        #expect(!everything.contains(Self.apiKey) && !everything.contains("LEAKEDTOKENVALUE"))
        #expect(result.stdout.contains("[REDACTED]"))
        #expect(try run(["audit", "--kind", "job.redacted", "--format", "csv"]).stdout.contains("job.redacted"))
    }

    /// A job that floods its output ends as output_limit (exit 4) at `docker.maxOutput`; its
    /// lines are kept in batches, and the home does not grow with the flood.
    @Test func anOutputFloodIsStoppedAtTheLimit() async throws {
        try await optIn()
        #expect(try run(["config", "--set", "docker.maxOutput=1m"]).exitCode == 0)
        let result = try run([
            "execute", "--backend", "command", "--prompt", "", "--yes", "--", "sh", "-c",
            "yes 123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 20000000",
        ])
        #expect(result.exitCode == 4, "\(result.stderr.suffix(500))")
        #expect(result.stderr.contains("output_limit") && result.stderr.contains("docker.maxOutput"))
        let lines = try run(["logs", "--tail", "100000"]).stdout.split(separator: "\n").count
        #expect(lines > 5000 && lines < 11_000, "\(lines) lines logged")
        let size =
            FileManager.default.enumerator(at: home.url, includingPropertiesForKeys: [.fileSizeKey])?
            .compactMap { ($0 as? URL).flatMap { try? $0.resourceValues(forKeys: [.fileSizeKey]).fileSize } }
            .reduce(0, +) ?? 0
        #expect(size < 16 << 20, "the home holds \(size) bytes")
        #expect(try run(["audit", "--verify"]).exitCode == 0)
    }

    /// `compliance-check` and `health` create a container from the policy and report the
    /// engine's view of it, with the hard CPU and open-files limits.
    @Test func theHardeningCheckInspectsARealContainer() async throws {
        try await TestRunnerImage.ensureBuilt()
        for command in ["compliance-check", "health"] {
            let result = try run([command, "--json"])
            let checks = try #require(result.jsonObject()["checks"] as? [[String: Any]])
            let hardening = try #require(checks.first { $0["id"] as? String == "sandbox.hardening" })
            #expect(hardening["status"] as? String == "pass", "\(command): \(hardening)")
            let message = hardening["message"] as? String ?? ""
            #expect(message.contains("as the engine reports it") && message.contains("1 CPUs (hard)"), "\(message)")
        }
        let labelled = try DockerTestEnvironment.curl(
            "GET", "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22io.claude-max-market.kind%3Dcheck%22%5D%7D")
        #expect(
            labelled.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "the check's container is gone")
    }

    @Test func logsFollowShowsLinesWhileAnotherProcessRunsTheJob() async throws {
        try await optIn()
        let follower = Process()
        follower.executableURL = CLIRunner.executable
        follower.arguments = ["logs", "--all", "--follow"]
        follower.environment = CLIRunner.baseEnvironment(home: home.url).merging(environment) { $1 }
        let out = Pipe()
        follower.standardOutput = out
        follower.standardError = FileHandle.nullDevice
        try follower.run()
        let job = try run([
            "execute", "--backend", "command", "--prompt", "", "--yes", "--", "sh", "-c",
            "echo first-line; sleep 1; echo second-line",
        ])
        #expect(job.exitCode == 0)
        try await Task.sleep(for: .milliseconds(800))
        kill(follower.processIdentifier, SIGINT)
        follower.waitUntilExit()
        let followed = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(followed.contains("first-line") && followed.contains("second-line"), "\(followed)")
    }

    @Test func refusalsChangeNothing() async throws {
        try await TestRunnerImage.ensureBuilt()
        let noConsent = try run(["execute", "--prompt", "x", "--yes"])
        #expect(noConsent.exitCode == 3 && noConsent.stderr.contains("terms"))
        try await optIn()
        let noApproval = try run(["execute", "--prompt", "x"])
        #expect(noApproval.exitCode == 3 && noApproval.stderr.contains("--yes"))
        let noKey = try CLIRunner.run(
            ["execute", "--prompt", "x", "--yes"], home: home.url,
            environment: ["CMM_DOCKER_IMAGE": TestRunnerImage.name])
        #expect(noKey.exitCode == 3 && noKey.stderr.contains("ANTHROPIC_API_KEY"))
        #expect(
            try run(["config", "--set", "approval.mode=policy", "--set", "approval.maxPromptBytes=10"]).exitCode == 0)
        let tooBig = try run(["execute", "--prompt", "a prompt longer than ten bytes"])
        #expect(tooBig.exitCode == 3 && tooBig.stderr.contains("policy allows 10"))
        let usage = try run(["status", "--json"]).jsonObject()
        #expect(((usage["usage"] as? [String: Any])?["day"] as? [String: Any])?["tasks"] as? Int == 0)
        #expect(try run(["audit", "--kind", "job.refused", "--format", "json"]).json() as? [Any] != nil)
        let badArgs = try run(["execute", "--yes"])
        #expect(badArgs.exitCode != 0 && badArgs.stderr.contains("--prompt"))
        let badTimeout = try run(["execute", "--prompt", "x", "--yes", "--timeout", "0"])
        #expect(badTimeout.exitCode != 0 && badTimeout.stderr.contains("docker.timeoutSeconds"))
    }

    /// A command job needs no prompt: it runs with empty input.
    @Test func aCommandJobWithoutAPromptReadsNothing() async throws {
        try await optIn()
        let result = try run([
            "execute", "--backend", "command", "--yes", "--", "sh", "-c", "echo \"read $(wc -c) bytes\"",
        ])
        #expect(result.exitCode == 0, "\(result.stderr)")
        #expect(result.stdout == "read 0 bytes\n")
    }

    /// A missing image for a command job is pulled, never replaced by a build of the runner's
    /// Dockerfile. The registry is a closed loopback port: the pull fails at once, nothing leaves.
    @Test func aMissingCommandImageIsPulledNotBuilt() async throws {
        try await optIn()
        let image = "127.0.0.1:9/cmm-test/absent-\(UUID().uuidString.lowercased().prefix(8)):1"
        let result = try run([
            "execute", "--prompt", "x", "--backend", "command", "--image", image, "--yes", "--", "true",
        ])
        #expect(result.exitCode == 1, "\(result.stderr)")
        #expect(result.stderr.contains("image \(image) is not present; pulling it"))
        #expect(result.stderr.contains("pull of \(image) failed"))
        #expect(!result.stderr.contains("building it locally"))
        let built = try await DockerClient.withClient(
            configuration: .init(socketPath: DockerTestEnvironment.socketPath)
        ) { docker in try await docker.inspectImage(image) }
        #expect(built == nil)
        let status = try run(["status", "--json"]).jsonObject()
        #expect(((status["usage"] as? [String: Any])?["day"] as? [String: Any])?["tasks"] as? Int == 0)
    }

    /// `execute` killed outright (no handler runs): its container keeps running with nobody to
    /// time it out. `clean` finds the job abandoned and removes the container; a dry run only says so.
    @Test func cleanRemovesTheContainerOfAKilledExecute() async throws {
        try await optIn()
        let process = try startSleepingJob(seconds: 120)
        let owner = ParticipantPaths(environment: ["CMM_HOME": home.url.path]).ownerID
        let filter = #"{"label":["io.claude-max-market.owner=\#(owner)"],"status":["running"]}"#
            .addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        func runningIDs() throws -> [String] {
            let listed = try DockerTestEnvironment.curl("GET", "/containers/json?filters=\(filter)")
            return (try JSONSerialization.jsonObject(with: listed.stdoutData) as? [[String: Any]])?
                .compactMap { $0["Id"] as? String } ?? []
        }
        var running: [String] = []
        for _ in 0..<100 where running.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            running = try runningIDs()
        }
        #expect(running.count == 1)
        defer { for id in running { _ = try? DockerTestEnvironment.curl("DELETE", "/containers/\(id)?force=1") } }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(try runningIDs() == running)  // nobody stopped it

        let dry = try run(["clean", "--dry-run", "--json"])
        #expect((try dry.jsonObject()["containers"] as? [String]) == running)
        #expect(try runningIDs() == running)
        let audit = try run(["audit", "--kind", "job.abandoned", "--format", "json"])
        #expect((try audit.json() as? [Any])?.isEmpty == true, "a dry run writes nothing")

        let cleaned = try run(["clean", "--json"])
        #expect((try cleaned.jsonObject()["containers"] as? [String]) == running)
        #expect(try runningIDs().isEmpty)
        let abandoned = try run(["audit", "--kind", "job.abandoned", "--format", "json"])
        #expect((try abandoned.json() as? [Any])?.count == 1)
    }

    @Test func limitsHoldAcrossParallelProcesses() async throws {
        try await optIn()
        #expect(try run(["limits", "--concurrent", "1", "--daily", "2"]).exitCode == 0)
        // Two processes at once, each on a thread of its own (they block while they run); the
        // test goes on when both have answered.
        func onAThread() async throws -> CLIResult {
            try await withCheckedThrowingContinuation { continuation in
                Thread {
                    continuation.resume(with: Result { try self.run(["execute", "--prompt", "sleep: 3", "--yes"]) })
                }
                .start()
            }
        }
        async let first = onAThread()
        async let other = onAThread()
        let results = try await [first, other]
        let codes = results.map(\.exitCode).sorted()
        #expect(codes == [0, 4], "\(results.map(\.stderr))")
        #expect(results.contains { $0.stderr.contains("limits.concurrentJobs") })
        let second = try run(["execute", "--prompt", "x", "--yes"])
        #expect(second.exitCode == 0, "\(second.stderr)")
        let over = try run(["execute", "--prompt", "x", "--yes"])
        #expect(over.exitCode == 4 && over.stderr.contains("limits.dailyTasks is 2"))
    }

    @Test func timeoutAndInterrupt() async throws {
        try await optIn()
        let timedOut = try run([
            "execute", "--backend", "command", "--prompt", "", "--yes", "--timeout", "5", "--", "sleep", "60",
        ])
        #expect(timedOut.exitCode == 124)
        #expect(timedOut.stderr.contains("timed-out"))

        let process = try startSleepingJob(seconds: 60)
        try await Task.sleep(for: .seconds(3))
        // The running job's container carries this home as its owner (what `clean` goes by).
        let owner = ParticipantPaths(environment: ["CMM_HOME": home.url.path]).ownerID
        let filter = #"{"label":["io.claude-max-market.owner=\#(owner)"]}"#
            .addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let running = try DockerTestEnvironment.curl("GET", "/containers/json?all=1&filters=\(filter)")
        #expect(running.stdout.components(separatedBy: "\"Id\"").count == 2, "\(running.stdout)")
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        #expect(process.terminationStatus == 130)
        let audit = try run(["audit", "--kind", "job.finished", "--format", "json"]).stdout
        #expect(audit.contains("cancelled") && audit.contains("timed-out"))
        let leftovers = try DockerTestEnvironment.curl("GET", "/containers/json?all=1&filters=\(filter)")
        #expect(leftovers.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
    }
}

@Suite(.enabled(if: DockerTestEnvironment.shouldRun, "no Docker engine (scripts/test.sh starts one)"), .serialized)
struct LoginCommandTests {
    let home = TemporaryDirectory("cmm-login")

    /// `login` runs the sign-in in the container and keeps the token it prints in a 0600 file,
    /// shown to no one. A hostile job in subscription mode (a shell, not the CLI) dumps its
    /// environment, its mounts and every file it can read: it finds the per-job token only.
    @Test func signInKeepsTheTokenWithTheGatewayAndAJobFindsOnlyAWorthlessOne() async throws {
        try await TestRunnerImage.ensureBuilt()
        let environment = ["CMM_DOCKER_IMAGE": TestRunnerImage.name, "CMM_EGRESS_ALLOWLIST": "127.0.0.1:9"]
        func run(_ arguments: [String], stdin: Data? = nil) throws -> CLIResult {
            try CLIRunner.run(arguments, home: home.url, environment: environment, stdin: stdin)
        }
        let wrongMode = try run(["login"], stdin: Data())
        #expect(wrongMode.exitCode != 0 && wrongMode.stderr.contains("claude.credentialMode=subscription"))
        #expect(try run(["config", "--set", "claude.credentialMode=subscription"]).exitCode == 0)
        let noToken = try run(["health", "--json"])
        #expect(noToken.stdout.contains("there is no token in CLAUDE_CODE_OAUTH_TOKEN"), "\(noToken.stdout)")

        let login = try run(["login"], stdin: Data("CODE42\n".utf8))
        #expect(login.exitCode == 0, "\(login.stderr)")
        #expect(login.stdout.contains("Visit https://claude.ai/oauth/authorize"))
        let token = "sk-ant-oat01-FAKECODE42TOKENVALUE0123456789"
        #expect(!login.stdout.contains(token) && !login.stderr.contains(token) && login.stdout.contains("[REDACTED]"))
        let file = home.url.appending(path: "oauth-token")
        #expect(try String(contentsOf: file, encoding: .utf8) == token + "\n")
        #expect(FilePermissions.mode(of: file.path) == 0o600)
        let shown = try run(["config", "--get", "claude.oauthTokenFile"])
        #expect(shown.stdout.contains(file.path), "\(shown.stdout)")
        // A token from elsewhere can be given on stdin; anything else is refused and changes nothing.
        let bad = try run(["login", "--token-stdin"], stdin: Data("not a token\n".utf8))
        #expect(bad.exitCode != 0 && bad.stderr.contains("not a subscription token"))
        #expect(try String(contentsOf: file, encoding: .utf8) == token + "\n")

        #expect(try run(["terms", "--accept"]).exitCode == 0)
        #expect(try run(["opt-in", "--claude-jobs", "--yes"]).exitCode == 0)
        let job = try run(["execute", "--prompt", "dump everything", "--yes", "--json"])
        #expect(job.exitCode == 0, "\(job.stderr)")
        let encoded = job.stdout.split(separator: "\n").compactMap { line -> String? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                let text = object["text"] as? String, text.hasPrefix("dump: ")
            else { return nil }
            return String(text.dropFirst(6))
        }.joined()
        let dump = String(decoding: Data(base64Encoded: encoded) ?? Data(), as: UTF8.self)
        #expect(dump.contains("CLAUDE_CODE_OAUTH_TOKEN=cmm-job-"), "\(job.stdout.prefix(500))")
        #expect(dump.contains("== /fixtures/"))
        #expect(!dump.contains(token) && !dump.contains("claude-config") && !dump.contains("ANTHROPIC_API_KEY="))
        let logs = try run(["logs"]).stdout + (try run(["audit", "--format", "json"]).stdout)
        #expect(!logs.contains(token))
        let health = try run(["health", "--json"])
        #expect(health.stdout.contains("subscription token from \(file.path), held by the gateway"), "\(health.stdout)")
    }
}
