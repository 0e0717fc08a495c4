#!/usr/bin/env bash
# Builds the tool and walks through what exists of the main loop, in a throwaway CMM_HOME.
# The market server and the end-to-end job flow are not built yet: this script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap 'stop_started_services; rm -rf "${DEMO_HOME:-}"' EXIT

log "swift build"
swift build -q 2>&1 | grep -v "unhandled; explicitly declare" >&2 || true
BIN="$(swift build --show-bin-path)/claude-max-market"
[ -x "$BIN" ] || die "build failed: $BIN is missing"

DEMO_HOME="$(mktemp -d "${TMPDIR:-/tmp}/cmm-quickstart.XXXXXX")"
export CMM_HOME="$DEMO_HOME"
run() { printf '\n$ claude-max-market %s\n' "$*"; "$BIN" "$@"; }

run terms --accept
run opt-in --claude-jobs --yes
run limits --daily 3 --weekly 10 --monthly 30 --tokens-daily 20000 --max-tokens-per-task 4000 --concurrent 1
run status
run audit
run audit --verify
run compliance-check

cat <<'TXT'

Not built yet: the market server, the provider daemon and the requester flow (post a job with
escrow, match, run it in a hardened container, settle, reputation). Until they land, the
commands above are what this quickstart can show.
TXT
