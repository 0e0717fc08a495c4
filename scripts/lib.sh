# Shared by scripts/test.sh and scripts/quickstart.sh: install and start what is missing.
# Everything started here is recorded and stopped by stop_started_services on exit.

STARTED_PIDS=()
# Throwaway directories (a PostgreSQL cluster's data) removed once their processes are stopped.
STARTED_DIRS=()
CI="${CI:-false}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        die "missing packages: ${missing[*]} (run as root, or install them with apt-get)"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

docker_socket() {
    case "${DOCKER_HOST:-}" in
        unix://*) printf '%s' "${DOCKER_HOST#unix://}" ;;
        "") printf '/var/run/docker.sock' ;;
        *) die "DOCKER_HOST=${DOCKER_HOST} is not a unix:// socket; only local engines are supported" ;;
    esac
}

docker_answers() {
    curl -fsS --max-time 2 --unix-socket "$(docker_socket)" http://docker/_ping >/dev/null 2>&1
}

# Starts the Docker engine with no bridge network (containers get loopback only) when none answers.
# With "keep" the engine stays up after the script (quickstart); otherwise it is stopped on exit.
ensure_docker() {
    local keep="${1:-}"
    apt_install docker.io busybox-static socat curl docker-registry
    if docker_answers; then
        log "Docker engine answers on $(docker_socket)"
        return 0
    fi
    log "starting dockerd --bridge=none --iptables=false --ip-masq=false"
    local logfile="${TMPDIR:-/tmp}/cmm-dockerd.log"
    setsid dockerd --bridge=none --iptables=false --ip-masq=false >"$logfile" 2>&1 &
    local pid=$!
    if [ "$keep" = keep ]; then
        log "dockerd (pid $pid) keeps running after this script; stop it with: kill $pid"
    else
        STARTED_PIDS+=("$pid")
    fi
    for _ in $(seq 1 60); do
        docker_answers && { log "Docker engine started (pid $pid)"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    tail -20 "$logfile" >&2 || true
    die "the Docker engine did not start (log: $logfile)"
}

stop_started_services() {
    for pid in "${STARTED_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    done
    for dir in "${STARTED_DIRS[@]}"; do rm -rf "$dir"; done
}

# Starts a throwaway PostgreSQL cluster on 127.0.0.1 and a free port, as the postgres user, and
# exports CMM_TEST_POSTGRES_URL. It is stopped by PID on exit (stop_started_services).
ensure_postgres() {
    apt_install postgresql
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -x "$bin/initdb" ] || die "PostgreSQL's initdb was not found under /usr/lib/postgresql"
    PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cmm-postgres.XXXXXX")"
    STARTED_DIRS+=("$PG_DIR")
    chown postgres "$PG_DIR"
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    log "starting PostgreSQL on 127.0.0.1:$port (throwaway cluster in $PG_DIR)"
    setsid runuser -u postgres -- "$bin/postgres" -D "$PG_DIR/data" -k "$PG_DIR" -h 127.0.0.1 -p "$port" \
        -c fsync=off -c synchronous_commit=off -c max_connections=300 >"$PG_DIR/postgres.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    for _ in $(seq 1 60); do
        if psql "postgres://postgres@127.0.0.1:$port/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
            export CMM_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
            # runuser may not pass SIGTERM on: stop the postmaster by its own PID too.
            local postmaster
            postmaster="$(head -1 "$PG_DIR/data/postmaster.pid" 2>/dev/null || true)"
            [ -n "$postmaster" ] && STARTED_PIDS=("$postmaster" "${STARTED_PIDS[@]}")
            log "PostgreSQL ready (pid $postmaster, under runuser $pid)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    tail -20 "$PG_DIR/postgres.log" >&2 || true
    die "PostgreSQL did not start (log: $PG_DIR/postgres.log)"
}

# The real Claude Code CLI for the tests: the native binary bundled in PyPI's pinned
# claude-agent-sdk wheel, checked by SHA-256 and unpacked into the cache (never committed).
# Exports CMM_TEST_CLAUDE_BINARY.
CLAUDE_WHEEL_SPEC="claude-agent-sdk==0.2.189"
CLAUDE_WHEEL_FILE="claude_agent_sdk-0.2.189-py3-none-manylinux_2_17_x86_64.whl"
CLAUDE_WHEEL_SHA256="b26a6a30a4e2cb025a6f5c95e1ce4469b38fcc51015c392f627bea7c948d67ad"
ensure_claude_cli() {
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/claude-max-market/claude-agent-sdk-0.2.189"
    local binary="$cache/claude"
    if [ ! -x "$binary" ]; then
        mkdir -p "$cache"
        if [ ! -f "$cache/$CLAUDE_WHEEL_FILE" ]; then
            log "downloading the pinned $CLAUDE_WHEEL_SPEC wheel (the real Claude Code CLI, ~178 MB)"
            python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
                -d "$cache" "$CLAUDE_WHEEL_SPEC" || die "could not download $CLAUDE_WHEEL_SPEC from PyPI"
        fi
        echo "$CLAUDE_WHEEL_SHA256  $cache/$CLAUDE_WHEEL_FILE" | sha256sum -c --quiet - \
            || { rm -f "$cache/$CLAUDE_WHEEL_FILE"; die "$CLAUDE_WHEEL_FILE does not have the pinned SHA-256"; }
        python3 - "$cache/$CLAUDE_WHEEL_FILE" "$binary" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2] + ".part", "wb") as out:
    out.write(wheel.read("claude_agent_sdk/_bundled/claude"))
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
    fi
    "$binary" --version >/dev/null 2>&1 || die "the Claude Code binary at $binary does not run"
    export CMM_TEST_CLAUDE_BINARY="$binary"
    log "Claude Code $("$binary" --version 2>/dev/null) for the tests ($binary)"
}
