#!/usr/bin/env bash
# Side-by-side benchmark: times a full fresh copy of the same data, from the same local
# S3-compatible server (`rclone serve s3` on loopback), by s3-synchronizer, `rclone copy` and
# `s5cmd cp`, and prints a table of the best times. The upload sets time the other way: the same
# local files uploaded by each tool to the same server; the mount sets write those files into a
# writeable `s3-synchronizer mount` with `cp -r`.
#
#   scripts/bench.sh                              # every set, 3 runs of each tool
#   scripts/bench.sh --sets small --runs 5
#   scripts/bench.sh --sets up-small,up-large     # the upload sets only
#   scripts/bench.sh --sets mnt-small,mnt-write-small --runs 1   # writes into a mount
#   scripts/bench.sh --sets mnt-small --upload-delay 5    # the mount's delay in mnt-* (default 1)
#   scripts/bench.sh --tools rclone,s5cmd         # only some of the tools
#   scripts/bench.sh --logs /tmp/bench-logs       # keep each run's output there
#   scripts/bench.sh --sets up-large --versus /tmp/old/s3-synchronizer   # two builds side by side
#   scripts/bench.sh --mount [ARGS...]            # mount mode: runs scripts/bench_mount.sh ARGS
#
# Mount mode (`s3-synchronizer mount`: cached reads, first byte and tail reads under a download
# backlog, walking the tree, Parquet reads, vs rclone mount and plain GETs) has its own script,
# scripts/bench_mount.sh (--help there).
#
# Sets (bucket `bench`; random data written to the server's disk before it starts, or for the
# upload and mount sets to a local directory):
#   small            download: 1,000 objects of 256 KiB under small/
#   large            download: 2 objects of 512 MiB under large/
#   tiny             download: 10,000 objects of 4 KiB in 10 directories under tiny/ (many
#                    small files: a request and a file each, the bytes are nothing)
#   up-small         upload: 1,000 local files of 256 KiB, to up/up-small/TOOL-ROUND/
#   up-large         upload: 2 local files of 512 MiB, to up/up-large/TOOL-ROUND/
#   mnt-small        write + upload: the files of up-small, `cp -r` into a writeable mount of
#                    ours (to up/mnt-small/ours-ROUND/), timed until `status --wait` returns,
#                    vs the upload sets' tools (ours: sync) uploading them to a fresh prefix
#   mnt-large        the same with the files of up-large
#   mnt-write-small  the write alone: `cp -r` of the files of up-small into a writeable mount
#                    with --upload-delay 600 (nothing uploads meanwhile), vs `cp -r` of them
#                    into a local directory on the same disk; the unmount then uploads them,
#                    timed on a line of its own
#   mnt-write-large  the same with the files of up-large
# The default is every set: about 11 minutes on 2 cores (after the build), 2 for the downloads,
# 3 for the uploads, 5 to 8 for the mount sets. The mnt-* sets need root and FUSE (/dev/fuse;
# fuse3 is installed with apt-get when missing): without them they are skipped with a message.
# Tools, downloading each into a new empty destination, `sync` run before each timed copy:
#   ours    s3-synchronizer sync (defaults: --concurrency 20, --part-size 8MiB)
#   rclone  rclone copy --transfers 16 --multi-thread-streams 16, 8 MiB chunks above 8 MiB
#   s5cmd   s5cmd --numworkers 16 cp (its default part size and per-file concurrency)
#   mount   (with ours, given root and FUSE) s3-synchronizer mount of the set with an empty
#           cache, from its start until its background download has completed a pass
# and uploading each into a new empty prefix (no tool sees another's objects):
#   ours    s3-synchronizer sync of a writeable mount (fresh state) whose directory holds hard
#           links to the files: it lists the empty prefix, walks the directory, HEADs each key
#           and uploads (If-None-Match; multipart above --part-size 8MiB; --concurrency 20)
#   rclone  rclone copy --transfers 16 --s3-upload-concurrency 16, 8 MiB chunks above 8 MiB
#   s5cmd   s5cmd --numworkers 16 cp (its default part size and per-file concurrency)
# In mnt-small and mnt-large, ours is `s3-synchronizer mount` of a writeable mount with an empty
# cache, started before the timing and unmounted after it: `cp -r` into it, then
# `s3-synchronizer status --wait` (which asks the mount to upload every closed file at once)
# until every file is in S3; so the time holds the write and the upload. The mount's
# --upload-delay (how long a closed file is left alone before it uploads) is this script's
# --upload-delay, 1 s unless given: the upload then follows the `cp -r`, as with the mount's own
# default of 5 s; with 0 a file uploads as soon as it is closed, and the write and the upload
# compete for the CPUs and the disk. `sync` (with ours) is the upload sets' ours.
# With --versus BUILD, that build of s3-synchronizer runs wherever ours does (sync, mount), in
# turn with it, on a row of its own; its ratio is its time / ours (above 1: ours is faster).
# Within each round the order of the tools rotates, so noise hits all of them alike. Each tool's
# first copy of a set is checked byte for byte against the source (an upload, or what a mount
# uploaded, by downloading its prefix again); a wrong copy fails the script.
# Ratio = peer's best time / ours: above 1 means s3-synchronizer is faster (in mnt-write-*, the
# local copy's / the mount's; the goal, printed below the table, is the mount within 1.5x of it).
#
# Temporary data (about 2.5 GiB for the download sets, 3.5 GiB more for the upload sets: their
# files, one upload on the server and the download that checks it; 1 GiB more for a mount's cache
# or the local copy) goes under target/ in this repository (set BENCH_DIR to use another
# directory; not a RAM disk) and is removed on exit. Needs 4 GiB free there, 7 GiB with the
# upload sets, 8 GiB with the mount sets.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,74s/^# \{0,1\}//p' "$0"
}

