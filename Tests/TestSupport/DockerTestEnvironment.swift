import Foundation

/// Whether the tests may use a real Docker engine. In CI (`CI=true`) or when
/// `scripts/test.sh` says so (`CMM_REQUIRE_DOCKER=1`), a missing engine is a failure, not a skip.
public enum DockerTestEnvironment {
    public static var socketPath: String {
        let host = ProcessInfo.processInfo.environment["DOCKER_HOST"] ?? ""
        return host.hasPrefix("unix://") ? String(host.dropFirst(7)) : "/var/run/docker.sock"
    }

    public static var isRequired: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["CI"] == "true" || environment["CMM_REQUIRE_DOCKER"] == "1"
    }

    public static var isAvailable: Bool {
        FileManager.default.fileExists(atPath: socketPath)
    }

    /// Run Docker tests when the engine is there, or when it must be (then they fail loudly).
    public static var shouldRun: Bool { isAvailable || isRequired }

    /// A static busybox to put in test images (Debian's busybox-static).
    public static var busyboxPath: String {
        for path in ["/bin/busybox", "/usr/bin/busybox"] where FileManager.default.fileExists(atPath: path) {
            return path
        }
        return "/bin/busybox"
    }

    /// Raw engine call through curl, for set-ups the module refuses on purpose (an unlabelled container).
    public static func curl(_ method: String, _ path: String, body: String? = nil, headers: [String] = []) throws
        -> CLIResult
    {
        var arguments = ["-sS", "--unix-socket", socketPath, "-X", method, "http://docker/v1.41\(path)"]
        for header in headers { arguments += ["-H", header] }
        if let body { arguments += ["-H", "Content-Type: application/json", "-d", body] }
        return try CLIRunner.runProcess(
            URL(fileURLWithPath: "/usr/bin/curl"), arguments, environment: ProcessInfo.processInfo.environment)
    }
}
