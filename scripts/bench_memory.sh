#!/usr/bin/env bash
# Memory benchmark for big buckets: how much memory s3-synchronizer holds per object, in `sync`
# and in `mount`, and how long an unchanged re-sync takes beside a bare listing of the same keys,
# all in one run against a local S3-compatible server (`rclone serve s3` on loopback); prints a
# table.
#
#   scripts/bench_memory.sh                         # 100,000 objects
#   scripts/bench_memory.sh --objects 1000000       # a million
#   scripts/bench_memory.sh --logs /tmp/bench-logs  # keep the tool's logs there
#   S3SYNC_TOOL=/tmp/old/s3-synchronizer scripts/bench_memory.sh   # another build
#
# Data (bucket `bench`, written to the server's disk before it starts): N objects of 1 byte
# (--objects N, 100,000 unless given), mem/d-000/f-000000 ... spread evenly over 100
# directories; and one more object, one/f-000000, for the baselines.
# Cases, one run of each:
#   sync        `s3-synchronizer sync` of mem/ into an empty destination: wall time, peak RSS.
#   re-sync     the same command again, on the same destination (nothing changed): wall time,
#               peak RSS; its summary line must say downloaded=0 updated=0 (no GET). Beside it,
#               one paginated listing of the same keys by `s5cmd ls` and by
#               `rclone lsf -R --fast-list` (whole processes, wall time and peak RSS), and the
#               ratio re-sync / s5cmd ls.
#   mount       `s3-synchronizer mount` of mem/ with an empty cache: its wall time is from the
#               start until it logs its complete first pass; then, 2 s later, its RSS at rest
#               (VmRSS) and its peak so far (VmHWM); then `find MNT/mem -type f` (it must count
#               N files; its wall time) and both again; then a refresh (SIGHUP; nothing
#               changed, so it downloads nothing): its peak alone (VmHWM reset just before)
#               and its RSS at rest after it; then it is unmounted.
#   baseline    the same mount command over one/ (one object), its VmRSS at rest 2 s after its
#               pass: an empty mount; and the peak RSS of a sync of one/.
#   write-back  a writeable mount of mem/ (--upload-delay 1), once its cache is complete: one
#               file written, and in the bucket; then 40 new files written into it, one every
#               0.5 s: the CPU time the mount used over them (what its write-back costs beside a
#               cache of N files), and the time from the last close to its object in the bucket.
# Bytes per object = (RSS - baseline RSS) / N: a sync's peak less the one-object sync's peak;
# every sample of the mount less the empty mount's RSS at rest. MB = 10^6 bytes.
#
# Temporary data (about 8 KiB of disk and 2 inodes per object: the served files, then the sync's
# copy or the mount's cache) goes under target/ in this repository (BENCH_DIR to use another
# directory) and is removed on exit; the mount is unmounted and the server stopped, also on
# errors and Ctrl-C. Needs root, /dev/fuse and fuse3 (for the mount), /usr/bin/time (GNU time).
# About 1 minute for 10,000 objects on 2 cores (after the build); the time grows with N.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,41s/^# \{0,1\}//p' "$0"
}

objects=100000
logs=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    *)
        value_option "objects logs" "$@" || die "unknown argument: $1 (try --help)"
        shift "$OPT_SHIFT"
        ;;
    esac
done
need_positive_int --objects "$objects"
[[ $(id -u) -eq 0 ]] || die "the mount case needs root"

ensure_python_tools
ensure_fuse
[[ -x /usr/bin/time ]] || _apt_install time || die "GNU time is needed (apt-get install time)"
build_tool

# ---------------------------------------------------------------------------------------------
# Scratch space on a real disk: each 1-byte file takes a block (4 KiB) and an inode, twice (the
# served file, and the sync's copy or the mount's cache file).
need_gib=$(((objects * 8 * 1024 + (1 << 30) - 1) / (1 << 30) + 1))
make_bench_dir "$need_gib" "$objects objects need"
work="$TEMP_DIR"
free_inodes="$(df -Pi "$work" | awk 'NR == 2 { print $4 }')"
# Some file systems (btrfs) have no fixed number of inodes and report none.
if [[ "$free_inodes" =~ ^[0-9]+$ && "$free_inodes" -gt 0 && "$free_inodes" -lt $((objects * 2 + 1000)) ]]; then
    die "$free_inodes inodes free under $work; $objects objects need $((objects * 2 + 1000)) (set BENCH_DIR to another directory)"
