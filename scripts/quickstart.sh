#!/usr/bin/env bash
# Installs what is missing (the Docker engine, busybox-static for the demo image), builds, and
# runs the main job with `claude-max-market demo`: a local market on embedded SQLite, a provider
# and a requester in separate homes, one job run in a hardened container, settled, with the
# result, both balances, the provider's reputation, the market's books and both audit checks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap 'stop_started_services' EXIT

ensure_docker keep
log "swift build (the first build takes several minutes)"
swift build 2>&1 | grep -E "error|Compiling|Build complete" | tail -3 >&2
BIN="$(swift build --show-bin-path)/claude-max-market"
[ -x "$BIN" ] || die "build failed: $BIN is missing"

printf '\n$ claude-max-market demo\n'
"$BIN" demo
