#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through `swift build -Xswiftc -sanitize=fuzzer`) of the
# parsers that meet hostile bytes first: the signed envelope and its bodies, the sealed file
# header, sealed files (also past a header whose key opens), armor, workspace archives (strict
# and lenient) and workspace patches. Any crash, trap, leak of
# time (5 s per input) or memory (2 GB) fails the run, and the input that caused it is kept.
#
#   scripts/fuzz.sh                  60 seconds
#   scripts/fuzz.sh --seconds N      N seconds
#
# The fuzzer builds in its own directory (.build-fuzz: every Swift module instrumented). Seeds:
# a signed envelope, a sealed file and an armored one made by the tool. A crash is replayed with
# `swift run cmm-fuzz FILE` (a normal build replays inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SECONDS_TO_RUN=60
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds)
            [[ "${2:-}" =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || die "--seconds needs a whole number of seconds above 0"
            SECONDS_TO_RUN="$2"; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (allowed: --seconds N, --help)" ;;
    esac
    shift
done

log "swift build --build-path .build-fuzz -sanitize=fuzzer (the fuzzer) and the tool (for seeds)"
swift build --build-path .build-fuzz --product cmm-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DCMM_LIBFUZZER >&2
swift build --product claude-max-market >&2
FUZZER="$(swift build --build-path .build-fuzz --show-bin-path)/cmm-fuzz"
TOOL="$(swift build --show-bin-path)/claude-max-market"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cmm-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/corpus" "$WORK/home" "$WORK/crashes"
export CMM_HOME="$WORK/home"
printf 'a sample the fuzzer starts from\n' > "$WORK/plain"
peer="$("$TOOL" keys show --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["peerId"])')"
"$TOOL" encrypt --input "$WORK/plain" --recipient "$peer" --output "$WORK/sealed" >/dev/null
"$TOOL" encrypt --input "$WORK/plain" --recipient "$peer" --output "$WORK/armored" --armor >/dev/null
envelope='{"v":1,"type":"task.post","id":"seed-1","from":"'"$peer"'","ts":1764000000000,"nonce":"AAAAAAAAAAAAAAAAAAAAAA==","body":"{\"taskId\":\"t1\",\"maxPrice\":2000000,\"timeoutSeconds\":60}","sig":"AAAA"}'
printf '\000%s' "$envelope" > "$WORK/corpus/envelope"
{ printf '\001'; cat "$WORK/sealed"; } > "$WORK/corpus/header"
{ printf '\002'; cat "$WORK/sealed"; } > "$WORK/corpus/sealed"
{ printf '\003'; tail -c +80 "$WORK/sealed"; } > "$WORK/corpus/chunks"
{ printf '\004'; cat "$WORK/armored"; } > "$WORK/corpus/armored"
mkdir -p "$WORK/tree/src" && printf 'x\n' > "$WORK/tree/src/a.txt" && ln -s src/a.txt "$WORK/tree/link"
{ printf '\005'; tar -c --format=ustar -C "$WORK/tree" .; } > "$WORK/corpus/workspace"
{ printf '\006'; tar -c --format=gnu -C "$WORK/tree" .; } > "$WORK/corpus/workdir"
{
    printf '\007# claude-max-market workspace patch; base sha256:00\ndiff --git a/a.txt b/a.txt\n'
    printf 'index %s..%s 100644\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1,2 @@\n x\n+y\n' \
        587be6b4c3f93f93c489c0111bba5596147a26cb 0000000000000000000000000000000000000000
} > "$WORK/corpus/patch"

log "fuzzing for $SECONDS_TO_RUN s"
if "$FUZZER" -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$WORK/crashes/" "$WORK/corpus" 2>"$WORK/fuzz.log"; then
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "$WORK/fuzz.log" | sed 's/^/  /' || true
    log "no crash in $SECONDS_TO_RUN s"
else
    tail -40 "$WORK/fuzz.log" >&2
    kept="fuzz-crashes-$(date +%Y%m%d-%H%M%S)"
    cp -r "$WORK/crashes" "$kept"
    die "the fuzzer found a failing input (kept in $kept; replay with: swift run cmm-fuzz $kept/FILE)"
fi
