#!/usr/bin/env bash
# A first look at s3-synchronizer, on a fresh Debian machine (as root, or with sudo):
#
#   scripts/demo.sh              # everything in temporary directories, removed at the end
#   scripts/demo.sh --keep DIR   # keep the synchronized copy in DIR
#
# It installs what it needs (a Rust toolchain must already be there), builds the tool, starts a
# local S3-compatible server (`rclone serve s3`) with a small sample bucket, copies it with two
# mounts, shows the result, syncs again to show that nothing is downloaded twice, and checks that
# the copy equals the source byte for byte. Takes a few seconds after the build.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "$0"
}

keep=""
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
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
done

# One stream, so that messages of the tool and of this script keep their order in a log.
exec 2>&1

ensure_python_tools
build_tool

make_temp_dir "${TMPDIR:-/tmp}"
work="$TEMP_DIR"
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
head -c $((20 * 1024 * 1024)) /dev/urandom >"$b/data/raw/random-20MiB.bin"

# The server caches listings, so it starts after the data is in place.
start_s3_server "$data" "$work/server.log"

gets() { grep -c 'GET OBJECT' "$S3_SERVER_LOG" || true; }

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
(
    cd "$dest"
    find . -mindepth 1 -path ./.s3-synchronizer -prune -o -printf '%P\t%s\t%y\n' | LC_ALL=C sort |
        awk -F '\t' '$3 == "d" { printf "%10s  %s/\n", "", $1; next } { printf "%10d  %s\n", $2, $1 }'
)

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
