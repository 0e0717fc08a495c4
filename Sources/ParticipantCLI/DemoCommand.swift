import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import Participant

/// `demo`: the whole loop on this machine, every part real — a market server process on
/// embedded SQLite, a provider and a requester in separate homes, one job in a hardened
/// container, settled, with the balances, the reputation and both audit checks printed.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the whole market loop locally: market, provider, requester, one job, settled.",
        discussion: """
            Starts `market serve` on SQLite, makes a provider and a requester in separate homes under \
            --dir (a new temporary directory by default), mints credits, accepts the terms and opts the \
            provider in, advertises, submits one job and runs it in the hardened container, streams \
            it, settles, and prints the result, both balances, the provider's reputation, `market \
            verify` and `audit --verify` for both homes. With ANTHROPIC_API_KEY set and the runner \
            image present the job is a real Claude Code job; otherwise it is a local demo job of the \
            `command` backend on a small image built here from the host's static busybox. Every \
            process it starts is stopped by its PID.
            """
    )

    @Option(help: "Where the homes and the market's database go (default: a new temporary directory).") var dir: String?
    @Flag(
        help:
            "Keep the directory, and leave the market and the provider running afterwards to look at the dashboard (it prints the address and the PIDs to stop)."
    )
    var keep = false
    @Option(help: "The prompt of the demo job.") var prompt =
        "Hello from the requester. Please shout this back to me."

    static let demoImage = "claude-max-market/demo:v2"

    func run() async throws {
        let root: URL
        if let dir {
            root = URL(fileURLWithPath: dir)
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        } else {
            root = FileManager.default.temporaryDirectory.appending(path: "cmm-demo-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        }
        let removeAfter = dir == nil && !keep
        let demo = Demo(root: root)
        defer {
            if !keep { demo.stopAll() }
            if removeAfter { try? FileManager.default.removeItem(at: root) }
        }
        let environment = ProcessInfo.processInfo.environment
        let useClaude = !(environment["ANTHROPIC_API_KEY"] ?? "").isEmpty
        let image = useClaude ? ConfigKey.dockerImage.defaultValue.description : Self.demoImage

        demo.step("the Docker engine and the job image")
        try await Self.prepareImage(claude: useClaude, image: image)

        demo.step("a market server on embedded SQLite")
        let db = "sqlite:" + root.appending(path: "market.sqlite").path
        let url = try demo.startMarket(db: db)
        Output.line("market at \(url)")

        demo.step("the provider: terms, opt-in, policy approval, offer")
        let provider = demo.home("provider")
        try demo.cli(provider, ["terms", "--accept"], quiet: true)
        try demo.cli(provider, ["opt-in", "--claude-jobs", "--yes"], quiet: true)
        try demo.cli(
            provider,
            [
                "config", "--set", "market.url=\(url)", "--set", "approval.mode=policy", "--set",
                "docker.image=\(image)", "--set", "docker.warmPool=1",
            ] + (useClaude ? [] : ["--set", "egress.allowlist="]), quiet: true)
        try demo.cli(provider, ["advertise", "--slots", "1", "--price", "2"])
        let providerID = try demo.peerID(provider)

        demo.step("the requester: 10 credits minted by the market's operator")
        let requester = demo.home("requester")
        try demo.cli(requester, ["config", "--set", "market.url=\(url)"], quiet: true)
        let requesterID = try demo.peerID(requester)
        try demo.cli(demo.home("market"), ["market", "mint", "--db", db, "--to", requesterID, "--amount", "10"])

        demo.step("the provider daemon (`provide`)")
        var provide = ["provide"]
        if useClaude {
            provide += ["--backend", "claude"]
        } else {
            provide += [
                "--backend", "command", "--", "sh", "-c", Self.demoJob,
            ]
        }
        try demo.startProvider(provider, provide)
        try await demo.waitForOffer(url: url, provider: providerID)

        demo.step("the requester submits one job and waits for it")
        let submitted = try demo.cli(
            requester, ["submit", "--prompt", prompt, "--max-price", "5", "--wait", "--wait-timeout", "5m"],
            check: false)

        demo.step("a workspace job: the requester sends a directory, the patch comes back and is applied")
        let project = root.appending(path: "requester-project")
        try FileManager.default.createDirectory(at: project, withIntermediateDirectories: true)
        try Data("hello from the requester's workspace\n".utf8).write(to: project.appending(path: "hello.txt"))
        let workspaceSubmitted = try demo.cli(
            requester,
            [
                "submit", "--prompt", "Upper-case hello.txt", "--max-price", "5", "--dir", project.path, "--wait",
                "--apply", "--wait-timeout", "5m",
            ], check: false)
        Output.line(
            "hello.txt is now: "
                + ((try? String(contentsOf: project.appending(path: "hello.txt"), encoding: .utf8)) ?? "?"))

        demo.step("balances, reputation and the books")
        try demo.cli(requester, ["balance"])
        try demo.cli(provider, ["balance"])
        try demo.cli(requester, ["reputation", providerID])
        try demo.cli(demo.home("market"), ["market", "verify", "--db", db])
        try demo.cli(provider, ["audit", "--verify"])
        try demo.cli(requester, ["audit", "--verify"])
        if !keep {
            demo.stopAll()
            Output.line("")
            Output.line("the provider daemon's log:")
            Output.stdout((try? Data(contentsOf: root.appending(path: "provider.log"))) ?? Data())
        }
        if !removeAfter { Output.line("\nthe homes and the market's database are in \(root.path)") }
        if keep {
            let page = url.replacingOccurrences(of: "ws://", with: "http://").replacingOccurrences(
                of: "/market", with: "/")
            let pids = demo.pids.map(String.init).joined(separator: " ")
            Output.line(
                "the market and the provider keep running: the dashboard is at \(page) — stop them with `kill \(pids)`")
        } else {
            let page = url.replacingOccurrences(of: "ws://", with: "http://").replacingOccurrences(
                of: "/market", with: "/")
            Output.line("\n(the market's dashboard was at \(page); `demo --keep` leaves it running)")
        }
        guard submitted == 0 else { throw CLIError("the demo job did not settle (submit exited \(submitted))") }
        guard workspaceSubmitted == 0 else {
            throw CLIError("the demo's workspace job did not settle (submit exited \(workspaceSubmitted))")
        }
        Output.line(
            "\ndemo done: two jobs posted, run in hardened containers, settled and checked; the second one's patch applied"
        )
    }
}

/// The processes of one demo, each stopped by its PID.
final class Demo: @unchecked Sendable {
    let root: URL
    let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    private var children: [Process] = []
    private var stepNumber = 0

    init(root: URL) { self.root = root }

    func step(_ title: String) {
        stepNumber += 1
        Output.line("\n== \(stepNumber). \(title)")
    }

    func home(_ name: String) -> URL { root.appending(path: name) }

    func environment(_ home: URL) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["CMM_HOME"] = home.path
        return environment
    }

    /// Runs this binary in `home`, its output shown (or not); throws when it fails and `check`.
    @discardableResult
    func cli(_ home: URL, _ arguments: [String], quiet: Bool = false, check: Bool = true) throws -> Int32 {
        if !quiet { Output.line("$ claude-max-market \(arguments.map(Self.quote).joined(separator: " "))") }
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment(home)
        process.standardInput = FileHandle.nullDevice
        if quiet {
            process.standardOutput = FileHandle.nullDevice
        }
        try process.run()
        process.waitUntilExit()
        if check && process.terminationStatus != 0 {
            throw CLIError(
                "`claude-max-market \(arguments.joined(separator: " "))` failed (\(process.terminationStatus))")
        }
        return process.terminationStatus
    }

    static func quote(_ text: String) -> String {
        text.contains(" ") || text.contains("'") || text.contains("$")
            ? "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" : text
    }

    func peerID(_ home: URL) throws -> String {
        let process = Process()
        process.executableURL = binary
        process.arguments = ["keys", "show", "--json"]
        process.environment = environment(home)
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let id = object["peerId"] as? String
        else { throw CLIError("`keys show --json` gave no peer id") }
        return id
    }

    func startMarket(db: String) throws -> String {
        let log = root.appending(path: "market.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = binary
        process.arguments = ["market", "serve", "--port", "0", "--db", db]
        process.environment = environment(home("market"))
        process.standardError = try FileHandle(forWritingTo: log)
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        children.append(process)
        for _ in 0..<300 {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let range = text.range(of: #"ws://127\.0\.0\.1:\d+/market"#, options: .regularExpression) {
                return String(text[range])
            }
            guard process.isRunning else { break }
            usleep(50_000)
        }
        throw CLIError("the market did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
    }

    func startProvider(_ home: URL, _ arguments: [String]) throws {
        let log = root.appending(path: "provider.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = environment(home)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        children.append(process)
        Output.line(
            "$ claude-max-market \(arguments.map(Self.quote).joined(separator: " ")) &   (pid \(process.processIdentifier), log provider.log)"
        )
    }

    /// Waits until the daemon says its offer is live (it is connected and advertised).
    func waitForOffer(url: String, provider: String) async throws {
        for _ in 0..<300 {
            if let log = try? String(contentsOf: root.appending(path: "provider.log"), encoding: .utf8),
                log.contains("offer live")
            {
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw CLIError("the provider's offer did not go live: see \(root.appending(path: "provider.log").path)")
    }

    var pids: [Int32] { children.filter(\.isRunning).map(\.processIdentifier) }

    /// SIGTERM to each child, newest first (the provider before the market), then wait.
    func stopAll() {
        for process in children.reversed() where process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(40)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        children = []
    }
}
