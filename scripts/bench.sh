#!/usr/bin/env bash
# Side-by-side benchmark: times a full fresh copy of the same data, from the same local
# S3-compatible server (`rclone serve s3` on loopback), by s3-synchronizer, `rclone copy` and
# `s5cmd cp`, and prints a table of the best times. The upload sets time the other way: the same
# local files uploaded by each tool to the same server.
#
#   scripts/bench.sh                              # every set, 3 runs of each tool
#   scripts/bench.sh --sets small --runs 5
#   scripts/bench.sh --sets up-small,up-large     # the upload sets only
#   scripts/bench.sh --tools rclone,s5cmd         # only some of the tools
#   scripts/bench.sh --logs /tmp/bench-logs       # keep each run's output there
#   scripts/bench.sh --mount [ARGS...]            # mount mode: runs scripts/bench_mount.sh ARGS
#
# Mount mode (`s3-synchronizer mount`: cached reads, first byte and tail reads under a download
# backlog, walking the tree, Parquet reads, vs rclone mount and plain GETs) has its own script,
# scripts/bench_mount.sh (--help there).
#
# Sets (bucket `bench`; random data written to the server's disk before it starts, or for the
# upload sets to a local directory):
#   small     download: 1,000 objects of 256 KiB under small/
#   large     download: 2 objects of 512 MiB under large/
#   up-small  upload: 1,000 local files of 256 KiB, to up/up-small/TOOL-ROUND/
#   up-large  upload: 2 local files of 512 MiB, to up/up-large/TOOL-ROUND/
# The default is every set: about 4 minutes on 2 cores (after the build), 1 for the downloads.
# Tools, downloading each into a new empty destination, `sync` run before each timed copy:
#   ours    s3-synchronizer sync (defaults: --concurrency 20, --part-size 8MiB)
#   rclone  rclone copy --transfers 16 --multi-thread-streams 16, 8 MiB chunks above 8 MiB
#   s5cmd   s5cmd --numworkers 16 cp (its default part size and per-file concurrency)
# and uploading each into a new empty prefix (no tool sees another's objects):
#   ours    s3-synchronizer sync of a writeable mount (fresh state) whose directory holds hard
#           links to the files: it lists the empty prefix, walks the directory, HEADs each key
#           and uploads (If-None-Match; multipart above --part-size 8MiB; --concurrency 20)
#   rclone  rclone copy --transfers 16 --s3-upload-concurrency 16, 8 MiB chunks above 8 MiB
#   s5cmd   s5cmd --numworkers 16 cp (its default part size and per-file concurrency)
# Within each round the order of the tools rotates, so noise hits all of them alike. Each tool's
# first copy of a set is checked byte for byte against the source (an upload by downloading its
# prefix again); a wrong copy fails the script.
# Ratio = peer's best time / ours: above 1 means s3-synchronizer is faster.
#
# Temporary data (about 2.5 GiB for the download sets, 3.5 GiB more for the upload sets: their
# files, one upload on the server and the download that checks it) goes under target/ in this
# repository (set BENCH_DIR to use another directory; not a RAM disk) and is removed on exit.
# Needs 4 GiB free there, 7 GiB with the upload sets.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,43s/^# \{0,1\}//p' "$0"
}

sets="small,large,up-small,up-large"
runs=3
tools="ours,rclone,s5cmd"
logs=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --mount)
        shift
        exec bash "$(dirname "$0")/bench_mount.sh" "$@"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        value_option "sets runs tools logs" "$@" || die "unknown argument: $1 (try --help)"
        shift "$OPT_SHIFT"
        ;;
    esac
done

declare -a set_list tool_list down_list=() up_list=()
comma_list set_list --sets "$sets"
comma_list tool_list --tools "$tools"
for s in "${set_list[@]}"; do
    case "$s" in
    small | large) down_list+=("$s") ;;
    up-small | up-large) up_list+=("$s") ;;
    *) die "unknown set '$s' (small, large, up-small, up-large)" ;;
    esac
done
have_ours=0
for t in "${tool_list[@]}"; do
    case "$t" in
    ours) have_ours=1 ;;
    rclone | s5cmd) ;;
    *) die "unknown tool '$t' (ours, rclone, s5cmd)" ;;
    esac
done
need_positive_int --runs "$runs"

