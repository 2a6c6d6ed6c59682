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
#   S3SYNC_TOOL=/tmp/old/s3-synchronizer scripts/bench_mount.sh   # another build, e.g. to compare
#   scripts/bench_mount.sh --cases first-byte,tail-read --runs 15 --versus /tmp/old/s3-synchronizer
#                          # this build and another side by side: each run mounts both, in turn
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
#                s5cmd cat.
#   tail-read    the last 1 MiB of a 1 GiB random file (open, seek, read) in the same new mount
#                under the same backlog (read after the first byte, before the whole 64 MiB), vs
#                one 1 MiB ranged GET on the idle server: curl, and rclone cat --offset --count.
#   walk-stat    os.walk + os.stat of 10,000 files of 1 KiB in 100 directories: through our
#                mount, on our complete cache directory (local disk), through rclone mount; each
#                walked once before timing.
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
    sed -n '2,56s/^# \{0,1\}//p' "$0"
}

all_cases="cached-read,first-byte,tail-read,cpu-share,walk-stat,parquet"
cases="$all_cases"
runs=2
logs=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --cases | --runs | --logs | --versus)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        printf -v "${1#--}" '%s' "$2"
        shift 2
        ;;
    --cases=* | --runs=* | --logs=* | --versus=*)
        name="${1%%=*}"
        printf -v "${name#--}" '%s' "${1#*=}"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
done
logs_keep="${logs:-}"

declare -A want=()
IFS=, read -r -a case_list <<<"$cases"
[[ ${#case_list[@]} -gt 0 ]] || die "--cases is empty"
for c in "${case_list[@]}"; do
    case "$c" in
    cached-read | cached) want[cached-read]=1 ;;
    first-byte | first) want[first-byte]=1 ;;
    tail-read | tail) want[tail-read]=1 ;;
    cpu-share | cpu) want[cpu-share]=1 ;;
    walk-stat | walk) want[walk-stat]=1 ;;
    parquet) want[parquet]=1 ;;
    *) die "unknown case '$c' ($all_cases)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
has() { [[ -n "${want[$1]:-}" ]]; }
versus="${versus:-}"
if [[ -n "$versus" ]]; then
    [[ -x "$versus" ]] || die "--versus $versus is not an executable"
    has first-byte || has tail-read ||
        die "--versus compares builds in the first-byte and tail-read cases: ask for one of them"
fi

ensure_python_tools
ensure_fuse
command -v curl >/dev/null 2>&1 || _apt_install curl || die "curl is needed (apt-get install curl)"
if has parquet && ! python3 -c 'import pyarrow.parquet' >/dev/null 2>&1; then
    log "installing pyarrow (pip)"
    export PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
    python3 -m pip install --quiet pyarrow 2>/dev/null ||
        python3 -m pip install --quiet --user --break-system-packages pyarrow ||
        die "could not install pyarrow with pip"
    python3 -c 'import pyarrow.parquet' || die "pyarrow is installed but cannot be imported"
fi
build_tool

# ---------------------------------------------------------------------------------------------
# Scratch space on a real disk.
need_gib=1
has cached-read && need_gib=$((need_gib + 4))
if has first-byte || has tail-read || has cpu-share; then need_gib=$((need_gib + 6)); fi
has parquet && need_gib=$((need_gib + 4))
parent="${BENCH_DIR:-$REPO_ROOT/target}"
mkdir -p -- "$parent"
free_kib="$(df -Pk "$parent" | awk 'NR == 2 { print $4 }')"
if [[ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]]; then
    die "$(awk -v k="$free_kib" 'BEGIN { printf "%.1f", k / 1048576 }') GiB free under $parent; these cases need $need_gib GiB (set BENCH_DIR to another directory)"
fi
make_temp_dir "$parent"
work="$TEMP_DIR"
data="$work/data"
src="$data/bench"
logs="$work/logs"
helper="$work/helper.py"
mkdir -p "$src" "$logs"

# ---------------------------------------------------------------------------------------------
# Mounts: each runs in its own session, in the background, and is unmounted on any exit.

declare -A MOUNT_PIDS=() # mount point -> the process serving it
MOUNT_LOG_LEVEL="info,s3_synchronizer=debug"

_bench_exit_status() { return "$1"; }
_bench_on_exit() {
    local rc=$? mnt
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
    # lib.sh's handler: stops the server, removes the scratch data, exits with status rc.
    _bench_exit_status "$rc" || _on_exit
    _on_exit
}
trap _bench_on_exit EXIT

