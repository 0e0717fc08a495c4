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
