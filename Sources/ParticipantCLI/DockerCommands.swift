import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import Participant
import Synchronization

/// `docker build` / `docker pull`, also reachable as `docker:build` / `docker:pull`.
struct DockerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "docker",
        abstract: "Build or pull the runner image (also as docker:build, docker:pull).",
        subcommands: [DockerBuildCommand.self, DockerPullCommand.self]
    )
}

struct DockerBuildOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Image tag (default: docker.image, plus :latest).", valueName: "TAG"))
    var tag: String?
    @Flag(name: .customLong("no-cache"), help: "Do not use the engine's build cache.") var noCache = false
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Build from this Dockerfile (its directory is the context) instead of the built-in runner image.",
            valueName: "DOCKERFILE"))
    var file: String?
    @Option(
        name: .customLong("claude-binary"),
        help: ArgumentHelp(
            "Assemble the runner from this native Claude Code binary and this machine's files (busybox-static, socat, CA certificates): no registry, no network.",
            valueName: "PATH"))
    var claudeBinary: String?
    @Option(
        name: .customLong("claude-wheel"),
        help: ArgumentHelp(
            "Like --claude-binary, with the binary bundled in PyPI's claude-agent-sdk wheel (\(NativeRunnerImage.pinnedWheel.name), checked by SHA-256).",
            valueName: "WHEEL"))
    var claudeWheel: String?

    func validate() throws {
        if [file, claudeBinary, claudeWheel].compactMap({ $0 }).count > 1 {
            throw ValidationError("give one of --file, --claude-binary and --claude-wheel")
        }
    }
}

struct DockerBuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build the runner image: the unmodified Claude Code CLI, socat and a non-root user.",
        discussion: """
            With --claude-binary PATH (the native `claude` you have installed) or --claude-wheel WHEEL \
            (pip download --no-deps claude-agent-sdk==0.2.189), the image is assembled FROM scratch from \
            this machine's files, with no registry and no network: one command gives a working runner. \
            Without them it builds the built-in Dockerfile (Node and the CLI from npm), which needs the \
            network for apt and npm. Shows a progress bar on a terminal, plain lines otherwise.
            """
    )

    @OptionGroup var options: DockerBuildOptions

    func run() async throws {
        try await Self.build(options)
    }

    static func build(_ options: DockerBuildOptions) async throws {
        let context = CommandContext()
        let config = try context.config()
        let image = options.tag ?? config.text(.dockerImage)
        let tags = RunnerImage.tags(for: image)
        let archive: Data
        var dockerfileName = "Dockerfile"
        var labels = Labels.make(kind: "runner-image", version: ToolVersion.current)
        if let wheel = options.claudeWheel {
            let directory = FileManager.default.temporaryDirectory.appending(
                path: "cmm-wheel-\(UUID().uuidString.prefix(8))")
            defer { try? FileManager.default.removeItem(at: directory) }
            Output.note("checking and unpacking \(wheel)")
            let binary = try NativeRunnerImage.binary(fromWheel: URL(fileURLWithPath: wheel), into: directory)
            let native = try NativeRunnerImage(claudeBinary: binary)
            labels.merge(native.labels()) { $1 }
            archive = try native.context()
        } else if let binary = options.claudeBinary {
            let native = try NativeRunnerImage(claudeBinary: URL(fileURLWithPath: binary))
            guard let version = native.claudeVersion() else {
                throw CLIError("\(binary) does not answer `--version`: is it the native Claude Code binary?")
            }
            Output.note("assembling the runner from \(binary) (Claude Code \(version)) and this machine's files")
            labels.merge(native.labels()) { $1 }
            archive = try native.context()
        } else if let file = options.file {
            let url = URL(fileURLWithPath: file)
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw CLIError("Dockerfile \(file) does not exist")
            }
            archive = try RunnerImage.context(directory: url.deletingLastPathComponent())
            dockerfileName = url.lastPathComponent
        } else {
            archive = try RunnerImage.context()
            labels[NativeRunnerImage.entrypointLabel] = RunnerImage.entrypointDigest
        }
        let progress = BuildProgress()
        let id = try await context.withDocker { docker in
            try await docker.buildImage(
                context: archive, tags: tags, labels: labels,
                dockerfile: dockerfileName, noCache: options.noCache,
                networkMode: config.text(.dockerBuildNetwork) == "default" ? nil : config.text(.dockerBuildNetwork)
            ) { event in progress.handle(event) }
        }
        progress.finish()
        try context.database().audit(
            actor: context.actor, kind: "docker.build", details: ["image": id, "tags": tags.joined(separator: ",")],
            at: context.now)
        Output.line("built \(id.prefix(19)) tagged \(tags.joined(separator: ", "))")
    }
}

