#!/usr/bin/env bash
# Full backup and restore benchmark: Lifeboat, pgBackRest and pg_basebackup
# on the same PostgreSQL 15 cluster, one pgbench scale after another. For each
# tool: wall time, MiB/s, stored size, peak memory and CPU of a full backup
# and of a restore into a fresh directory. Run by hand, as root (or via sudo),
# never in CI. See bench/README.md.
#
#   sudo bash bench/backup_restore.sh
#   TOOLS="pgbackrest pg_basebackup" SCALES=5 bash bench/backup_restore.sh
#
# Output: a Markdown report on stdout and in bench/out/backup_restore-<date>.md.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALES=${SCALES:-"50 200"}               # pgbench scales, measured in this order
TOOLS=${TOOLS:-"lifeboat pgbackrest pg_basebackup"}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-target/release/lifeboat} # relative to the repo root
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/lifeboat-bench-backup-restore} # the work dir itself
KEEP=${KEEP:-0}                          # 1: keep the work dir (data, repositories, logs)
VERIFY=${VERIFY:-1}                      # 1: start each restored copy and count its rows (not timed)
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}       # seconds before a measured command is killed
RSS_SAMPLE_SECONDS=${RSS_SAMPLE_SECONDS:-0.2} # period of the process-tree memory sampler
IDLE_MAX_MS_PER_S=${IDLE_MAX_MS_PER_S:-200}  # machine busier than this (CPU ms/s) = "not idle"
IDLE_WAIT_SECONDS=${IDLE_WAIT_SECONDS:-300}  # how long to wait for idle before each step (0: never)
IDLE_SAMPLE_SECONDS=${IDLE_SAMPLE_SECONDS:-2}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/bench/out}

