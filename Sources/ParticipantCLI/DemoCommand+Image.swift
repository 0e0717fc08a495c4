import DockerEngine
import Foundation
import JobRunner
import MarketCore

/// The demo's image and job: built here from the host's static busybox, nothing pulled.
extension DemoCommand {
    /// The demo's command: with a workspace it upper-cases its `.txt` files (so a patch comes
    /// back); without one it upper-cases the prompt.
    static let demoJob = #"""
        if [ -n "$(ls -A /work 2>/dev/null)" ]; then
            for f in /work/*.txt; do tr a-z A-Z < "$f" > "$f.new" && mv "$f.new" "$f"; done
            echo "[local demo job: the command backend, not Claude] upper-cased the workspace's .txt files"
        else
            echo "[local demo job: the command backend, not Claude] uid $(id -u), network: $(ls /sys/class/net | tr '\n' ' ')"
            tr a-z A-Z
        fi
        """#

    /// The runner image for a claude job must be there already; the demo image is built here
    /// from the host's static busybox (Debian's busybox-static) when it is missing.
    static func prepareImage(claude: Bool, image: String) async throws {
        let configuration = try DockerClient.Configuration(environment: ProcessInfo.processInfo.environment)
        try await DockerClient.withClient(configuration: configuration) { docker in
            do { _ = try await docker.ping() } catch {
                throw CLIError("the Docker engine does not answer (\(error)): start it, or run scripts/quickstart.sh")
            }
            let existing = try await docker.inspectImage(image)
            if claude {
                guard existing != nil else {
                    throw CLIError("the runner image \(image) is missing: `claude-max-market docker build` first")
                }
                return
            }
            // Built again when its entrypoint is older than this tool's.
            if existing?.Config?.Labels?[NativeRunnerImage.entrypointLabel] == RunnerImage.entrypointDigest { return }
            let busybox = ["/bin/busybox", "/usr/bin/busybox"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            }
            guard let busybox else {
                throw CLIError("the demo image needs a static busybox on the host: apt-get install busybox-static")
            }
            Output.note("building \(image) from \(busybox)")
            var labels = Labels.make(kind: "image", job: nil, owner: nil, version: ToolVersion.current)
            labels[NativeRunnerImage.entrypointLabel] = RunnerImage.entrypointDigest
            _ = try await docker.buildImage(
                context: try Self.demoContext(busybox: URL(fileURLWithPath: busybox)), tags: [image], labels: labels)
        }
    }

    /// The demo image: the host's static busybox and the runner's entrypoint (which unpacks a
    /// workspace and hands the work directory back), a non-root user; no registry.
    static func demoContext(busybox: URL) throws -> Data {
        var tar = TarArchive()
        let dockerfile = [
            "FROM scratch", "COPY busybox /bin/busybox", #"RUN ["/bin/busybox", "--install", "-s", "/bin"]"#,
            "COPY cmm-entrypoint /usr/local/bin/cmm-entrypoint", "USER 10001:10001",
            #"ENTRYPOINT ["/usr/local/bin/cmm-entrypoint"]"#,
        ]
        try tar.addFile("Dockerfile", contents: Data((dockerfile.joined(separator: "\n") + "\n").utf8))
        try tar.addFile("busybox", from: busybox)
        try tar.addFile("cmm-entrypoint", contents: Data(RunnerImage.entrypoint.utf8), mode: 0o755)
        return tar.finish()
    }
}
