#!/usr/bin/env bash
# Installs what is missing (Docker engine), builds, and walks through the provider's side of the
# main loop in a throwaway CMM_HOME: consent, limits, keys, end-to-end encryption, one job run in
# a hardened container with usage and the audit check; then a local market server on SQLite with
# credits minted, its status and a check of its books. The provider daemon and requester flows
# are not built yet: the script says so at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap 'stop_started_services; rm -rf "${DEMO_HOME:-}" "${DEMO_CONTEXT:-}"' EXIT

ensure_docker keep
log "swift build (the first build takes several minutes)"
swift build 2>&1 | grep -E "error|Compiling|Build complete" | tail -3 >&2
BIN="$(swift build --show-bin-path)/claude-max-market"
[ -x "$BIN" ] || die "build failed: $BIN is missing"

DEMO_HOME="$(mktemp -d "${TMPDIR:-/tmp}/cmm-quickstart.XXXXXX")"
export CMM_HOME="$DEMO_HOME"
run() { printf '\n$ claude-max-market %s\n' "$*"; "$BIN" "$@"; }

run terms --accept
run opt-in --claude-jobs --yes
run limits --daily 3 --weekly 10 --monthly 30 --tokens-daily 20000 --max-tokens-per-task 4000 --concurrent 1
run keys show

printf 'a payload for the provider\n' > "$DEMO_HOME/payload.txt"
run keys export-public --output "$DEMO_HOME/me.json"
run encrypt --input "$DEMO_HOME/payload.txt" --recipient "$DEMO_HOME/me.json" --output "$DEMO_HOME/payload.sealed"
run decrypt --input "$DEMO_HOME/payload.sealed"

# The real runner image (Node + the Claude Code CLI from npm) needs the network to build, and
# Claude Code needs your API key or login. The demo runs a `command` job instead, in the same
# hardened container, from a small image built here from busybox.
DEMO_CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/cmm-demo-image.XXXXXX")"
cp "$(command -v busybox)" "$DEMO_CONTEXT/busybox"
cat > "$DEMO_CONTEXT/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
USER 10001:10001
DOCKERFILE
run docker:build --tag claude-max-market/demo:latest --file "$DEMO_CONTEXT/Dockerfile"
run execute --backend command --image claude-max-market/demo:latest --yes \
    --prompt "Count my words, please" -- sh -c 'echo "uid $(id -u), $(wc -w) words, network: $(ls /sys/class/net)"'
run status
run usage --period day
run audit
run audit --verify
run compliance-check || true
run clean

# The market server: a local market on embedded SQLite, credits minted to this participant, its
# status and a check of its books.
MARKET_DB="sqlite:$DEMO_HOME/market.sqlite"
printf '\n$ claude-max-market market serve --port 0 --db %s &\n' "$MARKET_DB"
"$BIN" market serve --port 0 --db "$MARKET_DB" 2>"$DEMO_HOME/market.log" &
MARKET_PID=$!
trap 'kill "$MARKET_PID" 2>/dev/null || true; wait "$MARKET_PID" 2>/dev/null || true; stop_started_services; rm -rf "${DEMO_HOME:-}" "${DEMO_CONTEXT:-}"' EXIT
for _ in $(seq 1 100); do grep -q "listening" "$DEMO_HOME/market.log" && break; sleep 0.1; done
MARKET_URL="$(grep -o 'ws://[^ ]*' "$DEMO_HOME/market.log" | head -1)"
[ -n "$MARKET_URL" ] || die "the market did not start: $(cat "$DEMO_HOME/market.log")"
PEER_ID="$("$BIN" keys show --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peerId"])')"
run market mint --db "$MARKET_DB" --to "$PEER_ID" --amount 100 --memo "quickstart"
run market status --url "$MARKET_URL"
run market verify --db "$MARKET_DB"
kill "$MARKET_PID"
wait "$MARKET_PID" 2>/dev/null || true

cat <<'TXT'

Built and shown above: the provider's side (consent, limits, keys and sealing, a job run in a
hardened container) and the market server (signed WebSocket protocol, escrow, first-accept
matching, double-entry ledger, reputation; docs/PROTOCOL.md).
Not built yet: the provider daemon and the requester commands that connect the two (posting a
job from the command line, bidding, sealed delivery and settlement end to end), and the `demo`
that runs the whole loop.
TXT
