#!/usr/bin/env bash
# Mount-mode benchmark, side by side against the same local S3-compatible server
# (`rclone serve s3` on loopback), printing ratios.
#
#   scripts/bench_mount.sh                      # every case, best of 2 runs
#   scripts/bench_mount.sh --cases tail --runs 3
#
# Cases:
#   cached  a 1 GiB file already in the cache, read sequentially (1 MiB reads): through our
#           mount with FUSE passthrough, through our mount with --no-passthrough, straight from
#           the cache file, and through `rclone mount --vfs-cache-mode full` once rclone has it
#           cached. Ratio = other's time / time through our mount with passthrough.
#   tail    the last 1 MiB of a 1 GiB file not downloaded yet, read through a fresh mount while
#           a 4 GiB backlog downloads (from open to the last byte), vs one 1 MiB ranged GET of
#           the same bytes on the idle server (curl). Ratio = ours / the GET (the goal: <= 3).
#   first   the first byte, and all, of a 64 MiB file not downloaded yet, under the same
#           backlog, vs one GET of the whole file on the idle server (curl). Ratio = ours / GET.
# Every read is checked against the source bytes; a wrong read fails the script. Backlog files
# are sparse on the server's disk. Scratch data (about 1.2 GiB) goes under target/ (BENCH_DIR to
# change) and is removed on exit. Needs root (FUSE passthrough), /dev/fuse, fuse3, curl.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

cases="cached,tail,first"
runs=2
while [[ $# -gt 0 ]]; do
    case "$1" in
    --cases | --runs)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        printf -v "${1#--}" '%s' "$2"
        shift 2
        ;;
    -h | --help)
        sed -n '2,22s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
IFS=, read -r -a case_list <<<"$cases"

ensure_python_tools
ensure_fuse
build_tool
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"

parent="${BENCH_DIR:-$REPO_ROOT/target}"
mkdir -p -- "$parent"
make_temp_dir "$parent"
work="$TEMP_DIR"
data="$work/data/bench"
mkdir -p "$data/cached" "$data/tail/backlog" "$work/logs"

log "writing data under $work"
python3 - "$data" <<'EOF'
import os, sys
root = sys.argv[1]
def random_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
random_file(os.path.join(root, "cached/f1g"), 1 << 30)
random_file(os.path.join(root, "tail/f64m"), 64 << 20)
# Sparse but for its last 1 MiB, which is random.
with open(os.path.join(root, "tail/f1g"), "wb") as f:
    f.truncate(1 << 30)
    f.seek((1 << 30) - (1 << 20))
    f.write(os.urandom(1 << 20))
for i in range(8):
    with open(os.path.join(root, "tail/backlog/b%d" % i), "wb") as f:
        f.truncate(512 << 20)
EOF
sync
start_s3_server "$work/data"
# The server computes ETags on its first listing: do it before timing.
s3_env rclone lsf -R bench:bench >/dev/null || die "cannot list the local server"

# read_check FILE [OFFSET [LENGTH]]: reads LENGTH bytes (default all) at OFFSET (negative: from
# the end) in 1 MiB reads, prints "seconds_to_first_byte seconds_total sha256". The bytes are
# kept and hashed after the clock stops (hashing as it reads would cap the rate near 1.4 GB/s).
read_check() {
    python3 - "$@" <<'EOF'
import hashlib, os, sys, time
path = sys.argv[1]
offset = int(sys.argv[2]) if len(sys.argv) > 2 else 0
length = int(sys.argv[3]) if len(sys.argv) > 3 else -1
t0 = time.monotonic()
chunks = []
first = None
with open(path, "rb", buffering=0) as f:
    if offset < 0:
        f.seek(offset, os.SEEK_END)
    else:
        f.seek(offset)
    left = length
    while left != 0:
        chunk = f.read(1 << 20 if left < 0 else min(left, 1 << 20))
        if not chunk:
            break
        if first is None:
            first = time.monotonic() - t0
        chunks.append(chunk)
        if left > 0:
            left -= len(chunk)
t = time.monotonic() - t0
h = hashlib.sha256()
for chunk in chunks:
    h.update(chunk)
print("%.6f %.6f %s" % (first or t, t, h.hexdigest()))
EOF
}

