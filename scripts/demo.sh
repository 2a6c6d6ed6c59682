#!/usr/bin/env bash
# A first look at s3-synchronizer, on a fresh Debian machine (as root, or with sudo):
#
#   scripts/demo.sh              # everything in temporary directories, removed at the end
#   scripts/demo.sh --keep DIR   # keep the synchronized copy in DIR
#   scripts/demo.sh --short      # the same steps with smaller files (about 200 MiB of disk)
#
# It installs what it needs (a Rust toolchain must already be there), builds the tool and starts a
# local S3-compatible server (`rclone serve s3`) with two sample buckets.
#
# First, mount mode (where FUSE is available): the buckets are mounted read-only and every file
# is listed at once; a read at the end of a 1 GiB file not downloaded yet returns in milliseconds;
# the cache fills in the background; an object added through the S3 API appears at the next
# refresh; then the file system is unmounted.
#
# Then a one-shot sync: it copies a bucket with two mounts, shows the result, syncs again to show
# that nothing is downloaded twice, and checks that the copy equals the source byte for byte.
#
# Uses about 1.6 GiB of disk while it runs (the large source files are sparse, their copy in the
# cache is not) and takes well under a minute after the build; --short, a few seconds.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,20s/^# \{0,1\}//p' "$0"
}

keep=""
short=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --keep)
        [[ $# -ge 2 ]] || die "--keep needs a directory"
        keep="$2"
        shift 2
        ;;
    --keep=*)
        keep="${1#--keep=}"
        shift
        ;;
    --short)
        short=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
done

MIB=$((1024 * 1024))
if [[ $short -eq 1 ]]; then
    random_mib=4  # the random file of bucket 'demo'
    big_mib=96    # the large file whose end is read through the mount
    backup_mib=32 # each of the files downloaded in the background before it
    backups=3
    fill_timeout=30
else
    random_mib=20
    big_mib=1024
    backup_mib=128
    backups=4
    fill_timeout=120
fi

# One stream, so that messages of the tool and of this script keep their order in a log.
exec 2>&1

ensure_python_tools
build_tool

make_temp_dir "${TMPDIR:-/tmp}"
work="$(cd "$TEMP_DIR" && pwd)"
data="$work/data"
if [[ -n "$keep" ]]; then
    mkdir -p -- "$keep"
    dest="$(cd "$keep" && pwd)"
    if [[ -n "$(ls -A "$dest")" && ! -d "$dest/.s3-synchronizer" ]]; then
        die "$dest is not empty; give --keep a new or empty directory"
    fi
else
    dest="$work/dest"
fi

# Mount mode needs /dev/fuse and fusermount3 (Debian's fuse3, installed when missing).
fuse=0
no_fuse=""
if [[ ! -e /dev/fuse ]]; then
    no_fuse="this machine has no /dev/fuse, so it cannot mount FUSE file systems"
elif ! command -v fusermount3 >/dev/null 2>&1 &&
    ! { _apt_install fuse3 && command -v fusermount3 >/dev/null 2>&1; }; then
    no_fuse="fusermount3 is missing and could not be installed (Debian: apt-get install fuse3)"
else
    fuse=1
fi

# The mount (set once it is started).
mnt=""
cache="$work/cache"
mount_log="$work/mount.log"
mount_pid=""

# is_mounted DIR: a file system is mounted at DIR, also one whose process is gone (DIR itself
# then cannot be read: "Transport endpoint is not connected").
is_mounted() {
    local dir_dev parent_dev
    parent_dev="$(stat -c %d -- "$1/.." 2>/dev/null)" || return 1
    dir_dev="$(stat -c %d -- "$1" 2>/dev/null)" || return 0
    [[ "$dir_dev" != "$parent_dev" ]]
}

# On exit, the mount point is unmounted first, so that removing the temporary directory does not
# reach into it; then lib.sh's handler stops the processes and removes the temporary directories.
_demo_on_exit() {
    if [[ -n "$mnt" ]] && is_mounted "$mnt"; then
        fusermount3 -uz "$mnt" >/dev/null 2>&1 || umount -l "$mnt" >/dev/null 2>&1 || true
    fi
}
on_exit_first _demo_on_exit