# spawn LOG CMD...: runs CMD with the local server's credentials in the background, in a session
# of its own, its output into LOG; sets BG_PID (stopped on exit if still running).
BG_PID=""
spawn() {
    local logfile="$1" pidfile="$work/pid.$RANDOM" i
    shift
    rm -f -- "$pidfile"
    # shellcheck disable=SC2016  # expanded by the inner shell
    s3_env setsid bash -c 'echo "$$" >"$0.tmp" && mv -- "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
        </dev/null >"$logfile" 2>&1 &
    for ((i = 0; i < 500; i++)); do
        [[ -s "$pidfile" ]] && break
        sleep 0.01
    done
    [[ -s "$pidfile" ]] || die "could not start $1"
    BG_PID="$(<"$pidfile")"
    rm -f -- "$pidfile"
    register_cleanup_pid "$BG_PID"
}

# wait_mounted MNT ENTRY LOG: waits until MNT is a mount point that lists ENTRY.
wait_mounted() {
    local mnt="$1" entry="$2" logfile="$3" pid="${MOUNT_PIDS[$1]}" i
    for ((i = 0; i < 1200; i++)); do
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
    die "$mnt did not list $entry within 60 s (the log is above)"
}

# start_ours ID PREFIX MNT CACHE LOG [FLAGS...]: our mount of s3://bench/PREFIX at MNT/ID, its
# cache in CACHE; returns once MNT/ID is listed. MOUNT_TOOL, when set, is the binary mounted
# instead of TOOL.
start_ours() {
    local id="$1" prefix="$2" mnt="$3" cache="$4" logfile="$5"
    shift 5
    mkdir -p -- "$mnt" "$cache"
    # shellcheck disable=SC2086 # OURS_FLAGS holds flags, split on purpose
    spawn "$logfile" env RUST_LOG="$MOUNT_LOG_LEVEL" "${MOUNT_TOOL:-$TOOL}" mount \
        --default-s3-mounts "[{\"id\":\"$id\",\"bucket\":\"bench\",\"prefix\":\"$prefix\"}]" \
        --destination "$mnt" --cache-dir "$cache" --endpoint-url "$S3_ENDPOINT" \
        --region "$S3_REGION" "$@" ${OURS_FLAGS:-}
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

# wait_pass LOG ID: waits until our mount logged a complete first pass of mount ID, without
# failures.
wait_pass() {
    local logfile="$1" id="$2" i line
    for ((i = 0; i < 6000; i++)); do
        line="$(grep -m 1 "pass complete mount=\"$id\"" "$logfile" || true)"
        if [[ -n "$line" ]]; then
            [[ "$line" == *" failed=0 "* ]] || die "the download of mount '$id' failed: $line"
            return 0
        fi
        sleep 0.1
    done
    die "mount '$id' did not finish downloading within 600 s (see $logfile)"
}

# ---------------------------------------------------------------------------------------------
# Data, and the Python side of the measurements.

cat >"$helper" <<'EOF'
import hashlib, os, sys, time

MiB = 1 << 20


def wrong(msg):
    print("WRONG DATA: " + msg, file=sys.stderr)
    sys.exit(3)


def random_file(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def source_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(16 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def cache_state(cache, mid, key, rel):
    """What our cache holds of KEY right now (peeks at its layout: complete file, or partial)."""
    if os.path.exists(os.path.join(cache, mid, rel)):
        return "complete"
    partial = os.path.join(cache, ".s3-synchronizer", "partial", mid)
    for k in (key, rel):
        if os.path.exists(os.path.join(partial, "%016x.part" % fnv1a(k.encode()))):
            return "started"
    return "not-started"


def gen(root, cases):
    if "cached-read" in cases:
        random_file(os.path.join(root, "cr/big-1GiB.bin"), 1024 * MiB)
    if "first-byte" in cases or "tail-read" in cases or "cpu-share" in cases:
        # The backlog: sparse on the server's disk (it still sends every byte).
        os.makedirs(os.path.join(root, "bl/backlog"), exist_ok=True)
        for i in range(128):
            with open(os.path.join(root, "bl/backlog/obj-%03d.bin" % i), "wb") as f:
                f.truncate(32 * MiB)
    if "first-byte" in cases:
        random_file(os.path.join(root, "bl/zz/first-64MiB.bin"), 64 * MiB)
        random_file(os.path.join(root, "bl/zz/whole-64MiB.bin"), 64 * MiB)
    if "tail-read" in cases:
        random_file(os.path.join(root, "bl/zz/tail-1GiB.bin"), 1024 * MiB)
    if "walk-stat" in cases:
        for d in range(100):
            os.makedirs(os.path.join(root, "ws/d-%03d" % d))
            for i in range(100):
                with open(os.path.join(root, "ws/d-%03d/f-%03d.bin" % (d, i)), "wb") as f:
                    f.write(os.urandom(1024))
    if "parquet" in cases:
        import pyarrow as pa
        import pyarrow.parquet as pq
        os.makedirs(os.path.join(root, "pq"))
        rows = 1 << 20  # 4 int64 columns: 32 MiB a row group
        schema = pa.schema([(c, pa.int64()) for c in ("a", "b", "c", "d")])
        with pq.ParquetWriter(os.path.join(root, "pq/data-2GiB.parquet"), schema,
                              compression="none", use_dictionary=False) as w:
            for _ in range(64):
                cols = [pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(os.urandom(8 * rows))])
                        for _ in schema]
                w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=rows)


