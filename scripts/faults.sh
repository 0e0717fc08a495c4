#!/usr/bin/env bash
# The fault suite: real processes on loopback, faults injected, and the guarantees checked after
# each scenario — `market verify` passes, every home's audit chain verifies, every task ended
# settled or refunded, no job container is left running, and no credit is lost. It ends with a
# summary table (scenarios, faults, lifecycles, credits minted, accounted for, lost).
#
#   scripts/faults.sh            the full suite (more lifecycles and kills)
#   scripts/faults.sh --quick    the bounded form `scripts/test.sh` runs (about a minute)
#
# Scenarios: the market server SIGKILLed at random points of its lifecycles (SQLite) and started
# again; a provider daemon SIGKILLed mid-job and started again; a client whose clock is ten
# minutes off. The full run also sends 100 000 hostile frames to a live server (the frame
# fuzzer). Needs the Docker engine (started when missing, as `scripts/test.sh` does).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap stop_started_services EXIT

ARGUMENTS=()
for argument in "$@"; do
    case "$argument" in
        --quick) ARGUMENTS+=(--quick) ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$argument' (allowed: --quick, --help)" ;;
    esac
done

ensure_docker
log "swift build (the tool and the fault harness)"
swift build --product claude-max-market >&2
swift build --product cmm-faults >&2
"$(swift build --show-bin-path)/cmm-faults" "${ARGUMENTS[@]}"
if [ ${#ARGUMENTS[@]} -eq 0 ]; then
    log "the frame fuzzer at full size: 100 000 hostile frames against a live server"
    swift build --build-tests >&2
    CMM_FUZZ_FRAMES=100000 swift test --skip-build --filter FrameFuzzTests
fi