# mount_failed MESSAGE: shows the mount's log, then fails with MESSAGE.
mount_failed() {
    local rc
    log "the log of s3-synchronizer mount:"
    sed 's/^/   /' "$mount_log" 2>/dev/null || true
    if [[ -n "$mount_pid" ]] && ! kill -0 "$mount_pid" 2>/dev/null; then
        rc=0
        wait "$mount_pid" 2>/dev/null || rc=$?
        die "$* (s3-synchronizer mount exited with code $rc; its log is above)"
    fi
    die "$* (the log of s3-synchronizer mount is above)"
}

# list_tree DIR: its directories and files (bytes, path), without the tool's own state.
list_tree() {
    (
        cd "$1"
        find . -mindepth 1 -path ./.s3-synchronizer -prune -o -printf '%P\t%s\t%y\n' |
            LC_ALL=C sort | awk -F '\t' '
                $3 == "d" { printf "%10s  %s/\n", "", $1; next }
                { printf "%10d  %s\n", $2, $1 }'
    )
}

# ms T0 T1: T1 - T0 in milliseconds.
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
# mib BYTES: in MiB, one decimal.
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# ---------------------------------------------------------------------------------------------
log "creating sample data in bucket 'demo'"
b="$data/demo"
mkdir -p "$b/reports/2024/q1" "$b/reports/2024/q2" "$b/notes" "$b/data/raw"
printf 'Sample bucket for the s3-synchronizer demo.\n' >"$b/README.txt"
printf 'region,product,units,revenue\nnorth,widget,120,1440.00\nsouth,gadget,75,2250.50\n' \
    >"$b/reports/2024/q1/sales.csv"
printf 'region,product,units,revenue\nnorth,widget,135,1620.00\nsouth,gadget,90,2700.00\n' \
    >"$b/reports/2024/q2/sales.csv"
printf 'Q1 and Q2 2024: revenue up 14%%.\n' >"$b/reports/summary.txt"
printf 'A key with spaces in it.\n' >"$b/notes/meeting notes.txt"
printf 'Une clé non ASCII : café, résumé, naïve.\n' >"$b/notes/café résumé.txt"
: >"$b/data/empty.dat"
head -c $((random_mib * MIB)) /dev/urandom >"$b/data/raw/random-${random_mib}MiB.bin"

if [[ $fuse -eq 1 ]]; then
    # Sparse files: they take no room in the source, but their bytes are downloaded as any others.
    # The large file ends with a mebibyte of random bytes, to check what a read returns.
    log "creating bucket 'large': big.bin ($big_mib MiB) and $backups files of $backup_mib MiB"
    l="$data/large"
    mkdir -p "$l/backups"
    for i in $(seq "$backups"); do
        truncate -s "${backup_mib}M" "$l/backups/day-$i.img"
    done
    truncate -s "${big_mib}M" "$l/big.bin"
    dd if=/dev/urandom of="$l/big.bin" bs=1M seek=$((big_mib - 1)) count=1 conv=notrunc \
        status=none
fi

# The server caches listings, so it starts after the data is in place.
start_s3_server "$data" "$work/server.log"

gets() { grep -c 'GET OBJECT' "$S3_SERVER_LOG" || true; }

# =============================================================================================
# Mount mode.
if [[ $fuse -eq 0 ]]; then
    echo
    log "skipping mount mode: $no_fuse"