def read(path, size, want_sha=None, drop=False):
    """Sequential read in 1 MiB reads; with want_sha, hashes as it reads (a check, not a time).
    With drop, first drops the pages the kernel keeps of this file (of this file only)."""
    if drop:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    buf = bytearray(MiB)
    view = memoryview(buf)
    h = hashlib.sha256() if want_sha else None
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if h:
                h.update(view[:n])
            total += n
    t = time.perf_counter() - t0
    if total != size:
        wrong("%s: read %d bytes, expected %d" % (path, total, size))
    if h and h.hexdigest() != want_sha:
        wrong("%s: the bytes read differ from the source's" % path)
    print("%.6f" % t)


def probe(cache, mid, prefix, mnt, srcdir, specs):
    """The reads of first-byte and tail-read, in order; prints "KIND SECONDS STATE_BEFORE"."""
    for spec in specs:
        kind, rel = spec.split("=", 1)
        path = os.path.join(mnt, mid, rel)
        source = os.path.join(srcdir, rel)
        state = cache_state(cache, mid, prefix + rel, rel)
        if kind == "first":
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                data = f.read(1)
            t = time.perf_counter() - t0
            if data != source_bytes(source, 0, 1):
                wrong("%s: the first byte differs from the source's" % path)
        elif kind == "whole":
            chunks = []
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                while True:
                    b = f.read(MiB)
                    if not b:
                        break
                    chunks.append(b)
            t = time.perf_counter() - t0
            h = hashlib.sha256()
            for b in chunks:
                h.update(b)
            if h.hexdigest() != sha_file(source):
                wrong("%s: the bytes read differ from the source's" % path)
        elif kind == "tail":
            data = b""
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                f.seek(-MiB, os.SEEK_END)
                while len(data) < MiB:
                    b = f.read(MiB - len(data))
                    if not b:
                        break
                    data += b
            t = time.perf_counter() - t0
            if data != source_bytes(source, os.path.getsize(source) - MiB, MiB):
                wrong("%s: its last MiB differs from the source's" % path)
        else:
            raise SystemExit("unknown probe " + kind)
        print(kind, "%.6f" % t, state, flush=True)


def listing(top):
    out = []
    for root, _, files in os.walk(top):
        for name in files:
            p = os.path.join(root, name)
            out.append((os.path.relpath(p, top), os.stat(p).st_size))
    return out


def walk(top, srcdir):
    t0 = time.perf_counter()
    seen = listing(top)
    t = time.perf_counter() - t0
    if sorted(seen) != sorted(listing(srcdir)):
        wrong("%s: the names or sizes differ from the source's (%d files seen)" % (top, len(seen)))
    print("%.6f" % t)


def cpu():
    t0 = time.perf_counter()
    x = 0
    for i in range(5_000_000):
        x += i
    if x != 5_000_000 * 4_999_999 // 2:
        wrong("the CPU loop computed %d" % x)
    print("%.6f" % (time.perf_counter() - t0))


def parquet(path, source, rg):
    import pyarrow.parquet as pq
    t0 = time.perf_counter()
    md = pq.read_metadata(path)
    t1 = time.perf_counter()
    table = pq.ParquetFile(path).read_row_group(rg)
    t2 = time.perf_counter()
    want = pq.read_metadata(source)
    if not md.equals(want):
        wrong("%s: the metadata differs from the source's" % path)
    if not table.equals(pq.ParquetFile(source).read_row_group(rg)):
        wrong("%s: row group %d differs from the source's" % (path, rg))
    g = want.row_group(rg)
    print("meta %.6f" % (t1 - t0))
    print("rowgroup %.6f" % (t2 - t1))
    print("bytes %d" % sum(g.column(i).total_compressed_size for i in range(g.num_columns)))


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "gen":
    gen(args[0], set(args[1:]))
elif cmd == "read":
    read(args[0], int(args[1]), args[2] if len(args) > 2 and args[2] != "-" else None,
         len(args) > 3 and args[3] == "drop")
elif cmd == "probe":
    probe(args[0], args[1], args[2], args[3], args[4], args[5:])
elif cmd == "walk":
    walk(args[0], args[1])
elif cmd == "parquet":
    parquet(args[0], args[1], int(args[2]))
elif cmd == "cpu":
    cpu()
else:
    raise SystemExit("unknown command " + cmd)
EOF

py() { python3 "$helper" "$@" || die "python3 $helper $* failed (exit code $?)"; }

log "writing the data under $work"
py gen "$src" "${!want[@]}"
sync