all_sets="small,large,tiny,up-small,up-large,mnt-small,mnt-large,mnt-write-small,mnt-write-large"
sets=""
runs=3
tools="ours,rclone,s5cmd"
logs=""
versus=""
upload_delay=1
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
    --upload-delay)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        upload_delay="$2"
        shift 2
        ;;
    --upload-delay=*)
        upload_delay="${1#*=}"
        shift
        ;;
    *)
        value_option "sets runs tools logs versus" "$@" || die "unknown argument: $1 (try --help)"
        shift "$OPT_SHIFT"
        ;;
    esac
done

if [[ -n "$versus" ]]; then
    [[ -x "$versus" ]] || die "--versus $versus is not an executable"
    versus="$(realpath -- "$versus")"
fi
declare -a set_list tool_list down_list=() up_list=() mnt_list=() wanted=() skipped=()
comma_list wanted --sets "${sets:-$all_sets}"
comma_list tool_list --tools "$tools"
have_ours=0
for t in "${tool_list[@]}"; do
    case "$t" in
    ours) have_ours=1 ;;
    rclone | s5cmd) ;;
    *) die "unknown tool '$t' (ours, rclone, s5cmd)" ;;
    esac
done
# No mount without root and /dev/fuse (fusermount3 is installed below if missing).
no_fuse=""
if [[ $(id -u) -ne 0 ]]; then
    no_fuse="they need root"
elif [[ ! -e /dev/fuse ]]; then
    no_fuse="/dev/fuse is missing: this machine cannot mount FUSE file systems"
fi
set_list=()
for s in "${wanted[@]}"; do
    case "$s" in
    small | large | tiny) down_list+=("$s") ;;
    up-small | up-large) up_list+=("$s") ;;
    mnt-small | mnt-large | mnt-write-small | mnt-write-large)
        if [[ -n "$no_fuse" ]]; then
            skipped+=("$s")
            continue
        elif [[ "$s" == mnt-write-* && $have_ours -eq 0 ]]; then
            log "set $s skipped: it times our mount (add ours to --tools)"
            continue
        fi
        mnt_list+=("$s")
        ;;
    *) die "unknown set '$s' ($all_sets)" ;;
    esac
    set_list+=("$s")
