/// The body of `POST /containers/create` (the engine's PascalCase names).
public struct ContainerSpec: Encodable, Sendable, Equatable {
    public var Image: String
    public var Cmd: [String]?
    public var Entrypoint: [String]?
    public var Env: [String]?
    public var User: String?
    public var WorkingDir: String?
    public var Labels: [String: String]
    public var AttachStdin = false
    public var AttachStdout = true
    public var AttachStderr = true
    public var OpenStdin = false
    public var StdinOnce = false
    public var Tty = false
    public var HostConfig: HostConfiguration

    public init(
        image: String, command: [String]? = nil, labels: [String: String], hostConfig: HostConfiguration = .init()
    ) {
        Image = image
        Cmd = command
        Labels = labels
        HostConfig = hostConfig
    }

    /// Keeps stdin open so that a job can be handed over after start (the warm pool's mode).
    public mutating func openStdin() {
        AttachStdin = true
        OpenStdin = true
        StdinOnce = true
    }
}

public struct Ulimit: Codable, Sendable, Equatable {
    public var Name: String
    public var Soft: Int64
    public var Hard: Int64

    public init(Name: String, Soft: Int64, Hard: Int64) {
        self.Name = Name
        self.Soft = Soft
        self.Hard = Hard
    }
}

public struct DeviceMapping: Codable, Sendable, Equatable {
    public var PathOnHost: String?
    public var PathInContainer: String?
    public var CgroupPermissions: String?

    public init(PathOnHost: String?, PathInContainer: String?, CgroupPermissions: String?) {
        self.PathOnHost = PathOnHost
        self.PathInContainer = PathInContainer
        self.CgroupPermissions = CgroupPermissions
    }
}

public struct HostConfiguration: Codable, Sendable, Equatable {
    public var ReadonlyRootfs: Bool?
    public var NetworkMode: String?
    public var Memory: Int64?
    public var MemorySwap: Int64?
    public var CpuShares: Int64?
    /// A hard CPU limit in billionths of a CPU (shares are only a weight).
    public var NanoCpus: Int64?
    public var PidsLimit: Int64?
    public var Ulimits: [Ulimit]?
    public var Privileged: Bool?
    public var Devices: [DeviceMapping]?
    public var PidMode: String?
    public var IpcMode: String?
    public var CapDrop: [String]?
    public var SecurityOpt: [String]?
    public var Tmpfs: [String: String]?
    public var Binds: [String]?
    public var AutoRemove: Bool?

    public init() {}
}

/// What `GET /containers/{id}/json` says, as far as this tool reads it.
public struct ContainerInspect: Decodable, Sendable {
    public struct State: Decodable, Sendable {
        public var Status: String
        public var Running: Bool
        public var ExitCode: Int
        public var Pid: Int?
        public var OOMKilled: Bool?
    }

    public struct Config: Decodable, Sendable {
        public var Image: String?
        public var User: String?
        public var Labels: [String: String]?
        public var Env: [String]?
        public var OpenStdin: Bool?
    }

    public var Id: String
    public var Name: String
    public var Image: String
    public var State: State
    public var Config: Config
    public var HostConfig: HostConfiguration
}

/// One row of `GET /containers/json`.
public struct ContainerSummary: Decodable, Sendable {
    public var Id: String
    public var Names: [String]?
    public var Image: String
    public var State: String
    public var Status: String?
    public var Labels: [String: String]?
    public var Created: Int64?
}
