#!/usr/bin/env bash
# Mount-mode benchmark: times reads through `s3-synchronizer mount` and, side by side in the same
# run against the same local S3-compatible server (`rclone serve s3` on loopback), through
# `rclone mount --vfs-cache-mode full`, from local disk, and by single GETs on the idle server;
# prints a table of the best times.
#
#   scripts/bench_mount.sh                              # every case, best of 2 runs
#   scripts/bench_mount.sh --cases first-byte,tail-read --runs 5
#   scripts/bench_mount.sh --logs /tmp/bench-logs       # keep the mounts' and server's logs
#   OURS_FLAGS="--concurrency 8" scripts/bench_mount.sh   # more flags for every mount of ours
#   THIS_BUILD_FLAGS="--metrics-addr 127.0.0.1:9464" SCRAPE=127.0.0.1:9464 scripts/bench_mount.sh \
#       --cases first-byte,tail-read --versus OLD   # flags for this build's mounts only (not the
#                          # --versus build's); SCRAPE: GET http://SCRAPE/metrics twice a second
#   S3SYNC_TOOL=/tmp/old/s3-synchronizer scripts/bench_mount.sh   # another build, e.g. to compare
#   scripts/bench_mount.sh --cases first-byte,tail-read --runs 15 --versus /tmp/old/s3-synchronizer
#                          # this build and another side by side: each run mounts both, in turn
#   scripts/bench_mount.sh --cases first-byte,tail-read,cpu-share --backlog tiny
#                          # the backlog of 40,000 tiny objects instead (see first-byte)
#   scripts/bench.sh --mount --cases walk-stat          # the same, through bench.sh
#
# Cases (bucket `bench`, data written to the server's disk before it starts):
#   cached-read  a 1 GiB random file already complete in the cache, read sequentially in 1 MiB
#                reads: through our mount (FUSE passthrough), through our mount with
#                --no-passthrough (as is: the kernel keeps its pages; and with them dropped by
#                fadvise first, so the daemon serves every read), straight from the cache file,
#                and through rclone mount once rclone has it cached. Each reader reads it once
#                (checked) before timing.
#   first-byte   open + read(1) of a 64 MiB random file, and a full read of another one, through a
#                new mount with an empty cache, 1 s after it appears, while its background
#                download of a 4 GiB backlog (128 x 32 MiB, sparse on the server, listed before
#                the targets: more files than a mount downloads at once, so the targets' own
#                downloads have not started yet, as in a large bucket) is under way; vs one GET
#                of the same object on the idle server: curl (to its first byte; to its last) and
#                s5cmd cat. With --backlog tiny, the backlog of this case, tail-read and cpu-share
#                is 40,000 objects of 1 KiB in 100 directories instead (a dataset of tiny files).
#   tail-read    the last 1 MiB of a 1 GiB random file (open, seek, read) in the same new mount
#                under the same backlog (read after the first byte, before the whole 64 MiB), vs
#                one 1 MiB ranged GET on the idle server: curl, and rclone cat --offset --count.
#   walk-stat    os.walk + os.stat of 10,000 files of 1 KiB in 100 directories: through our
#                mount, on our complete cache directory (local disk), through rclone mount; each
#                walked once before timing.
#   walk-100k    the same at 100,000 files of 1 byte in 100 directories (the listing case's
#                keys), and `find DIR -type f` of them (the whole process): both timed after a
#                first walk, so what the kernel keeps of the tree answers them.
#   listing      a new mount (empty cache) of 100,000 keys in 100 directories: until the first
#                read of a file in its last directory (mounted, the directory looked for in the
#                bucket), and until its full listing is in (split by directory, in parallel), vs
#                one paginated listing of the same keys: `rclone lsf -R --fast-list` and
#                `s5cmd ls` (whole processes, as ours is). With --versus, the other build's
#                mount too (until the same first read).
#   ls-l         `ls -l` of one directory of 100,000 files: through our mount once its cache is
#                complete, on that cache directory (local disk), through rclone mount; each
#                listed once before timing (timed inside Python, the ls process included).
#   discovery    pyarrow.dataset discovery of 2,000 small Parquet files in 50 hive partitions
#                (year=/month=), then a query of one partition: through our mount once its
#                cache is complete, on that cache directory (local disk), through rclone mount;
#                each done once before timing.
#   cpu-share    a CPU-bound Python loop (5 million additions, about 0.3 s) run 1 s into a new
#                mount of ours while its background download of the 4 GiB backlog is under way;
#                vs the same loop while s5cmd cp downloads that backlog, and on an idle machine:
#                how much a notebook computing slows down while data downloads behind it.
#   parquet      pyarrow read_metadata, then ParquetFile(path).read_row_group(32), of a 2 GiB
#                Parquet file (64 row groups of 32 MiB, random int64): through a new mount with an
#                empty cache (which starts downloading the file itself in the background; no
#                other backlog), through a new rclone mount with an empty --cache-dir, and from
#                the server's local file.
# Reads are timed inside Python (open to last byte, the interpreter's start not counted); s5cmd
# and rclone cat are timed as whole processes, curl by its own clock. Every reader's bytes are
# checked against the source at least once; a wrong read fails the script.
# Ratio = the row's best time / the best time of the case's first s3-synchronizer row: above 1
# means s3-synchronizer is faster; the median of the runs is printed beside the best. For
# first-byte and tail-read, ours / GET is also printed against the goal (ours within 3x of one
# GET on an idle server), for the best times and for the medians.
#
# Temporary data (about 8 GiB at most) goes under target/ in this repository (BENCH_DIR to use
# another directory) and is removed on exit; every mount is unmounted and the server stopped,
# also on errors and Ctrl-C. Needs root (passthrough), /dev/fuse, fuse3, curl; installs pyarrow.
# Takes about 2 to 3 minutes on 2 cores (after the build).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,78s/^# \{0,1\}//p' "$0"
}