done
if [[ ${#skipped[@]} -gt 0 ]]; then
    log "sets ${skipped[*]} skipped: $no_fuse"
fi
[[ ${#set_list[@]} -gt 0 ]] || die "no set left to run"
need_positive_int --runs "$runs"

ensure_python_tools
# The mount sets, and the download sets' mount of ours.
if [[ ${#mnt_list[@]} -gt 0 || (-z "$no_fuse" && $have_ours -eq 1 && ${#down_list[@]} -gt 0) ]]; then
    ensure_fuse
fi
if [[ $have_ours -eq 1 ]]; then
    build_tool
elif [[ -n "$versus" ]]; then
    die "--versus compares a build with ours: add ours to --tools"
fi

# build_of TOOL: the binary that runs as TOOL (ours, sync: this build; versus: the other one).
build_of() {
    case "$1" in
    versus) echo "$versus" ;;
    *) echo "$TOOL" ;;
    esac
}

# files_of SET: the set whose local files SET uploads (the mount sets write those of up-*).
files_of() {
    case "$1" in
    mnt-write-*) echo "up-${1#mnt-write-}" ;;
    mnt-*) echo "up-${1#mnt-}" ;;
    *) echo "$1" ;;
    esac
}
# The local files to write: those of each upload set and mount set, once.
declare -A seen=()
file_list=()
for s in "${up_list[@]}" "${mnt_list[@]}"; do
    f="$(files_of "$s")"
    [[ -n "${seen[$f]:-}" ]] || file_list+=("$f")
    seen[$f]=1
done

# ---------------------------------------------------------------------------------------------
# Scratch space on a real disk: the upload sets need room for their local files, one tool's
# copy on the server and the download that checks it.
need_gib=4
if [[ ${#up_list[@]} -gt 0 || ${#mnt_list[@]} -gt 0 ]]; then
    need_gib=7
fi
if [[ ${#mnt_list[@]} -gt 0 ]]; then
    need_gib=8 # a mount's cache, or the local copy
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
write_sets "$local_data" "${file_list[@]}"
sync

# The server starts once the data is in place; each download set (prefix SET/) is listed once
# before timing.
start_bench_server "$data" "${down_list[@]/%//}"

# ---------------------------------------------------------------------------------------------
# run_tool TOOL SET: one fresh copy of SET into $dest/SET (ours also keeps its state in $dest).
run_tool() {
    local tool="$1" set="$2"
    case "$tool" in
    ours | versus)
        s3_env "$(build_of "$tool")" sync \
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

# run_upload TOOL SET PREFIX: one upload of the local files of SET (for a mount set, those of
# its upload set) into the empty PREFIX (which ends in /) of the bucket; ours (in the mount sets
# `sync`) uploads $dest/SET, hard links to them, and keeps its state in $dest.
run_upload() {
    local tool="$1" set="$2" prefix="$3" files
    files="$local_data/$(files_of "$set")"
    case "$tool" in
    ours | sync | versus)
        s3_env "$(build_of "$tool")" sync --default-s3-mounts \
            "[{\"id\":\"$set\",\"bucket\":\"bench\",\"prefix\":\"$prefix\",\"writeable\":true}]" \
            --destination "$dest" --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION"
        ;;
    rclone)
        s3_env rclone copy "$files" "bench:bench/${prefix%/}" \
            --transfers 16 --s3-upload-concurrency 16 --s3-chunk-size 8M --s3-upload-cutoff 8M
        ;;
    s5cmd)
        s3_env s5cmd --endpoint-url "$S3_ENDPOINT" --numworkers 16 \
            cp "$files/*" "s3://bench/$prefix"
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
    if ! diff -r -q "$local_data/$(files_of "$set")" "$check" >"$logs/diff-$set-$tool.txt" 2>&1; then
        head -n 20 "$logs/diff-$set-$tool.txt" >&2
        die "WRONG UPLOAD: $tool's upload of set '$set' differs from the local files (see above)"
    fi
    expect_entries "$data/bench" up "${down_list[@]}"
    rm -rf -- "$check"
}

# ---------------------------------------------------------------------------------------------
# The mount sets: one mount of ours at a time, at $mnt, its cache in $cache, a writeable mount
# `w` of a prefix of its own; unmounted on any exit.
mnt="$work/mnt"
cache="$work/mnt-cache"
copy="$work/copy"
MOUNT_ID=w
MOUNT_PID=""

# On exit the mount is unmounted first; lib.sh then stops its process (registered) and the
# server, and removes the scratch data.
_unmount_on_exit() { [[ -z "$MOUNT_PID" ]] || unmount_fs; }
on_exit_first _unmount_on_exit

# start_mount BUILD PREFIX DELAY LOG: a new mount of BUILD at $mnt, with an empty cache, of
# s3://bench/PREFIX as the writeable mount $MOUNT_ID, uploading what is written once it has been
# quiet for DELAY seconds; returns once $mnt/$MOUNT_ID is there.
start_mount() {
    local build="$1" prefix="$2" delay="$3" logfile="$4" i
    rm -rf -- "$cache"
    mkdir -p -- "$mnt" "$cache"
    spawn "$logfile" "$build" mount --default-s3-mounts \
        "[{\"id\":\"$MOUNT_ID\",\"bucket\":\"bench\",\"prefix\":\"$prefix\",\"writeable\":true}]" \
        --destination "$mnt" --cache-dir "$cache" --upload-delay "$delay" --flush-timeout 600 \
        --endpoint-url "$S3_ENDPOINT" --region "$S3_REGION"
    MOUNT_PID="$BG_PID"
    for ((i = 0; i < 1200; i++)); do
        if mountpoint -q "$mnt" && [[ -d "$mnt/$MOUNT_ID" ]]; then
            return 0
        fi
        if ! running "$MOUNT_PID"; then
            tail -n 20 "$logfile" >&2
            die "s3-synchronizer mount exited before $mnt was mounted (its log is above)"
        fi
        sleep 0.05
    done
    tail -n 20 "$logfile" >&2
    die "$mnt was not mounted within 60 s (the log is above)"
}

# unmount_fs: unmounts $mnt (the mount's process then uploads what is left, and exits).
unmount_fs() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        fusermount3 -u "$mnt" 2>/dev/null || { sleep 0.5 && fusermount3 -u "$mnt" 2>/dev/null; } ||
            fusermount3 -u -z "$mnt" 2>/dev/null || log "could not unmount $mnt"
    fi
}

# stop_mount: unmounts $mnt and waits for the mount's process to exit (it uploads what is left
# first, for at most its --flush-timeout of 600 s); then every change must be in S3.
stop_mount() {
    local i
    unmount_fs
    for ((i = 0; ; i++)); do
        running "$MOUNT_PID" || break
        [[ $i -lt 6600 ]] || die "s3-synchronizer mount is still running 660 s after its unmount"
        sleep 0.1
    done
    MOUNT_PID=""
    "$TOOL" status --destination "$mnt" --cache-dir "$cache" >"$logs/status.txt" 2>&1 || {
        cat "$logs/status.txt" >&2
        die "not everything written into the mount was uploaded by the time it exited (see above)"
    }
}

# The timed copies of the mount sets. mount_write SET: `cp -r` of SET's files into the mount.
mount_write() { cp -r -- "$local_data/$(files_of "$1")/." "$mnt/$MOUNT_ID/"; }
# mount_upload SET: mount_write SET, then `status --wait` until all of it is in S3; the time
# the write ended goes to $work/written.
mount_upload() {
    mount_write "$1" || return
    now >"$work/written"
    "$TOOL" status --destination "$mnt" --cache-dir "$cache" --wait
}
# mount_download SET LOG: a new mount of ours (empty cache) of SET, until its background
# download has completed a pass without failures.
mount_download() {
    start_mount "$TOOL" "$1/" 600 "$2"
    wait_pass "$2" "$MOUNT_ID"
}
# local_write SET: `cp -r` of SET's files into the empty local directory $copy.
local_write() { cp -r -- "$local_data/$(files_of "$1")/." "$copy/"; }

# set_tools SET: sets SET_TOOLS to what is timed in SET (in the order of the first round). In
# the mount sets ours is the mount, and `sync` (the upload sets' ours) runs beside the peers; the
# download sets time ours in mount mode too.
SET_TOOLS=()
set_tools() {
    local t
    SET_TOOLS=()
    case "$1" in
    mnt-write-*) SET_TOOLS=(ours local) ;;
    mnt-*)
        for t in "${tool_list[@]}"; do
            SET_TOOLS+=("$t")
            if [[ "$t" == ours ]]; then SET_TOOLS+=(sync); fi
        done
        ;;
    up-*) SET_TOOLS=("${tool_list[@]}") ;;
    *)
        for t in "${tool_list[@]}"; do
            SET_TOOLS+=("$t")
            if [[ "$t" == ours && -z "$no_fuse" ]]; then SET_TOOLS+=(mount); fi
        done
        ;;
    esac
    if [[ -n "$versus" ]]; then SET_TOOLS+=(versus); fi
}

# table_rows SET: sets ROWS to the rows of SET in the table: its tools, and in the mount sets
# the parts of ours timed on their own (mnt-*: the write; mnt-write-*: the unmount after it).
ROWS=()
table_rows() {
    local t
    set_tools "$1"
    ROWS=()
    for t in "${SET_TOOLS[@]}"; do
        ROWS+=("$t")
        case "$1:$t" in
        mnt-write-*:ours) ROWS+=(flush) ;;
        mnt-*:ours) ROWS+=(write) ;;
        esac
    done
}

