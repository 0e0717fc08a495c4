#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through `swift build -Xswiftc -sanitize=fuzzer`) of the
# parsers that meet hostile bytes first. Targets:
#   all     the signed envelope and its bodies, the sealed file header, sealed files (also past
#           a header whose key opens), armor, workspace archives and patches (the first byte of
#           an input picks the parser)
#   tar     a workspace archive, read strictly (a requester's) and leniently (what a job left)
#   patch   a result's patch, parsed
#   apply   a patch applied to a scratch tree: besides not crashing, nothing lands outside it,
#           no link in it leads out, no staging directory stays, a refusal changes nothing
#   market  a hostile market (Fuzz/hostile_market.py) in front of a real one sends `provide` and
#           `submit --wait` 10 000 mutated frames of every kind (the fault suite's scenario; not
#           libFuzzer, and not part of the default run: --seconds does not apply)
# Any crash, trap, broken promise, leak of time (5 s per input) or memory (2 GB) fails the run,
# and the input that caused it is kept.
#
#   scripts/fuzz.sh                          every target in turn, 60 seconds each
#   scripts/fuzz.sh --target tar --seconds N one target, N seconds
#
# The fuzzer builds in its own directory (.build-fuzz: every Swift module instrumented). Seeds:
# a signed envelope, a sealed file and an armored one made by the tool, archives, patches made by
# git against the apply target's tree, and the inputs that once crashed the parsers. A crash is
# replayed with `CMM_FUZZ_TARGET=NAME swift run cmm-fuzz FILE` (a normal build replays inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SECONDS_TO_RUN=60
TARGETS=(all tar patch apply)
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds)
            [[ "${2:-}" =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || die "--seconds needs a whole number of seconds above 0"
            SECONDS_TO_RUN="$2"; shift ;;
        --target)
            case "${2:-}" in
                all | tar | patch | apply) TARGETS=("$2") ;;
                market)
                    CMM_HOSTILE_FRAMES="${CMM_HOSTILE_FRAMES:-10000}" exec scripts/faults.sh --only "hostile market" ;;
                *) die "--target must be one of all, tar, patch, apply, market (got '${2:-}')" ;;
            esac
            shift ;;
        -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (allowed: --target NAME, --seconds N, --help)" ;;
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
mkdir -p "$WORK/home" "$WORK/crashes"
export CMM_HOME="$WORK/home"

# --- seeds -----------------------------------------------------------------------------------
mkdir -p "$WORK/seeds/all" "$WORK/seeds/tar" "$WORK/seeds/patch" "$WORK/seeds/apply"
printf 'a sample the fuzzer starts from\n' > "$WORK/plain"
peer="$("$TOOL" keys show --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["peerId"])')"
"$TOOL" encrypt --input "$WORK/plain" --recipient "$peer" --output "$WORK/sealed" >/dev/null
"$TOOL" encrypt --input "$WORK/plain" --recipient "$peer" --output "$WORK/armored" --armor >/dev/null
envelope='{"v":1,"type":"task.post","id":"seed-1","from":"'"$peer"'","ts":1764000000000,"nonce":"AAAAAAAAAAAAAAAAAAAAAA==","body":"{\"taskId\":\"t1\",\"maxPrice\":2000000,\"timeoutSeconds\":60}","sig":"AAAA"}'
printf '\000%s' "$envelope" > "$WORK/seeds/all/envelope"
{ printf '\001'; cat "$WORK/sealed"; } > "$WORK/seeds/all/header"
{ printf '\002'; cat "$WORK/sealed"; } > "$WORK/seeds/all/sealed"
{ printf '\003'; tail -c +80 "$WORK/sealed"; } > "$WORK/seeds/all/chunks"
{ printf '\004'; cat "$WORK/armored"; } > "$WORK/seeds/all/armored"

# Archives: a small tree with a link chain, in ustar and GNU form, and one with a PAX header.
mkdir -p "$WORK/tree/src/deep" && printf 'x\n' > "$WORK/tree/src/a.txt"
ln -s src/a.txt "$WORK/tree/link" && ln -s .. "$WORK/tree/src/deep/up" && ln -s up/a.txt "$WORK/tree/src/deep/via"
tar -c --format=ustar -C "$WORK/tree" . > "$WORK/seeds/tar/ustar"
tar -c --format=gnu -C "$WORK/tree" . > "$WORK/seeds/tar/gnu"
tar -c --format=pax -C "$WORK/tree" . > "$WORK/seeds/tar/pax"
# Once crashed the reader: a PAX record whose length overflows an index (issue #32).
python3 - "$WORK/seeds/tar/pax-overflow" <<'PY'
import sys
def block(name, kind, body):
    header = bytearray(512)
    header[0:len(name)] = name
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % len(body)
    header[156:157] = kind
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + body + bytes(-len(body) % 512)
record = b"9223372036854775807 path=x\n"
sys.stdout = open(sys.argv[1], "wb")
sys.stdout.write(block(b"pax", b"x", record) + block(b"x", b"0", b"") + bytes(1024))
PY
for file in "$WORK/seeds/tar/"*; do { printf '\005'; cat "$file"; } > "$WORK/seeds/all/tar-$(basename "$file")"; done