all_cases="cached-read,first-byte,tail-read,cpu-share,walk-stat,walk-100k,listing,ls-l,discovery,parquet"
cases="$all_cases"
runs=2
logs=""
backlog=large
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    *)
        value_option "cases runs logs versus backlog" "$@" || die "unknown argument: $1 (try --help)"
        shift "$OPT_SHIFT"
        ;;
    esac
done
logs_keep="${logs:-}"

declare -A want=()
declare -a case_list
comma_list case_list --cases "$cases"
for c in "${case_list[@]}"; do
    case "$c" in
    cached-read | cached) want[cached-read]=1 ;;
    first-byte | first) want[first-byte]=1 ;;
    tail-read | tail) want[tail-read]=1 ;;
    cpu-share | cpu) want[cpu-share]=1 ;;
    walk-stat | walk) want[walk-stat]=1 ;;
    walk-100k) want[walk-100k]=1 ;;
    listing | list) want[listing]=1 ;;
    discovery) want[discovery]=1 ;;
    ls-l | ls) want[ls-l]=1 ;;
    parquet) want[parquet]=1 ;;
    *) die "unknown case '$c' ($all_cases)" ;;
    esac
done
need_positive_int --runs "$runs"
case "$backlog" in
large) backlog_label="4 GiB backlog" ;;
tiny) backlog_label="backlog of 40,000 tiny objects" ;;
*) die "--backlog is large or tiny, not '$backlog'" ;;
esac
has() { [[ -n "${want[$1]:-}" ]]; }
versus="${versus:-}"
if [[ -n "$versus" ]]; then
    [[ -x "$versus" ]] || die "--versus $versus is not an executable"
    has first-byte || has tail-read || has listing ||
        die "--versus compares builds in the first-byte, tail-read and listing cases: ask for one of them"
fi

ensure_python_tools
ensure_fuse
command -v curl >/dev/null 2>&1 || _apt_install curl || die "curl is needed (apt-get install curl)"
if { has parquet || has discovery; } && ! python3 -c 'import pyarrow.parquet' >/dev/null 2>&1; then
    pip_install pyarrow
    python3 -c 'import pyarrow.parquet' || die "pyarrow is installed but cannot be imported"
fi
build_tool

# ---------------------------------------------------------------------------------------------
# Scratch space on a real disk.
need_gib=1
has cached-read && need_gib=$((need_gib + 4))
if has first-byte || has tail-read || has cpu-share; then need_gib=$((need_gib + 6)); fi
has parquet && need_gib=$((need_gib + 4))
make_bench_dir "$need_gib" "these cases need"
work="$TEMP_DIR"
data="$work/data"
src="$data/bench"
logs="$work/logs"
mkdir -p "$src" "$logs"

# ---------------------------------------------------------------------------------------------
# Mounts: each runs in its own session, in the background, and is unmounted on any exit.

declare -A MOUNT_PIDS=() # mount point -> the process serving it
MOUNT_LOG_LEVEL="info,s3_synchronizer=debug"
# A scrape of this build's metrics twice a second, for the whole run (SCRAPE=HOST:PORT).
if [[ -n "${SCRAPE:-}" ]]; then
    # shellcheck disable=SC2016 # expanded by the inner shell
    spawn "$logs/scrape.log" bash -c \
        'while sleep 0.5; do curl -s -o /dev/null "http://$0/metrics" || true; done' "$SCRAPE"
fi

# On exit the mounts are unmounted and the logs kept (--logs) first; lib.sh then stops the
# server and removes the scratch data.
_bench_on_exit() {
    local mnt
    for mnt in "${!MOUNT_PIDS[@]}"; do
        unmount "$mnt" || true
    done
    if [[ -n "$logs_keep" && -d "$logs" ]]; then
        if mkdir -p -- "$logs_keep" && cp -r -- "$logs"/. "$logs_keep"/; then
            if [[ -n "$S3_SERVER_LOG" && -f "$S3_SERVER_LOG" ]]; then
                cp -- "$S3_SERVER_LOG" "$logs_keep"/ || true
            fi
            log "logs kept in $logs_keep"
        fi
    fi
}
on_exit_first _bench_on_exit

# wait_mounted MNT ENTRY LOG: waits until MNT is a mount point that lists ENTRY, for at most
# MOUNT_WAIT seconds (60 unless set).
wait_mounted() {
    local mnt="$1" entry="$2" logfile="$3" pid="${MOUNT_PIDS[$1]}" i
    for ((i = 0; i < ${MOUNT_WAIT:-60} * 20; i++)); do
        if mountpoint -q "$mnt" && [[ -e "$mnt/$entry" ]]; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2
            die "the process mounting $mnt exited before it was ready (its log is above)"
        fi
        sleep 0.05
    done
    tail -n 20 "$logfile" >&2
    die "$mnt did not list $entry within ${MOUNT_WAIT:-60} s (the log is above)"
}

