#!/usr/bin/env bash
# WAL archiving drain benchmark: how fast, and at what CPU cost, does each
# archiver empty a backlog of ~200 `.ready` WAL segments of one PostgreSQL 15
# cluster? Compares `cp + sync`, `lifeboat wal-push`, and pgBackRest's
# archive-push (synchronous and asynchronous), to local disk or (the `-s3`
# archivers) to an S3 server over TLS (bench/s3lib.sh). Run by hand, as root
# (or via sudo), never in CI. See bench/README.md.
#
#   sudo bash bench/wal_push_drain.sh
#   ARCHIVERS="lifeboat-s3 pgbackrest-async-s3" S3_DELAY_MS=20 bash bench/wal_push_drain.sh
#   SCALE=20 TARGET_SEGMENTS=50 ARCHIVERS="cp pgbackrest-sync" bash bench/wal_push_drain.sh
#
# Output: a text table on stdout and bench/out/wal_push_drain.json.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALE=${SCALE:-200}                      # pgbench scale of the source data
TARGET_SEGMENTS=${TARGET_SEGMENTS:-200}  # .ready segments to build up
ARCHIVERS=${ARCHIVERS:-"cp lifeboat pgbackrest-sync pgbackrest-async"}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-target/release/lifeboat} # relative to the repo root
BENCH_TMP=${BENCH_TMP:-/var/tmp}         # where clusters and repos live (disk, not tmpfs)
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-1800}     # seconds before a drain is declared stuck
IDLE_SAMPLE_SECONDS=${IDLE_SAMPLE_SECONDS:-3}
IDLE_MAX_MS_PER_S=${IDLE_MAX_MS_PER_S:-100}  # busier than this = "not idle"
IDLE_WAIT_SECONDS=${IDLE_WAIT_SECONDS:-600}  # how long to wait for idle before each drain
KEEP_WORKDIR=${KEEP_WORKDIR:-0}          # 1: leave clusters/repos/logs for inspection
OUT_DIR=${OUT_DIR:-$REPO_ROOT/bench/out}
S3_DELAY_MS=${S3_DELAY_MS:-0}            # the -s3 archivers: delay added to every S3 request
LIFEBOAT_TOML=${LIFEBOAT_TOML:-}         # lifeboat-s3: extra config lines (printf %b escapes)