case "$LIFEBOAT_BIN" in /*) ;; *) LIFEBOAT_BIN="$REPO_ROOT/$LIFEBOAT_BIN" ;; esac

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# The cluster runs as the `postgres` OS user, and we read its data directory
# and drop privileges per command, so we need root. Re-run through sudo,
# keeping the knobs above.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (sudo is not installed)"
    exec sudo -E bash "$0" "$@"
fi

as_pg() { runuser -u postgres -- "$@"; }

# --- state ----------------------------------------------------------------------
LOCK_FD=""       # holds flock on $BENCH_DIR.lock while the run lasts
MARKER=".lifeboat-bench-backup-restore" # a work dir holding this file is ours to delete
WORK=""          # = BENCH_DIR once it is set up
DATA=""          # data directory of the benchmarked cluster
SOCK=""          # unix socket dir
PORT=""          # port of the benchmarked cluster
VPORT=""         # port of a restored copy started for verification
RUNNING=()       # data dirs of running clusters, for cleanup
MEASURED_PID=""  # pid of the measured command in progress (its `timeout`), for cleanup
RESULTS=""       # TSV: one line per measured step
SCALE_INFO=""    # TSV: one line per scale
FAILED=0         # number of failed steps
CLK_TCK=$(getconf CLK_TCK)
PAGE_KB=$(( $(getconf PAGESIZE) / 1024 ))
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STAMP=$(date +%Y%m%d-%H%M%S)
DISK_FREE_START=""

# A file descriptor that never delivers data: `read -t` on it sleeps without
# forking, so the memory sampler costs almost no CPU.
exec {NEVER_FD}<> <(:)
nap() { read -r -t "$1" -u "$NEVER_FD" _ || true; }
now_us() { echo "${EPOCHREALTIME/./}"; }

pg_stop_dir() { # data_dir mode
    as_pg "$PG_BIN/pg_ctl" -D "$1" -m "$2" -w -t 600 stop >/dev/null 2>&1
}

cleanup() {
    local rc=$? d
    # A measured command still running (Ctrl-C, TERM): `timeout` passes the
    # signal on to it.
    if [ -n "$MEASURED_PID" ]; then
        { kill -TERM "$MEASURED_PID" && wait "$MEASURED_PID"; } 2>/dev/null || true
    fi
    for d in "${RUNNING[@]}"; do pg_stop_dir "$d" immediate || true; done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
            log "work dir kept: $WORK (logs in $WORK/logs; the next run deletes it)"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers --------------------------------------------------------------------

check_prereqs() {
    local t
    for t in initdb pg_ctl psql pgbench pg_basebackup; do
        [ -x "$PG_BIN/$t" ] || die "PostgreSQL 15 not found in $PG_BIN (run scripts/setup.sh)"
    done
    getent passwd postgres >/dev/null || die "OS user postgres missing (run scripts/setup.sh)"
    for t in /usr/bin/time setpriv timeout zstd tar flock findmnt; do
        command -v "$t" >/dev/null || die "$t is not installed (apt-get install time util-linux coreutils zstd tar)"
    done
    [ -n "$TOOLS" ] || die "TOOLS is empty"
    for t in $TOOLS; do
        case "$t" in lifeboat|pgbackrest|pg_basebackup) ;;
            *) die "unknown tool '$t' in TOOLS (lifeboat, pgbackrest, pg_basebackup)" ;; esac
    done
    [ -n "$SCALES" ] || die "SCALES is empty"
    for t in $SCALES; do
        case "$t" in ''|*[!0-9]*|0) die "bad scale '$t' in SCALES" ;; esac
    done
}

# First port from $1 up that nothing on 127.0.0.1 answers on (and not PORT).
free_port() { # from
    local p
    for p in $(seq "$1" $(($1 + 500))); do
        [ "$p" != "$PORT" ] || continue
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free TCP port from $1"
}

# Deletes a work dir left by an earlier run (stopping its clusters first), so
# every run starts from nothing. Refuses a non-empty directory that is not ours.
prepare_workdir() {
    local pidfile
    if [ -e "$BENCH_DIR" ]; then
        [ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR exists and is not a directory"
        if [ ! -e "$BENCH_DIR/$MARKER" ] && [ -n "$(ls -A "$BENCH_DIR")" ]; then
            die "BENCH_DIR=$BENCH_DIR is not empty and was not made by this script; refusing to delete it"
        fi
        for pidfile in "$BENCH_DIR"/data/postmaster.pid "$BENCH_DIR"/restore/postmaster.pid; do
            if [ -e "$pidfile" ]; then
                log "stopping a cluster left by an earlier run in ${pidfile%/postmaster.pid}"
                pg_stop_dir "${pidfile%/postmaster.pid}" immediate || true
            fi
        done
        log "removing the work dir of an earlier run: $BENCH_DIR"
        rm -rf "$BENCH_DIR"
    fi
    mkdir -p "$BENCH_DIR"
    WORK=$(cd "$BENCH_DIR" && pwd -P)
    : >"$WORK/$MARKER"
    # The postgres user creates clusters, repositories and restores inside it.
    chown postgres:postgres "$WORK"
    chmod 0755 "$WORK"
    install -d -o postgres -g postgres "$WORK/logs" "$WORK/sock"
    if [ "$(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || true)" = tmpfs ]; then
        log "warning: $WORK is on tmpfs: the figures will measure memory, not a disk (set BENCH_DIR)"
    fi
}

new_pg_dir() { # path: a fresh empty directory owned by postgres
    rm -rf "$1"
    install -d -o postgres -g postgres -m 0700 "$1"
}

pg_start() { # data_dir log_name [extra postgres options]
    # The postmaster must not inherit the run's lock (it would outlive a
    # killed run and block the next one) nor the sleeping descriptor.
    as_pg "$PG_BIN/pg_ctl" -D "$1" -l "$WORK/logs/$2.log" -o "${3:-}" -w -t 600 start \
        >/dev/null {LOCK_FD}>&- {NEVER_FD}>&- \
        || { tail -n 20 "$WORK/logs/$2.log" >&2; die "cluster $1 did not start; see $WORK/logs/$2.log"; }
    RUNNING+=("$1")
}

pg_stop() { # data_dir
    local d keep=()
    pg_stop_dir "$1" fast || die "cluster $1 did not stop"
    for d in "${RUNNING[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
    RUNNING=("${keep[@]}")
}

# psql; each argument is one -c (one transaction).
sql_port() { # port sql...
    local port=$1 args=() s
    shift
    for s in "$@"; do args+=(-c "$s"); done
    as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -d postgres "${args[@]}"
}
sql() { sql_port "$PORT" "$@"; }

count_ready() { # data_dir
    local files
    shopt -s nullglob
    files=("$1"/pg_wal/archive_status/*.ready)
    shopt -u nullglob
    echo "${#files[@]}"
}

busy_jiffies() { # system-wide busy CPU: user+nice+system+irq+softirq
    local _cpu user nice system _idle _iowait irq softirq _rest
    read -r _cpu user nice system _idle _iowait irq softirq _rest </proc/stat
    echo $((user + nice + system + irq + softirq))
}

load1() { local l _; read -r l _ </proc/loadavg; echo "$l"; }

# Busy CPU of the machine over IDLE_SAMPLE_SECONDS, in ms per second (all
# cores: 2000 is a 2-core machine flat out). Sets BUSY. Runs in the main
# shell (no command substitution), so that Ctrl-C or a TERM stops it at once.
BUSY=0
busy_ms_per_s() {
    local j0 j1
    j0=$(busy_jiffies)
    nap "$IDLE_SAMPLE_SECONDS"
    j1=$(busy_jiffies)
    BUSY=$(( (j1 - j0) * 1000 / CLK_TCK / IDLE_SAMPLE_SECONDS ))
}

# Waits (up to IDLE_WAIT_SECONDS) until the machine is idle: on a shared
# machine another job (a build) would slow down whichever tool it overlaps.
# Leaves the last sample in BUSY, which goes into the report.
wait_for_idle() { # label
    local deadline=$((SECONDS + IDLE_WAIT_SECONDS)) warned=0
    while :; do
        busy_ms_per_s
        [ "$BUSY" -gt "$IDLE_MAX_MS_PER_S" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            [ "$IDLE_WAIT_SECONDS" -eq 0 ] \
                || log "  [$1] warning: machine still busy ($BUSY ms CPU/s) after ${IDLE_WAIT_SECONDS}s; measuring anyway"
            break
        fi
        if [ "$warned" -eq 0 ]; then
            log "  [$1] machine busy ($BUSY ms CPU/s > $IDLE_MAX_MS_PER_S), waiting up to ${IDLE_WAIT_SECONDS}s for idle"
            warned=1
        fi
    done
}

bytes_in() { # dir [pruned subdir name]: apparent size of regular files
    if [ -n "${2:-}" ]; then
        find "$1" -path "$1/$2" -prune -o -type f -printf '%s\n'
    else
        find "$1" -type f -printf '%s\n'
    fi | awk '{s += $1} END {printf "%.0f\n", s}' # %.0f: mawk's %d stops at 2^31
}

set_archive_command() { # command
    local quoted=${1//\'/\'\'}
    sql "ALTER SYSTEM SET archive_command = '$quoted'" "SELECT pg_reload_conf()" >/dev/null
}

# Writes a little WAL (a commit record) and completes the current segment;
# prints the name of the segment that is now due for archiving.
switch_wal() {
    sql "SELECT txid_current()" >/dev/null
    sql "SELECT pg_walfile_name(pg_switch_wal())"
}

# Puts archiving back on /bin/true and waits until nothing is left .ready, so
# that the next tool's archive_command starts with an empty queue and its
# measured backup archives only the WAL of its own backup.
quiesce_archiving() {
    local deadline=$((SECONDS + 300))
    set_archive_command /bin/true
    switch_wal >/dev/null
    while [ "$(count_ready "$DATA")" -gt 0 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "archiving with /bin/true did not catch up"
        nap 0.2
    done
}

# Switches to ARCHIVE_COMMAND and waits until a freshly completed segment shows
# up in the tool's archive: proves the command works and that the archiver
# runs it (not the /bin/true of before the reload). Not timed.
start_archiving() { # tool
    local tool=$1 seg attempt deadline
    set_archive_command "$ARCHIVE_COMMAND"
    for attempt in 1 2 3 4 5 6; do
        seg=$(switch_wal)
        deadline=$((SECONDS + 20))
        while [ "$SECONDS" -lt "$deadline" ]; do
            if [ -n "$(find "$ARCHIVE_DIR" -name "$seg*" -print -quit 2>/dev/null)" ]; then
                log "  [$tool] archiving works ($seg is in $ARCHIVE_DIR)"
                return 0
            fi
            nap 0.1
        done
        log "  [$tool] $seg not archived after 20 s (attempt $attempt)"
    done
    tail -n 20 "$WORK/logs/cluster.log" >&2
    return 1
}

# Sum of the resident memory (kB) of the processes below the root pid, from
# depth 2 on: the root is `timeout`, depth 1 is `/usr/bin/time`, the measured
# command and everything it forks come after. Bash built-ins only. Sets TREE_KB.
TREE_KB=0
tree_rss() { # root_pid
    local -a stack=("$1:0") kids
    local item p d t k res sum=0
    while [ "${#stack[@]}" -gt 0 ]; do
        item=${stack[-1]}
        unset 'stack[-1]'
        p=${item%%:*} d=${item##*:}
        if [ "$d" -ge 2 ] && { read -r _ res _ <"/proc/$p/statm"; } 2>/dev/null; then
            sum=$((sum + res))
        fi
        for t in /proc/"$p"/task/*/children; do
            kids=()
            { read -r -a kids <"$t" || true; } 2>/dev/null
            for k in "${kids[@]}"; do stack+=("$k:$((d + 1))"); done
        done
    done
    TREE_KB=$((sum * PAGE_KB))
}

