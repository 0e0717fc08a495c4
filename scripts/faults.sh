#!/usr/bin/env bash
# The fault suite: real processes on loopback, faults injected, and the guarantees checked after
# each scenario — `market verify` passes, every home's audit chain verifies, every task ended
# settled or refunded, no job container is left running, and no credit is lost. It ends with a
# summary table (scenarios, faults, lifecycles, credits minted, accounted for, lost).
#
#   scripts/faults.sh              the full suite (more lifecycles and kills)
#   scripts/faults.sh --quick      the bounded form `scripts/test.sh` runs (about two minutes)
#   scripts/faults.sh --only TEXT  only the scenarios whose name contains TEXT
#
# Scenarios: the market server SIGKILLed at random points of its lifecycles (SQLite); two
# servers on one PostgreSQL with one SIGKILLed again and again; PostgreSQL restarted under load;
# a provider daemon SIGKILLed mid-job; the Docker engine (a private one) restarted mid-job; the
# egress proxy's socket removed mid-job; the participant's disk full (a tmpfs home); a client
# whose clock is ten minutes off; a hostile market (Fuzz/hostile_market.py) that relays `provide`
# and `submit --wait` to a real one and sends them mutated frames of every kind (1 500 quick,
# 10 000 in full, or CMM_HOSTILE_FRAMES): both stay up or stop with a clear error, write nothing
# outside their homes, and the real books balance. The full run also sends 100 000 hostile
# frames to a live server (the frame fuzzer) and runs the coverage-guided fuzzer for five
# minutes (scripts/fuzz.sh).
# Needs root, Docker and PostgreSQL (started when missing, as `scripts/test.sh` does); in CI, or
# with CMM_REQUIRE_DOCKER or CMM_REQUIRE_POSTGRES set, a scenario that cannot run is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
trap stop_started_services EXIT

ARGUMENTS=()
FULL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ARGUMENTS+=(--quick); FULL=0 ;;
        --only)
            [ $# -ge 2 ] || die "--only needs a part of a scenario's name"
            ARGUMENTS+=(--only "$2"); FULL=0; shift ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (allowed: --quick, --only TEXT, --help)" ;;
    esac
    shift
done

ensure_docker
apt_install postgresql
log "swift build (the tool and the fault harness)"
swift build --product claude-max-market >&2
swift build --product cmm-faults >&2
"$(swift build --show-bin-path)/cmm-faults" "${ARGUMENTS[@]}"
if [ "$FULL" = 1 ]; then
    log "the frame fuzzer at full size: 100 000 hostile frames against a live server"
    swift build --build-tests >&2
    CMM_FUZZ_FRAMES=100000 swift test --skip-build --filter FrameFuzzTests
    log "the coverage-guided fuzzer (libFuzzer) on the envelope, sealed-file and armor parsers, 5 minutes"
    scripts/fuzz.sh --seconds 300
fi