fi
data="$work/data"
src="$data/bench"
dest="$work/dest"
mnt="$work/mnt"
cache="$work/cache"
logs="${logs:-$work/logs}"
mkdir -p -- "$src" "$logs"

# ---------------------------------------------------------------------------------------------
# The mount: one at a time, at $mnt, unmounted on any exit.
MOUNT_PID=""

# On exit the mount is unmounted first; lib.sh then stops the server and removes the scratch
# data.
_unmount_on_exit() { [[ -z "$MOUNT_PID" ]] || unmount; }
on_exit_first _unmount_on_exit

# start_mount ID PREFIX LOG [WRITEABLE [FLAG...]]: a new mount of s3://bench/PREFIX as mount ID
# at $mnt (writeable if WRITEABLE is "true"), with an empty cache and FLAGs, logging at the
# tool's default level; returns once $mnt/ID is there.
start_mount() {
    local id="$1" prefix="$2" logfile="$3" writeable="${4:-false}" i
    shift $(($# < 4 ? $# : 4))
    rm -rf -- "$cache"
    mkdir -p -- "$mnt" "$cache"
    spawn "$logfile" env -u RUST_LOG "$TOOL" mount \
        --default-s3-mounts "[{\"id\":\"$id\",\"bucket\":\"bench\",\"prefix\":\"$prefix\",\"writeable\":$writeable}]" \
        --destination "$mnt" --cache-dir "$cache" --endpoint-url "$S3_ENDPOINT" \
        --region "$S3_REGION" "$@"
    MOUNT_PID="$BG_PID"
    for ((i = 0; i < 12000; i++)); do
        if mountpoint -q "$mnt" && [[ -d "$mnt/$id" ]]; then
            return 0
        fi
        if ! running "$MOUNT_PID"; then
            tail -n 20 "$logfile" >&2
            die "s3-synchronizer mount exited before $mnt was mounted (its log is above)"
        fi
        sleep 0.05
    done
    tail -n 20 "$logfile" >&2
    die "$mnt was not mounted within 600 s (the log is above)"
}

# unmount: unmounts $mnt and waits (at most 60 s) for the mount's process to exit.
unmount() {
    local i
    if mountpoint -q "$mnt" 2>/dev/null; then
        fusermount3 -u "$mnt" 2>/dev/null || { sleep 0.5 && fusermount3 -u "$mnt" 2>/dev/null; } ||
            fusermount3 -u -z "$mnt" 2>/dev/null || log "could not unmount $mnt"
    fi
    for ((i = 0; i < 600; i++)); do
        running "$MOUNT_PID" || break
        sleep 0.1
    done
    if running "$MOUNT_PID"; then
        log "s3-synchronizer mount ($MOUNT_PID) is still running 60 s after its unmount; stopping it"
        stop_pid "$MOUNT_PID"
    fi
    MOUNT_PID=""
}

# status_kib FIELD: the mount's FIELD (VmRSS, VmHWM) in /proc/PID/status, in KiB.
status_kib() {
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$MOUNT_PID/status"
}

# ---------------------------------------------------------------------------------------------
# Data: created straight on the server's disk, 1 byte each, by one Python process (fast enough
# for a million files: no process per file, each opened relative to its directory).
log "writing $objects objects of 1 byte under $src/mem"
python3 - "$src" "$objects" <<'EOF' || die "writing the objects failed"
import os, sys

root, n = sys.argv[1], int(sys.argv[2])
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
per, extra = divmod(n, 100)
index = 0
for d in range(100):
    count = per + (1 if d < extra else 0)
    if count == 0:
        continue
    path = os.path.join(root, "mem", "d-%03d" % d)
    os.makedirs(path)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(count):
            fd = os.open("f-%06d" % index, flags, 0o644, dir_fd=dfd)
            os.write(fd, b"x")
            os.close(fd)
            index += 1
    finally:
        os.close(dfd)
os.makedirs(os.path.join(root, "one"))
with open(os.path.join(root, "one", "f-000000"), "wb") as f:
    f.write(b"x")
EOF
sync

# The server starts once the data is in place; both prefixes are listed once before timing.
start_bench_server "$data" mem/ one/

# ---------------------------------------------------------------------------------------------
# Bookkeeping: rows of the table in order, their wall time, RSS (KiB) and baseline (KiB).
rows=()
declare -A r_label=() r_wall=() r_kib=() r_base=()
# row KEY LABEL WALL KIB [BASE_KIB]: a row of the table ("-" for no value); prints it.
row() {
    rows+=("$1")
    r_label[$1]="$2"
    r_wall[$1]="$3"
    r_kib[$1]="$4"
    r_base[$1]="${5:--}"
    printf '   %-14s %8s s  %8s KiB  %s\n' "$1" "$3" "$4" "$2" >&2
}

# timed OUT CMD...: runs CMD with the server's credentials, its output into OUT; sets WALL
# (seconds) and PEAK_KIB (its peak RSS, by GNU time). Fails when CMD does.
WALL=""
PEAK_KIB=""
timed() {
    local out="$1" t0 rc=0 what
    shift
    what="$(basename -- "$out")"
    sync
    t0="$(now)"
    s3_env /usr/bin/time -f '%M' -o "$work/time.out" "$@" >"$out" 2>&1 || rc=$?
    WALL="$(elapsed "$t0" "$(now)")"
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$out" >&2
        die "the command of $what failed with exit code $rc (its output, in $out, is above)"
    fi
    PEAK_KIB="$(tail -n 1 "$work/time.out")"
    [[ "$PEAK_KIB" =~ ^[0-9]+$ ]] || die "GNU time gave no peak RSS for $what: $(cat "$work/time.out")"
}

# run_sync PREFIX LOG: one `s3-synchronizer sync` of s3://bench/PREFIX (mount id mem) into $dest,
# timed.
run_sync() {
    timed "$2" env -u RUST_LOG "$TOOL" sync \
        --default-s3-mounts "[{\"id\":\"mem\",\"bucket\":\"bench\",\"prefix\":\"$1\"}]" \
        --destination "$dest" --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION"
}

# summary LOG FIELD: the value of FIELD in the "pass complete" line of LOG.
summary() {
    local line
    line="$(grep -m 1 'pass complete' "$1")" || die "no 'pass complete' line in $1"
    [[ " $line " =~ \ $2=([^ ]+)\  ]] || die "no $2= in the summary line of $1: $line"
    echo "${BASH_REMATCH[1]}"
}

# expect_summary LOG WHAT FIELD=VALUE...: each FIELD of LOG's summary line is VALUE.
expect_summary() {
    local logfile="$1" what="$2" pair
    shift 2
    for pair in "$@"; do
        [[ "$(summary "$logfile" "${pair%%=*}")" == "${pair#*=}" ]] ||
            die "$what: expected ${pair} in its summary line: $(grep -m 1 'pass complete' "$logfile")"
    done
}

# wait_passes LOG ID N SECONDS: waits until LOG has N "pass complete" lines of mount ID.
wait_passes() {
    local i
    for ((i = 0; i < $4 * 20; i++)); do
        [[ "$(grep -c "pass complete mount=\"$2\"" "$1")" -ge "$3" ]] && return 0
        sleep 0.05
    done
    die "mount '$2' did not complete $3 passes within $4 s (see $1)"
}

# ---------------------------------------------------------------------------------------------
log "baseline: sync of one object"
rm -rf -- "$dest"
run_sync one/ "$logs/sync-one.log"
expect_summary "$logs/sync-one.log" "the sync of one/" downloaded=1 failed=0
sync_base="$PEAK_KIB"
row sync-one "baseline: sync of one object (peak RSS)" "$WALL" "$PEAK_KIB"
rm -rf -- "$dest"

log "sync: $objects objects into an empty destination, then again unchanged"
run_sync mem/ "$logs/sync-first.log"
expect_summary "$logs/sync-first.log" "the first sync" "listed=$objects" "downloaded=$objects" failed=0
row sync "sync, first run, empty destination (peak RSS)" "$WALL" "$PEAK_KIB" "$sync_base"

run_sync mem/ "$logs/sync-again.log"
expect_summary "$logs/sync-again.log" "the unchanged re-sync" "listed=$objects" downloaded=0 \
    updated=0 deleted=0 failed=0 "unchanged=$objects"
row re-sync "sync again, nothing changed: no GET (peak RSS)" "$WALL" "$PEAK_KIB" "$sync_base"
resync_wall="$WALL"
n="$(find "$dest/mem" -type f | wc -l)"
[[ "$n" -eq "$objects" ]] || die "the sync's destination holds $n files, not $objects"

timed "$work/s5cmd-ls.txt" s5cmd --endpoint-url "$S3_ENDPOINT" ls 's3://bench/mem/*'
n="$(wc -l <"$work/s5cmd-ls.txt")"
[[ "$n" -eq "$objects" ]] || die "s5cmd ls listed $n keys, not $objects"
row s5cmd-ls "s5cmd ls 's3://bench/mem/*' (one paginated listing)" "$WALL" "$PEAK_KIB"
s5cmd_wall="$WALL"

timed "$work/rclone-lsf.txt" rclone lsf -R --fast-list --files-only bench:bench/mem
n="$(wc -l <"$work/rclone-lsf.txt")"
[[ "$n" -eq "$objects" ]] || die "rclone lsf listed $n keys, not $objects"
row rclone-lsf "rclone lsf -R --fast-list --files-only (one paginated listing)" "$WALL" "$PEAK_KIB"
rm -rf -- "$dest" "$work/s5cmd-ls.txt" "$work/rclone-lsf.txt"

# ---------------------------------------------------------------------------------------------
log "baseline: a mount of one object"
start_mount one one/ "$logs/mount-one.log"
wait_pass "$logs/mount-one.log" one
sleep 2
mount_base="$(status_kib VmRSS)"
row mount-one "baseline: mount of one object, at rest (VmRSS)" - "$mount_base"
unmount

log "mount: $objects objects, empty cache"
sync
t0="$(now)"
start_mount mem mem/ "$logs/mount.log"
# A million 1-byte downloads may take longer than wait_pass's 10 minutes.
wait_pass "$logs/mount.log" mem $((600 + objects / 100))
mount_wall="$(elapsed "$t0" "$(now)")"
expect_summary "$logs/mount.log" "the mount's first pass" "listed=$objects" failed=0
sleep 2
row mount-rest "mount, empty cache: until its pass is complete; then at rest (VmRSS)" \
    "$mount_wall" "$(status_kib VmRSS)" "$mount_base"
row mount-peak "mount: its peak so far (VmHWM)" - "$(status_kib VmHWM)" "$mount_base"
t0="$(now)"
n="$(find "$mnt/mem" -type f | wc -l)"
walk_wall="$(elapsed "$t0" "$(now)")"
[[ "$n" -eq "$objects" ]] || die "find through the mount counted $n files, not $objects"
row mount-walk "mount: find MNT/mem -type f; then its RSS (VmRSS)" "$walk_wall" \
    "$(status_kib VmRSS)" "$mount_base"
row mount-walk-peak "mount: its peak after the walk (VmHWM)" - "$(status_kib VmHWM)" "$mount_base"
# A refresh: the peak is counted from here (writing 5 to clear_refs resets VmHWM to VmRSS).
echo 5 >"/proc/$MOUNT_PID/clear_refs"
t0="$(now)"
kill -HUP "$MOUNT_PID"
wait_passes "$logs/mount.log" mem 2 $((600 + objects / 1000))
refresh_wall="$(elapsed "$t0" "$(now)")"
line="$(grep 'pass complete' "$logs/mount.log" | tail -n 1)"
[[ " $line " == *" listed=$objects "* && " $line " == *" downloaded=0 "* && " $line " == *" unchanged=$objects "* ]] ||
    die "the refresh of an unchanged bucket should list $objects objects and download none: $line"
sleep 2
row mount-refresh "mount: a refresh (SIGHUP), nothing changed: its peak (VmHWM)" "$refresh_wall" \
    "$(status_kib VmHWM)" "$mount_base"
row mount-refresh-rest "mount: at rest after the refresh (VmRSS)" - "$(status_kib VmRSS)" "$mount_base"
unmount
rm -rf -- "$cache"

# ---------------------------------------------------------------------------------------------
# wait_served FILE: waits (at most 60 s) for FILE to be on the server's disk: its object is in the
# bucket.
wait_served() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ -e "$1" ]] && return 0
        sleep 0.05
    done
    die "$1 did not reach the bucket within 60 s"
}