# start_ours ID PREFIX MNT CACHE LOG [FLAGS...]: our mount of s3://bench/PREFIX at MNT/ID, its
# cache in CACHE; returns once MNT/ID is listed. MOUNT_TOOL, when set, is the binary mounted
# instead of TOOL.
start_ours() {
    local id="$1" prefix="$2" mnt="$3" cache="$4" logfile="$5"
    shift 5
    mkdir -p -- "$mnt" "$cache"
    local own=""
    [[ -z "${MOUNT_TOOL:-}" || "${MOUNT_TOOL:-}" == "$TOOL" ]] && own="${THIS_BUILD_FLAGS:-}"
    # shellcheck disable=SC2086 # OURS_FLAGS and THIS_BUILD_FLAGS hold flags, split on purpose
    spawn "$logfile" env RUST_LOG="$MOUNT_LOG_LEVEL" "${MOUNT_TOOL:-$TOOL}" mount \
        --default-s3-mounts "[{\"id\":\"$id\",\"bucket\":\"bench\",\"prefix\":\"$prefix\"}]" \
        --destination "$mnt" --cache-dir "$cache" --endpoint-url "$S3_ENDPOINT" \
        --region "$S3_REGION" "$@" ${OURS_FLAGS:-} $own
    MOUNT_PIDS[$mnt]="$BG_PID"
    wait_mounted "$mnt" "$id" "$logfile"
}

# start_rclone MNT PREFIX CACHE LOG ENTRY: rclone mount of s3://bench/PREFIX at MNT, its VFS cache
# in CACHE; returns once MNT lists ENTRY.
start_rclone() {
    local mnt="$1" prefix="$2" cache="$3" logfile="$4" entry="$5"
    mkdir -p -- "$mnt" "$cache"
    spawn "$logfile" rclone mount "bench:bench/$prefix" "$mnt" --vfs-cache-mode full --read-only \
        --cache-dir "$cache"
    MOUNT_PIDS[$mnt]="$BG_PID"
    wait_mounted "$mnt" "$entry" "$logfile"
}

# unmount MNT: unmounts MNT and waits for the process that served it to exit.
unmount() {
    local mnt="$1" pid="${MOUNT_PIDS[$1]:-}" i
    if mountpoint -q "$mnt" 2>/dev/null; then
        fusermount3 -u "$mnt" 2>/dev/null || { sleep 0.5 && fusermount3 -u "$mnt" 2>/dev/null; } ||
            fusermount3 -u -z "$mnt" 2>/dev/null || log "could not unmount $mnt"
    fi
    if [[ -n "$pid" ]]; then
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "the process serving $mnt ($pid) is still running 10 s after the unmount; stopping it"
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    fi
    unset "MOUNT_PIDS[$mnt]"
}

# ---------------------------------------------------------------------------------------------
# Data, and the Python side of the measurements: scripts/bench_data.py writes the data,
# scripts/bench_mount_timing.py times the reads (--help there).

helper="$REPO_ROOT/scripts/bench_mount_timing.py"
py() { python3 "$helper" "$@" || die "python3 $helper $* failed (exit code $?)"; }

log "writing the data under $work"
tiny_backlog=()
[[ "$backlog" == tiny ]] && tiny_backlog=(tiny-backlog)
python3 "$REPO_ROOT/scripts/bench_data.py" cases "$src" "${!want[@]}" "${tiny_backlog[@]}" ||
    die "python3 scripts/bench_data.py failed (exit code $?)"
sync

# The server starts once the data is in place; all of the bucket is listed once before timing.
start_bench_server "$data" ""

