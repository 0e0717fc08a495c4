import Foundation

/// A `FROM scratch` stand-in for the runner image: busybox, socat (with the libraries `ldd`
/// lists), the real entrypoint from `docker/runner/`, and a fake `claude` that replays the
/// stream-json fixtures. Nothing is pulled from a registry.
public enum TestRunnerImage {
    public static let name = "cmm-test/runner:latest"

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    public static let fakeClaude = #"""
        #!/bin/sh
        # Stand-in for Claude Code in tests. The prompt (stdin) says what to do:
        # "fixture: NAME", "leak the key", "egress: HOST:PORT", "direct: HOST:PORT", "sleep: N",
        # "dump everything", "call the api N". `claude setup-token` pretends to sign in and keeps a token in CLAUDE_CONFIG_DIR.
        if [ "${1:-}" = "setup-token" ]; then
            echo "Visit https://claude.ai/oauth/authorize to sign in, then paste the code here:"
            read -r code
            token="sk-ant-oat01-FAKE$(echo "$code" | tr -cd 'A-Za-z0-9')TOKENVALUE0123456789"
            printf '{"claudeAiOauth":{"accessToken":"%s"}}' "$token" > "$CLAUDE_CONFIG_DIR/.credentials.json"
            echo "Your OAuth token (valid for one year): $token"
            exit 0
        fi
        prompt=$(cat)
        # Claude jobs send the prompt as one stream-json user message (keys sorted); take its text.
        case "$prompt" in '{"message":{"content":"'*)
            prompt=$(printf '%s' "$prompt" | sed -n 's/^{"message":{"content":"\(.*\)","role":"user"}.*/\1/p');;
        esac
        printf '{"type":"system","subtype":"fake_args","uid":"%s","args":"%s"}\n' "$(id -u)" "$*"
        case "$prompt" in *"sleep: "*)
            sleep "$(echo "$prompt" | sed -n 's/.*sleep: \([0-9]*\).*/\1/p')";;
        esac
        case "$prompt" in *"leak the key"*)
            printf '{"type":"assistant","message":{"id":"msg_leak","content":[{"type":"text","text":"key=%s oauth=sk-ant-oat01-LEAKEDTOKENVALUE0123456789"}]}}\n' "$ANTHROPIC_API_KEY"
            echo "stderr leaks $ANTHROPIC_API_KEY too" >&2;;
        esac
        # After stdin ends socat waits only -t seconds for the answer (0.5 s by default: too short
        # on a loaded machine, where the round trip through the proxy can take longer).
        case "$prompt" in *"egress: "*)
            target=$(echo "$prompt" | sed -n 's/.*egress: \([^ ]*\).*/\1/p')
            answer=$(echo ping | socat -t 15 -T 15 - "PROXY:127.0.0.1:${target%:*}:${target##*:},proxyport=3128" 2>&1 | head -1 | tr -d '"\\')
            printf '{"type":"assistant","message":{"id":"msg_egress","content":[{"type":"text","text":"egress answer: %s"}]}}\n' "$answer";;
        esac
        case "$prompt" in *"direct: "*)
            target=$(echo "$prompt" | sed -n 's/.*direct: \([^ ]*\).*/\1/p')
            answer=$(echo ping | socat -t 3 -T 3 - "TCP:$target" 2>&1 | head -1 | tr -d '"\\')
            printf '{"type":"assistant","message":{"id":"msg_direct","content":[{"type":"text","text":"direct answer: %s"}]}}\n' "$answer";;
        esac
        # Calls the API through $ANTHROPIC_BASE_URL as Claude Code does, N times, after printing
        # everything the job could know about its credential.
        case "$prompt" in *"call the api"*)
            n=$(echo "$prompt" | sed -n 's/.*call the api \([0-9]*\).*/\1/p')
            echo "env: $(env | tr '\n' ' ')"
            echo "environ: $(tr '\0' ' ' < /proc/self/environ)"
            i=0
            while [ "$i" -lt "${n:-1}" ]; do
                auth="x-api-key: ${ANTHROPIC_API_KEY:-}"
                if [ -n "${CLAUDE_CODE_OAUTH_TOKEN:-}" ]; then auth="authorization: Bearer $CLAUDE_CODE_OAUTH_TOKEN"; fi
                wget -q -Y off -O - --header "$auth" --header "anthropic-version: 2023-06-01" \
                    --header "content-type: application/json" \
                    --post-data "{\"model\":\"$ANTHROPIC_SMALL_FAST_MODEL\",\"max_tokens\":50,\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
                    "$ANTHROPIC_BASE_URL/v1/messages" 2>&1 | grep -o 'hello from upstream\|error.*' | sed 's/^/api: /'
                i=$((i + 1))
            done;;
        esac
        # A hostile job with a shell: its environment, its mounts and every small file it can
        # read, base64 so that no redaction of output can hide what it found.
        case "$prompt" in *"dump everything"*)
            { env; cat /proc/self/mounts; find / /tmp /work /run -xdev -type f -size -256k 2>/dev/null | while read -r f; do
                case "$f" in /proc/*|/sys/*) ;; *) echo "== $f"; cat "$f" 2>/dev/null;; esac
            done; } | base64 | sed 's/^/dump: /';;
        esac
        name=$(echo "$prompt" | sed -n 's/.*fixture: \([a-z-]*\).*/\1/p')
        cat "/fixtures/${name:-success-text}.jsonl"
        """#

    /// Builds the image once per test process, through the tool's own `docker:build`, shared by
    /// every suite (two builders of one tag at once would race).
    public static func ensureBuilt() async throws {
        try await Builder.shared.ensure()
    }

    actor Builder {
        static let shared = Builder()
        private var built = false

        func ensure() throws {
            if built { return }
            let home = TemporaryDirectory("cmm-runner-home")
            let directory = TemporaryDirectory("cmm-runner-ctx")
            let dockerfile = try TestRunnerImage.makeContext(in: directory.url)
            let result = try CLIRunner.run(
                ["docker:build", "--tag", TestRunnerImage.name, "--file", dockerfile.path], home: home.url)
            guard result.exitCode == 0 else {
                throw CLIRunnerError(description: "test image build failed: \(result.stderr)")
            }
            built = true
        }
    }

    /// Writes the build context into `directory`; returns the Dockerfile's URL.
    public static func makeContext(in directory: URL) throws -> URL {
        let fm = FileManager.default
        let rootfs = directory.appending(path: "rootfs")
        try fm.createDirectory(at: rootfs, withIntermediateDirectories: true)
        func put(_ data: Data, _ path: String, mode: Int = 0o755) throws {
            let url = rootfs.appending(path: path)
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: url)
            chmod(url.path, mode_t(mode))
        }
        try fm.copyItem(
            at: URL(fileURLWithPath: DockerTestEnvironment.busyboxPath), to: directory.appending(path: "busybox"))
        let socat = "/usr/bin/socat"
        try put(Data(contentsOf: URL(fileURLWithPath: socat)), socat)
        let ldd = try CLIRunner.runProcess(URL(fileURLWithPath: "/usr/bin/ldd"), [socat], environment: [:])
        for line in ldd.stdout.split(separator: "\n") {
            let tokens = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let path = tokens.first(where: { $0.hasPrefix("/") }) else { continue }
            try put(Data(contentsOf: URL(fileURLWithPath: String(path)).resolvingSymlinksInPath()), String(path))
        }
        try put(
            Data(contentsOf: repository.appending(path: "docker/runner/entrypoint.sh")), "usr/local/bin/cmm-entrypoint")
        try put(Data(fakeClaude.utf8), "usr/local/bin/claude")
        let fixtures = repository.appending(path: "Tests/JobRunnerTests/Fixtures/claude-stream-json")
        for name in try fm.contentsOfDirectory(atPath: fixtures.path) where name.hasSuffix(".jsonl") {
            try put(Data(contentsOf: fixtures.appending(path: name)), "fixtures/\(name)", mode: 0o644)
        }
        let dockerfile = """
            FROM scratch
            COPY busybox /bin/busybox
            RUN ["/bin/busybox", "--install", "-s", "/bin"]
            COPY rootfs/ /
            RUN mkdir -p /work /claude-config /run/cmm-egress && chown 10001:10001 /claude-config
            ENV PATH=/usr/local/bin:/usr/bin:/bin CLAUDE_CONFIG_DIR=/claude-config
            USER 10001:10001
            ENTRYPOINT ["/usr/local/bin/cmm-entrypoint"]
            """
        let url = directory.appending(path: "Dockerfile")
        try Data((dockerfile + "\n").utf8).write(to: url)
        return url
    }
}