ensure_python_tools
if [[ $have_ours -eq 1 ]]; then
    build_tool
fi

# ---------------------------------------------------------------------------------------------
# Scratch space on a real disk: the upload sets need room for their local files, one tool's
# copy on the server and the download that checks it.
need_gib=4
if [[ ${#up_list[@]} -gt 0 ]]; then
    need_gib=7
fi
make_bench_dir "$need_gib" "the benchmark needs"
work="$TEMP_DIR"
data="$work/data"
local_data="$work/local"
dest="$work/dest"
check="$work/check"
logs="${logs:-$work/logs}"
mkdir -p "$data/bench" "$local_data" "$logs"

# write_sets ROOT SET...: random data of each SET under ROOT/SET (nothing without a SET).
write_sets() {
    [[ $# -gt 1 ]] || return 0
    python3 "$REPO_ROOT/scripts/bench_data.py" sets "$@" ||
        die "python3 scripts/bench_data.py failed (exit code $?)"
}
log "writing random data under $work"
write_sets "$data/bench" "${down_list[@]}"
write_sets "$local_data" "${up_list[@]}"
sync

# The server starts once the data is in place; each download set (prefix SET/) is listed once
# before timing.
start_bench_server "$data" "${down_list[@]/%//}"

# ---------------------------------------------------------------------------------------------
# run_tool TOOL SET: one fresh copy of SET into $dest/SET (ours also keeps its state in $dest).
run_tool() {
    local tool="$1" set="$2"
    case "$tool" in
    ours)
        s3_env "$TOOL" sync \
            --default-s3-mounts "[{\"id\":\"$set\",\"bucket\":\"bench\",\"prefix\":\"$set/\"}]" \
            --destination "$dest" --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION"
        ;;
    rclone)
        s3_env rclone copy "bench:bench/$set" "$dest/$set" \
            --transfers 16 --multi-thread-streams 16 \
            --multi-thread-chunk-size 8M --multi-thread-cutoff 8M
        ;;
    s5cmd)
        s3_env s5cmd --endpoint-url "$S3_ENDPOINT" --numworkers 16 \
            cp "s3://bench/$set/*" "$dest/$set/"
        ;;
    *) die "unknown tool $tool" ;;
    esac
}

# run_upload TOOL SET PREFIX: one upload of the local files of SET into the empty PREFIX (which
# ends in /) of the bucket; ours uploads $dest/SET, hard links to them, and keeps its state in
# $dest.
run_upload() {
    local tool="$1" set="$2" prefix="$3"
    case "$tool" in
    ours)
        s3_env "$TOOL" sync --default-s3-mounts \
            "[{\"id\":\"$set\",\"bucket\":\"bench\",\"prefix\":\"$prefix\",\"writeable\":true}]" \
            --destination "$dest" --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION"
        ;;
    rclone)
        s3_env rclone copy "$local_data/$set" "bench:bench/${prefix%/}" \
            --transfers 16 --s3-upload-concurrency 16 --s3-chunk-size 8M --s3-upload-cutoff 8M
        ;;
    s5cmd)
        s3_env s5cmd --endpoint-url "$S3_ENDPOINT" --numworkers 16 \
            cp "$local_data/$set/*" "s3://bench/$prefix"
        ;;
    *) die "unknown tool $tool" ;;
    esac
}

# verify SET TOOL: the copy in $dest equals the source, and nothing else is there.
verify() {
    local set="$1" tool="$2"
    if ! diff -r -q "$data/bench/$set" "$dest/$set" >"$logs/diff-$set-$tool.txt" 2>&1; then
        head -n 20 "$logs/diff-$set-$tool.txt" >&2
        die "WRONG COPY: $tool's copy of set '$set' differs from the source (see above)"
    fi
    expect_entries "$dest" "$set" .s3-synchronizer
}