# curl_get KEY WHAT [RANGE] [OUT]: one GET (ranged with RANGE) on the server; prints curl's time
# to the first byte (WHAT=first) or to the last (WHAT=total), the body going to OUT.
curl_get() {
    local key="$1" what="$2" range="${3:-}" out="${4:-/dev/null}"
    local args=(-sS --fail -o "$out" --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY:$S3_SECRET")
    [[ -n "$range" ]] && args+=(-r "$range")
    if [[ "$what" == first ]]; then args+=(-w '%{time_starttransfer}'); else args+=(-w '%{time_total}'); fi
    curl "${args[@]}" "$S3_ENDPOINT/bench/$key" || die "curl GET of $key failed"
}

sha_of() { sha256sum | cut -d ' ' -f 1; }

# ---------------------------------------------------------------------------------------------
# Bookkeeping: measurements (table rows grouped by case), their readers, times of each run.

measures=()
declare -A m_label=() m_bytes=() m_tools=() t_label=() times=()
# measure KEY BYTES LABEL TOOL TOOL_LABEL...: a table group; BYTES "-" for no rate; the first
# tool is the reference of the ratios.
measure() {
    local key="$1"
    m_bytes[$key]="$2"
    m_label[$key]="$3"
    shift 3
    measures+=("$key")
    m_tools[$key]=""
    while [[ $# -ge 2 ]]; do
        m_tools[$key]+="${m_tools[$key]:+ }$1"
        t_label["$key|$1"]="$2"
        shift 2
    done
}
# record KEY TOOL ROUND SECONDS
record() {
    [[ "$4" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "not a time for $1 $2: '$4'"
    times["$1|$2"]="${times["$1|$2"]:-}${times["$1|$2"]:+ }$4"
    printf '   %-14s round %d  %-12s %9.4f s\n' "$1" $(($3 + 1)) "$2" "$4" >&2
}
notes=()

# ---------------------------------------------------------------------------------------------
case_cached_read() {
    local rel=big-1GiB.bin size=$((1 << 30)) sha round t
    local pt="$work/mnt-cr-pt" np="$work/mnt-cr-np" rc="$work/mnt-cr-rclone"
    local cpt="$work/cache-cr-pt" cnp="$work/cache-cr-np" crc="$work/cache-cr-rclone"
    log "cached-read: two mounts (passthrough, --no-passthrough) download the 1 GiB file; rclone mount"
    measure cached-read "$size" "cached-read: 1 GiB cached file, sequential" \
        ours "s3-synchronizer mount (passthrough)" \
        ours-np "s3-synchronizer mount --no-passthrough" \
        ours-np-drop "s3-synchronizer mount --no-passthrough, its pages dropped first" \
        cache "the cache file, read directly" \
        rclone "rclone mount --vfs-cache-mode full (cached)"
    sha="$(sha_of <"$src/cr/$rel")"
    start_ours cr cr/ "$pt" "$cpt" "$logs/ours-cached-read.log"
    start_ours cr cr/ "$np" "$cnp" "$logs/ours-cached-read-no-passthrough.log" --no-passthrough
    start_rclone "$rc" cr "$crc" "$logs/rclone-cached-read.log" "$rel"
    wait_pass "$logs/ours-cached-read.log" cr
    wait_pass "$logs/ours-cached-read-no-passthrough.log" cr
    # The cache holds CACHE/<mount id>/<key without the prefix>.
    [[ -f "$cpt/cr/$rel" && "$(stat -c %s "$cpt/cr/$rel")" -eq "$size" ]] ||
        die "the complete file is not at $cpt/cr/$rel: $(find "$cpt" -maxdepth 3 | head -n 10)"
    declare -A path=([ours]="$pt/cr/$rel" [ours-np]="$np/cr/$rel" [ours-np-drop]="$np/cr/$rel"
        [cache]="$cpt/cr/$rel" [rclone]="$rc/$rel")
    local order=(ours ours-np ours-np-drop cache rclone)
    for t in "${order[@]}"; do # warm up (rclone caches it now), and check
        py read "${path[$t]}" "$size" --sha "$sha" >/dev/null
    done
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${order[@]}"
        for t in "${TURN[@]}"; do
            if [[ "$t" == ours-np-drop ]]; then
                record cached-read "$t" "$round" "$(py read "${path[$t]}" "$size" --drop)"
            else
                record cached-read "$t" "$round" "$(py read "${path[$t]}" "$size")"
            fi
        done
    done
    if grep -q 'passthrough=true' "$logs/ours-cached-read.log"; then
        notes+=("cached-read: the kernel accepted FUSE passthrough (\"FUSE session ready passthrough=true\")")
    else
        notes+=("cached-read: FUSE passthrough NOT in use: $(grep -m 1 'passthrough' "$logs/ours-cached-read.log" || echo 'no passthrough line in the log')")
    fi
    if grep -q 'passthrough refused' "$logs/ours-cached-read.log"; then
        notes+=("cached-read: some opens were refused passthrough: $(grep -m 1 'passthrough refused' "$logs/ours-cached-read.log")")
    fi
    unmount "$pt"
    unmount "$np"
    unmount "$rc"
    rm -rf -- "$cpt" "$cnp" "$crc"
}

# ---------------------------------------------------------------------------------------------
case_backlog() {
    local first=0 tail=0 round t out kind secs state specs=() mnt="$work/mnt-bl" cache mib
    local mlog one=$((1 << 20)) big=$((1 << 30)) key waits build
    has first-byte && first=1
    has tail-read && tail=1
    local f64=bl/zz/first-64MiB.bin w64=bl/zz/whole-64MiB.bin t1g=bl/zz/tail-1GiB.bin
    local ours="s3-synchronizer mount, new, $backlog_label downloading"
    local range="$((big - one))-$((big - 1))" builds=(ours) versus_row=()
    if [[ -n "$versus" ]]; then
        builds+=(versus)
        versus_row=(versus "the same, the --versus build ($(basename -- "$versus")), mounted in turn with ours")
    fi
    if [[ $first -eq 1 ]]; then
        measure first-byte - "first-byte: open + read 1 B of a 64 MiB file" \
            ours "$ours" "${versus_row[@]}" \
            curl "one GET, idle server (curl, to first byte)" \
            curl-busy "a GET of that byte 1 s into our backlog, just before our read (curl, to first byte)"
        measure first-whole $((64 << 20)) "first-byte: open + read all of a 64 MiB file" \
            ours "$ours" "${versus_row[@]}" \
            curl "one GET, idle server (curl)" \
            s5cmd "s5cmd cat, idle server (whole process)"
        specs+=("first=${f64#bl/}")
        # The peers' bytes, checked once.
        curl_get "$w64" total "" "$work/get.out" >/dev/null
        [[ "$(sha_of <"$work/get.out")" == "$(sha_of <"$src/$w64")" ]] || die "WRONG DATA: curl's GET of $w64"
        [[ "$(sha_of <"$work/get.out")" == "$(s3_env s5cmd --endpoint-url "$S3_ENDPOINT" cat "s3://bench/$w64" | sha_of)" ]] ||
            die "WRONG DATA: s5cmd cat of $w64"
    fi
    if [[ $tail -eq 1 ]]; then
        measure tail-read "$one" "tail-read: last 1 MiB of a 1 GiB file" \
            ours "$ours" "${versus_row[@]}" \
            curl "one ranged GET, idle server (curl)" \
            curl-busy "one ranged GET 1 s into our backlog, just before our read (curl)" \
            rclone "rclone cat --offset --count, idle server (whole process)"
        specs+=("tail=${t1g#bl/}")
        curl_get "$t1g" total "$range" "$work/get.out" >/dev/null
        [[ "$(sha_of <"$work/get.out")" == "$(tail -c "$one" "$src/$t1g" | sha_of)" ]] ||
            die "WRONG DATA: curl's ranged GET of $t1g"
        [[ "$(sha_of <"$work/get.out")" == "$(s3_env rclone cat --offset $((big - one)) --count "$one" "bench:bench/$t1g" | sha_of)" ]] ||
            die "WRONG DATA: rclone cat of the end of $t1g"
    fi
    # The reads, in this order: the first byte, the tail (before the bulk download reaches the
    # later files), then the whole 64 MiB.
    if [[ $first -eq 1 ]]; then
        specs+=("whole=${w64#bl/}")
    fi
    # backlog_round BUILD: a new mount of BUILD (ours, or with --versus the other build) under
    # the backlog, its reads timed.
    backlog_round() {
        local build="$1" cache="$work/cache-bl" mlog run="run $((round + 1))"
        [[ "$build" == ours ]] || run+=", $build"
        mlog="$logs/$build-backlog-$((round + 1)).log"
        rm -rf -- "$cache"
        t="$(now)"
        local tool="$TOOL"
        [[ "$build" == versus ]] && tool="$versus"
        MOUNT_TOOL="$tool" start_ours bl bl/ "$mnt" "$cache" "$mlog"
        log "  mounted in $(elapsed "$t" "$(now)") s; reading in 1 s, while the backlog downloads"
        sleep 1
        # What the server gives anyone at that point of the backlog: the same GETs, just before
        # our reads (the first second of a mount is the backlog's busiest). Before the other
        # build's reads too, so that both meet the server alike; recorded for ours. The first
        # byte's GET asks for that byte only: a whole 64 MiB GET would still be streaming, and
        # loading the server, when our read starts.
        local busy_first busy_tail
        [[ $first -eq 1 ]] && busy_first="$(curl_get "$f64" first 0-0)"
        [[ $tail -eq 1 ]] && busy_tail="$(curl_get "$t1g" total "$range")"
        if [[ "$build" == ours ]]; then
            [[ $first -eq 1 ]] && record first-byte curl-busy "$round" "$busy_first"
            [[ $tail -eq 1 ]] && record tail-read curl-busy "$round" "$busy_tail"
        fi
        out="$(py probe "$cache" bl bl/ "$mnt" "$src/bl" "${specs[@]}")"
        while read -r kind secs state; do
            case "$kind" in
            first) key="first-byte" ;;
            whole) key="first-whole" ;;
            tail) key="tail-read" ;;
            esac
            record "$key" "$build" "$round" "$secs"
            case "$kind" in
            first) t="$f64" ;;
            whole) t="$w64" ;;
            tail) t="$t1g" ;;
            esac
            waits="$(grep -c "read waits for its range key=$t " "$mlog" || true)"
            notes+=("$run: $key: the target in our cache before the read: $state; reads that waited for a range: $waits")
        done <<<"$out"
        if grep -q 'pass complete mount="bl"' "$mlog"; then
            notes+=("$run: WARNING: the backlog was complete before the reads ended")
        else
            # du may race with files renamed under it: its count is a rough figure anyway.
            mib="$({ du -s --block-size=1M "$cache" 2>/dev/null || true; } | cut -f 1)"
            notes+=("$run: backlog still downloading after the reads: ${mib:-?} MiB in the cache")
        fi
        unmount "$mnt"
        rm -rf -- "$cache"
    }
    log "first-byte/tail-read: each run, the peers on the idle server, then a new mount (empty cache)"
    for ((round = 0; round < runs; round++)); do
        if [[ $first -eq 1 ]]; then
            record first-byte curl "$round" "$(curl_get "$f64" first)"
            record first-whole curl "$round" "$(curl_get "$w64" total)"
            t="$(now)"
            s3_env s5cmd --endpoint-url "$S3_ENDPOINT" cat "s3://bench/$w64" >/dev/null || die "s5cmd cat failed"
            record first-whole s5cmd "$round" "$(elapsed "$t" "$(now)")"
        fi
        if [[ $tail -eq 1 ]]; then
            record tail-read curl "$round" "$(curl_get "$t1g" total "$range")"
            t="$(now)"
            s3_env rclone cat --offset $((big - one)) --count "$one" "bench:bench/$t1g" >/dev/null ||
                die "rclone cat failed"
            record tail-read rclone "$round" "$(elapsed "$t" "$(now)")"
        fi

        # With --versus, both builds in turn, each round in the other order.
        in_turn "$round" "${builds[@]}"
        for build in "${TURN[@]}"; do
            backlog_round "$build"
        done
    done
}

# ---------------------------------------------------------------------------------------------
case_cpu_share() {
    local round t mnt="$work/mnt-cpu" cache="$work/cache-cpu" dir="$work/s5cmd-cpu" mlog
    measure cpu-share - "cpu-share: a CPU-bound Python loop, 1 s into the download of a $backlog_label" \
        ours "during s3-synchronizer mount's background download (new mount)" \
        s5cmd "during s5cmd cp of the same objects (its defaults)" \
        idle "nothing downloading"
    log "cpu-share: each run, the loop alone, during our mount's download, during s5cmd cp"
    py cpu >/dev/null # warm-up
    local order=(ours s5cmd idle)
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${order[@]}"
        for t in "${TURN[@]}"; do
            case "$t" in
            ours)
                mlog="$logs/ours-cpu-share-$((round + 1)).log"
                rm -rf -- "$cache"
                start_ours bl bl/ "$mnt" "$cache" "$mlog"
                sleep 1
                record cpu-share ours "$round" "$(py cpu)"
                grep -q 'pass complete mount="bl"' "$mlog" &&
                    notes+=("cpu-share run $((round + 1)): WARNING: our download was complete before the loop ended")
                unmount "$mnt"
                rm -rf -- "$cache"
                ;;
            s5cmd)
                rm -rf -- "$dir"
                mkdir -p -- "$dir"
                spawn "$logs/s5cmd-cpu-share.log" s5cmd --endpoint-url "$S3_ENDPOINT" cp "s3://bench/bl/backlog/*" "$dir/"
                sleep 1
                record cpu-share s5cmd "$round" "$(py cpu)"
                kill -0 "$BG_PID" 2>/dev/null ||
                    notes+=("cpu-share run $((round + 1)): WARNING: s5cmd was done before the loop ended")
                stop_pid "$BG_PID"
                # Its last files may still land while the first removal runs.
                rm -rf -- "$dir" 2>/dev/null || { sleep 1 && rm -rf -- "$dir"; }
                ;;
            idle) record cpu-share idle "$round" "$(py cpu)" ;;
            esac
        done
    done
}

