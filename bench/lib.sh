# Shared helpers of the benchmark scripts (bench/backup_restore.sh,
# bench/incremental.sh, bench/s3_backup_restore.sh). Sourced, never run. The sourcing script sets its
# knobs first (PG_BIN, LIFEBOAT_BIN, BENCH_DIR, KEEP, VERIFY, STEP_TIMEOUT,
# RSS_SAMPLE_SECONDS, IDLE_*), MARKER (the file that marks a work dir as its
# own), then calls `require_root "$@"` and `bench_setup`. See bench/README.md.
# shellcheck shell=bash
# shellcheck disable=SC2034,SC2153 # state and knobs are used and set by the sourcing scripts

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# The cluster runs as the `postgres` OS user, and we read its data directory
# and drop privileges per command, so we need root. Re-run through sudo,
# keeping the knobs.
require_root() { # "$@" of the script
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "run as root (sudo is not installed)"
        exec sudo -E bash "$0" "$@"
    fi
}

as_pg() { runuser -u postgres -- "$@"; }

# --- state ----------------------------------------------------------------------
LOCK_FD=""       # holds flock on $BENCH_DIR.lock while the run lasts
WORK=""          # = BENCH_DIR once it is set up
DATA=""          # data directory of the benchmarked cluster
SOCK=""          # unix socket dir
PORT=""          # port of the benchmarked cluster
VPORT=""         # port of a restored copy started for verification
RUNNING=()       # data dirs of running clusters, for cleanup
MEASURED_PID=""  # pid of the measured command in progress (its `timeout`), for cleanup
RESULTS=""       # TSV: one line per measured step
FAILED=0         # number of failed steps
CLK_TCK=$(getconf CLK_TCK)
PAGE_KB=$(( $(getconf PAGESIZE) / 1024 ))
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STAMP=$(date +%Y%m%d-%H%M%S)
DISK_FREE_START=""

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