case "$LIFEBOAT_BIN" in /*) ;; *) LIFEBOAT_BIN="$REPO_ROOT/$LIFEBOAT_BIN" ;; esac

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# The clusters run as the `postgres` OS user and we read their pg_wal, so we
# need root. Re-run through sudo, keeping the knobs above.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (sudo is not installed)"
    exec sudo -E bash "$0" "$@"
fi

as_pg() { runuser -u postgres -- "$@"; }

# shellcheck source=bench/s3lib.sh
. "$SCRIPT_DIR/s3lib.sh" # the S3 stack of the -s3 archivers

# --- state shared by the functions below --------------------------------------
WORK=""          # temp dir holding everything; removed on exit
SOCK=""          # unix socket dir of the cluster
PORT=""          # TCP port of the cluster (127.0.0.1)
RUNNING=""       # data dir of the running cluster, for cleanup
SNAPSHOT=""      # stopped data dir with the .ready backlog
SEGMENTS=0       # .ready segments in the snapshot
RUN_DATA=""      # data dir of the archiver run in progress
CLK_TCK=$(getconf CLK_TCK)
RESULTS=""       # TSV file: one line per archiver
CGROUP=""        # cgroup holding the cluster's process tree ("" = unavailable)
CGROUP_KIND=""   # v1 (cpuacct) or v2
S3_RUN=""        # directory of the S3 stack while it runs (-s3 archivers)

# A file descriptor that never delivers data: `read -t 0.05` on it is a
# 50 ms sleep without forking, so the polling loop itself costs ~no CPU
# (the CPU figure is system-wide and would include a forking poller).
exec {NEVER_FD}<> <(:)
nap() { read -r -t "$1" -u "$NEVER_FD" _ || true; }

cleanup() {
    local rc=$?
    if [ -n "$S3_RUN" ]; then s3_stop "$S3_RUN"; fi
    if [ -n "$RUNNING" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$RUNNING" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$CGROUP" ]; then rmdir "$CGROUP" 2>/dev/null || true; fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP_WORKDIR" = 1 ] || [ "$rc" -ne 0 ]; then
            log "work dir kept for inspection: $WORK (rm -rf it when done)"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers --------------------------------------------------------------------

check_prereqs() {
    if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pgbench" ]; then
        die "PostgreSQL 15 not found in $PG_BIN (run scripts/setup.sh)"
    fi
    getent passwd postgres >/dev/null || die "OS user postgres missing (run scripts/setup.sh)"
    case " $ARCHIVERS " in *" pgbackrest-"*)
        command -v pgbackrest >/dev/null || die "pgbackrest not installed (run scripts/setup.sh)" ;;
    esac
    for a in $ARCHIVERS; do
        case "$a" in cp|lifeboat|pgbackrest-sync|pgbackrest-async|lifeboat-s3|pgbackrest-sync-s3|pgbackrest-async-s3) ;;
            *) die "unknown archiver '$a' in ARCHIVERS" ;; esac
    done
}

# First port from 54321 up that nothing on 127.0.0.1 answers on.
free_port() {
    local p
    for p in $(seq 54321 54999); do
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free TCP port in 54321-54999"
}

# The postmaster starts inside $CGROUP (when there is one), so every process
# it forks (archiver, archive_command, detached async workers) is accounted
# there, whatever else runs on the machine.
pg_start() { # data_dir log_name
    (
        if [ -n "$CGROUP" ]; then echo "$BASHPID" >"$CGROUP/cgroup.procs"; fi
        exec runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$1" -l "$WORK/logs/$2.log" -w -t 600 start >/dev/null
    ) || die "cluster $1 did not start; see $WORK/logs/$2.log"
    RUNNING=$1
}

pg_stop() { # data_dir
    as_pg "$PG_BIN/pg_ctl" -D "$1" -m fast -w -t 600 stop >/dev/null || die "cluster $1 did not stop"
    RUNNING=""
}

# psql against the running cluster; each argument is one -c (one transaction).
sql() {
    local args=() s
    for s in "$@"; do args+=(-c "$s"); done
    as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -d postgres "${args[@]}"
}

# Number of .ready files, with a glob (no fork).
count_ready() { # data_dir
    local files
    shopt -s nullglob
    files=("$1"/pg_wal/archive_status/*.ready)
    shopt -u nullglob
    echo "${#files[@]}"
}

# System-wide busy jiffies: user+nice+system+irq+softirq (idle, iowait, steal
# excluded). System-wide on purpose: it includes archive_command children and
# detached async workers that a per-process measure would miss.
busy_jiffies() {
    local _cpu user nice system _idle _iowait irq softirq _rest
    read -r _cpu user nice system _idle _iowait irq softirq _rest </proc/stat
    echo $((user + nice + system + irq + softirq))
}

now_us() { echo "${EPOCHREALTIME/./}"; }

# A CPU accounting cgroup for the cluster: a second CPU figure that, unlike
# /proc/stat, is not inflated by other work on the machine (a shared dev box
# compiling Rust, say). It misses only kernel threads (write-back, softirq).
setup_cgroup() {
    local name="lifeboat-bench-$$"
    if [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/$name" 2>/dev/null; then
        CGROUP="/sys/fs/cgroup/$name" CGROUP_KIND=v2
    elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ] && mkdir "/sys/fs/cgroup/cpuacct/$name" 2>/dev/null; then
        CGROUP="/sys/fs/cgroup/cpuacct/$name" CGROUP_KIND=v1
    elif [ -f /sys/fs/cgroup/cpu,cpuacct/cpuacct.usage ] && mkdir "/sys/fs/cgroup/cpu,cpuacct/$name" 2>/dev/null; then
        CGROUP="/sys/fs/cgroup/cpu,cpuacct/$name" CGROUP_KIND=v1
    else
        log "no writable cgroup: cluster-tree CPU will not be reported"
    fi
}

cgroup_cpu_us() {
    case "$CGROUP_KIND" in
        v2) awk '$1 == "usage_usec" {print $2}' "$CGROUP/cpu.stat" ;;
        v1) echo $(( $(cat "$CGROUP/cpuacct.usage") / 1000 )) ;;
        *) echo 0 ;;
    esac
}

# Busy CPU of the idle machine, ms per second: tells whether something else
# was running and polluting the system-wide figure.
idle_cpu_ms_per_s() {
    local j0 j1
    j0=$(busy_jiffies)
    nap "$IDLE_SAMPLE_SECONDS"
    j1=$(busy_jiffies)
    echo $(( (j1 - j0) * 1000 / CLK_TCK / IDLE_SAMPLE_SECONDS ))
}

# Waits (up to IDLE_WAIT_SECONDS) for the machine to be idle; prints the last
# idle sample in ms CPU per second.
wait_for_idle() { # name
    local idle deadline=$((SECONDS + IDLE_WAIT_SECONDS)) warned=0
    while :; do
        idle=$(idle_cpu_ms_per_s)
        [ "$idle" -gt "$IDLE_MAX_MS_PER_S" ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "[$1] warning: machine still busy ($idle ms CPU/s); system-wide CPU and times will be inflated"
            break
        fi
        if [ "$warned" -eq 0 ]; then
            log "[$1] machine busy ($idle ms CPU/s > $IDLE_MAX_MS_PER_S), waiting up to ${IDLE_WAIT_SECONDS}s for idle"
            warned=1
        fi
    done
    echo "$idle"
}

# --- phase 1: one cluster with a backlog of .ready segments -----------------

init_cluster() { # data_dir
    as_pg "$PG_BIN/initdb" -D "$1" --data-checksums -U postgres --auth=trust \
        -E UTF8 --locale=C >"$WORK/logs/initdb.log" 2>&1 || die "initdb failed; see $WORK/logs/initdb.log"
    # max_wal_size/checkpoint_timeout are huge so that no checkpoint fires
    # during load or drain; archive_command starts as /bin/true so the WAL of
    # pgbench -i is "archived" away and only the WAL made later is measured.
    # autovacuum is off: on a restored copy it would vacuum the fresh tables
    # during the drain, writing new WAL (hint-bit full-page images) and CPU.
    cat >>"$1/postgresql.conf" <<EOF

# --- lifeboat bench/wal_push_drain.sh ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 64GB
min_wal_size = 1GB
checkpoint_timeout = 1d
shared_buffers = 1GB
maintenance_work_mem = 1GB
log_checkpoints = on
autovacuum = off
EOF
}

wait_archived_all() { # data_dir
    local deadline=$((SECONDS + 300))
    while [ "$(count_ready "$1")" -gt 0 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "archiving with /bin/true did not catch up"
        nap 0.2
    done
}

# Completes ~one WAL segment of pgbench_accounts-like rows: used to top up the
# backlog precisely once a VACUUM FULL would overshoot the target.
top_up_one_segment() {
    sql "INSERT INTO wal_filler SELECT * FROM pgbench_accounts ORDER BY aid LIMIT 70000" \
        "SELECT pg_switch_wal()" >/dev/null
}

build_backlog() { # data_dir
    local data=$1 ready per_vacuum=0 before
    sql "ALTER SYSTEM SET archive_command = ''" "SELECT pg_reload_conf()" >/dev/null
    sql "CREATE TABLE wal_filler (LIKE pgbench_accounts)" >/dev/null
    log "archiving paused; generating ~$TARGET_SEGMENTS .ready segments"
    ready=$(count_ready "$data")
    while [ "$ready" -lt "$TARGET_SEGMENTS" ]; do
        if [ "$per_vacuum" -eq 0 ] || [ $((TARGET_SEGMENTS - ready)) -ge "$per_vacuum" ]; then
            before=$ready
            sql "VACUUM FULL pgbench_accounts" "CHECKPOINT" "SELECT pg_switch_wal()" >/dev/null
            ready=$(count_ready "$data")
            per_vacuum=$((ready - before))
            log "  VACUUM FULL pgbench_accounts + CHECKPOINT + switch: $ready .ready (+$per_vacuum)"
            [ "$per_vacuum" -gt 0 ] || die "VACUUM FULL produced no WAL segment"
        else
            top_up_one_segment
            ready=$(count_ready "$data")
        fi
    done
    log "  $ready .ready segments"
}

build_snapshot() {
    local src="$WORK/source"
    log "initdb --data-checksums (port $PORT)"
    init_cluster "$src"
    pg_start "$src" source
    log "pgbench -i -s $SCALE"
    local t0=$SECONDS
    as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h "$SOCK" -p "$PORT" postgres \
        >"$WORK/logs/pgbench-init.log" 2>&1 || die "pgbench -i failed; see $WORK/logs/pgbench-init.log"
    log "  done in $((SECONDS - t0)) s"
    sql "CHECKPOINT" "SELECT pg_switch_wal()" >/dev/null
    wait_archived_all "$src"
    build_backlog "$src"
    pg_stop "$src"
    SEGMENTS=$(count_ready "$src")
    # The stopped source dir becomes the snapshot as is (same as cp -a + rm):
    # it is never started again, every archiver gets its own cp -a of it.
    SNAPSHOT="$WORK/snapshot"
    mv "$src" "$SNAPSHOT"
    log "snapshot: $SEGMENTS .ready segments, $(du -sh "$SNAPSHOT" | cut -f1)"
}

check_disk_space() {
    local need_kb avail_kb
    # one restored copy + a cp repository of uncompressed segments + 10% slack
    need_kb=$(( $(du -sk "$SNAPSHOT" | cut -f1) + SEGMENTS * 16384 ))
    need_kb=$(( need_kb * 11 / 10 ))
    avail_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    [ "$avail_kb" -ge "$need_kb" ] || die "need ~$((need_kb / 1048576)) GiB free in $WORK, have $((avail_kb / 1048576)) GiB"
}

# --- phase 2: archivers ----------------------------------------------------------
# prepare_<archiver> readies a fresh repository for the cluster in RUN_DATA
# (running, archiving paused) and sets ARCHIVE_COMMAND, or SKIP_REASON;
# verify_<archiver> prints how many segments ended up in its repository.

ARCHIVE_COMMAND=""
SKIP_REASON=""

new_pg_dir() { # path: a fresh empty directory owned by postgres
    rm -rf "$1"
    install -d -o postgres -g postgres -m 0750 "$1"
}

prepare_cp() {
    new_pg_dir "$WORK/cp-repo"
    # sync FILE fsyncs just that file: cp alone would not be durable.
    ARCHIVE_COMMAND="cp %p $WORK/cp-repo/%f && sync $WORK/cp-repo/%f"
}
verify_cp() { find "$WORK/cp-repo" -type f | wc -l; }

prepare_lifeboat() {
    if [ ! -e "$LIFEBOAT_BIN" ]; then
        SKIP_REASON="no binary at $LIFEBOAT_BIN (cargo build --release -p lifeboat, or set LIFEBOAT_BIN)"
        return
    fi
    as_pg test -x "$LIFEBOAT_BIN" \
        || die "user postgres cannot execute $LIFEBOAT_BIN (chmod o+x the directories on its path)"
    new_pg_dir "$WORK/lifeboat-repo"
    as_pg "$LIFEBOAT_BIN" --repo "$WORK/lifeboat-repo" init --unencrypted \
        >"$WORK/logs/lifeboat-init.log" 2>&1 \
        || die "lifeboat init failed; see $WORK/logs/lifeboat-init.log"
    ARCHIVE_COMMAND="LIFEBOAT_REPO=$WORK/lifeboat-repo $LIFEBOAT_BIN wal-push %p"
}
verify_lifeboat() { echo "?"; } # repository layout is lifeboat's own business

# To the S3 stack: endpoint and keys in a config file, the test CA through SSL_CERT_FILE (in the
# environment of the postmaster, which s3_start exported before the cluster started).
prepare_lifeboat-s3() {
    prepare_lifeboat
    [ -z "$SKIP_REASON" ] || return 0
    local conf="$WORK/lifeboat-s3.toml"
    s3_lifeboat_toml lifeboat-s3 >"$conf"
    # LIFEBOAT_TOML: extra config lines, e.g. "[archive]\npush_parallel = 16".
    if [ -n "${LIFEBOAT_TOML:-}" ]; then printf '%b\n' "$LIFEBOAT_TOML" >>"$conf"; fi
    chown postgres:postgres "$conf"
    chmod 0600 "$conf"
    as_pg "$LIFEBOAT_BIN" --config "$conf" init --unencrypted >"$WORK/logs/lifeboat-s3-init.log" 2>&1 \
        || die "lifeboat init on S3 failed; see $WORK/logs/lifeboat-s3-init.log"
    ARCHIVE_COMMAND="$LIFEBOAT_BIN --config $conf wal-push %p"
}
verify_lifeboat-s3() { echo "?"; }

# Both pgBackRest variants share everything but archive-async, as specified:
# process-max=2, zstd level 1, a fresh repository, our own config file.
prepare_pgbackrest() { # async(y|n) name [s3]
    local async=$1 name=$2 base="$WORK/$2" repo
    new_pg_dir "$base"
    for d in repo log lock spool; do new_pg_dir "$base/$d"; done
    if [ "${3:-}" = s3 ]; then
        repo=$(s3_pgbackrest_repo "$name")
    else
        repo="repo1-path=$base/repo"
    fi
    cat >"$base/pgbackrest.conf" <<EOF
[global]
$repo
log-path=$base/log
lock-path=$base/lock
spool-path=$base/spool
archive-async=$async
process-max=2
compress-type=zst
compress-level=1

[bench]
pg1-path=$RUN_DATA
pg1-port=$PORT
pg1-socket-path=$SOCK
EOF
    chown postgres:postgres "$base/pgbackrest.conf"
    chmod 0600 "$base/pgbackrest.conf"
    # stanza-create talks to the running cluster (archiving is still paused).
    as_pg pgbackrest --config="$base/pgbackrest.conf" --stanza=bench stanza-create \
        >"$WORK/logs/$name-stanza-create.log" 2>&1 \
        || die "pgbackrest stanza-create failed; see $WORK/logs/$name-stanza-create.log"
    ARCHIVE_COMMAND="pgbackrest --config=$base/pgbackrest.conf --stanza=bench archive-push %p"
}
prepare_pgbackrest-sync() { prepare_pgbackrest n pgbackrest-sync; }
prepare_pgbackrest-async() { prepare_pgbackrest y pgbackrest-async; }
prepare_pgbackrest-sync-s3() { prepare_pgbackrest n pgbackrest-sync-s3 s3; }
prepare_pgbackrest-async-s3() { prepare_pgbackrest y pgbackrest-async-s3 s3; }
verify_pgbackrest() { find "$WORK/$1/repo/archive" -type f -name '0*-*' | wc -l; }
verify_pgbackrest-sync() { verify_pgbackrest pgbackrest-sync; }
verify_pgbackrest-async() { verify_pgbackrest pgbackrest-async; }
verify_pgbackrest-sync-s3() { find "$S3_DATA/pgbackrest-sync-s3/archive" -type f -name '0*-*' | wc -l; }
verify_pgbackrest-async-s3() { find "$S3_DATA/pgbackrest-async-s3/archive" -type f -name '0*-*' | wc -l; }

# An archiver's detached workers (pgBackRest async) may outlive the drain by
# a moment; let them exit before their directories go away (waiting only,
# never killing). With a cgroup: until it is empty; else by command line.
stragglers_running() {
    if [ -n "$CGROUP" ]; then
        [ -n "$(cat "$CGROUP/cgroup.procs")" ] # cgroupfs files report size 0: read them
    else
        pgrep -f -- "$WORK/" >/dev/null
    fi
}

wait_for_stragglers() { # name
    local deadline=$((SECONDS + 30))
    while stragglers_running; do
        [ "$SECONDS" -lt "$deadline" ] || { log "[$1] warning: archiver processes still running 30 s after the drain"; return; }
        nap 0.1
    done
}

# Turn archiving on and wait until no .ready is left. Sets DRAIN_US (wall
# time) and DRAIN_JIFFIES (busy CPU). Runs in the main shell, not a subshell,
# so that a failure stops the script.
DRAIN_US=0
DRAIN_JIFFIES=0
DRAIN_CG_US=0
DRAIN_ARCHIVED=0 # segments archive_command reported done (pg_stat_archiver)
DRAIN_FAILED=0   # archive_command failures (PostgreSQL retries them)

archiver_counts() { sql "SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver"; }
drain() { # data_dir archive_command log_name
    local data=$1 cmd=$2 status="$1/pg_wal/archive_status"
    local t0 j0 c0 deadline files a0 f0 a1 f1
    local quoted=${cmd//\'/\'\'}
    read -r a0 f0 <<<"$(archiver_counts)"
    c0=$(cgroup_cpu_us)
    t0=$(now_us)
    j0=$(busy_jiffies)
    sql "ALTER SYSTEM SET archive_command = '$quoted'" "SELECT pg_reload_conf()" >/dev/null
    deadline=$((SECONDS + DRAIN_TIMEOUT))
    shopt -s nullglob
    while :; do
        files=("$status"/*.ready)
        [ "${#files[@]}" -gt 0 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            shopt -u nullglob
            tail -n 20 "$WORK/logs/$3.log" >&2
            die "drain of $3 still has ${#files[@]} .ready after ${DRAIN_TIMEOUT}s (log above)"
        fi
        nap 0.05
    done
    DRAIN_US=$(( $(now_us) - t0 ))
    DRAIN_JIFFIES=$(( $(busy_jiffies) - j0 ))
    DRAIN_CG_US=$(( $(cgroup_cpu_us) - c0 ))
    shopt -u nullglob
    # The archiver renames .ready to .done just before it bumps
    # pg_stat_archiver: give the counter a moment to catch up.
    deadline=$((SECONDS + 5))
    while :; do
        read -r a1 f1 <<<"$(archiver_counts)"
        if [ $((a1 - a0)) -ge "$SEGMENTS" ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
        nap 0.1
    done
    DRAIN_ARCHIVED=$((a1 - a0))
    DRAIN_FAILED=$((f1 - f0))
}

run_archiver() { # name
    local name=$1 idle elapsed_us jiffies cg_us archived mark=0 reqs=-1 counts
    RUN_DATA="$WORK/run-$name"
    ARCHIVE_COMMAND=""
    SKIP_REASON=""
    log "[$name] restoring snapshot"
    rm -rf "$RUN_DATA"
    cp -a "$SNAPSHOT" "$RUN_DATA"
    # Flush the copy now, or its write-back would run during the drain and
    # land in the CPU and time figures.
    sync
    pg_start "$RUN_DATA" "$name"
    [ "$(count_ready "$RUN_DATA")" -eq "$SEGMENTS" ] || die "restored cluster does not have $SEGMENTS .ready"
    "prepare_$name"
    if [ -n "$SKIP_REASON" ]; then
        log "[$name] SKIPPED: $SKIP_REASON"
        printf '%s\tskipped\t%s\n' "$name" "$SKIP_REASON" >>"$RESULTS"
        pg_stop "$RUN_DATA"
        rm -rf "$RUN_DATA"
        return
    fi
    sync
    idle=$(wait_for_idle "$name")
    log "[$name] machine at $idle ms CPU/s; draining with: $ARCHIVE_COMMAND"
    [ -z "$S3_RUN" ] || mark=$(s3_mark)
    drain "$RUN_DATA" "$ARCHIVE_COMMAND" "$name"
    elapsed_us=$DRAIN_US
    jiffies=$DRAIN_JIFFIES
    cg_us=$DRAIN_CG_US
    pg_stop "$RUN_DATA"
    wait_for_stragglers "$name"
    archived=$("verify_$name")
    # S3 requests of the drain (the segment PostgreSQL archives at shutdown included).
    case "$name" in *-s3)
        nap 0.3
        counts=$(s3_counts "$mark")
        reqs=$(awk '{print $8}' <<<"$counts")
        log "[$name] $reqs S3 requests ($(awk '{printf "GET %d PUT %d HEAD %d DELETE %d POST %d LIST %d", $1, $2, $3, $4, $5, $6}' <<<"$counts"))" ;;
    esac
    log "[$name] drained in $(awk -v u="$elapsed_us" 'BEGIN{printf "%.2f", u/1e6}') s:" \
        "$DRAIN_ARCHIVED archived, $DRAIN_FAILED failed attempts; repository holds $archived"
    # The figures are per segment of the snapshot: anything else means the
    # cluster wrote WAL during the drain or the archiver lost segments.
    [ "$DRAIN_ARCHIVED" -eq "$SEGMENTS" ] \
        || die "[$name] PostgreSQL archived $DRAIN_ARCHIVED segments, expected $SEGMENTS"
    # (The shutdown may add one: PostgreSQL switches and archives the last
    # segment when it stops with archiving on.)
    if [ "$archived" != "?" ] && [ "$archived" -lt "$SEGMENTS" ]; then
        die "[$name] repository holds $archived segments, expected at least $SEGMENTS"
    fi
    [ "$DRAIN_FAILED" -eq 0 ] || log "[$name] warning: $DRAIN_FAILED archive_command failures (see $WORK/logs/$name.log)"
    [ -n "$CGROUP" ] || cg_us=-1
    printf '%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$ARCHIVE_COMMAND" "$SEGMENTS" \
        "$elapsed_us" "$jiffies" "$idle" "$cg_us" "$reqs" >>"$RESULTS"
    rm -rf "$RUN_DATA"
}

# --- phase 3: report -------------------------------------------------------------

versions() {
    PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
    PGBR_VERSION=$( (pgbackrest version 2>/dev/null || echo "pgBackRest none") | awk '{print $2}')
    LIFEBOAT_VERSION=$( ("$LIFEBOAT_BIN" --version 2>/dev/null || echo "lifeboat none") | awk '{print $NF}')
}

# Reads RESULTS and writes the text table to stdout and the JSON file.
# Ratios: rate = segments/s of the row / segments/s of the reference (higher
# is better); cpu = CPU ms/segment of the row / that of the reference (lower
# is better). References: pgBackRest sync and async of the same run.
report() {
    mkdir -p "$OUT_DIR"
    awk -F'\t' -v clk="$CLK_TCK" -v json="$OUT_DIR/wal_push_drain.json" \
        -v scale="$SCALE" -v segments="$SEGMENTS" -v target="$TARGET_SEGMENTS" \
        -v pg="$PG_VERSION" -v pgbr="$PGBR_VERSION" -v lb="$LIFEBOAT_VERSION" \
        -v s3delay="$S3_DELAY_MS" -v cores="$(nproc)" -v kernel="$(uname -r)" -v date="$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
    function jstr(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
    function jnum(x, fmt) { return (x == "") ? "null" : sprintf(fmt, x) }
    function div(a, b) { return (a != "" && b != "" && b > 0) ? a / b : "" }
    function cell(x, fmt) { return (x == "") ? "-" : sprintf(fmt, x) }
    function refs(i,    kind) {
        kind = (name[i] ~ /-s3$/) ? "s3" : "disk"
        rs = SYNC_RATE[kind]; cs = SYNC_CPU[kind]; ts = SYNC_TREE[kind]; ra = ASYNC_RATE[kind]; ca = ASYNC_CPU[kind]; ta = ASYNC_TREE[kind]
    }
    {
        n++; name[n] = $1; status[n] = $2
        if ($2 != "ok") { reason[n] = $3; next }
        cmd[n] = $3; segs[n] = $4; secs[n] = $5 / 1e6
        rate[n] = segs[n] / secs[n]
        cpu[n] = $6 * 1000 / clk / segs[n]
        idle[n] = $7
        tree[n] = ($8 < 0) ? "" : $8 / 1000 / segs[n]
        reqs[n] = ($9 == "" || $9 < 0) ? "" : $9
        # References of a row: the pgBackRest rows to the same kind of repository (disk or S3).
        kind = ($1 ~ /-s3$/) ? "s3" : "disk"
        if ($1 ~ /^pgbackrest-sync(-s3)?$/)  { SYNC_RATE[kind] = rate[n]; SYNC_CPU[kind] = cpu[n]; SYNC_TREE[kind] = tree[n] }
        if ($1 ~ /^pgbackrest-async(-s3)?$/) { ASYNC_RATE[kind] = rate[n]; ASYNC_CPU[kind] = cpu[n]; ASYNC_TREE[kind] = tree[n] }
    }
    END {
        printf "\nWAL push drain: PostgreSQL %s, pgBackRest %s, lifeboat %s\n", pg, pgbr, lb
        printf "pgbench scale %s, %s segments of 16 MiB, %s cores\n\n", scale, segments, cores
        hdr = "%-16s %5s %8s %7s %8s %8s | %6s %6s %6s %6s %6s %6s | %6s\n"
        printf hdr, "", "", "drain", "", "cpu ms", "tree ms", "rate", "rate", "cpu", "cpu", "tree", "tree", "idle"
        printf hdr, "archiver", "segs", "s", "seg/s", "/seg", "/seg", "/sync", "/async", "/sync", "/async", "/sync", "/async", "ms/s"
        for (i = 1; i <= n; i++) {
            if (status[i] != "ok") { printf "%-16s skipped: %s\n", name[i], reason[i]; continue }
            refs(i)
            printf "%-16s %5d %8.2f %7.1f %8.1f %8s | %6s %6s %6s %6s %6s %6s | %6d\n",
                name[i], segs[i], secs[i], rate[i], cpu[i], cell(tree[i], "%.1f"),
                cell(div(rate[i], rs), "%.2f"), cell(div(rate[i], ra), "%.2f"),
                cell(div(cpu[i], cs), "%.2f"), cell(div(cpu[i], ca), "%.2f"),
                cell(div(tree[i], ts), "%.2f"), cell(div(tree[i], ta), "%.2f"), idle[i]
        }
        printf "\ncpu ms/seg:  system-wide busy CPU (/proc/stat user+nice+system+irq+softirq) over the drain, per segment\n"
        printf "tree ms/seg: CPU of the cluster process tree (postmaster, archive_command, async workers; cgroup), per segment\n"
        printf "/sync, /async: ratio to pgBackRest archive-push sync / async to the same kind of repository (-s3 rows: the -s3 pgBackRest rows)\n"
        printf "              (rate: higher is better; cpu, tree: lower is better)\n"
        printf "idle ms/s:   busy CPU of the machine just before the drain (should be near 0)\n"
        for (i = 1; i <= n; i++) if (reqs[i] != "") printf "%-16s %d S3 requests, %.1f per segment (S3_DELAY_MS=%s)\n", name[i], reqs[i], reqs[i] / segs[i], s3delay

        printf "{\n  \"benchmark\": \"wal_push_drain\",\n  \"date\": %s,\n", jstr(date) > json
        printf "  \"host\": {\"cores\": %d, \"kernel\": %s},\n", cores, jstr(kernel) > json
        printf "  \"versions\": {\"postgres\": %s, \"pgbackrest\": %s, \"lifeboat\": %s},\n", jstr(pg), jstr(pgbr), jstr(lb) > json
        printf "  \"scale\": %d,\n  \"target_segments\": %d,\n  \"segments\": %d,\n  \"results\": [\n", scale, target, segments > json
        for (i = 1; i <= n; i++) {
            refs(i)
            printf "    {\"archiver\": %s, \"status\": %s", jstr(name[i]), jstr(status[i]) > json
            if (status[i] == "ok") {
                printf ", \"archive_command\": %s, \"segments\": %d, \"drain_seconds\": %.3f", jstr(cmd[i]), segs[i], secs[i] > json
                printf ", \"segments_per_second\": %.2f, \"cpu_ms_per_segment\": %.2f", rate[i], cpu[i] > json
                printf ", \"tree_cpu_ms_per_segment\": %s, \"idle_cpu_ms_per_second\": %d", jnum(tree[i], "%.2f"), idle[i] > json
                printf ", \"rate_vs_pgbackrest_sync\": %s, \"rate_vs_pgbackrest_async\": %s", jnum(div(rate[i], rs), "%.3f"), jnum(div(rate[i], ra), "%.3f") > json
                printf ", \"cpu_vs_pgbackrest_sync\": %s, \"cpu_vs_pgbackrest_async\": %s", jnum(div(cpu[i], cs), "%.3f"), jnum(div(cpu[i], ca), "%.3f") > json
                printf ", \"tree_cpu_vs_pgbackrest_sync\": %s, \"tree_cpu_vs_pgbackrest_async\": %s", jnum(div(tree[i], ts), "%.3f"), jnum(div(tree[i], ta), "%.3f") > json
                printf ", \"s3_requests\": %s, \"s3_delay_ms\": %s}", jnum(reqs[i], "%d"), (name[i] ~ /-s3$/) ? s3delay : "null" > json
            } else {
                printf ", \"reason\": %s}", jstr(reason[i]) > json
            }
            printf "%s\n", (i < n ? "," : "") > json
        }
        printf "  ]\n}\n" > json
    }' "$RESULTS"
    log "JSON written to $OUT_DIR/wal_push_drain.json"
}

main() {
    check_prereqs
    WORK=$(mktemp -d "$BENCH_TMP/lifeboat-bench.XXXXXX")
    # The postgres user creates its clusters inside it.
    chown postgres:postgres "$WORK"
    chmod 0755 "$WORK"
    install -d -o postgres -g postgres "$WORK/logs" "$WORK/sock"
    SOCK="$WORK/sock"
    PORT=$(free_port)
    RESULTS="$WORK/results.tsv"
    : >"$RESULTS"
    setup_cgroup
    case " $ARCHIVERS " in *-s3" "*)
        # Before any cluster starts: the postmaster inherits SSL_CERT_FILE from s3_start.
        S3_RUN="$WORK/s3"
        s3_start "$S3_RUN" ;;
    esac
    log "work dir $WORK; SCALE=$SCALE TARGET_SEGMENTS=$TARGET_SEGMENTS ARCHIVERS=\"$ARCHIVERS\""
    build_snapshot
    check_disk_space
    for a in $ARCHIVERS; do run_archiver "$a"; done
    versions
    report
}

main "$@"