# ---------------------------------------------------------------------------------------------
# A tree read three ways once our cache holds all of it: through our mount, on the cache
# directory (local disk), and through rclone mount.
declare -A reader_dir=() # reader (ours, local, rclone) -> the tree's top there

# start_readers CASE ID ENTRY: our mount of s3://bench/ID/ at $work/mnt-ID (its cache in
# $work/cache-ID, its log $logs/ours-CASE.log) and rclone mount of it at $work/mnt-ID-rclone,
# once it lists ENTRY; sets reader_dir. Our cache is complete only after wait_pass.
start_readers() {
    local case="$1" id="$2" entry="$3"
    start_ours "$id" "$id/" "$work/mnt-$id" "$work/cache-$id" "$logs/ours-$case.log"
    start_rclone "$work/mnt-$id-rclone" "$id" "$work/cache-$id-rclone" \
        "$logs/rclone-$case.log" "$entry"
    reader_dir=([ours]="$work/mnt-$id/$id" [local]="$work/cache-$id/$id"
        [rclone]="$work/mnt-$id-rclone")
}

# stop_readers ID: unmounts what start_readers ID mounted and removes both caches.
stop_readers() {
    unmount "$work/mnt-$1"
    unmount "$work/mnt-$1-rclone"
    rm -rf -- "$work/cache-$1" "$work/cache-$1-rclone"
}