else
    # The server computes each file's checksum (its ETag) on its first listing, reading every
    # byte: done now, so that it does not count in the mount's start below.
    log "preparing the S3 server: it reads each file once to compute its checksum (ETag)"
    s3_env rclone lsf -R bench:demo >/dev/null
    s3_env rclone lsf -R bench:large >/dev/null

    mnt="$work/mnt"
    mkdir -p "$mnt"
    mount_mounts='[{"id":"demo","bucket":"demo","prefix":""},'
    mount_mounts+='{"id":"large","bucket":"large","prefix":""}]'
    echo
    log "s3-synchronizer mount --default-s3-mounts '$mount_mounts' --destination $mnt" \
        "--cache-dir $cache --download-interval 2 --concurrency 2 --endpoint-url $S3_ENDPOINT"
    echo "   (in the background, its log in $mount_log)"
    t_start="$(now)"
    # In a process group of its own (set -m), so that stopping it on exit stops the tool too.
    set -m
    s3_env "$TOOL" mount --default-s3-mounts "$mount_mounts" --destination "$mnt" \
        --cache-dir "$cache" --download-interval 2 --concurrency 2 \
        --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION" </dev/null >"$mount_log" 2>&1 &
    mount_pid=$!
    set +m
    register_cleanup_pid "$mount_pid"
    _watchdog "$mount_pid"

    for _ in $(seq 600); do
        if is_mounted "$mnt" && [[ -d "$mnt/large" ]]; then
            break
        fi
        kill -0 "$mount_pid" 2>/dev/null || mount_failed "$mnt was not mounted"
        sleep 0.05
    done
    is_mounted "$mnt" || mount_failed "$mnt was not mounted within 30 s"
    t_mounted="$(now)"
    printf '   mounted in %s ms\n' "$(ms "$t_start" "$t_mounted")"

    # -----------------------------------------------------------------------------------------
    total_files="$(find "$data/demo" "$data/large" -type f | wc -l)"
    total_bytes="$(find "$data/demo" "$data/large" -type f -printf '%s\n' |
        awk '{ s += $1 } END { print s }')"
    # How much the cache holds: bytes on disk, and files complete (in CACHE/<id>/, the rest of
    # the download is kept under CACHE/.s3-synchronizer/ until a file is complete).
    cache_bytes() { du -sB1 -- "$cache" 2>/dev/null | awk '{ print $1 }' || true; }
    cache_files() { { find "$cache/demo" "$cache/large" -type f 2>/dev/null || true; } | wc -l; }
    cache_state() {
        printf '%s on disk, %d of %d files complete' "$(mib "$(cache_bytes)")" "$(cache_files)" \
            "$total_files"
    }

    echo
    log "every file is listed at once, before it is downloaded (bytes, path)"
    t0="$(now)"
    listing="$(list_tree "$mnt")"
    t1="$(now)"
    printf '%s\n' "$listing"
    printf '   listed %d files (%s) in %s ms; the cache so far: %s\n' "$total_files" \
        "$(mib "$total_bytes")" "$(ms "$t0" "$t1")" "$(cache_state)"

    # -----------------------------------------------------------------------------------------
    echo
    log "reading the last MiB of large/big.bin ($big_mib MiB), not downloaded yet"
    if [[ -e "$cache/large/big.bin" ]]; then
        echo "   (the background download was faster: big.bin is already in the cache)"
    fi
    skip=$(((big_mib - 1) * MIB))
    t0="$(now)"
    dd if="$mnt/large/big.bin" of="$work/tail.bin" bs=1M count=1 skip="$skip" \
        iflag=skip_bytes,fullblock status=none || mount_failed "reading $mnt/large/big.bin failed"
    t1="$(now)"
    tail -c "$MIB" "$l/big.bin" | cmp -s - "$work/tail.bin" ||
        mount_failed "the last MiB read through the mount differs from the source"
    printf '   read 1 MiB in %s ms, the same bytes as the source; the cache: %s\n' \
        "$(ms "$t0" "$t1")" "$(cache_state)"

    # -----------------------------------------------------------------------------------------
    echo
    log "meanwhile the cache fills in the background (at most 2 GETs at a time: --concurrency 2)"
    deadline=$(($(date +%s) + fill_timeout))
    complete=0
    echo "   seconds since mounted, the cache"
    while :; do
        printf '   %5.1f s    %s\n' "$(elapsed "$t_mounted" "$(now)")" "$(cache_state)"
        if [[ "$(cache_files)" -ge "$total_files" ]]; then
            complete=1
            break
        fi
        kill -0 "$mount_pid" 2>/dev/null || mount_failed "the background download stopped"
        [[ $(date +%s) -lt $deadline ]] || break
        sleep 0.5
    done
    if [[ $complete -eq 0 ]]; then
        echo "   still downloading after $fill_timeout s: the comparison below reads the rest"
    fi

    echo
    log "comparing the mount with the buckets' files (diff -r)"
    t0="$(now)"
    for id in demo large; do
        timeout 600 diff -r "$data/$id" "$mnt/$id" ||
            mount_failed "$mnt/$id differs from bucket '$id'"
    done
    printf '   %s/demo and %s/large equal the buckets, byte for byte (compared in %s s)\n' \
        "$mnt" "$mnt" "$(elapsed "$t0" "$(now)")"

    # -----------------------------------------------------------------------------------------
    echo
    added_key="notes/added while mounted.txt"
    log "adding '$added_key' to bucket 'demo' through the S3 API (rclone copyto)"
    printf 'Added through the S3 API while the bucket was mounted.\n' >"$work/added.txt"
    s3_env rclone copyto "$work/added.txt" "bench:demo/$added_key" || die "rclone copyto failed"
    t0="$(now)"
    for _ in $(seq 200); do
        [[ -f "$mnt/demo/$added_key" ]] && break
        kill -0 "$mount_pid" 2>/dev/null || mount_failed "$added_key did not appear under $mnt/demo"
        sleep 0.1
    done
    [[ -f "$mnt/demo/$added_key" ]] ||
        mount_failed "$added_key did not appear under $mnt/demo within 20 s"
    printf '   it appeared under %s/demo after %s s (the listing refreshes every 2 s):\n' "$mnt" \
        "$(elapsed "$t0" "$(now)")"
    sed 's/^/   /' "$mnt/demo/$added_key"
    cmp -s "$work/added.txt" "$mnt/demo/$added_key" || mount_failed "$added_key has other bytes"

    # -----------------------------------------------------------------------------------------
    echo
    log "fusermount3 -u $mnt"
    fusermount3 -u "$mnt" || mount_failed "fusermount3 -u $mnt failed"
    for _ in $(seq 300); do
        kill -0 "$mount_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$mount_pid" 2>/dev/null; then
        mount_failed "s3-synchronizer mount still runs 30 s after the unmount"
    fi
    mount_rc=0
    wait "$mount_pid" || mount_rc=$?
    printf '   s3-synchronizer mount exited with code %d; its log:\n' "$mount_rc"
    sed 's/^/   /' "$mount_log"
    [[ $mount_rc -eq 0 ]] || die "s3-synchronizer mount exited with code $mount_rc"
    echo "OK: the mount served every file byte for byte and exited cleanly (mounted again with the"
    echo "same --cache-dir, it would serve the cached files at once and download only what changed)"
