import DockerEngine
import Foundation
import MarketCore
import Workspace

/// The runner image's build context, embedded so that `docker:build` works wherever the binary
/// is installed. `docker/runner/` in the repository holds the same files (a test keeps them equal).
public enum RunnerImage {
    public static let dockerfile = #"""
        # The runner image: the unmodified Claude Code CLI from npm, socat for the egress bridge, and a
        # non-root user. Built on the provider's machine by `claude-max-market docker:build`
        # (it needs the network for apt and npm).
        FROM node:22-bookworm-slim
        RUN apt-get update \
            && apt-get install -y --no-install-recommends socat ca-certificates \
            && rm -rf /var/lib/apt/lists/*
        RUN npm install -g @anthropic-ai/claude-code && npm cache clean --force
        RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin runner
        COPY entrypoint.sh /usr/local/bin/cmm-entrypoint
        RUN chmod 0755 /usr/local/bin/cmm-entrypoint
        ENV HOME=/work CLAUDE_CONFIG_DIR=/claude-config
        USER 10001:10001
        WORKDIR /work
        ENTRYPOINT ["/usr/local/bin/cmm-entrypoint"]
        CMD ["claude", "--version"]

        """#

    public static let entrypoint = #"""
        #!/bin/sh
        # Runs inside the job container, which has no network interface but loopback. When the
        # provider's egress proxy socket is mounted, bridge 127.0.0.1:3128 to it and send HTTPS
        # through it; the proxy allows only the configured host:port pairs.
        set -eu
        SOCKET=/run/cmm-egress/egress.sock
        if [ -S "$SOCKET" ]; then
            # -t: once one side has ended, the other may go on (a client that half-closes still gets
            # the whole answer); socat's default would cut it off after 0.5 s.
            socat -t 600 TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr "UNIX-CONNECT:$SOCKET" &
            bridge=$!
            # Wait until the bridge listens (127.0.0.1:3128 in LISTEN state, 0A); a job without its
            # bridge could reach nothing, so after 15 s, or if socat died, fail and say why.
            i=0
            until grep -q ':0C38 00000000:0000 0A' /proc/net/tcp 2>/dev/null; do
                if [ $i -ge 750 ] || ! kill -0 "$bridge" 2>/dev/null; then
                    echo "cmm-entrypoint: the egress bridge did not start listening on 127.0.0.1:3128" >&2
                    exit 70
                fi
                i=$((i + 1))
                sleep 0.02
            done
            export HTTPS_PROXY=http://127.0.0.1:3128 https_proxy=http://127.0.0.1:3128
            export HTTP_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128
            # The API gateway (ANTHROPIC_BASE_URL) is reached directly, not through the proxy.
            export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
        fi
        if [ "${CMM_WORKSPACE:-}" = 1 ]; then
            # Stdin is one tar archive, made and checked by the provider: the prompt
            # (tmp/cmm-input/prompt), a workspace (work/...), a claude job's transcript. After the
            # command, what the job leaves (CMM_RETURN: paths below /) goes back on stdout, after a
            # marker line, for the provider to read as hostile input.
            if [ "${CMM_CLAUDE_STATE:-}" = 1 ]; then
                # The CLI's state is the job's own, on the /tmp tmpfs; no credential is in it (the
                # gateway holds the provider's, the job has a per-job token).
                mkdir -p "$CLAUDE_CONFIG_DIR"
            fi
            # The command's stdout is a pipe of its own: a CLI that makes its stdout non-blocking (as
            # Node and Bun do) would otherwise fail the archive written after it with EAGAIN.
            run() {
                { "$@"; echo "$?" >/tmp/cmm-status; } | cat
            }
            unpack() {
                if ! tar -x -f - -C /; then
                    echo "cmm-entrypoint: the job's input archive could not be unpacked" >&2
                    exit 65
                fi
            }
            set +e
            if [ "${CMM_WARM:-}" = 1 ]; then
                # A warm slot: the command starts now and waits on a pipe; the archive comes when the
                # slot gets its job, and the prompt goes to the command once the archive is unpacked.
                mkfifo /tmp/cmm-prompt
                cat /tmp/cmm-prompt | run "$@" &
                command=$!
                unpack
                cat /tmp/cmm-input/prompt >/tmp/cmm-prompt
                wait "$command"
            else
                unpack
                run "$@" </tmp/cmm-input/prompt
            fi
            status=$(cat /tmp/cmm-status 2>/dev/null || echo 1)
            case "$status" in '' | *[!0-9]*) status=1 ;; esac
            printf '%s\n' 'cmm-entrypoint: what the job leaves follows as a tar archive (v2)'
            cd /
            set --
            for path in ${CMM_RETURN:-work}; do
                if [ -e "$path" ] || [ -L "$path" ]; then set -- "$@" "$path"; fi
            done
            if [ "$#" -gt 0 ]; then tar -c -f - "$@"; fi
            if [ "$status" -gt 128 ]; then
                # Only the engine can SIGKILL this shell (PID 1): a command killed by a signal is the job's own doing.
                echo "cmm-entrypoint: the job's command was killed by signal $((status - 128))" >&2
                exit 1
            fi
            exit "$status"
        fi
        exec "$@"

        """#

    /// The entrypoint's SHA-256, kept as a label (`NativeRunnerImage.entrypointLabel`) on the
    /// images this tool builds: an image whose entrypoint is older than the tool's speaks an
    /// older form of what a job leaves, and `health` says to build it again.
    public static var entrypointDigest: String { FileDigest.sha256(Data(entrypoint.utf8)) }

    /// The build context as a tar archive.
    public static func context() throws -> Data {
        var tar = TarArchive()
        try tar.addFile("Dockerfile", contents: Data(dockerfile.utf8))
        try tar.addFile("entrypoint.sh", contents: Data(entrypoint.utf8), mode: 0o755)
        return tar.finish()
    }

    /// A build context from a directory on disk (for `--file`): every regular file under it.
    public static func context(directory: URL) throws -> Data {
        var tar = TarArchive()
        let base = directory.standardizedFileURL.path
        let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: [.isRegularFileKey])
        while let url = walker?.nextObject() as? URL {
            guard (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true else { continue }
            try tar.addFile(String(url.standardizedFileURL.path.dropFirst(base.count + 1)), from: url)
        }
        return tar.finish()
    }

    /// Splits `registry:5000/name:tag` into repository and tag (nil when there is none).
    public static func split(_ image: String) -> (repository: String, tag: String?) {
        guard let colon = image.lastIndex(of: ":"), !image[colon...].contains("/") else { return (image, nil) }
        return (String(image[..<colon]), String(image[image.index(after: colon)...]))
    }

    /// The tags a build gets: the configured one (the tool's version when it names none) and `latest`.
    public static func tags(for image: String) -> [String] {
        let (repository, tag) = split(image)
        let versioned = "\(repository):\(tag ?? ToolVersion.current)"
        let latest = "\(repository):latest"
        return versioned == latest ? [latest] : [versioned, latest]
    }
}