# Patches: made by git against the apply target's tree (Fuzz/WorkspaceTargets.swift), with
# changes of every kind: text, mode, file to link, file to directory and back, link chains.
repo="$WORK/repo"
mkdir -p "$repo/dir/sub" && printf 'x\n' > "$repo/a.txt" && printf 'one\ntwo\nthree\n' > "$repo/dir/b.txt"
printf 'c\n' > "$repo/dir/sub/c.txt" && ln -s a.txt "$repo/link" && ln -s .. "$repo/dir/up"
git_in() { git -C "$repo" -c user.email=fuzz@localhost -c user.name=fuzz "$@"; }
git_in init -q && git_in add -A && git_in commit -qm base
seed_patch() {
    { printf '# claude-max-market workspace patch; base sha256:00\n'; git_in diff --no-renames --full-index HEAD; } \
        > "$WORK/seeds/patch/$1"
    cp "$WORK/seeds/patch/$1" "$WORK/seeds/apply/$1"
    git_in reset -q --hard && git_in clean -qfd
}
printf 'one\nTWO\nthree\nfour\n' > "$repo/dir/b.txt" && printf 'new\n' > "$repo/new.txt" && rm "$repo/a.txt"
seed_patch text
chmod +x "$repo/a.txt" && seed_patch mode
rm "$repo/a.txt" && ln -s dir/b.txt "$repo/a.txt" && rm "$repo/link" && printf 'now a file\n' > "$repo/link" && seed_patch kinds
rm "$repo/a.txt" && mkdir "$repo/a.txt" && printf 'in\n' > "$repo/a.txt/inside" && seed_patch file-to-directory
rm -r "$repo/dir/sub" && printf 'was a directory\n' > "$repo/dir/sub" && seed_patch directory-to-file
ln -s up/.. "$repo/dir/esc" && ln -s esc "$repo/chain" && seed_patch link-chain
# Once crashed the parser or the applier (issue #32).
crash() { { printf '# claude-max-market workspace patch; base sha256:00\n'; printf "$2"; } > "$WORK/seeds/patch/$1"; cp "$WORK/seeds/patch/$1" "$WORK/seeds/apply/$1"; }
zero=0000000000000000000000000000000000000000
crash empty-index 'diff --git a/a.txt b/a.txt\nindex \n'
crash empty-hunk-range 'diff --git a/a.txt b/a.txt\nindex '"$zero..$zero"' 100644\n@@ - +1 @@\n+x\n'
crash short-diff-line 'diff --git a/\n'
crash huge-literal 'diff --git a/a.txt b/a.txt\nnew file mode 100644\nindex '"$zero..$zero"'\nGIT binary patch\nliteral 9223372036854775807\nzcmV\n\n'
crash negative-hunk 'diff --git a/a.txt b/a.txt\nindex 587be6b4c3f93f93c489c0111bba5596147a26cb..'"$zero"' 100644\n@@ --9223372036854775808,1 +1 @@\n-x\n+y\n'
for file in "$WORK/seeds/patch/"*; do { printf '\007'; cat "$file"; } > "$WORK/seeds/all/patch-$(basename "$file")"; done

# --- runs --------------------------------------------------------------------------------------
for target in "${TARGETS[@]}"; do
    mkdir -p "$WORK/corpus/$target"
    cp "$WORK/seeds/$target/"* "$WORK/corpus/$target/"
    dict=()
    case "$target" in
        tar) dict=(-dict=Fuzz/tar.dict) ;;
        patch | apply) dict=(-dict=Fuzz/patch.dict) ;;
    esac
    log "fuzzing '$target' for $SECONDS_TO_RUN s"
    if CMM_FUZZ_TARGET="$target" "$FUZZER" -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -timeout=5 \
        -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" -artifact_prefix="$WORK/crashes/$target-" \
        "$WORK/corpus/$target" 2>"$WORK/fuzz-$target.log"; then
        grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+.*DONE" "$WORK/fuzz-$target.log" \
            | sed 's/^/  /' || true
        log "'$target': no crash in $SECONDS_TO_RUN s"
    else
        tail -40 "$WORK/fuzz-$target.log" >&2
        kept="fuzz-crashes-$(date +%Y%m%d-%H%M%S)"
        cp -r "$WORK/crashes" "$kept"
        die "the fuzzer found a failing input for '$target' (kept in $kept; replay with: CMM_FUZZ_TARGET=$target swift run cmm-fuzz $kept/FILE)"
    fi
done