# tool_label SET TOOL: the name of TOOL's row of SET in the table.
tool_label() {
    case "$1:$2" in
    mnt-write-*:ours) echo "s3-synchronizer mount: cp -r (--upload-delay 600)" ;;
    mnt-write-*:local) echo "cp -r to a local directory" ;;
    mnt-write-*:flush) echo "then fusermount3 -u until the mount exits (it uploads)" ;;
    mnt-*:ours) echo "s3-synchronizer mount: cp -r + status --wait (--upload-delay $upload_delay)" ;;
    mnt-*:write) echo "of which the cp -r into the mount" ;;
    mnt-*:sync) echo "s3-synchronizer sync" ;;
    *:mount) echo "s3-synchronizer mount: its background download" ;;
    *:ours) echo "s3-synchronizer" ;;
    *:versus) echo "the --versus build ($(basename -- "$versus"))" ;;
    *) echo "$2" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
declare -A times   # "set tool" -> space-separated seconds of each run
declare -A bytes   # set -> total bytes
for s in "${down_list[@]}"; do
    bytes[$s]="$(find "$data/bench/$s" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')"
done
for s in "${up_list[@]}" "${mnt_list[@]}"; do
    bytes[$s]="$(find "$local_data/$(files_of "$s")" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')"
done

# record SET TOOL ROUND SECONDS
record() {
    times["$1 $2"]="${times["$1 $2"]:-}${times["$1 $2"]:+ }$4"
    printf '   %-15s round %d  %-6s %7s s\n' "$1" $(($3 + 1)) "$2" "$4" >&2
}