# cpu_seconds: the user and system CPU time the mount's process has used so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$MOUNT_PID/stat"
}

log "write-back: a writeable mount of the $objects objects, then a new file every 0.5 s"
start_mount mem mem/ "$logs/mount-write.log" true --upload-delay 1
wait_pass "$logs/mount-write.log" mem $((600 + objects / 100))
mkdir -- "$mnt/mem/new"
echo warm >"$mnt/mem/new/warm.txt"
wait_served "$src/mem/new/warm.txt"
sleep 2
cpu0="$(cpu_seconds)"
for ((i = 1; i <= 40; i++)); do
    echo "file $i" >"$mnt/mem/new/f$i.txt"
    sleep 0.5
done
t0="$(now)"
wait_served "$src/mem/new/f40.txt"
wb_last="$(elapsed "$t0" "$(now)")"
wb_cpu="$(awk -v a="$cpu0" -v b="$(cpu_seconds)" 'BEGIN { printf "%.2f", b - a }')"
n="$(find "$src/mem/new" -type f | wc -l)"
[[ "$n" -eq 41 ]] || die "$n of the 41 files written into the mount reached the bucket"
unmount
rm -rf -- "$cache" "$src/mem/new"

# ---------------------------------------------------------------------------------------------
echo
echo "$(nproc) CPUs; Linux $(uname -r); $(rclone version 2>/dev/null | head -n 1); s5cmd" \
    "$(s5cmd version 2>/dev/null); $objects objects of 1 byte in 100 directories; one run;" \
    "MB = 10^6 bytes"