sha_of() { # FILE [OFFSET LENGTH] -> sha256 of that stretch
    python3 - "$@" <<'EOF'
import hashlib, os, sys
path = sys.argv[1]
with open(path, "rb") as f:
    if len(sys.argv) > 2:
        f.seek(int(sys.argv[2]), os.SEEK_END if int(sys.argv[2]) < 0 else os.SEEK_SET)
        data = f.read(int(sys.argv[3]))
    else:
        data = f.read()
print(hashlib.sha256(data).hexdigest())
EOF
}

MOUNT_PID=""
# start_mount ID PREFIX DEST CACHE [FLAGS...]: our mount in the background, waits until listed.
start_mount() {
    local id="$1" prefix="$2" dest="$3" cache="$4"
    shift 4
    mkdir -p "$dest"
    s3_env "$TOOL" mount --default-s3-mounts "[{\"id\":\"$id\",\"bucket\":\"bench\",\"prefix\":\"$prefix\"}]" \
        --destination "$dest" --cache-dir "$cache" --endpoint-url "$S3_ENDPOINT" \
        --region "$S3_REGION" "$@" >"$work/logs/mount-$id.log" 2>&1 &
    MOUNT_PID=$!
    register_cleanup_pid "$MOUNT_PID"
    local i
    for ((i = 0; i < 600; i++)); do
        if mountpoint -q "$dest" && [[ -d "$dest/$id" ]]; then
            return 0
        fi
        kill -0 "$MOUNT_PID" 2>/dev/null || {
            tail -n 20 "$work/logs/mount-$id.log" >&2
            die "the mount exited early"
        }
        sleep 0.05
    done
    die "not mounted after 30 s"
}

stop_mount() { # DEST
    fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null || true
    wait "$MOUNT_PID" 2>/dev/null || true
}

RCLONE_PID=""
stop_rclone() { # DEST
    fusermount3 -u "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null || true
    wait "$RCLONE_PID" 2>/dev/null || true
}

# curl_get KEY [RANGE]: one GET on the server; prints seconds to the last byte; checks the bytes.
curl_get() {
    local key="$1" range="${2:-}" out="$work/curl.out"
    local args=(-sS --fail -o "$out" -w '%{time_total}' --aws-sigv4 "aws:amz:$S3_REGION:s3"
        --user "$S3_KEY:$S3_SECRET")
    [[ -n "$range" ]] && args+=(-r "$range")
    curl "${args[@]}" "$S3_ENDPOINT/bench/$key"
}

best() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | head -n 1; }
declare -A T
add() { T[$1]="${T[$1]:-} $2"; }
rows=()