# time_readers READ: READ DIR on each reader's tree once (a warm-up, and a check), then $runs
# rounds with the readers in turn. READ prints lines "KEY SECONDS": each is recorded as the
# reader's time in measurement KEY.
time_readers() {
    local read_fn="$1" round t out key secs
    for t in ours local rclone; do
        "$read_fn" "${reader_dir[$t]}" >/dev/null
    done
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" ours local rclone
        for t in "${TURN[@]}"; do
            out="$("$read_fn" "${reader_dir[$t]}")"
            while read -r key secs; do
                record "$key" "$t" "$round" "$secs"
            done <<<"$out"
        done
    done
}

walk_ws() {
    local secs
    secs="$(py walk "$1" "$src/ws")" || return
    echo "walk-stat $secs"
}

case_walk_stat() {
    log "walk-stat: our mount (downloading 10,000 files), rclone mount"
    measure walk-stat - "walk-stat: os.walk + os.stat, 10,000 files in 100 dirs" \
        ours "s3-synchronizer mount" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    start_readers walk-stat ws d-000
    py walk "${reader_dir[ours]}" "$src/ws" >/dev/null # before the download completes: stat needs no data
    wait_pass "$logs/ours-walk-stat.log" ws
    time_readers walk_ws
    stop_readers ws
}

walk_ls() {
    local secs t0 t1 n
    secs="$(py walk "$1" "$src/ls")" || return
    echo "walk-100k $secs"
    t0="$(now)"
    n="$(find "$1" -type f | wc -l)"
    t1="$(now)"
    [[ "$n" == 100000 ]] || die "WRONG LISTING: find $1 saw $n files, not 100000"
    echo "find-100k $(elapsed "$t0" "$t1")"
}

case_walk_100k() {
    log "walk-100k: our mount (downloading 100,000 files), rclone mount"
    measure walk-100k - "walk-stat: os.walk + os.stat, 100,000 files in 100 dirs, walked before" \
        ours "s3-synchronizer mount" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    measure find-100k - "find -type f, the same 100,000 files, walked before" \
        ours "s3-synchronizer mount" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    start_readers walk-100k ls d-000
    py walk "${reader_dir[ours]}" "$src/ls" >/dev/null # before the download completes: stat needs no data
    wait_pass "$logs/ours-walk-100k.log" ls
    time_readers walk_ls
    stop_readers ls
}

