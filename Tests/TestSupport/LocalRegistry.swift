import Foundation

/// Debian's `docker-registry` (the distribution registry) on 127.0.0.1 and a free port, so that
/// pulls are tested for real without any traffic leaving the machine. Stopped by its PID.
public final class LocalRegistry: @unchecked Sendable {
    public static let binary = "/usr/bin/docker-registry"
    public static var isInstalled: Bool { FileManager.default.isExecutableFile(atPath: binary) }
    /// In CI (or under scripts/test.sh) the registry must be there; elsewhere its tests may skip.
    public static var shouldRun: Bool { isInstalled || DockerTestEnvironment.isRequired }

    public let port: Int
    let process = Process()
    let directory = TemporaryDirectory("cmm-registry")

    public init() throws {
        port = try Self.freePort()
        let config = """
            version: 0.1
            log:
              level: error
            storage:
              filesystem:
                rootdirectory: \(directory.path)/data
            http:
              addr: 127.0.0.1:\(port)
            """
        try Data(config.utf8).write(to: directory.file("config.yml"))
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["serve", directory.file("config.yml").path]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<100 {
            if Self.answers(port) { return }
            usleep(100_000)
        }
        stop()
        throw CLIRunnerError(description: "the local registry did not start on 127.0.0.1:\(port)")
    }

    public var host: String { "127.0.0.1:\(port)" }

    public func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
    }

    deinit { stop() }

    static func answers(_ port: Int) -> Bool {
        let result = try? CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/curl"), ["-fsS", "--max-time", "1", "http://127.0.0.1:\(port)/v2/"],
            environment: [:])
        return result?.exitCode == 0
    }

    /// A TCP port on 127.0.0.1 that nothing listens on (bound and released).
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw CLIRunnerError(description: "no free port") }
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