/// Build output: a bar from the engine's `Step i/n` lines on a terminal, the lines otherwise.
final class BuildProgress: Sendable {
    /// Serialises the lines: events may arrive from more than one task.
    private let lock = Mutex(())
    private let terminal = Output.stderrIsTerminal

    func handle(_ event: BuildEvent) {
        guard case .output(let text) = event else { return }
        lock.withLock { _ in
            let line = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !line.isEmpty else { return }
            if terminal, let step = Self.step(line) {
                let width = 30
                let filled = step.total > 0 ? width * step.done / step.total : 0
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                // Our own escape clears the line; the build's words are shown, not obeyed.
                Output.stderr(Data("\r\u{1B}[K[\(bar)] \(TerminalText.line(String(line.prefix(60))))".utf8))
            } else if !terminal {
                Output.note(line)
            }
        }
    }

    func finish() {
        if terminal { Output.stderr(Data("\n".utf8)) }
    }

    static func step(_ line: String) -> (done: Int, total: Int)? {
        guard line.hasPrefix("Step "), let slash = line.firstIndex(of: "/") else { return nil }
        let done = Int(line[line.index(line.startIndex, offsetBy: 5)..<slash]) ?? 0
        let total = Int(line[line.index(after: slash)...].prefix { $0.isNumber }) ?? 0
        return (done, total)
    }
}

struct DockerPullOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Image to pull (default: docker.image).", valueName: "IMAGE"))
    var image: String?
    @Flag(name: .customLong("no-fallback"), help: "Fail instead of building locally when the pull fails.")
    var noFallback = false
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Dockerfile for the fallback build (default: the built-in runner image).", valueName: "DOCKERFILE"))
    var file: String?
}

struct DockerPullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull",
        abstract: "Pull the runner image with per-layer progress; on failure build it locally (unless --no-fallback)."
    )

    @OptionGroup var options: DockerPullOptions

    func run() async throws {
        try await Self.pull(options)
    }

    static func pull(_ options: DockerPullOptions) async throws {
        let context = CommandContext()
        let image = try options.image ?? context.config().text(.dockerImage)
        let progress = PullProgressPrinter()
        do {
            try await context.withDocker { docker in
                try await docker.pullImage(image) { progress.handle($0) }
            }
            progress.finish()
            try context.database().audit(
                actor: context.actor, kind: "docker.pull", details: ["image": image], at: context.now)
            Output.line("pulled \(image)")
        } catch let error as DockerError where error.code != .unreachable && error.code != .unsupportedHost {
            progress.finish()
            guard !options.noFallback else { throw CLIError("pull of \(image) failed: \(error.message)") }
            Output.note("pull of \(image) failed (\(error.message)); building it locally instead")
            var build = try DockerBuildOptions.parse([])
            build.tag = image
            build.file = options.file
            try await DockerBuildCommand.build(build)
        }
    }
}

final class PullProgressPrinter: Sendable {
    private let terminal = Output.stderrIsTerminal
    private let state = Mutex<[String: (current: Int64, total: Int64)]>([:])

    func handle(_ progress: PullProgress) {
        state.withLock { layers in
            let layer = progress.layer ?? ""
            if let total = progress.total, total > 0 { layers[layer] = (progress.current ?? 0, total) }
            if terminal {
                let done = layers.values.reduce(Int64(0)) { $0 + $1.current }
                let total = layers.values.reduce(Int64(0)) { $0 + $1.total }
                let percent = total > 0 ? Int(done * 100 / total) : 0
                let status = TerminalText.line("\(layer.prefix(12)) \(progress.status)")
                Output.stderr(Data("\r\u{1B}[K\(layers.count) layers \(percent)% — \(status)".utf8))
            } else {
                let amounts = progress.total.map { " \(progress.current ?? 0)/\($0) bytes" } ?? ""
                Output.note("\(layer.isEmpty ? "" : "\(layer.prefix(12)): ")\(progress.status)\(amounts)")
            }
        }
    }

    func finish() {
        if terminal { Output.stderr(Data("\n".utf8)) }
    }
}

struct DockerBuildAlias: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "docker:build", abstract: "Same as `docker build`.", shouldDisplay: true)
    @OptionGroup var options: DockerBuildOptions
    func run() async throws { try await DockerBuildCommand.build(options) }
}

struct DockerPullAlias: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "docker:pull", abstract: "Same as `docker pull`.", shouldDisplay: true)
    @OptionGroup var options: DockerPullOptions
    func run() async throws { try await DockerPullCommand.pull(options) }
}

extension CommandContext {
    /// Runs `body` with a Docker client for `DOCKER_HOST` (or the default socket).
    func withDocker<T: Sendable>(_ body: (DockerClient) async throws -> T) async throws -> T {
        let configuration = try DockerClient.Configuration(environment: environment)
        return try await DockerClient.withClient(configuration: configuration, body)
    }
}