PSTATE=""
proc_state() { # pid: sets PSTATE to its one-letter state, "X" when gone (no fork)
    local line
    if { read -r line <"/proc/$1/stat"; } 2>/dev/null; then
        line=${line##*) }
        PSTATE=${line%% *}
    else
        PSTATE=X
    fi
}

# Runs one measured step as the postgres user: `sync`, then the command under
# `timeout` and GNU time, a memory sampler meanwhile, then `sync -f` (syncfs)
# of the filesystem holding the step's output (timed: the step is over once
# its output is on disk, whatever the tool fsyncs itself). One syncfs rather
# than an fsync per file, which would charge `tar -x` a journal commit per
# file. Appends one line to RESULTS. Returns the command's exit status.
measure() { # scale tool step stored_bytes_fn output_dir cmd...
    local scale=$1 tool=$2 step=$3 stored_fn=$4 output=$5
    shift 5
    local tag="s$scale-$tool-$step" pid rc=0 t0 t1 t2 j0 j1 load peak=0
    local tfile="$WORK/logs/$tag.time" maxrss user sys stored="" walb="" busy
    sync
    wait_for_idle "$tool"
    busy=$BUSY
    load=$(load1)
    log "  [$tool] $step (machine busy $busy ms CPU/s, load average $load): $*"
    t0=$(now_us)
    j0=$(busy_jiffies)
    timeout "$STEP_TIMEOUT" /usr/bin/time -f '%e %M %U %S' -o "$tfile" \
        setpriv --reuid=postgres --regid=postgres --init-groups -- \
        env HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres "$@" \
        >"$WORK/logs/$tag.out" 2>"$WORK/logs/$tag.err" &
    pid=$!
    MEASURED_PID=$pid
    while :; do
        proc_state "$pid"
        case "$PSTATE" in Z|X) break ;; esac
        tree_rss "$pid"
        [ "$TREE_KB" -le "$peak" ] || peak=$TREE_KB
        nap "$RSS_SAMPLE_SECONDS"
    done
    wait "$pid" || rc=$?
    t1=$(now_us)
    MEASURED_PID=""
    if [ "$rc" -eq 0 ]; then sync -f "$output"; fi
    t2=$(now_us)
    j1=$(busy_jiffies)
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -ne 124 ] || log "  [$tool] $step killed after STEP_TIMEOUT=${STEP_TIMEOUT}s"
        log "  [$tool] $step FAILED (exit $rc); end of $WORK/logs/$tag.err:"
        tail -n 15 "$WORK/logs/$tag.err" | sed 's/^/    /' >&2
        printf '%s\t%s\t%s\tfailed\texit %s: %s\n' "$scale" "$tool" "$step" "$rc" \
            "$(grep -v '^[[:space:]]*$' "$WORK/logs/$tag.err" | tail -n 1 | tr '\t' ' ' | cut -c1-200)" >>"$RESULTS"
        FAILED=$((FAILED + 1))
        return "$rc"
    fi
    read -r _ maxrss user sys < <(tail -n 1 "$tfile")
    # The tree is at least its largest process: a peak between two samples
    # is otherwise missed.
    [ "$peak" -ge "$maxrss" ] || peak=$maxrss
    if [ -n "$stored_fn" ]; then read -r stored walb < <("$stored_fn"); fi
    printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scale" "$tool" "$step" \
        "$((t2 - t0))" "$((t2 - t1))" "$maxrss" "$peak" "$user" "$sys" "$((j1 - j0))" \
        "${stored:-}" "${walb:-}" "$load" "$busy" >>"$RESULTS"
    log "  [$tool] $step: $(awk -v a="$((t2 - t0))" -v b="$((t2 - t1))" 'BEGIN {printf "%.2f s (sync %.2f s)", a / 1e6, b / 1e6}')," \
        "largest process $((maxrss / 1024)) MiB, tree $((peak / 1024)) MiB, CPU ${user}+${sys} s"
}