# A file descriptor that never delivers data: `read -t` on it sleeps without
# forking, so the memory sampler costs almost no CPU. Then the cleanup traps.
NEVER_FD=""
bench_setup() {
    exec {NEVER_FD}<> <(:)
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# --- helpers --------------------------------------------------------------------

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
        DELETED_AT=$SECONDS
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
    discard "$1"
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
# ext4 will not reuse an inode freed in the last 60 to 300 seconds and checks
# every candidate it skips: right after a large deletion, creating files costs
# far more kernel CPU, and most for whichever tool creates the most files. So
# measured steps never follow a deletion closely: between steps, directories
# go to $WORK/trash (deleted at exit), and after the earlier run's work dir was
# removed the first step waits until SETTLE_SECONDS have passed.
DELETED_AT=-100000
discard() { # dir: out of the way now, deleted at exit
    [ -e "$1" ] || return 0
    mkdir -p "$WORK/trash"
    mv "$1" "$(mktemp -u "$WORK/trash/XXXXXX")"
}
wait_for_settled_fs() { # label
    local left=$((DELETED_AT + ${SETTLE_SECONDS:-300} - SECONDS))
    [ "$left" -gt 0 ] || return 0
    log "  [$1] waiting ${left}s: inodes freed by the earlier run's deletion are not reusable yet (SETTLE_SECONDS)"
    sleep "$left"
}

wait_for_idle() { # label
    local deadline=$((SECONDS + IDLE_WAIT_SECONDS)) warned=0
    wait_for_settled_fs "$1"
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
    # Optional hooks of the caller around the measured window, not timed: MEASURE_BEFORE runs
    # just before the command, MEASURE_AFTER (tag exit_status) after the final sync.
    [ -z "${MEASURE_BEFORE:-}" ] || "$MEASURE_BEFORE"
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
    [ -z "${MEASURE_AFTER:-}" ] || "$MEASURE_AFTER" "$tag" "$rc"
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
    printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scale" "$tool" "$step" \
        "$((t2 - t0))" "$((t2 - t1))" "$maxrss" "$peak" "$user" "$sys" "$((j1 - j0))" \
        "${stored:-}" "${walb:-}" "$load" "$busy" "${ROUND:-1}" >>"$RESULTS"
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
# recovery and checks the row count of pgbench_accounts (and, when given, its
# sum(abalance)). Not timed. Sets VERIFIED: "ok", "-" (VERIFY=0) or what went
# wrong.
VERIFIED=""
verify_restore() { # scale tool dir [expected sum(abalance)]
    local scale=$1 tool=$2 dir=$3 want_sum=${4:-} deadline rows sum=""
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
    [ -z "$want_sum" ] || sum=$(sql_port "$VPORT" "SELECT sum(abalance) FROM pgbench_accounts")
    pg_stop "$dir"
    if [ "$rows" -ne $((scale * 100000)) ]; then
        VERIFIED="$rows rows in pgbench_accounts, expected $((scale * 100000))"
    elif [ -n "$want_sum" ] && [ "$sum" != "$want_sum" ]; then
        VERIFIED="sum(abalance) is $sum, expected $want_sum"
    else
        VERIFIED="ok"
    fi
}

# --- the cluster (backup_restore.sh, s3_backup_restore.sh) ------------------------
# init_cluster sets DATA and starts it (CLUSTER_EXTRA_CONF: more postgresql.conf lines);
# load_scale appends "scale data_bytes db_bytes load_s" to SCALE_INFO.

rotate() { # n words...: the words, the first n moved to the end
    local n=$1
    shift
    n=$((n % $#))
    echo "${@:n+1}" "${@:1:n}"
}

init_cluster() {
    DATA="$WORK/data"
    log "initdb --data-checksums (port $PORT)"
    as_pg "$PG_BIN/initdb" -D "$DATA" --data-checksums -U postgres --auth=trust \
        -E UTF8 --locale=C >"$WORK/logs/initdb.log" 2>&1 || die "initdb failed; see $WORK/logs/initdb.log"
    # autovacuum off: pgbench -i vacuums its tables itself, and a vacuum
    # starting in the middle of one tool's backup would favour another.
    # checkpoint_timeout/max_wal_size: no checkpoint of its own during a step.
    cat >>"$DATA/postgresql.conf" <<EOF

# --- lifeboat bench/$(basename "$0") ---
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
${CLUSTER_EXTRA_CONF:-}
EOF
    pg_start "$DATA" cluster
}

# One round of one tool (backup_restore.sh, s3_backup_restore.sh): a fresh repository, the tool's
# own archive_command, the backup and the restore measured, the restored copy checked (its
# sum(abalance) too when SOURCE_SUM is set), then everything to trash/. AFTER_TOOL, when set, is
# called with the tool's name before the repository goes.
run_tool() { # scale tool
    local scale=$1 tool=$2
    TOOL_DIR="$WORK/s$scale-$tool"
    ARCHIVE_COMMAND="" ARCHIVE_DIR="" SKIP_REASON=""
    RESTORE_DIR="$WORK/restore"
    log "[$tool] scale $scale, round $ROUND of $ROUNDS"
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
    "restore_$tool" "$scale" || { discard "$RESTORE_DIR"; return 0; }
    verify_restore "$scale" "$tool" "$RESTORE_DIR" "${SOURCE_SUM:-}"
    log "  [$tool] restored copy: $VERIFIED"
    printf '%s\t%s\tverify\t%s\t%s\n' "$scale" "$tool" "$VERIFIED" "$ROUND" >>"$RESULTS"
    [ "$VERIFIED" = ok ] || [ "$VERIFIED" = - ] || FAILED=$((FAILED + 1))
    discard "$RESTORE_DIR"
    [ -z "${AFTER_TOOL:-}" ] || "$AFTER_TOOL" "$tool"
    [ "$KEEP" = 1 ] || discard "$TOOL_DIR"
}

# The lock, the work dir (see prepare_workdir), the ports and RESULTS.
open_workdir() { # first port to try
    mkdir -p "$(dirname "$BENCH_DIR")"
    exec {LOCK_FD}>"$BENCH_DIR.lock"
    flock -n "$LOCK_FD" || die "another run uses $BENCH_DIR"
    prepare_workdir
    cd "$WORK" # a directory the postgres user can read
    SOCK="$WORK/sock"
    PORT=$(free_port "$1")
    VPORT=$(free_port $((PORT + 1)))
    RESULTS="$WORK/results.tsv"
    : >"$RESULTS"
}

# PostgreSQL 15's programs, the postgres user and the given commands.
check_common_prereqs() { # command...
    local t
    for t in initdb pg_ctl psql pgbench; do
        [ -x "$PG_BIN/$t" ] || die "PostgreSQL 15 not found in $PG_BIN (run scripts/setup.sh)"
    done
    getent passwd postgres >/dev/null || die "OS user postgres missing (run scripts/setup.sh)"
    for t in "$@"; do
        command -v "$t" >/dev/null || die "$t is not installed (apt-get install time util-linux coreutils zstd jq curl)"
    done
}

exit_if_failed() {
    if [ "$FAILED" -gt 0 ]; then
        log "$FAILED step(s) failed; logs in $WORK/logs"
        exit 1
    fi
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
    # More settings (a [backup] section), from the caller; none by default.
    [ -z "${LB_EXTRA_CONF:-}" ] || printf '%s\n' "$LB_EXTRA_CONF" >>"$LB_CONF"
    chmod 0644 "$LB_CONF"
    as_pg "$LIFEBOAT_BIN" --config "$LB_CONF" init --unencrypted >"$WORK/logs/$(basename "$TOOL_DIR")-lifeboat-init.log" 2>&1 \
        || die "lifeboat init failed; see $WORK/logs/$(basename "$TOOL_DIR")-lifeboat-init.log"
    ARCHIVE_COMMAND="$LIFEBOAT_BIN --config $LB_CONF wal-push %p"
    ARCHIVE_DIR="$TOOL_DIR/repo/wal"
}
stored_lifeboat() { echo "$(bytes_in "$TOOL_DIR/repo" wal) $(bytes_in "$TOOL_DIR/repo/wal")"; }

PGBR_CONF=""
prepare_pgbackrest() { pgbackrest_stanza "repo1-path=$TOOL_DIR/repo" "$TOOL_DIR/repo/archive"; }
# A pgbackrest.conf in TOOL_DIR for the repository that REPO_LINES describe, and stanza-create.
pgbackrest_stanza() { # repo_lines archive_dir
    if ! command -v pgbackrest >/dev/null; then
        SKIP_REASON="pgbackrest is not installed (run scripts/setup.sh)"
        return
    fi
    local d
    for d in repo log lock spool; do new_pg_dir "$TOOL_DIR/$d"; done
    PGBR_CONF="$TOOL_DIR/pgbackrest.conf"
    cat >"$PGBR_CONF" <<EOF
[global]
$1
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
    # It may hold S3 keys: readable by postgres only.
    chown postgres:postgres "$PGBR_CONF"
    chmod 0600 "$PGBR_CONF"
    as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench stanza-create \
        >"$WORK/logs/$(basename "$TOOL_DIR")-pgbackrest-stanza-create.log" 2>&1 \
        || die "pgbackrest stanza-create failed; see $WORK/logs/$(basename "$TOOL_DIR")-pgbackrest-stanza-create.log"
    ARCHIVE_COMMAND="pgbackrest --config=$PGBR_CONF --stanza=bench archive-push %p"
    ARCHIVE_DIR=$2
}
stored_pgbackrest() { echo "$(bytes_in "$TOOL_DIR/repo/backup") $(bytes_in "$TOOL_DIR/repo/archive")"; }

version_of() { # command...: first line of its version output, or "not installed"
    "$@" 2>/dev/null | head -n 1 || true
}

