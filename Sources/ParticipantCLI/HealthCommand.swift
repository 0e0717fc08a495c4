import ArgumentParser
import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketFlows
import Participant

struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Check the Docker engine, runner image, egress allowlist, credential mode and clock.",
        discussion: "Each item is pass, warn or fail with a remediation; exits 1 when any fails."
    )

    @Flag(name: .long, help: "Print JSON: {\"checks\": [...], \"summary\": {...}}.") var json = false

    func run() async throws {
        let context = CommandContext()
        let config = try context.config()
        var checks: [CheckResult] = []
        do {
            checks += try await context.withDocker { docker in
                try await Self.dockerChecks(docker, config: config, context: context)
            }
        } catch let error as DockerError {
            checks.append(await SandboxChecks.hardening(config, docker: nil))
            checks.append(
                CheckResult(
                    id: "docker.daemon", status: .fail, message: error.message,
                    remediation:
                        "install docker.io and start dockerd (scripts/quickstart.sh does both), or set DOCKER_HOST=unix:///path/to/docker.sock"
                ))
        }
        checks += Self.configChecks(config, environment: context.environment)
        let report = CheckReport(checks: checks)
        try CheckReportPrinter.print(report, json: json)
        if report.hasFailures { throw ExitCode.failure }
    }

    static func dockerChecks(_ docker: DockerClient, config: ResolvedConfig, context: CommandContext) async throws
        -> [CheckResult]
    {
        try await docker.ping()
        let version = try await docker.version()
        let info = try await docker.info()
        var checks = [
            CheckResult(
                id: "docker.daemon", status: .pass,
                message: "Docker \(version.Version) answers at \(docker.configuration.socketPath)"),
            version.ApiVersion.compare("1.41", options: .numeric) != .orderedAscending
                ? CheckResult(
                    id: "docker.api", status: .pass,
                    message: "API version \(version.ApiVersion) (this tool speaks v1.41)")
                : CheckResult(
                    id: "docker.api", status: .fail, message: "API version \(version.ApiVersion) is older than 1.41",
                    remediation: "upgrade the Docker engine"),
            CheckResult(id: "docker.storage", status: .pass, message: "storage driver \(info.Driver ?? "unknown")"),
        ]
        checks.append(diskCheck(info.DockerRootDir ?? "/var/lib/docker"))
        checks.append(await SandboxChecks.hardening(config, docker: docker))
        let image = config.text(.dockerImage)
        if let inspect = try await docker.inspectImage(image) {
            let age = inspect.createdDate.map { Int(Date().timeIntervalSince($0) / 86_400) }
            let claude = inspect.Config?.Labels?[NativeRunnerImage.claudeVersionLabel]
            let entrypoint = inspect.Config?.Labels?[NativeRunnerImage.entrypointLabel]
            if let entrypoint, entrypoint != RunnerImage.entrypointDigest {
                checks.append(
                    CheckResult(
                        id: "runner.image", status: .warn,
                        message:
                            "runner image \(image) has an older entrypoint than this tool (jobs would not hand back what they leave)",
                        remediation:
                            "run `claude-max-market docker:build` again (with the same --claude-binary or --claude-wheel)"
                    ))
            } else {
                checks.append(
                    CheckResult(
                        id: "runner.image", status: .pass,
                        message: "runner image \(image) present" + (age.map { ", built \($0) days ago" } ?? "")
                            + ", Claude Code \(claude ?? "version unknown (built from npm; `docker:build --claude-binary` records it)")"
                    ))
            }
        } else {
            checks.append(
                CheckResult(
                    id: "runner.image", status: .warn, message: "runner image \(image) is not present",
                    remediation: "run `claude-max-market docker:build` (execute also builds it when missing)"))
        }
        checks.append(clockCheck(info.SystemTime))
        return checks
    }

    static func diskCheck(_ root: String) -> CheckResult {
        var stats = statvfs()
        guard statvfs(root, &stats) == 0 else {
            return CheckResult(
                id: "docker.disk", status: .warn, message: "cannot read free space of \(root)",
                remediation: "check the engine's data root by hand")
        }
        let free = Int64(stats.f_bavail) * Int64(stats.f_frsize)
        let gib = Double(free) / Double(1 << 30)
        let text = String(format: "%.1f GiB free for %@", gib, root)
        if free < 512 << 20 {
            return CheckResult(
                id: "docker.disk", status: .fail, message: text,
                remediation: "free disk space; `claude-max-market clean` removes the tool's leftovers")
        }
        if free < 2 << 30 {
            return CheckResult(id: "docker.disk", status: .warn, message: text, remediation: "free disk space")
        }
        return CheckResult(id: "docker.disk", status: .pass, message: text)
    }

    static func clockCheck(_ engineTime: String?) -> CheckResult {
        guard let engineTime,
            let date = try? Date(
                engineTime.replacingOccurrences(of: #"\.\d+"#, with: "", options: .regularExpression),
                strategy: .iso8601)
        else {
            return CheckResult(id: "clock", status: .warn, message: "the engine did not report its clock")
        }
        let skew = abs(Date().timeIntervalSince(date))
        if skew > 300 {
            return CheckResult(
                id: "clock", status: .fail, message: String(format: "clock differs from the engine's by %.0f s", skew),
                remediation: "synchronise the clock (signed messages must be within 5 minutes)")
        }
        return CheckResult(
            id: "clock", status: skew > 5 ? .warn : .pass,
            message: String(format: "clock within %.1f s of the engine's", skew))
    }

    static func configChecks(_ config: ResolvedConfig, environment: [String: String]) -> [CheckResult] {
        var checks = [SandboxChecks.egress(config)]
        if config.text(.claudeCredentialMode) == "api-key" {
            let file = config.text(.claudeAPIKeyFile)
            let present: Bool
            let source: String
            if file == "-" {
                present = !(environment["ANTHROPIC_API_KEY"] ?? "").isEmpty
                source = "ANTHROPIC_API_KEY"
            } else {
                present = FilePermissions.mode(of: file).map { $0 & 0o077 == 0 } ?? false
                source = "\(file) (mode 0600)"
            }
            checks.append(
                CheckResult(
                    id: "credentials.mode", status: present ? .pass : .warn,
                    message: present
                        ? "credential mode api-key, key from \(source) (held by the gateway; a job gets a per-job token)"
                        : "credential mode api-key, but no key in \(source)",
                    remediation: present ? "" : "export ANTHROPIC_API_KEY, or set claude.apiKeyFile to a 0600 file"))
        } else {
            let file = config.text(.claudeOAuthTokenFile)
            let token = try? ClaudeBackendFactory.oauthToken(config: config, environment: environment)
            let source = file == "-" ? "CLAUDE_CODE_OAUTH_TOKEN" : file
            checks.append(
                CheckResult(
                    id: "credentials.mode", status: token != nil ? .pass : .warn,
                    message: token != nil
                        ? "subscription token from \(source), held by the gateway: job containers get a per-job token, "
                            + "and no login volume is mounted into them any more"
                        : "credential mode subscription, but there is no token in \(source) (a file must be mode 0600)",
                    remediation: token != nil ? "" : "run `claude-max-market login`"))
        }
        return checks
    }
}