for c in "${case_list[@]}"; do
    case "$c" in
    cached)
        want="$(sha_of "$data/cached/f1g")"
        cache="$work/cache-c"
        dest="$work/mnt-c"
        start_mount c cached/ "$dest" "$cache"
        read -r _ _ sha < <(read_check "$dest/c/f1g")
        [[ "$sha" == "$want" ]] || die "WRONG BYTES through the mount (cached case)"
        for ((r = 0; r < runs; r++)); do
            read -r _ t sha < <(read_check "$dest/c/f1g")
            [[ "$sha" == "$want" ]] || die "WRONG BYTES through the mount (passthrough)"
            add "cached ours" "$t"
            read -r _ t sha < <(read_check "$cache/c/f1g")
            [[ "$sha" == "$want" ]] || die "WRONG BYTES in the cache file"
            add "cached direct" "$t"
        done
        stop_mount "$dest"
        start_mount c cached/ "$dest" "$cache" --no-passthrough
        read_check "$dest/c/f1g" >/dev/null
        for ((r = 0; r < runs; r++)); do
            read -r _ t sha < <(read_check "$dest/c/f1g")
            [[ "$sha" == "$want" ]] || die "WRONG BYTES through the mount (--no-passthrough)"
            add "cached served" "$t"
        done
        stop_mount "$dest"
        rdest="$work/mnt-rclone"
        mkdir -p "$rdest"
        s3_env rclone mount bench:bench/cached "$rdest" --vfs-cache-mode full --read-only \
            --cache-dir "$work/rclone-cache" >"$work/logs/rclone-mount.log" 2>&1 &
        RCLONE_PID=$!
        register_cleanup_pid "$RCLONE_PID"
        for ((i = 0; i < 600; i++)); do mountpoint -q "$rdest" && break; sleep 0.05; done
        read_check "$rdest/f1g" >/dev/null
        for ((r = 0; r < runs; r++)); do
            read -r _ t sha < <(read_check "$rdest/f1g")
            [[ "$sha" == "$want" ]] || die "WRONG BYTES through rclone mount"
            add "cached rclone" "$t"
        done
        stop_rclone "$rdest"
        ours="$(best "${T[cached ours]}")"
        for k in ours served direct rclone; do
            b="$(best "${T[cached $k]}")"
            name="$(case $k in ours) echo "s3-synchronizer mount, passthrough" ;;
                served) echo "s3-synchronizer mount, --no-passthrough" ;;
                direct) echo "the cache file, directly" ;; rclone) echo "rclone mount, full cache" ;; esac)"
            rows+=("$(awk -v n="$name" -v b="$b" -v o="$ours" 'BEGIN {
                printf "| cached 1 GiB sequential read | %s | %.3f | %.2f GB/s | %.2f |", n, b, 1.073741824 / b, b / o }')")
        done
        ;;
    tail | first)
        for ((r = 0; r < runs; r++)); do
            cache="$work/cache-t$r-$c"
            dest="$work/mnt-t"
            start_mount t tail/ "$dest" "$cache"
            sleep 1 # the backlog is downloading
            if [[ "$c" == tail ]]; then
                read -r _ t sha < <(read_check "$dest/t/f1g" -1048576 1048576)
                [[ "$sha" == "$(sha_of "$data/tail/f1g" -1048576 1048576)" ]] ||
                    die "WRONG BYTES: the tail read through the mount"
                add "tail ours" "$t"
            else
                read -r f t sha < <(read_check "$dest/t/f64m")
                [[ "$sha" == "$(sha_of "$data/tail/f64m")" ]] ||
                    die "WRONG BYTES: the 64 MiB read through the mount"
                add "first ours" "$f"
                add "all ours" "$t"
            fi
            stop_mount "$dest"
            rm -rf -- "$cache"
            if [[ "$c" == tail ]]; then
                t="$(curl_get tail/f1g "$(((1 << 30) - (1 << 20)))-$(((1 << 30) - 1))")"
                [[ "$(sha_of "$work/curl.out")" == "$(sha_of "$data/tail/f1g" -1048576 1048576)" ]] ||
                    die "WRONG BYTES from the ranged GET"
                add "tail get" "$t"
            else
                t="$(curl_get tail/f64m)"
                [[ "$(sha_of "$work/curl.out")" == "$(sha_of "$data/tail/f64m")" ]] ||
                    die "WRONG BYTES from the GET"
                add "first get" "$t"
            fi
        done
        if [[ "$c" == tail ]]; then
            rows+=("$(awk -v o="$(best "${T[tail ours]}")" -v g="$(best "${T[tail get]}")" 'BEGIN {
                printf "| last 1 MiB of a 1 GiB file not downloaded, 4 GiB backlog | s3-synchronizer mount | %.3f | - | %.2f (ours / GET) |\n", o, o / g
                printf "| the same bytes, idle server | one ranged GET (curl) | %.3f | - | 1.00 |", g }')")
        else
            rows+=("$(awk -v f="$(best "${T[first ours]}")" -v a="$(best "${T[all ours]}")" -v g="$(best "${T[first get]}")" 'BEGIN {
                printf "| 64 MiB file not downloaded, 4 GiB backlog: open to first byte | s3-synchronizer mount | %.3f | - | %.2f (ours / GET) |\n", f, f / g
                printf "| the same, open to last byte | s3-synchronizer mount | %.3f | %.2f GB/s | %.2f (ours / GET) |\n", a, 0.067108864 / a, a / g
                printf "| the same file, idle server | one GET (curl) | %.3f | %.2f GB/s | 1.00 |", g, 0.067108864 / g }')")
        fi
        ;;
    *) die "unknown case '$c' (cached, tail, first)" ;;
    esac
done

echo
echo "$(nproc) CPUs; $(uname -r); $(rclone version 2>/dev/null | head -n 1); best of $runs runs; GB = 10^9 bytes"
echo
echo "| case | reader | best s | rate | ratio |"
echo "|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "All runs (seconds):"
for k in "${!T[@]}"; do
    printf '  %-14s %s\n' "$k" "${T[$k]}"
done | sort