# Reads every file of the data directory once, so that each tool's backup
# starts with the same warm page cache (we cannot drop caches in a container).
warm_up() {
    local t0=$SECONDS
    find "$DATA" -path "$DATA/pg_wal" -prune -o -type f -print0 | xargs -0 -r cat >/dev/null
    log "  warm-up read of $DATA in $((SECONDS - t0)) s"
}

# Starts a restored copy (archiving off, its own port), waits for the end of
# recovery and checks the row count of pgbench_accounts. Not timed. Sets
# VERIFIED: "ok", "-" (VERIFY=0) or what went wrong.
VERIFIED=""
verify_restore() { # scale tool dir
    local scale=$1 tool=$2 dir=$3 deadline rows
    VERIFIED="-"
    [ "$VERIFY" = 1 ] || return 0
    pg_start "$dir" "verify-s$scale-$tool" "-p $VPORT -c archive_mode=off"
    deadline=$((SECONDS + 600))
    while [ "$(sql_port "$VPORT" "SELECT pg_is_in_recovery()" 2>/dev/null || echo t)" != f ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            pg_stop "$dir"
            VERIFIED="recovery did not end in 600 s (see $WORK/logs/verify-s$scale-$tool.log)"
            return 0
        fi
        nap 0.2
    done
    rows=$(sql_port "$VPORT" "SELECT count(*) FROM pgbench_accounts")
    pg_stop "$dir"
    if [ "$rows" -eq $((scale * 100000)) ]; then
        VERIFIED="ok"
    else
        VERIFIED="$rows rows in pgbench_accounts, expected $((scale * 100000))"
    fi
}

# --- tools ----------------------------------------------------------------------
# prepare_<tool> makes a fresh repository in TOOL_DIR and sets ARCHIVE_COMMAND
# and ARCHIVE_DIR (where its archived WAL lands), or SKIP_REASON.
# backup_<tool>/restore_<tool> run the measured commands through `measure`.
# stored_<tool> prints "backup_bytes wal_bytes" of the repository.

TOOL_DIR=""
ARCHIVE_COMMAND=""
ARCHIVE_DIR=""
SKIP_REASON=""
RESTORE_DIR=""

LB_CONF=""
prepare_lifeboat() {
    if [ ! -x "$LIFEBOAT_BIN" ]; then
        SKIP_REASON="no binary at $LIFEBOAT_BIN (set LIFEBOAT_BIN)"
        return
    fi
    if ! "$LIFEBOAT_BIN" backup --help >/dev/null 2>&1; then
        SKIP_REASON="$LIFEBOAT_BIN has no backup command yet"
        return
    fi
    as_pg test -x "$LIFEBOAT_BIN" \
        || die "user postgres cannot execute $LIFEBOAT_BIN (chmod o+x the directories on its path)"
    new_pg_dir "$TOOL_DIR/repo"
    LB_CONF="$TOOL_DIR/lifeboat.toml"
    printf 'repo = "%s"\n' "$TOOL_DIR/repo" >"$LB_CONF"
    chmod 0644 "$LB_CONF"
    as_pg "$LIFEBOAT_BIN" --config "$LB_CONF" init --unencrypted >"$WORK/logs/$(basename "$TOOL_DIR")-lifeboat-init.log" 2>&1 \
        || die "lifeboat init failed; see $WORK/logs/$(basename "$TOOL_DIR")-lifeboat-init.log"
    ARCHIVE_COMMAND="$LIFEBOAT_BIN --config $LB_CONF wal-push %p"
    ARCHIVE_DIR="$TOOL_DIR/repo/wal"
}
stored_lifeboat() { echo "$(bytes_in "$TOOL_DIR/repo" wal) $(bytes_in "$TOOL_DIR/repo/wal")"; }
backup_lifeboat() { # scale
    measure "$1" lifeboat backup stored_lifeboat "$TOOL_DIR/repo" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" backup --pgdata "$DATA" \
        --db "host=$SOCK port=$PORT user=postgres dbname=postgres" --json
}
restore_lifeboat() { # scale
    measure "$1" lifeboat restore "" "$RESTORE_DIR" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" restore --target-dir "$RESTORE_DIR" --backup latest
}

PGBR_CONF=""
prepare_pgbackrest() {
    if ! command -v pgbackrest >/dev/null; then
        SKIP_REASON="pgbackrest is not installed (run scripts/setup.sh)"
        return
    fi
    local d
    for d in repo log lock spool; do new_pg_dir "$TOOL_DIR/$d"; done
    PGBR_CONF="$TOOL_DIR/pgbackrest.conf"
    cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$TOOL_DIR/repo
repo1-retention-full=2
log-path=$TOOL_DIR/log
lock-path=$TOOL_DIR/lock
spool-path=$TOOL_DIR/spool
process-max=2
compress-type=zst
compress-level=1
start-fast=y
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$DATA
pg1-port=$PORT
pg1-socket-path=$SOCK
EOF
    chmod 0644 "$PGBR_CONF"
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create \
        >"$WORK/logs/$(basename "$TOOL_DIR")-pgbackrest-stanza-create.log" 2>&1 \
        || die "pgbackrest stanza-create failed; see $WORK/logs/$(basename "$TOOL_DIR")-pgbackrest-stanza-create.log"
    ARCHIVE_COMMAND="pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
    ARCHIVE_DIR="$TOOL_DIR/repo/archive"
}
stored_pgbackrest() { echo "$(bytes_in "$TOOL_DIR/repo/backup") $(bytes_in "$TOOL_DIR/repo/archive")"; }
backup_pgbackrest() { # scale
    measure "$1" pgbackrest backup stored_pgbackrest "$TOOL_DIR/repo" \
        pgbackrest --config="$PGBR_CONF" --stanza=bench --type=full backup
}
restore_pgbackrest() { # scale
    measure "$1" pgbackrest restore "" "$RESTORE_DIR" \
        pgbackrest --config="$PGBR_CONF" --stanza=bench --pg1-path="$RESTORE_DIR" restore
}

prepare_pg_basebackup() {
    new_pg_dir "$TOOL_DIR/wal"
    # pg_basebackup -X none waits until the backup's last segment is archived:
    # it needs a working archive. Plain copies, made durable.
    ARCHIVE_COMMAND="cp %p $TOOL_DIR/wal/%f && sync $TOOL_DIR/wal/%f"
    ARCHIVE_DIR="$TOOL_DIR/wal"
    rm -rf "$TOOL_DIR/backup"
}
stored_pg_basebackup() { echo "$(bytes_in "$TOOL_DIR/backup") $(bytes_in "$TOOL_DIR/wal")"; }
backup_pg_basebackup() { # scale
    measure "$1" pg_basebackup backup stored_pg_basebackup "$TOOL_DIR/backup" \
        "$PG_BIN/pg_basebackup" -h "$SOCK" -p "$PORT" -U postgres -w -D "$TOOL_DIR/backup" \
        -Ft --compress=server-zstd:level=1,workers=2 -X none --checkpoint=fast
}
restore_pg_basebackup() { # scale
    # shellcheck disable=SC2016 # $1 and $2 are expanded by the inner bash
    measure "$1" pg_basebackup restore "" "$RESTORE_DIR" \
        bash -c 'set -o pipefail; zstd -q -d -c "$1" | tar -x -f - -C "$2"' _ \
        "$TOOL_DIR/backup/base.tar.zst" "$RESTORE_DIR" || return
    # What a restore tool writes for recovery (not timed; needed to verify).
    printf "restore_command = 'cp %s/%%f %%p'\n" "$TOOL_DIR/wal" >>"$RESTORE_DIR/postgresql.auto.conf"
    : >"$RESTORE_DIR/recovery.signal"
    chown postgres:postgres "$RESTORE_DIR/recovery.signal"
}

run_tool() { # scale tool
    local scale=$1 tool=$2
    TOOL_DIR="$WORK/s$scale-$tool"
    ARCHIVE_COMMAND="" ARCHIVE_DIR="" SKIP_REASON=""
    RESTORE_DIR="$WORK/restore"
    log "[$tool] scale $scale"
    quiesce_archiving
    new_pg_dir "$TOOL_DIR"
    chmod 0755 "$TOOL_DIR"
    "prepare_$tool"
    if [ -n "$SKIP_REASON" ]; then
        log "  [$tool] SKIPPED: $SKIP_REASON"
        printf '%s\t%s\tbackup\tskipped\t%s\n' "$scale" "$tool" "$SKIP_REASON" >>"$RESULTS"
        rm -rf "$TOOL_DIR"
        return
    fi
    if ! start_archiving "$tool"; then
        printf '%s\t%s\tbackup\tfailed\tarchive_command does not archive: %s\n' "$scale" "$tool" "$ARCHIVE_COMMAND" >>"$RESULTS"
        FAILED=$((FAILED + 1))
        return
    fi
    # Same starting point for every tool: nothing dirty, warm page cache.
    sql "CHECKPOINT" >/dev/null
    warm_up
    "backup_$tool" "$scale" || return 0
    new_pg_dir "$RESTORE_DIR"
    "restore_$tool" "$scale" || { rm -rf "$RESTORE_DIR"; return 0; }
    verify_restore "$scale" "$tool" "$RESTORE_DIR"
    log "  [$tool] restored copy: $VERIFIED"
    printf '%s\t%s\tverify\t%s\n' "$scale" "$tool" "$VERIFIED" >>"$RESULTS"
    [ "$VERIFIED" = ok ] || [ "$VERIFIED" = - ] || FAILED=$((FAILED + 1))
    rm -rf "$RESTORE_DIR"
    [ "$KEEP" = 1 ] || rm -rf "$TOOL_DIR"
}

# --- the cluster ------------------------------------------------------------------

init_cluster() {
    DATA="$WORK/data"
    log "initdb --data-checksums (port $PORT)"
    as_pg "$PG_BIN/initdb" -D "$DATA" --data-checksums -U postgres --auth=trust \
        -E UTF8 --locale=C >"$WORK/logs/initdb.log" 2>&1 || die "initdb failed; see $WORK/logs/initdb.log"
    # autovacuum off: pgbench -i vacuums its tables itself, and a vacuum
    # starting in the middle of one tool's backup would favour another.
    # checkpoint_timeout/max_wal_size: no checkpoint of its own during a step.
    cat >>"$DATA/postgresql.conf" <<EOF

# --- lifeboat bench/backup_restore.sh ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
fsync = on
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_senders = 10
max_wal_size = 8GB
checkpoint_timeout = 1h
shared_buffers = 1GB
maintenance_work_mem = 512MB
autovacuum = off
log_checkpoints = on
EOF
    pg_start "$DATA" cluster
}

check_disk_space() { # scale
    local need_kb avail_kb
    # pgbench takes ~15 MiB per scale unit: the data, one restored copy, one
    # repository (at most as big) and the WAL of pgbench -i, plus 2 GiB.
    need_kb=$(( $1 * 15 * 1024 * 4 + 2 * 1024 * 1024 ))
    avail_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    [ "$avail_kb" -ge "$need_kb" ] \
        || die "scale $1 needs ~$((need_kb / 1048576)) GiB free in $WORK, have $((avail_kb / 1048576)) GiB"
}

load_scale() { # scale
    local scale=$1 t0 data_bytes db_bytes
    check_disk_space "$scale"
    quiesce_archiving
    log "pgbench -i -s $scale"
    t0=$SECONDS
    as_pg "$PG_BIN/pgbench" -i -q -s "$scale" -h "$SOCK" -p "$PORT" postgres \
        >"$WORK/logs/pgbench-init-s$scale.log" 2>&1 || die "pgbench -i failed; see $WORK/logs/pgbench-init-s$scale.log"
    sql "CHECKPOINT" >/dev/null
    # The files of the tables the previous pgbench -i dropped go at the next
    # checkpoint: a second one, so that every tool sees the same files.
    quiesce_archiving
    sql "CHECKPOINT" >/dev/null
    data_bytes=$(bytes_in "$DATA" pg_wal)
    db_bytes=$(sql "SELECT sum(pg_database_size(oid)) FROM pg_database")
    log "  loaded in $((SECONDS - t0)) s: data directory without pg_wal $((data_bytes / 1048576)) MiB," \
        "pg_database_size sum $((db_bytes / 1048576)) MiB"
    printf '%s\t%s\t%s\t%s\n' "$scale" "$data_bytes" "$db_bytes" "$((SECONDS - t0))" >>"$SCALE_INFO"
}

# --- report -----------------------------------------------------------------------

version_of() { # command...: first line of its version output, or "not installed"
    "$@" 2>/dev/null | head -n 1 || true
}

report() {
    local out mem_gib cpu pgv pgbrv lbv zstdv
    mkdir -p "$OUT_DIR"
    out="$OUT_DIR/backup_restore-$STAMP.md"
    mem_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    pgv=$("$PG_BIN/postgres" --version)
    pgbrv=$(version_of pgbackrest version)
    lbv=$(version_of "$LIFEBOAT_BIN" --version)
    zstdv=$(version_of zstd --version | grep -o "v[0-9][0-9.]*" || true)
    zstdv=${zstdv:+zstd $zstdv}
    {
        printf '# Backup and restore benchmark, %s\n\n' "$STARTED"
        printf -- '- machine: %s cores (%s), %s GiB memory, kernel %s\n' "$(nproc)" "${cpu:-?}" "$mem_gib" "$(uname -r)"
        printf -- '- work dir: %s (%s), %s free at the start\n' "$WORK" \
            "$(findmnt -no SOURCE,FSTYPE -T "$WORK" | tr -s ' ' ' ')" "$DISK_FREE_START"
        printf -- '- versions: %s; %s; %s; %s\n' "$pgv" "${pgbrv:-pgBackRest not installed}" \
            "${lbv:-lifeboat not built}" "${zstdv:-zstd ?}"
        printf -- '- SCALES="%s" TOOLS="%s" VERIFY=%s IDLE_MAX_MS_PER_S=%s IDLE_WAIT_SECONDS=%s; load average at the end: %s\n\n' \
            "$SCALES" "$TOOLS" "$VERIFY" "$IDLE_MAX_MS_PER_S" "$IDLE_WAIT_SECONDS" "$(cut -d' ' -f1-3 /proc/loadavg)"
        printf '| scale | data dir without pg_wal, MiB | sum of pg_database_size, MiB | pgbench -i s |\n'
        printf '|---:|---:|---:|---:|\n'
        awk -F'\t' '{printf "| %s | %.0f | %.0f | %s |\n", $1, $2 / 1048576, $3 / 1048576, $4}' "$SCALE_INFO"
        printf '\n'
        awk -F'\t' -v scale_info="$SCALE_INFO" '
        function cell(x, fmt) { return (x == "") ? "-" : sprintf(fmt, x) }
        function ratio(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-" }
        BEGIN {
            while ((getline line < scale_info) > 0) { split(line, f, "\t"); data[f[1]] = f[2] }
            label["lifeboat"] = "Lifeboat"; label["pgbackrest"] = "pgBackRest"
            label["pg_basebackup"] = "pg_basebackup"
        }
        $3 == "verify" { verify[$1, $2] = $4; next }
        {
            n++; sc[n] = $1; tool[n] = $2; step[n] = $3; status[n] = $4
            if ($4 != "ok") { note[n] = $5; next }
            wall[n] = $5 / 1e6; syncs[n] = $6 / 1e6; rss[n] = $7 / 1024; tree[n] = $8 / 1024
            cpu[n] = $9 + $10; sys[n] = $11 / clk; stored[n] = $12; wal[n] = $13; load[n] = $14; busy[n] = $15
            rate[n] = data[$1] / 1048576 / wall[n]
            T[$1, $2, $3] = wall[n]; R[$1, $2, $3] = rate[n]
            if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 }
        }
        END {
            printf "| scale | tool | step | wall s | of which sync s | MiB/s | stored MiB | WAL MiB | peak RSS MiB, largest process | peak RSS MiB, process tree | CPU s, command | CPU s, machine | machine busy before, ms/s | load avg before | restored copy |\n"
            printf "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
            for (i = 1; i <= n; i++) {
                name = label[tool[i]]
                if (tool[i] == "pg_basebackup" && step[i] == "restore") name = "pg_basebackup (zstd -d \\| tar -x)"
                if (status[i] != "ok") {
                    printf "| %s | %s | %s | %s: %s ||||||||||||\n", sc[i], name, step[i], status[i], note[i]
                    continue
                }
                v = (step[i] == "restore") ? verify[sc[i], tool[i]] : ""
                printf "| %s | %s | %s | %.2f | %.2f | %.1f | %s | %s | %.1f | %.1f | %.2f | %.2f | %s | %s | %s |\n",
                    sc[i], name, step[i], wall[i], syncs[i], rate[i],
                    cell(stored[i] == "" ? "" : stored[i] / 1048576, "%.1f"),
                    cell(wal[i] == "" ? "" : wal[i] / 1048576, "%.1f"),
                    rss[i], tree[i], cpu[i], sys[i], busy[i], load[i], (v == "" ? "" : v)
            }
            printf "\nRatios (time: lower is better for Lifeboat; rate: higher is better):\n\n"
            printf "| scale | step | time Lifeboat/pgBackRest | rate Lifeboat/pgBackRest | time Lifeboat/pg_basebackup | rate Lifeboat/pg_basebackup |\n"
            printf "|---:|---|---:|---:|---:|---:|\n"
            for (j = 1; j <= ns; j++) {
                s = order[j]
                split("backup restore", steps, " ")
                for (k = 1; k <= 2; k++) {
                    st = steps[k]
                    printf "| %s | %s | %s | %s | %s | %s |\n", s, st,
                        ratio(T[s, "lifeboat", st], T[s, "pgbackrest", st]), ratio(R[s, "lifeboat", st], R[s, "pgbackrest", st]),
                        ratio(T[s, "lifeboat", st], T[s, "pg_basebackup", st]), ratio(R[s, "lifeboat", st], R[s, "pg_basebackup", st])
                }
            }
        }' clk="$CLK_TCK" "$RESULTS"
        cat <<'EOF'

How to read it (bench/README.md has the details):

- wall s: from the start of the command to the end of a `sync -f` (syncfs) of the filesystem
  holding its output, run right after it (so every step ends with its output on disk); "of
  which sync s" is that final syncfs. A `sync` also runs, untimed, before each step; every backup
  starts after a `CHECKPOINT` and one read of the whole data directory, so all tools see a warm
  page cache.
- MiB/s: size of the data directory without `pg_wal` (first table) / wall s, for backup and restore.
- stored MiB: the backup in the repository, without the archived WAL (Lifeboat: the repository
  minus `wal/`; pgBackRest: `backup/`; pg_basebackup: the output directory). WAL MiB: the archive
  (Lifeboat `wal/`, pgBackRest `archive/`, plain copies for pg_basebackup).
- peak RSS, largest process: `/usr/bin/time %M`, the largest single process among the command
  and every child it waited for (Linux reports the maximum, not the sum). Process tree: the sum
  of the resident memory of the command and all its descendants, sampled every
  RSS_SAMPLE_SECONDS (at least the largest process); catches pgBackRest's worker processes
  running at the same time.
- CPU s, command: user + system CPU of the command and its children (`/usr/bin/time`). For
  pg_basebackup with server-zstd the server compresses, so that CPU is not in it; CPU s,
  machine (all busy CPU of the machine over the step, from /proc/stat) includes it, and also
  anything else that ran. Machine busy before: busy CPU of the machine (all cores) in the
  IDLE_SAMPLE_SECONDS before the step, after waiting up to IDLE_WAIT_SECONDS for it to fall
  under IDLE_MAX_MS_PER_S; well above that, or a high load average, means another job (a build)
  overlapped the step and its figures are not comparable.
- pg_basebackup restore is only `zstd -d | tar -x` plus `sync`: no checks, no recovery settings.
- restored copy: started with recovery from the tool's archive, `count(*)` of
  pgbench_accounts checked (VERIFY=1; not timed).
EOF
    } >"$out"
    cat "$out"
    log "report written to $out"
}

main() {
    local scale tool
    check_prereqs
    mkdir -p "$(dirname "$BENCH_DIR")"
    exec {LOCK_FD}>"$BENCH_DIR.lock"
    flock -n "$LOCK_FD" || die "another run uses $BENCH_DIR"
    prepare_workdir
    cd "$WORK" # a directory the postgres user can read
    SOCK="$WORK/sock"
    PORT=$(free_port 54421)
    VPORT=$(free_port $((PORT + 1)))
    RESULTS="$WORK/results.tsv"
    SCALE_INFO="$WORK/scales.tsv"
    : >"$RESULTS"
    : >"$SCALE_INFO"
    DISK_FREE_START=$(df -Ph "$WORK" | awk 'NR==2 {print $4}')
    log "work dir $WORK; SCALES=\"$SCALES\" TOOLS=\"$TOOLS\"; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    init_cluster
    for scale in $SCALES; do
        load_scale "$scale"
        for tool in $TOOLS; do run_tool "$scale" "$tool"; done
    done
    quiesce_archiving
    pg_stop "$DATA"
    report
    if [ "$FAILED" -gt 0 ]; then
        log "$FAILED step(s) failed; logs in $WORK/logs"
        exit 1
    fi
}

main "$@"
