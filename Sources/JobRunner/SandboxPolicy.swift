import DockerEngine
import Foundation
import MarketCore

/// Limits of a job container, from the provider's config.
public struct SandboxSettings: Sendable, Equatable {
    public var image: String
    public var memoryBytes: Int64
    public var cpuShares: Int64
    public var pidsLimit: Int64
    public var tmpfsBytes: Int64
    public var timeout: Duration
    /// The hard CPU limit, in billionths of a CPU (`docker.cpus` × 10⁹).
    public var nanoCPUs: Int64
    /// Open files a job may hold (the `nofile` ulimit, soft and hard).
    public var openFiles: Int64
    /// Bytes of output (stdout + stderr) a job may print before it is stopped.
    public var maxOutputBytes: Int64
    /// A workspace job's /work tmpfs holds its workspace on top of `tmpfsBytes`.
    public var workspaceBytes: Int64 = 0

    /// A claude job that continues a conversation: its /tmp tmpfs holds the transcript on top of
    /// `tmpfsBytes` (twice: the CLI appends to it).
    public var transcriptBytes: Int64 = 0

    /// The size of the /work tmpfs.
    public var workTmpfsBytes: Int64 { tmpfsBytes + workspaceBytes }
    /// The size of the /tmp tmpfs.
    public var tmpTmpfsBytes: Int64 { tmpfsBytes + 2 * transcriptBytes }

    public init(
        image: String, memoryBytes: Int64, cpuShares: Int64, pidsLimit: Int64, tmpfsBytes: Int64, timeout: Duration,
        nanoCPUs: Int64 = 1_000_000_000, openFiles: Int64 = 1024, maxOutputBytes: Int64 = 16 << 20
    ) {
        self.image = image
        self.memoryBytes = memoryBytes
        self.cpuShares = cpuShares
        self.pidsLimit = pidsLimit
        self.tmpfsBytes = tmpfsBytes
        self.timeout = timeout
        self.nanoCPUs = nanoCPUs
        self.openFiles = openFiles
        self.maxOutputBytes = maxOutputBytes
    }
}

/// The hardened container every job runs in, with no exceptions: non-root, read-only root,
/// no new privileges, no capabilities, memory / CPU / pids limits, a size-capped `noexec`
/// tmpfs work dir, no network but loopback, and only the mounts the backend needs.
public enum SandboxPolicy {
    /// Non-root user (the runner image's `runner`).
    public static let user = "10001:10001"
    public static let workDirectory = "/work"
    /// Where the provider's egress proxy socket directory is mounted (read-only).
    public static let egressMount = "/run/cmm-egress"
    /// What a workspace job's container is told: HOME away from the workspace (its dot files are
    /// the requester's), and that stdin is an archive to unpack before the command.
    public static let workspaceEnvironment = ["HOME=/tmp", "CMM_WORKSPACE=1"]
    /// Nothing of the provider's is mounted but the egress socket: a credential, API key or
    /// subscription, stays with the gateway.
    public static func hostConfiguration(_ settings: SandboxSettings, egressDirectory: String?) -> HostConfiguration {
        var host = HostConfiguration()
        host.ReadonlyRootfs = true
        host.NetworkMode = "none"
        host.Memory = settings.memoryBytes
        host.MemorySwap = settings.memoryBytes
        host.CpuShares = settings.cpuShares
        host.NanoCpus = settings.nanoCPUs
        host.PidsLimit = settings.pidsLimit
        host.Ulimits = [Ulimit(Name: "nofile", Soft: settings.openFiles, Hard: settings.openFiles)]
        // Said outright rather than left to the engine's defaults.
        host.Privileged = false
        host.Devices = []
        host.IpcMode = "private"
        host.CapDrop = ["ALL"]
        host.SecurityOpt = ["no-new-privileges"]
        // Owned by the job's user: the engine keeps the image directory's owner otherwise,
        // and a `mode` option alone does not make it writable.
        let owner = user.split(separator: ":")
        func tmpfs(_ size: Int64) -> String {
            "rw,noexec,nosuid,nodev,size=\(size),uid=\(owner[0]),gid=\(owner[1]),mode=0700"
        }
        host.Tmpfs = [workDirectory: tmpfs(settings.workTmpfsBytes), "/tmp": tmpfs(settings.tmpTmpfsBytes)]
        host.Binds = egressDirectory.map { ["\($0):\(egressMount):ro"] }
        return host
    }

    /// A container spec for one job (or a warm-pool slot) whose input arrives on stdin.
    public static func containerSpec(
        _ settings: SandboxSettings, command: [String], environment: [String], labels: [String: String],
        egressDirectory: String?
    ) -> ContainerSpec {
        var spec = ContainerSpec(
            image: settings.image, command: command, labels: labels,
            hostConfig: hostConfiguration(settings, egressDirectory: egressDirectory))
        spec.User = user
        spec.WorkingDir = workDirectory
        // A workspace job says HOME itself (outside the workspace, whose dot files are the requester's).
        spec.Env = (environment.contains { $0.hasPrefix("HOME=") } ? [] : ["HOME=\(workDirectory)"]) + environment
        spec.openStdin()
        return spec
    }

    /// Checks a live container against the policy; returns what is wrong (empty when all holds).
    public static func violations(of inspect: ContainerInspect, settings: SandboxSettings) -> [String] {
        let host = inspect.HostConfig
        var problems: [String] = []
        let user = inspect.Config.User ?? ""
        if user.isEmpty || user == "root" || user.hasPrefix("0:") || user == "0" { problems.append("runs as root") }
        if host.ReadonlyRootfs != true { problems.append("root filesystem is writable") }
        if host.NetworkMode != "none" { problems.append("network mode is \(host.NetworkMode ?? "default")") }
        if host.CapDrop != ["ALL"] { problems.append("capabilities not all dropped") }
        if !(host.SecurityOpt ?? []).contains("no-new-privileges") { problems.append("no-new-privileges missing") }
        if host.Memory != settings.memoryBytes || host.MemorySwap != settings.memoryBytes {
            problems.append("memory limit differs")
        }
        if host.CpuShares != settings.cpuShares { problems.append("cpu shares differ") }
        if host.NanoCpus != settings.nanoCPUs {
            problems.append("hard CPU limit differs (\(host.NanoCpus ?? 0) nano-CPUs)")
        }
        if host.PidsLimit != settings.pidsLimit { problems.append("pids limit differs") }
        let nofile = host.Ulimits?.first { $0.Name == "nofile" }
        if nofile?.Soft != settings.openFiles || nofile?.Hard != settings.openFiles {
            problems.append("open-files limit differs")
        }
        if host.Privileged == true { problems.append("privileged") }
        if !(host.Devices ?? []).isEmpty { problems.append("host devices mapped") }
        if let mode = host.PidMode, !mode.isEmpty { problems.append("shares a PID namespace (\(mode))") }
        if let mode = host.IpcMode, mode == "host" || mode == "shareable" || mode.hasPrefix("container:") {
            problems.append("shares IPC (\(mode))")
        }
        let tmpfs = host.Tmpfs?[workDirectory] ?? ""
        for option in ["noexec", "nosuid", "size=\(settings.workTmpfsBytes)"] where !tmpfs.contains(option) {
            problems.append("work dir tmpfs lacks \(option)")
        }
        for bind in host.Binds ?? []
        where !bind.hasSuffix(":\(egressMount):ro") {
            problems.append("unexpected mount \(bind)")
        }
        if !Labels.isManagedContainer(inspect.Config.Labels) { problems.append("labels missing") }
        return problems
    }
}