# ---------------------------------------------------------------------------------------------
ls_l_lsl() {
    local secs
    secs="$(py ls-l "$1/all" 100000)" || return
    echo "ls-l $secs"
}

case_ls_l() {
    log "ls-l: our mount (listing and downloading 100,000 files), rclone mount"
    measure ls-l - "ls -l of a directory of 100,000 files" \
        ours "s3-synchronizer mount (cache complete)" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    # One directory of 100,000 keys: listed page after page, slowly by this server.
    MOUNT_WAIT=600 start_readers ls-l lsl all
    wait_pass "$logs/ours-ls-l.log" lsl
    time_readers ls_l_lsl
    stop_readers lsl
}

# ---------------------------------------------------------------------------------------------
dataset_ds() { py dataset "$1"; }

case_discovery() {
    log "discovery: our mount (downloading 2,000 Parquet files), rclone mount"
    measure discovery - "pyarrow.dataset discovery, 2,000 Parquet files in 50 partitions" \
        ours "s3-synchronizer mount (cache complete)" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    measure discovery-query - "then a query of one partition (40 files)" \
        ours "s3-synchronizer mount (cache complete)" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    start_readers discovery ds year=2020
    wait_pass "$logs/ours-discovery.log" ds
    time_readers dataset_ds
    stop_readers ds
}

# ---------------------------------------------------------------------------------------------
case_listing() {
    local mnt="$work/mnt-ls" cache="$work/cache-ls" round t t0 n out builds=(ours) versus_row=()
    if [[ -n "$versus" ]]; then
        builds+=(versus)
        versus_row=(versus "the --versus build ($(basename -- "$versus")): a new mount, until the same read")
    fi
    measure listing - "listing: 100,000 keys in 100 directories" \
        ours "s3-synchronizer mount, new: until its full listing is in" \
        ours-read "s3-synchronizer mount, new: until a file of its last directory is read" \
        "${versus_row[@]}" \
        rclone "rclone lsf -R --fast-list (one paginated listing)" \
        s5cmd "s5cmd ls (one paginated listing)"
    log "listing: each run, a new mount with an empty cache, and the peers' listings"
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${builds[@]}" rclone s5cmd
        for t in "${TURN[@]}"; do
            rm -rf -- "$cache"
            t0="$(now)"
            case "$t" in
            ours | versus)
                MOUNT_TOOL="$TOOL"
                [[ "$t" == versus ]] && MOUNT_TOOL="$versus"
                out="$logs/$t-listing-$((round + 1)).log"
                start_ours ls ls/ "$mnt" "$cache" "$out"
                [[ "$(cat -- "$mnt/ls/d-099/f-0999")" == "$(cat -- "$src/ls/d-099/f-0999")" ]] ||
                    die "listing: $t read d-099/f-0999 wrong"
                if [[ "$t" == ours ]]; then
                    record listing ours-read "$round" "$(elapsed "$t0" "$(now)")"
                    wait_log "$out" "listed in full"
                fi
                record listing "$t" "$round" "$(elapsed "$t0" "$(now)")"
                unset MOUNT_TOOL
                n="$(find "$mnt/ls" -mindepth 2 -type f | wc -l)"
                unmount "$mnt"
                ;;
            rclone)
                n="$(s3_env rclone lsf -R --fast-list --files-only bench:bench/ls | wc -l)"
                record listing "$t" "$round" "$(elapsed "$t0" "$(now)")"
                ;;
            s5cmd)
                n="$(s3_env s5cmd --endpoint-url "$S3_ENDPOINT" ls 's3://bench/ls/*' | wc -l)"
                record listing "$t" "$round" "$(elapsed "$t0" "$(now)")"
                ;;
            esac
            [[ "$n" -eq 100000 ]] || die "listing: $t saw $n keys, not 100,000"
        done
    done
    rm -rf -- "$cache"
}

# ---------------------------------------------------------------------------------------------
case_parquet() {
    local rel=data-2GiB.parquet rg=32 mnt="$work/mnt-pq" cache="$work/cache-pq" round t out
    local path what secs
    measure parquet-meta - "parquet: read_metadata of a 2 GiB file, not cached" \
        ours "s3-synchronizer mount, new (the file downloading)" \
        rclone "rclone mount --vfs-cache-mode full, new" \
        local "the local file (page cache)"
    measure parquet-rg 0 "parquet: ParquetFile().read_row_group($rg), right after" \
        ours "s3-synchronizer mount, new (the file downloading)" \
        rclone "rclone mount --vfs-cache-mode full, new" \
        local "the local file (page cache)"
    log "parquet: each run, a new mount of each kind with an empty cache"
    py parquet "$src/pq/$rel" "$src/pq/$rel" "$rg" >/dev/null # the local reader's warm-up
    local order=(ours rclone local)
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${order[@]}"
        for t in "${TURN[@]}"; do
            rm -rf -- "$cache"
            case "$t" in
            ours)
                start_ours pq pq/ "$mnt" "$cache" "$logs/ours-parquet-$((round + 1)).log"
                path="$mnt/pq/$rel"
                ;;
            rclone)
                start_rclone "$mnt" pq "$cache" "$logs/rclone-parquet-$((round + 1)).log" "$rel"
                path="$mnt/$rel"
                ;;
            local) path="$src/pq/$rel" ;;
            esac
            out="$(py parquet "$path" "$src/pq/$rel" "$rg")"
            [[ "$t" == local ]] || unmount "$mnt"
            rm -rf -- "$cache"
            while read -r what secs; do
                case "$what" in
                meta) record parquet-meta "$t" "$round" "$secs" ;;
                rowgroup) record parquet-rg "$t" "$round" "$secs" ;;
                bytes) m_bytes[parquet-rg]="$secs" ;;
                esac
            done <<<"$out"
        done
    done
}