echo
echo "| case | wall s | RSS MB | bytes per object |"
echo "|---|---:|---:|---:|"
for k in "${rows[@]}"; do
    awk -v c="${r_label[$k]}" -v w="${r_wall[$k]}" -v kib="${r_kib[$k]}" -v base="${r_base[$k]}" \
        -v n="$objects" 'BEGIN {
        wall = (w == "-") ? "-" : sprintf("%.3f", w)
        per = (base == "-") ? "-" : sprintf("%.0f", (kib - base) * 1024 / n)
        printf "| %s | %s | %.1f | %s |\n", c, wall, kib * 1024 / 1e6, per
    }'
done
echo
awk -v r="$resync_wall" -v s="$s5cmd_wall" 'BEGIN {
    printf "Unchanged re-sync / s5cmd ls of the same keys: %.3f s / %.3f s = %.2f\n", r, s, (s + 0 == 0) ? 0 : r / s
}'
echo "Write-back in a writeable mount of the $objects objects (--upload-delay 1), 40 new files" \
    "written one every 0.5 s: the mount used $wb_cpu CPU seconds over them; the last reached" \
    "the bucket $wb_last s after it was closed."
echo
echo "All runs (one run of each case; seconds, KiB):"
for k in "${rows[@]}"; do
    printf '  %-16s %8s s  %8s KiB\n' "$k" "${r_wall[$k]}" "${r_kib[$k]}"
done
# Warnings and errors the tool logged (timestamps dropped, each once).
problems="$(cat "$logs"/sync-*.log "$logs"/mount*.log 2>/dev/null | grep -E '^[^ ]+ +(WARN|ERROR) ' |
    sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -n 20 || true)"
if [[ -n "$problems" ]]; then
    echo
    echo "Warnings and errors in s3-synchronizer's logs (count, line):"
    printf '%s\n' "$problems"
fi
