import DockerEngine
import Foundation
import JobRunner
import MarketCore
import Participant

extension SandboxSettings {
    /// The job container's limits from the participant's config.
    init(config: ResolvedConfig) {
        self.init(
            image: config.text(.dockerImage), memoryBytes: config.bytes(.dockerMemory),
            cpuShares: config.integer(.dockerCPUShares), pidsLimit: config.integer(.dockerPidsLimit),
            tmpfsBytes: config.bytes(.dockerTmpfsSize), timeout: .seconds(config.integer(.dockerTimeoutSeconds)))
    }
}

/// Checks of the job sandbox as configured: shared by `health` and `compliance-check`.
enum SandboxChecks {
    static func run(_ config: ResolvedConfig) -> [CheckResult] {
        [hardening(config), egress(config)]
    }

    /// Every job container gets the same hardened host config; this verifies what it would be now.
    static func hardening(_ config: ResolvedConfig) -> CheckResult {
        let settings = SandboxSettings(config: config)
        let host = SandboxPolicy.hostConfiguration(settings, egressDirectory: "/x", loginVolume: nil)
        var problems: [String] = []
        if host.ReadonlyRootfs != true { problems.append("read-only root off") }
        if host.NetworkMode != "none" { problems.append("network not none") }
        if host.CapDrop != ["ALL"] { problems.append("capabilities kept") }
        if host.SecurityOpt != ["no-new-privileges"] { problems.append("new privileges allowed") }
        if SandboxPolicy.user.hasPrefix("0") { problems.append("runs as root") }
        if !(host.Tmpfs?[SandboxPolicy.workDirectory]?.contains("noexec") ?? false) {
            problems.append("work dir executable")
        }
        if problems.isEmpty {
            return CheckResult(
                id: "sandbox.hardening", status: .pass,
                message:
                    "job containers: user \(SandboxPolicy.user), read-only root, no-new-privileges, all capabilities "
                    + "dropped, network none, memory \(ByteSize.format(settings.memoryBytes)), "
                    + "\(settings.pidsLimit) pids, cpu shares \(settings.cpuShares), noexec tmpfs "
                    + "\(ByteSize.format(settings.tmpfsBytes)), \(config.integer(.dockerTimeoutSeconds)) s limit")
        }
        return CheckResult(
            id: "sandbox.hardening", status: .fail,
            message: "hardening incomplete: \(problems.joined(separator: ", "))",
            remediation: "report this: job containers must always be hardened")
    }

    static func egress(_ config: ResolvedConfig) -> CheckResult {
        let allowlist = config.list(.egressAllowlist)
        if allowlist.isEmpty {
            return CheckResult(
                id: "egress.allowlist", status: .warn, message: "egress allowlist is empty: jobs can reach nothing",
                remediation: "config --set egress.allowlist=api.anthropic.com:443")
        }
        let notHosts = allowlist.filter { !HostPort.isValid($0) }
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