for s in "${set_list[@]}"; do
    case "$s" in
    up-*) kind="up" ;;
    mnt-write-*) kind="write" ;;
    mnt-*) kind="mnt" ;;
    *) kind="down" ;;
    esac
    set_tools "$s"
    for ((round = 0; round < runs; round++)); do
        in_turn "$round" "${SET_TOOLS[@]}"
        for t in "${TURN[@]}"; do
            rm -rf -- "$dest" "$copy"
            mkdir -p -- "$dest"
            # An upload goes to a prefix of its own, empty until then; ours uploads hard links
            # to the same files as the peers (the same inodes, so the same page cache).
            prefix="up/$s/$t-$((round + 1))/"
            out="$logs/$s-$t-$((round + 1)).log"
            case "$kind:$t" in
            down:mount) run=(mount_download "$s" "$logs/$s-mount-$((round + 1)).log") ;;
            down:*) run=(run_tool "$t" "$s") ;;
            mnt:ours | mnt:versus)
                start_mount "$(build_of "$t")" "$prefix" "$upload_delay" "$logs/$s-$t-mount-$((round + 1)).log"
                run=(mount_upload "$s")
                ;;
            write:ours | write:versus)
                start_mount "$(build_of "$t")" "$prefix" 600 "$logs/$s-$t-mount-$((round + 1)).log"
                run=(mount_write "$s")
                ;;
            write:local)
                mkdir -p -- "$copy"
                run=(local_write "$s")
                ;;
            *)
                run=(run_upload "$t" "$s" "$prefix")
                if [[ "$t" == ours || "$t" == sync || "$t" == versus ]]; then
                    cp -al -- "$local_data/$(files_of "$s")" "$dest/$s"
                fi
                ;;
            esac
            sync
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
            record "$s" "$t" "$round" "$(elapsed "$t0" "$t1")"
            if [[ $kind == mnt && $t == ours ]]; then
                record "$s" write "$round" "$(elapsed "$t0" "$(<"$work/written")")"
            fi
            # The mount is unmounted (it uploads what is left: in mnt-write-*, all of it, timed).
            if [[ ($kind == mnt || $kind == write) && ($t == ours || $t == versus) ]]; then
                t0="$(now)"
                stop_mount
                t1="$(now)"
                if [[ $kind == write && $t == ours ]]; then
                    record "$s" flush "$round" "$(elapsed "$t0" "$t1")"
                fi
                rm -rf -- "$cache"
            fi
            if [[ $kind == down && $t == mount ]]; then
                if [[ $round -eq 0 ]] && ! diff -r -q "$data/bench/$s" "$mnt/$MOUNT_ID" >"$logs/diff-$s-mount.txt" 2>&1; then
                    head -n 20 "$logs/diff-$s-mount.txt" >&2
                    die "WRONG COPY: the mount's copy of set '$s' differs from the source (see above)"
                fi
                stop_mount
                rm -rf -- "$cache"
            elif [[ $round -eq 0 && $kind == down ]]; then
                verify "$s" "$t"
            elif [[ $round -eq 0 && $t != local ]]; then
                verify_upload "$s" "$t" "$prefix"
            fi
            # Only the server's disk holds an upload: room for the next one.
            if [[ $kind != down ]]; then
                rm -rf -- "${data:?}/bench/$prefix" "$copy"
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
    table_rows "$s"
    ours_best=""
    if [[ $have_ours -eq 1 ]]; then
        ours_best="$(best "${times["$s ours"]}")"
    fi
    for t in "${ROWS[@]}"; do
        b="$(best "${times["$s $t"]}")"
        # A part of ours, or the unmount's upload after it: no ratio.
        o="$ours_best"
        [[ "$t" == write || "$t" == flush ]] && o=""
        awk -v set="$s" -v name="$(tool_label "$s" "$t")" -v b="$b" -v n="${bytes[$s]}" -v o="$o" 'BEGIN {
            ratio = (o == "" || o + 0 == 0) ? "-" : sprintf("%.2f", b / o)
            printf "| %s | %s | %.2f | %.0f | %s |\n", set, name, b, n / b / 1e6, ratio
        }'
    done