fi

# =============================================================================================
# One-shot sync.
mounts='[{"id":"all","bucket":"demo","prefix":""},{"id":"reports","bucket":"demo","prefix":"reports/"}]'
sync_once() {
    local t0 t1
    t0="$(now)"
    s3_env "$TOOL" sync --default-s3-mounts "$mounts" --destination "$dest" \
        --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION" ||
        die "s3-synchronizer sync failed (exit code $?)"
    t1="$(now)"
    printf '   took %s s\n' "$(elapsed "$t0" "$t1")"
}

echo
log "s3-synchronizer sync --default-s3-mounts '$mounts' --destination $dest --endpoint-url $S3_ENDPOINT"
gets_before="$(gets)"
sync_once
gets_first=$(($(gets) - gets_before))

echo
log "the copy in $dest (bytes, path; the tool keeps its own state in .s3-synchronizer/)"
list_tree "$dest"

echo
log "syncing again: nothing changed, so nothing should be downloaded"
gets_before="$(gets)"
sync_once
gets_second=$(($(gets) - gets_before))

echo
log "checking"
printf '   first run: %d GET requests; second run: %d GET requests\n' "$gets_first" "$gets_second"
[[ "$gets_second" -eq 0 ]] || die "the second run downloaded again ($gets_second GET requests)"
diff -r "$b" "$dest/all" || die "$dest/all differs from the bucket"
diff -r "$b/reports" "$dest/reports" || die "$dest/reports differs from the bucket's reports/"
expect_entries "$dest" all reports .s3-synchronizer
echo "OK: $dest/all equals bucket 'demo' and $dest/reports equals its reports/ prefix"
if [[ -n "$keep" ]]; then
    echo "The copy is kept in $dest"
fi