# The server caches listings, so it starts after the data is in place.
start_s3_server "$data"
# The server computes each object's ETag (an MD5) on its first listing: list everything once
# before timing, so that cost falls on no reader.
s3_env s5cmd --endpoint-url "$S3_ENDPOINT" ls "s3://bench/*" >/dev/null ||
    die "cannot list s3://bench/ on the local server"

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
    local rel=big-1GiB.bin size=$((1 << 30)) sha round k t
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
        py read "${path[$t]}" "$size" "$sha" >/dev/null
    done
    for ((round = 0; round < runs; round++)); do
        for ((k = 0; k < ${#order[@]}; k++)); do
            t="${order[$(((round + k) % ${#order[@]}))]}"
            if [[ "$t" == ours-np-drop ]]; then
                record cached-read "$t" "$round" "$(py read "${path[$t]}" "$size" - drop)"
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
    local mlog one=$((1 << 20)) big=$((1 << 30)) key waits k
    has first-byte && first=1
    has tail-read && tail=1
    local f64=bl/zz/first-64MiB.bin w64=bl/zz/whole-64MiB.bin t1g=bl/zz/tail-1GiB.bin
    local ours="s3-synchronizer mount, new, 4 GiB backlog downloading"
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
        for ((k = 0; k < ${#builds[@]}; k++)); do
            backlog_round "${builds[$(((round + k) % ${#builds[@]}))]}"
        done
    done
}

# ---------------------------------------------------------------------------------------------
case_cpu_share() {
    local round k t mnt="$work/mnt-cpu" cache="$work/cache-cpu" dir="$work/s5cmd-cpu" mlog
    measure cpu-share - "cpu-share: a CPU-bound Python loop, 1 s into a 4 GiB download" \
        ours "during s3-synchronizer mount's background download (new mount)" \
        s5cmd "during s5cmd cp of the same objects (its defaults)" \
        idle "nothing downloading"
    log "cpu-share: each run, the loop alone, during our mount's download, during s5cmd cp"
    py cpu >/dev/null # warm-up
    local order=(ours s5cmd idle)
    for ((round = 0; round < runs; round++)); do
        for ((k = 0; k < ${#order[@]}; k++)); do
            t="${order[$(((round + k) % ${#order[@]}))]}"
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
                rm -rf -- "$dir"
                ;;
            idle) record cpu-share idle "$round" "$(py cpu)" ;;
            esac
        done
    done
}

# ---------------------------------------------------------------------------------------------
case_walk_stat() {
    local mnt="$work/mnt-ws" cache="$work/cache-ws" rc="$work/mnt-ws-rclone"
    local crc="$work/cache-ws-rclone" round k t
    log "walk-stat: our mount (downloading 10,000 files), rclone mount"
    measure walk-stat - "walk-stat: os.walk + os.stat, 10,000 files in 100 dirs" \
        ours "s3-synchronizer mount" \
        local "our cache directory (local disk)" \
        rclone "rclone mount --vfs-cache-mode full"
    start_ours ws ws/ "$mnt" "$cache" "$logs/ours-walk-stat.log"
    start_rclone "$rc" ws "$crc" "$logs/rclone-walk-stat.log" d-000
    declare -A dir=([ours]="$mnt/ws" [local]="$cache/ws" [rclone]="$rc")
    py walk "${dir[ours]}" "$src/ws" >/dev/null # before the download completes: stat needs no data
    wait_pass "$logs/ours-walk-stat.log" ws
    local order=(ours local rclone)
    for t in "${order[@]}"; do
        py walk "${dir[$t]}" "$src/ws" >/dev/null
    done
    for ((round = 0; round < runs; round++)); do
        for ((k = 0; k < ${#order[@]}; k++)); do
            t="${order[$(((round + k) % ${#order[@]}))]}"
            record walk-stat "$t" "$round" "$(py walk "${dir[$t]}" "$src/ws")"
        done
    done
    unmount "$mnt"
    unmount "$rc"
    rm -rf -- "$cache" "$crc"
}

# ---------------------------------------------------------------------------------------------
case_parquet() {
    local rel=data-2GiB.parquet rg=32 mnt="$work/mnt-pq" cache="$work/cache-pq" round k t out
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
        for ((k = 0; k < ${#order[@]}; k++)); do
            t="${order[$(((round + k) % ${#order[@]}))]}"
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
has parquet && case_parquet

# ---------------------------------------------------------------------------------------------
best() { tr ' ' '\n' <<<"$1" | sort -g | head -n 1; }
# median TIMES: the middle one (of an even count, the lower of the two middle ones).
median() {
    local sorted
    mapfile -t sorted < <(tr ' ' '\n' <<<"$1" | sort -g)
    echo "${sorted[$(((${#sorted[@]} - 1) / 2))]}"
}

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
