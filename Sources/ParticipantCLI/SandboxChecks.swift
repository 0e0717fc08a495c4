import DockerEngine
import Foundation
import JobRunner
import MarketCore
import MarketFlows
import Participant

/// Checks of the job sandbox as configured: shared by `health` and `compliance-check`.
enum SandboxChecks {
    static func run(_ config: ResolvedConfig, docker: DockerClient?) async -> [CheckResult] {
        [await hardening(config, docker: docker), egress(config)]
    }

    /// Creates (never starts) a container from the policy with the configured image, reads back
    /// what the engine made of it, and checks that against the policy; then removes it. What is
    /// reported is the engine's view of a real container, so this check can fail.
    static func hardening(_ config: ResolvedConfig, docker: DockerClient?) async -> CheckResult {
        let settings = SandboxSettings(config: config)
        let summary =
            "user \(SandboxPolicy.user), read-only root, no-new-privileges, all capabilities dropped, network none, "
            + "not privileged, no devices, own PID and IPC namespaces, memory \(ByteSize.format(settings.memoryBytes)), "
            + "\(config.text(.dockerCPUs)) CPUs (hard), cpu shares \(settings.cpuShares), \(settings.pidsLimit) pids, "
            + "\(settings.openFiles) open files, noexec tmpfs \(ByteSize.format(settings.tmpfsBytes)), "
            + "\(config.integer(.dockerTimeoutSeconds)) s limit"
        guard let docker else {
            return CheckResult(
                id: "sandbox.hardening", status: .warn,
                message: "not verified: Docker is not reachable, so no job container could be inspected",
                remediation: "start the Docker engine, then run this again")
        }
        do {
            guard try await docker.inspectImage(settings.image) != nil else {
                return CheckResult(
                    id: "sandbox.hardening", status: .warn,
                    message: "not verified: image \(settings.image) is not present to create a job container from",
                    remediation: "run `claude-max-market docker:build`")
            }
            let spec = SandboxPolicy.containerSpec(
                settings, command: ["true"], environment: [],
                labels: Labels.make(kind: "check", version: ToolVersion.current), egressDirectory: nil)
            let id = try await docker.createContainer(spec)
            let inspect: ContainerInspect
            do {
                inspect = try await docker.inspectContainer(id)
                try? await docker.removeContainer(id, force: true)
            } catch {
                try? await docker.removeContainer(id, force: true)
                throw error
            }
            let problems = SandboxPolicy.violations(of: inspect, settings: settings)
            if problems.isEmpty {
                return CheckResult(
                    id: "sandbox.hardening", status: .pass,
                    message: "a job container created now, as the engine reports it: " + summary)
            }
            return CheckResult(
                id: "sandbox.hardening", status: .fail,
                message:
                    "a job container created now is not as hardened as the policy: \(problems.joined(separator: ", "))",
                remediation: "check the engine's configuration (userns, default runtimes); report it if it persists")
        } catch {
            return CheckResult(
                id: "sandbox.hardening", status: .warn,
                message: "not verified: creating a job container to inspect failed: \(error)",
                remediation: "check that the Docker engine works (`claude-max-market health`)")
        }
    }

    static func egress(_ config: ResolvedConfig) -> CheckResult {
        let allowlist = config.list(.egressAllowlist)
        if allowlist.isEmpty {
            return CheckResult(
                id: "egress.allowlist", status: .warn, message: "egress allowlist is empty: jobs can reach nothing",
                remediation: "config --set egress.allowlist=api.anthropic.com:443")
        }
        let notHosts = allowlist.filter { EgressTarget(parsing: $0) == nil }
        if !notHosts.isEmpty {
            return CheckResult(
                id: "egress.allowlist", status: .fail, message: "not host:port: \(notHosts.joined(separator: ", "))",
                remediation: "list only host:port pairs")
        }
        return CheckResult(
            id: "egress.allowlist", status: .pass,
            message: "jobs may reach only \(allowlist.joined(separator: ", ")) through the egress proxy "
                + "(\(ByteSize.format(config.bytes(.egressByteBudget))) per job)")
    }
}