# verify_upload SET TOOL PREFIX: the objects under PREFIX, downloaded again (by s5cmd), equal
# the local files of SET, and nothing else is there; the bucket holds nothing but the sets.
verify_upload() {
    local set="$1" tool="$2" prefix="$3"
    rm -rf -- "$check"
    mkdir -p -- "$check"
    if ! s3_env s5cmd --endpoint-url "$S3_ENDPOINT" --numworkers 16 \
        cp "s3://bench/$prefix*" "$check/" >"$logs/check-$set-$tool.txt" 2>&1; then
        tail -n 5 "$logs/check-$set-$tool.txt" >&2
        die "WRONG UPLOAD: $tool's upload of set '$set' to s3://bench/$prefix cannot be downloaded (see above)"
    fi
    if ! diff -r -q "$local_data/$set" "$check" >"$logs/diff-$set-$tool.txt" 2>&1; then
        head -n 20 "$logs/diff-$set-$tool.txt" >&2
        die "WRONG UPLOAD: $tool's upload of set '$set' differs from the local files (see above)"
    fi
    expect_entries "$data/bench" up "${down_list[@]}"
    rm -rf -- "$check"
}

declare -A times   # "set tool" -> space-separated seconds of each run
declare -A bytes   # set -> total bytes
for s in "${down_list[@]}"; do
    bytes[$s]="$(find "$data/bench/$s" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')"
done
for s in "${up_list[@]}"; do
    bytes[$s]="$(find "$local_data/$s" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')"
done

for s in "${set_list[@]}"; do
    upload=0
    [[ "$s" == up-* ]] && upload=1
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${tool_list[@]}"
        for t in "${TURN[@]}"; do
            rm -rf -- "$dest"
            mkdir -p -- "$dest"
            # An upload goes to a prefix of its own, empty until then; ours uploads hard links
            # to the same files as the peers (the same inodes, so the same page cache).
            prefix="up/$s/$t-$((round + 1))/"
            run=(run_tool "$t" "$s")
            if [[ $upload -eq 1 ]]; then
                run=(run_upload "$t" "$s" "$prefix")
                if [[ "$t" == ours ]]; then
                    cp -al -- "$local_data/$s" "$dest/$s"
                fi
            fi
            sync
            out="$logs/$s-$t-$((round + 1)).log"
            t0="$(now)"
            rc=0
            "${run[@]}" >"$out" 2>&1 || rc=$?
            if [[ $rc -eq 130 || $rc -eq 143 ]]; then
                log "interrupted"
                exit "$rc"
            elif [[ $rc -ne 0 ]]; then
                tail -n 20 "$out" >&2
                die "$t failed on set '$s' with exit code $rc (round $((round + 1)); its output is above)"
            fi
            t1="$(now)"
            secs="$(elapsed "$t0" "$t1")"
            times["$s $t"]="${times["$s $t"]:-}${times["$s $t"]:+ }$secs"
            printf '   %-8s round %d  %-6s %7s s\n' "$s" $((round + 1)) "$t" "$secs" >&2
            if [[ $round -eq 0 && $upload -eq 1 ]]; then
                verify_upload "$s" "$t" "$prefix"
            elif [[ $round -eq 0 ]]; then
                verify "$s" "$t"
            fi
            # Only the server's disk holds an upload: room for the next one.
            if [[ $upload -eq 1 ]]; then
                rm -rf -- "${data:?}/bench/$prefix"
            fi
        done
    done
    rm -rf -- "$dest"
done

# ---------------------------------------------------------------------------------------------
echo
echo "$(nproc) CPUs; $(rclone version 2>/dev/null | head -n 1); s5cmd $(s5cmd version 2>/dev/null);" \
    "best of $runs runs; MB = 10^6 bytes"
echo
echo "| set | tool | best s | MB/s | ratio (peer s / ours s) |"
echo "|---|---|---:|---:|---:|"
for s in "${set_list[@]}"; do
    ours_best=""
    if [[ $have_ours -eq 1 ]]; then
        ours_best="$(best "${times["$s ours"]}")"
    fi
    for t in "${tool_list[@]}"; do
        b="$(best "${times["$s $t"]}")"
        awk -v set="$s" -v tool="$t" -v b="$b" -v n="${bytes[$s]}" -v o="$ours_best" 'BEGIN {
            name = (tool == "ours") ? "s3-synchronizer" : tool
            ratio = (o == "" || o + 0 == 0) ? "-" : sprintf("%.2f", b / o)
            printf "| %s | %s | %.2f | %.0f | %s |\n", set, name, b, n / b / 1e6, ratio
        }'
    done
done
echo
echo "All runs (seconds):"
for s in "${set_list[@]}"; do
    for t in "${tool_list[@]}"; do
        printf '  %-8s %-6s %s\n' "$s" "$t" "${times["$s $t"]}"
    done
done