done
goals=0
for s in "${set_list[@]}"; do
    [[ "$s" == mnt-write-* ]] || continue
    if [[ $goals -eq 0 ]]; then
        echo
        echo "Goal: cp -r into a writeable mount (before its upload) within 1.5x of cp -r to local disk:"
        goals=1
    fi
    awk -v set="$s" -v o="$(best "${times["$s ours"]}")" -v l="$(best "${times["$s local"]}")" \
        -v om="$(median "${times["$s ours"]}")" -v lm="$(median "${times["$s local"]}")" 'BEGIN {
        r = (l + 0 == 0) ? 0 : o / l
        printf "  %-16s mount %.2f s / local %.2f s = %4.2f  %s", set, o, l, r, (r <= 1.5) ? "met" : "MISSED"
        if (lm + 0 > 0) printf "   (medians: %.2f s / %.2f s = %4.2f)", om, lm, om / lm
        printf "\n"
    }'
done
echo
echo "All runs (seconds):"
for s in "${set_list[@]}"; do
    table_rows "$s"
    for t in "${ROWS[@]}"; do
        printf '  %-15s %-6s %s\n' "$s" "$t" "${times["$s $t"]}"
    done
done
if [[ ${#skipped[@]} -gt 0 ]]; then
    echo
    echo "Skipped: ${skipped[*]} ($no_fuse)"
fi
# Warnings and errors our mounts logged (timestamps dropped, each once), but the one about the
# new prefix being empty.
problems="$(cat "$logs"/*-mount-*.log 2>/dev/null | grep -E '^[^ ]+ +(WARN|ERROR) ' |
    sed -E 's/^[^ ]+ +//' | grep -v 'WARN s3_synchronizer::engine: no objects under s3://bench/up/' |
    sort | uniq -c | sort -rn | head -n 20 || true)"
if [[ -n "$problems" ]]; then
    echo
    echo "Warnings and errors in the mounts' logs (count, line):"
    printf '%s\n' "$problems"
fi