# ---------------------------------------------------------------------------------------------
has cached-read && case_cached_read
if has first-byte || has tail-read; then case_backlog; fi
has cpu-share && case_cpu_share
has walk-stat && case_walk_stat
has walk-100k && case_walk_100k
has listing && case_listing
has ls-l && case_ls_l
has discovery && case_discovery
has parquet && case_parquet

# ---------------------------------------------------------------------------------------------
echo
echo "$(nproc) CPUs; Linux $(uname -r); $(rclone version 2>/dev/null | head -n 1); s5cmd" \
    "$(s5cmd version 2>/dev/null); $(curl --version | head -n 1 | cut -d ' ' -f 1-2);" \
    "best of $runs runs; GB = 10^9 bytes"
echo
echo "| case | reader | best s | median s | GB/s | ratio (s / ours s) |"
echo "|---|---|---:|---:|---:|---:|"
for m in "${measures[@]}"; do
    read -r -a tl <<<"${m_tools[$m]}"
    ours_best="$(best "${times["$m|${tl[0]}"]}")"
    for t in "${tl[@]}"; do
        b="$(best "${times["$m|$t"]}")"
        med="$(median "${times["$m|$t"]}")"
        awk -v c="${m_label[$m]}" -v r="${t_label["$m|$t"]}" -v b="$b" -v n="${m_bytes[$m]}" \
            -v o="$ours_best" -v med="$med" 'BEGIN {
            rate = "-"
            if (n != "-" && n + 0 > 0 && b + 0 > 0)
                rate = sprintf(n / b >= 1e9 ? "%.2f" : "%.3f", n / b / 1e9)
            ratio = (o + 0 == 0) ? "-" : sprintf("%.2f", b / o)
            printf "| %s | %s | %.4f | %.4f | %s | %s |\n", c, r, b, med, rate, ratio
        }'
    done
done

goal() { # KEY PEER WHAT [PEER_KEY: the peer's times from another case]
    local o g b=0 om gm
    [[ -n "${times["$1|ours"]:-}" ]] || return 0
    o="$(best "${times["$1|ours"]}")"
    g="$(best "${times["${4:-$1}|$2"]}")"
    om="$(median "${times["$1|ours"]}")"
    gm="$(median "${times["${4:-$1}|$2"]}")"
    [[ -z "${4:-}" && -n "${times["$1|curl-busy"]:-}" ]] && b="$(best "${times["$1|curl-busy"]}")"
    awk -v o="$o" -v g="$g" -v b="$b" -v w="$3" -v om="$om" -v gm="$gm" 'BEGIN {
        r = (g + 0 == 0) ? 0 : o / g
        printf "  %-48s ours %.4f s / GET %.4f s = %5.1f  %s", w, o, g, r, (r <= 3) ? "met" : "MISSED"
        if (gm + 0 > 0) printf "   (medians: %.1fx)", om / gm
        if (b + 0 > 0) printf "   (a GET just before ours, under our backlog: %.4f s, ours = %.1fx of it)", b, o / b
        printf "\n"
    }'
    [[ -n "${times["$1|versus"]:-}" ]] || return 0
    awk -v v="$(best "${times["$1|versus"]}")" -v vm="$(median "${times["$1|versus"]}")" \
        -v g="$g" -v gm="$gm" 'BEGIN {
        printf "  %-48s the --versus build %.4f s = %5.1f", "", v, (g + 0 == 0) ? 0 : v / g
        if (gm + 0 > 0) printf "   (medians: %.1fx)", vm / gm
        printf "\n"
    }'
}
if has first-byte || has tail-read; then
    echo
    echo "Goal: a read through the mount under the backlog within 3x of one GET on the idle server:"
    goal first-byte curl "first byte of a 64 MiB file (curl: whole GET)" first-whole
    goal first-byte curl "first byte of a 64 MiB file (curl: to first byte)"
    goal first-whole curl "all of a 64 MiB file (curl: to last byte)"
    goal tail-read curl "last 1 MiB of a 1 GiB file (curl: ranged GET)"
fi
if [[ ${#notes[@]} -gt 0 ]]; then
    echo
    echo "Notes:"
    printf '  %s\n' "${notes[@]}"
fi
echo
echo "All runs (seconds):"
for m in "${measures[@]}"; do
    read -r -a tl <<<"${m_tools[$m]}"
    for t in "${tl[@]}"; do
        printf '  %-14s %-12s %s\n' "$m" "$t" "${times["$m|$t"]}"
    done
done
# Warnings and errors the mounts logged (timestamps dropped, each once).
problems="$(cat "$logs"/ours-*.log 2>/dev/null | grep -E '^[^ ]+ +(WARN|ERROR) ' |
    sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -n 20 || true)"
if [[ -n "$problems" ]]; then
    echo
    echo "Warnings and errors in s3-synchronizer's logs (count, line):"
    printf '%s\n' "$problems"
fi
