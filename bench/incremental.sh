#!/usr/bin/env bash
# Incremental backup benchmark: Lifeboat (incremental by content) against
# pgBackRest 2.45 `--type=incr`, after the same hot-set workload on one
# PostgreSQL 15 cluster. Full backups of every tool, one run of a pgbench
# script updating only the first 1% of the accounts, CHECKPOINT, then each
# tool's incremental, measured: wall time, bytes stored, CPU, peak memory.
# Optionally for several Lifeboat block sizes at once (BLOCK_SIZES). Each
# incremental is restored and checked afterwards (not timed). Run by hand, as
# root (or via sudo), never in CI. See bench/README.md.
#
#   sudo bash bench/incremental.sh
#   SCALE=5 SECONDS_HOT=10 bash bench/incremental.sh               # smoke run
#   BLOCK_SIZES="256 1024 4096" bash bench/incremental.sh          # block size trade-off
#
# Output: a Markdown report on stdout and in bench/out/incremental-<date>.md.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALE=${SCALE:-50}                       # pgbench scale
SECONDS_HOT=${SECONDS_HOT:-60}           # duration of the hot-set workload
CLIENTS=${CLIENTS:-2}                    # pgbench -c and -j of the workload
HOT_PERCENT=${HOT_PERCENT:-1}            # the workload updates aid 1 .. HOT_PERCENT% of the accounts
BLOCK_SIZES=${BLOCK_SIZES:-1024}         # Lifeboat [backup] block_size_kib, one repository each
TOOLS=${TOOLS:-"lifeboat pgbackrest"}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-target/release/lifeboat} # relative to the repo root
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/tmp}/lifeboat-bench-incremental} # the work dir itself
KEEP=${KEEP:-0}                          # 1: keep the work dir (data, repositories, logs)
VERIFY=${VERIFY:-1}                      # 1: restore each incremental and check it (not timed)
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}       # seconds before a measured command is killed
RSS_SAMPLE_SECONDS=${RSS_SAMPLE_SECONDS:-0.2} # period of the process-tree memory sampler
IDLE_MAX_MS_PER_S=${IDLE_MAX_MS_PER_S:-200}  # machine busier than this (CPU ms/s) = "not idle"
IDLE_WAIT_SECONDS=${IDLE_WAIT_SECONDS:-300}  # how long to wait for idle before each step (0: never)
IDLE_SAMPLE_SECONDS=${IDLE_SAMPLE_SECONDS:-2}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/bench/out}

case "$LIFEBOAT_BIN" in /*) ;; *) LIFEBOAT_BIN="$REPO_ROOT/$LIFEBOAT_BIN" ;; esac
MARKER=".lifeboat-bench-incremental" # a work dir holding this file is ours to delete

# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh" # log, die, measure, the cluster and archiving helpers
require_root "$@"
bench_setup

# --- state ----------------------------------------------------------------------
VARIANTS=()              # lifeboat-<block size KiB> ..., pgbackrest: one repository each
declare -A V_KIND V_DIR V_CONF V_CMD V_ARCH V_BS V_FULL V_INCR
CHAIN=""                 # every variant's archive_command, joined with &&
EXTRA=""                 # TSV: per measured backup, what `measure` does not record
INFO=""                  # key<TAB>value: the cluster, the workload
SUM_AFTER=""             # sum(abalance) after the workload: what every restore must show
LB_BIN_INFO=""           # the Lifeboat binary the first Lifeboat step ran
LB_BIN_MTIME=""
LB_BIN_CHANGED=""        # set when the binary was replaced between two steps

# Describes the Lifeboat binary before each Lifeboat step: on a shared machine
# someone may rebuild it in the middle of a run.
lb_bin_check() { # label
    local mtime info
    mtime=$(date -u -r "$LIFEBOAT_BIN" +%Y-%m-%dT%H:%M:%SZ)
    [ "$mtime" != "$LB_BIN_MTIME" ] || return 0
    info="binary of $mtime"
    "$LIFEBOAT_BIN" backup --help 2>/dev/null | grep -q -- --full-scan \
        || info="$info, no --full-scan: built before the incremental fast path"
    if [ -z "$LB_BIN_MTIME" ]; then
        LB_BIN_INFO=$info
    else
        log "  [$1] warning: $LIFEBOAT_BIN was replaced since the previous Lifeboat step (now: $info)"
        LB_BIN_CHANGED="${LB_BIN_CHANGED}before $1: $info; "
    fi
    LB_BIN_MTIME=$mtime
}

check_prereqs() {
    local t
    check_common_prereqs /usr/bin/time setpriv timeout zstd jq flock findmnt od
    [ -n "$TOOLS" ] || die "TOOLS is empty"
    for t in $TOOLS; do
        case "$t" in lifeboat|pgbackrest) ;;
            *) die "unknown tool '$t' in TOOLS (lifeboat, pgbackrest)" ;; esac
    done
    for t in $BLOCK_SIZES; do
        case "$t" in ''|*[!0-9]*) die "bad block size '$t' in BLOCK_SIZES (KiB)" ;; esac
    done
    for t in "$SCALE" "$SECONDS_HOT" "$CLIENTS" "$HOT_PERCENT"; do
        case "$t" in ''|*[!0-9]*|0) die "SCALE, SECONDS_HOT, CLIENTS and HOT_PERCENT must be positive integers" ;; esac
    done
}

put_info() { printf '%s\t%s\n' "$1" "$2" >>"$INFO"; } # key value
get_info() { awk -F'\t' -v k="$1" '$1 == k {v = $2} END {print v}' "$INFO"; }

# --- the cluster ------------------------------------------------------------------
# init_cluster: bench/lib.sh, as bench/backup_restore.sh (autovacuum off: a vacuum between two
# tools' incrementals would give the second one more to copy), plus wal_keep_size: a segment
# archived by one tool alone while its backup is measured must still be in pg_wal afterwards, to
# be given to the others.
CLUSTER_EXTRA_CONF="wal_keep_size = 2GB"

load_data() {
    local t0=$SECONDS need_kb avail_kb
    # The data (~15 MiB per scale unit), one restored copy, the repositories
    # (a fraction of the data each) and 2 GiB of kept WAL, plus 2 GiB.
    need_kb=$(( SCALE * 15 * 1024 * 3 + 4 * 1024 * 1024 ))
    avail_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    [ "$avail_kb" -ge "$need_kb" ] \
        || die "scale $SCALE needs ~$((need_kb / 1048576)) GiB free in $WORK, have $((avail_kb / 1048576)) GiB"
    log "pgbench -i -s $SCALE"
    as_pg "$PG_BIN/pgbench" -i -q -s "$SCALE" -h "$SOCK" -p "$PORT" postgres \
        >"$WORK/logs/pgbench-init.log" 2>&1 || die "pgbench -i failed; see $WORK/logs/pgbench-init.log"
    sql "CHECKPOINT" >/dev/null
    quiesce_archiving
    sql "CHECKPOINT" >/dev/null
    put_info data_bytes "$(bytes_in "$DATA" pg_wal)"
    put_info load_seconds "$((SECONDS - t0))"
    log "  loaded in $((SECONDS - t0)) s: data directory without pg_wal $(( $(get_info data_bytes) / 1048576 )) MiB"
}

# --- archiving to every repository ------------------------------------------------
# The full backups, the workload and everything between the steps archive to
# every repository through one archive_command (each tool's own command, joined
# with &&). Each measured backup runs with its own tool's command alone, as in
# bench/backup_restore.sh, so that it pays only for its own archiving; the
# segments archived meanwhile are then given by hand to the other repositories
# (not timed), so that every archive stays complete.

in_archive() { # archive_dir name: Lifeboat stores NAME, pgBackRest NAME-<sha1>.<ext> (a segment)
    [ -n "$(find "$1" \( -name "$2" -o -name "$2-*" \) -print -quit 2>/dev/null)" ]
}

current_wal() { sql "SELECT pg_walfile_name(pg_current_wal_lsn())"; }

drain_archiving() { # label
    local deadline=$((SECONDS + 600))
    while [ "$(count_ready "$DATA")" -gt 0 ]; do
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$WORK/logs/cluster.log" >&2; die "[$1] archiving did not catch up in 600 s"; }
        nap 0.2
    done
}

# Sets archive_command to CMD, then completes segments until one lands in
# every archive of the variants named (proves that the command works and that
# the archiver runs it). With ONLY=1, the segment must also be absent from the
# other variants' archives: the archiver no longer runs the command of before.
use_archiving() { # label only(0|1) command variant...
    local label=$1 only=$2 cmd=$3 seg attempt deadline v ok
    shift 3
    set_archive_command "$cmd"
    for attempt in 1 2 3 4 5 6; do
        seg=$(switch_wal)
        deadline=$((SECONDS + 30))
        while [ "$SECONDS" -lt "$deadline" ]; do
            ok=1
            for v in "$@"; do in_archive "${V_ARCH[$v]}" "$seg" || { ok=0; break; }; done
            [ "$ok" = 1 ] && break
            nap 0.1
        done
        if [ "$ok" = 1 ]; then
            [ "$only" = 1 ] || return 0
            for v in "${VARIANTS[@]}"; do
                case " $* " in *" $v "*) continue ;; esac
                in_archive "${V_ARCH[$v]}" "$seg" && { ok=0; break; }
            done
            [ "$ok" = 1 ] && return 0
            log "  [$label] $seg still went to every archive; the archiver has not reloaded yet"
        else
            log "  [$label] $seg not archived after 30 s (attempt $attempt)"
        fi
    done
    tail -n 20 "$WORK/logs/cluster.log" >&2
    die "[$label] archive_command does not archive: $cmd"
}

# Gives the WAL files archived since FROM (the segments and backup history
# files PostgreSQL marked .done) to every archive that lacks them, with that
# variant's own command, run by hand. (Not "the segments before the current
# one": pg_walfile_name() of an LSN on a segment boundary names the segment
# before it.) A backup history file PostgreSQL already removed is not given.
catch_up() { # label from_segment
    local label=$1 from=$2 f name v n=0 cmd
    for f in "$DATA"/pg_wal/archive_status/*.done; do
        name=${f##*/}
        name=${name%.done}
        [[ $name =~ ^[0-9A-F]{24}(\.[0-9A-F]{8}\.backup)?$ ]] || continue
        [[ ! ${name:0:24} < $from ]] || continue
        [ -e "$DATA/pg_wal/$name" ] || continue
        for v in "${VARIANTS[@]}"; do
            in_archive "${V_ARCH[$v]}" "$name" && continue
            cmd=${V_CMD[$v]//%p/$DATA/pg_wal/$name}
            echo "$cmd" >>"$WORK/logs/catch-up.log"
            as_pg sh -c "$cmd" >>"$WORK/logs/catch-up.log" 2>&1 \
                || die "[$label] could not archive $name by hand for $v; see $WORK/logs/catch-up.log"
            n=$((n + 1))
        done
    done
    [ "$n" -eq 0 ] || log "  [$label] archived $n file(s) by hand into the other repositories"
}

# Every archive holds every segment from FROM on that PostgreSQL archived.
check_archives() { # label from_segment
    local label=$1 from=$2 f name v
    for f in "$DATA"/pg_wal/archive_status/*.done; do
        name=${f##*/}
        name=${name%.done}
        [[ $name =~ ^[0-9A-F]{24}$ ]] || continue
        [[ ! $name < $from ]] || continue
        for v in "${VARIANTS[@]}"; do
            in_archive "${V_ARCH[$v]}" "$name" || die "[$label] $name is missing from the archive of $v"
        done
    done
}

# --- the variants -----------------------------------------------------------------

select_variant() { # variant: the globals of lib.sh's tool functions
    TOOL_DIR=${V_DIR[$1]}
    LB_CONF=${V_CONF[$1]}
    PGBR_CONF=${V_CONF[$1]}
    ARCHIVE_COMMAND=${V_CMD[$1]}
    ARCHIVE_DIR=${V_ARCH[$1]}
}

prepare_variants() {
    local tool bs v list=() cmds=()
    for tool in $TOOLS; do
        case "$tool" in
        lifeboat) for bs in $BLOCK_SIZES; do list+=("lifeboat-$bs"); done ;;
        pgbackrest) list+=(pgbackrest) ;;
        esac
    done
    for v in "${list[@]}"; do
        TOOL_DIR="$WORK/$v"
        SKIP_REASON=""
        new_pg_dir "$TOOL_DIR"
        chmod 0755 "$TOOL_DIR"
        case "$v" in
        lifeboat-*)
            bs=${v#lifeboat-}
            # Its own spool directory: the markers of segments pushed ahead
            # (pg_wal/lifeboat/pushed by default) name a file, not a
            # repository, and one repository's marker would let the wal-push
            # of another skip that file.
            new_pg_dir "$TOOL_DIR/spool"
            LB_EXTRA_CONF=$(printf '[archive]\nspool_dir = "%s"\n\n[backup]\nblock_size_kib = %s' "$TOOL_DIR/spool" "$bs")
            prepare_lifeboat
            V_KIND[$v]=lifeboat V_BS[$v]=$bs V_CONF[$v]=$LB_CONF
            ;;
        pgbackrest)
            prepare_pgbackrest
            V_KIND[$v]=pgbackrest V_BS[$v]="" V_CONF[$v]=$PGBR_CONF
            ;;
        esac
        if [ -n "$SKIP_REASON" ]; then
            log "  [$v] SKIPPED: $SKIP_REASON"
            printf '%s\t%s\tfull\tskipped\t%s\n' "$SCALE" "$v" "$SKIP_REASON" >>"$RESULTS"
            rm -rf "$TOOL_DIR"
            continue
        fi
        V_DIR[$v]=$TOOL_DIR V_CMD[$v]=$ARCHIVE_COMMAND V_ARCH[$v]=$ARCHIVE_DIR
        VARIANTS+=("$v")
        cmds+=("$ARCHIVE_COMMAND")
    done
    [ "${#VARIANTS[@]}" -gt 0 ] || die "nothing to measure"
    CHAIN=$(printf ' && %s' "${cmds[@]}")
    CHAIN=${CHAIN# && }
    log "archiving to every repository: $CHAIN"
    use_archiving all 0 "$CHAIN" "${VARIANTS[@]}"
}

repo_backup_bytes() { # variant: the repository without its archived WAL
    case "${V_KIND[$1]}" in
    lifeboat) bytes_in "${V_DIR[$1]}/repo" wal ;;
    pgbackrest) bytes_in "${V_DIR[$1]}/repo" archive ;;
    esac
}

pgbr_labels() { # the backup labels in pgBackRest's repository, one a line
    find "${V_DIR[pgbackrest]}/repo/backup/bench" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
        -regex '.*/[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?' -printf '%f\n' | sort
}

# One measured backup (step full or incr) of one variant, with that tool's
# own archive_command, then the bookkeeping: EXTRA gets
# variant step label stored_size bytes_read files_reused repo_growth backup_dir_bytes manifest_bytes
run_backup() { # variant step
    local v=$1 step=$2 from before after label="" stored_size="" bytes_read="" files_reused=""
    local dir_bytes="" manifest_bytes="" out labels_before="" rc=0
    select_variant "$v"
    log "[$v] $step backup"
    drain_archiving "$v"
    from=$(current_wal)
    use_archiving "$v" 1 "${V_CMD[$v]}" "$v"
    # Same starting point for every tool: nothing dirty, warm page cache.
    sql "CHECKPOINT" >/dev/null
    warm_up
    before=$(repo_backup_bytes "$v")
    case "${V_KIND[$v]}" in
    lifeboat)
        lb_bin_check "$v $step"
        measure "$SCALE" "$v" "$step" stored_lifeboat "$TOOL_DIR/repo" \
            "$LIFEBOAT_BIN" --config "$LB_CONF" backup --pgdata "$DATA" \
            --db "host=$SOCK port=$PORT user=postgres dbname=postgres" --json || rc=$?
        ;;
    pgbackrest)
        labels_before=$(pgbr_labels)
        measure "$SCALE" "$v" "$step" stored_pgbackrest "$TOOL_DIR/repo" \
            pgbackrest --config="$PGBR_CONF" --stanza=bench --type="$step" backup || rc=$?
        ;;
    esac
    # Back to every repository, none missing a segment.
    drain_archiving "$v"
    catch_up "$v" "$from"
    use_archiving all 0 "$CHAIN" "${VARIANTS[@]}"
    check_archives "$v" "$from"
    [ "$rc" -eq 0 ] || return 0
    after=$(repo_backup_bytes "$v")
    out="$WORK/logs/s$SCALE-$v-$step.out"
    case "${V_KIND[$v]}" in
    lifeboat)
        label=$(jq -r '.label // empty' "$out")
        stored_size=$(jq -r '.stored_size // empty' "$out")
        bytes_read=$(jq -r '.bytes_read // empty' "$out")
        files_reused=$(jq -r '.files_reused // empty' "$out")
        manifest_bytes=$(stat -c %s "$TOOL_DIR/repo/backups/$label/manifest" 2>/dev/null || true)
        ;;
    pgbackrest)
        label=$(comm -13 <(echo "$labels_before") <(pgbr_labels) | tail -n 1)
        if [ -n "$label" ]; then
            dir_bytes=$(bytes_in "$TOOL_DIR/repo/backup/bench/$label")
            manifest_bytes=$(stat -c %s "$TOOL_DIR/repo/backup/bench/$label/backup.manifest" 2>/dev/null || true)
        fi
        ;;
    esac
    [ -n "$label" ] || log "  [$v] warning: could not find the label of the new backup"
    case "$step" in full) V_FULL[$v]=$label ;; *) V_INCR[$v]=$label ;; esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$step" "$label" "$stored_size" "$bytes_read" \
        "$files_reused" "$((after - before))" "$dir_bytes" "$manifest_bytes" >>"$EXTRA"
    log "  [$v] $step $label stored $(( (after - before) / 1024 )) KiB (repository growth without WAL)"
}

# --- the workload -----------------------------------------------------------------

hot_workload() {
    local script="$WORK/hot.sql" lsn0 lsn1 hot_max log="$WORK/logs/pgbench-hot.log"
    hot_max=$(( SCALE * 100000 * HOT_PERCENT / 100 ))
    # pgbench's tpcb-like transaction, restricted to the first HOT_PERCENT% of
    # the accounts (1000 * scale for 1%). -s gives :scale its value: with -f
    # pgbench does not read it from pgbench_branches.
    cat >"$script" <<EOF
\\set aid random(1, $((1000 * HOT_PERCENT)) * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
EOF
    chmod 0644 "$script"
    drain_archiving workload
    wait_for_idle workload
    put_info workload_busy_before "$BUSY"
    put_info workload_load_before "$(load1)"
    lsn0=$(sql "SELECT pg_current_wal_lsn()")
    log "hot-set workload: pgbench -c $CLIENTS -j $CLIENTS -T $SECONDS_HOT -n -s $SCALE -f hot.sql (aid 1..$hot_max)"
    as_pg "$PG_BIN/pgbench" -h "$SOCK" -p "$PORT" -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_HOT" -n \
        -s "$SCALE" -f "$script" postgres >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "pgbench failed; see $log"; }
    lsn1=$(sql "SELECT pg_current_wal_lsn()")
    put_info transactions "$(awk -F': ' '/number of transactions actually processed/ {split($2, a, "/"); print a[1]}' "$log")"
    put_info tps "$(awk '/^tps = / {printf "%.0f", $3}' "$log")"
    put_info wal_bytes "$(sql "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')")"
    # The aids the workload touched, from its own history rows.
    put_info aid_range "$(sql "SELECT min(aid) || '..' || max(aid) || ', ' || count(DISTINCT aid) || ' distinct' FROM pgbench_history")"
    put_info hot_max "$hot_max"
    # Read every row once (hint bits) before the CHECKPOINT, so that no tool's
    # incremental sees pages the one before it did not.
    SUM_AFTER=$(sql "SELECT sum(abalance) FROM pgbench_accounts")
    put_info sum_after "$SUM_AFTER"
    put_info updates "$(sql "SELECT n_tup_upd || ' updates, ' || n_tup_hot_upd || ' HOT' FROM pg_stat_user_tables WHERE relname = 'pgbench_accounts'")"
    put_info sizes "$(sql "SELECT string_agg(relname || ' ' || pg_size_pretty(pg_relation_size(oid)), ', ' ORDER BY relname) FROM pg_class WHERE relname IN ('pgbench_accounts', 'pgbench_accounts_pkey', 'pgbench_history')")"
    sql "CHECKPOINT" >/dev/null
    drain_archiving workload
    log "  $(get_info transactions) transactions, $(get_info tps) tps, WAL $(( $(get_info wal_bytes) / 1048576 )) MiB, aid $(get_info aid_range)"
}

# --- verification (not timed) -----------------------------------------------------

verify_variant() { # variant
    local v=$1 dir="$WORK/restore" label=${V_INCR[$1]:-} log
    log="$WORK/logs/restore-$v.log"
    if [ -z "$label" ]; then
        printf '%s\t%s\tverify\tno incremental\n' "$SCALE" "$v" >>"$RESULTS"
        return
    fi
    VERIFIED="-"
    if [ "$VERIFY" = 1 ]; then
        new_pg_dir "$dir"
        select_variant "$v"
        log "[$v] restoring $label into $dir (not timed)"
        case "${V_KIND[$v]}" in
        lifeboat)
            as_pg "$LIFEBOAT_BIN" --config "$LB_CONF" restore --target-dir "$dir" --backup "$label" >"$log" 2>&1 \
                || VERIFIED="restore failed (see $log)" ;;
        pgbackrest)
            as_pg pgbackrest --config="$PGBR_CONF" --stanza=bench --pg1-path="$dir" --set="$label" restore >"$log" 2>&1 \
                || VERIFIED="restore failed (see $log)" ;;
        esac
        [ "$VERIFIED" != "-" ] || verify_restore "$SCALE" "$v" "$dir" "$SUM_AFTER"
        rm -rf "$dir"
    fi
    log "  [$v] restored incremental: $VERIFIED"
    printf '%s\t%s\tverify\t%s\n' "$SCALE" "$v" "$VERIFIED" >>"$RESULTS"
    [ "$VERIFIED" = ok ] || [ "$VERIFIED" = - ] || FAILED=$((FAILED + 1))
}

# --- what the incrementals stored ---------------------------------------------------

# relfilenode -> relation name, for the database postgres.
RELMAP=""
relation_map() {
    local dboid
    RELMAP="$WORK/relmap.tsv"
    dboid=$(sql "SELECT oid FROM pg_database WHERE datname = 'postgres'")
    sql "SELECT 'base/$dboid/' || pg_relation_filenode(oid), relname FROM pg_class WHERE pg_relation_filenode(oid) IS NOT NULL" \
        | tr '|' '\t' >"$RELMAP"
}

# A Lifeboat manifest object, as JSON: a 48-byte header, then the payload
# (compression in byte 5: 0 none, 1 zstd). Unencrypted repositories only.
lb_manifest() { # repo label
    local f="$1/backups/$2/manifest" comp
    comp=$(od -An -tu1 -j5 -N1 "$f" | tr -d ' ')
    case "$comp" in
    0) tail -c +49 "$f" ;;
    1) tail -c +49 "$f" | zstd -q -d -c ;;
    *) return 1 ;;
    esac
}

# Per file of the incremental: chunks not referenced by the full backup (what
# it stored), and their size in the repository. Small files packed together
# share one chunk: a new pack is shown once, with the files in it that changed.
lifeboat_breakdown() { # variant
    local v=$1 repo=${V_DIR[$1]}/repo full=${V_FULL[$1]:-} incr=${V_INCR[$1]:-}
    [ -n "$full" ] && [ -n "$incr" ] || return 0
    lb_manifest "$repo" "$full" >"$WORK/$v-full.json" 2>/dev/null || return 0
    lb_manifest "$repo" "$incr" >"$WORK/$v-incr.json" 2>/dev/null || return 0
    # path, size, blocks, new blocks, new chunk ids (space separated), kind
    jq -r --slurpfile a "$WORK/$v-full.json" '
        ([$a[0].entries[] | select(.type == "file") | (.blocks // [])[], (.packed.chunk // empty)]
            | map({key: ., value: true}) | from_entries) as $old
        | ([$a[0].entries[] | select(.type == "file" and .packed) | {key: .path, value: .packed.hash}]
            | from_entries) as $oldhash
        | [.entries[] | select(.type == "file")] as $files
        | ($files[] | select(.blocks) | . as $f | [$f.blocks[] | select($old[.] | not)] as $new
            | select($new | length > 0)
            | [$f.path, $f.size, ($f.blocks | length), ($new | length), ($new | join(" ")), "blocks"] | @tsv),
          ($files | map(select(.packed)) | group_by(.packed.chunk)[]
            | select($old[.[0].packed.chunk] | not)
            | [(map(select($oldhash[.path] != .packed.hash) | .path) | if length == 0 then "(none)" else join(" ") end),
               (map(.size) | add), length, 1, .[0].packed.chunk, "pack"] | @tsv)
    ' "$WORK/$v-incr.json" >"$WORK/$v-new.tsv" || return 0
    awk -F'\t' -v repo="$repo" -v relmap="$RELMAP" '
    function relname(p,   base, suffix, fork, seg) {
        base = p; fork = ""; seg = ""
        if (match(base, /\.[0-9]+$/)) { seg = substr(base, RSTART); base = substr(base, 1, RSTART - 1) }
        if (match(base, /_(fsm|vm|init)$/)) { fork = substr(base, RSTART + 1); base = substr(base, 1, RSTART - 1) }
        if (!(base in rel)) return p
        return rel[base] (fork == "" ? "" : " (" fork ")") (seg == "" ? "" : " segment " substr(seg, 2))
    }
    BEGIN { while ((getline line < relmap) > 0) { split(line, f, "\t"); rel[f[1]] = f[2] } }
    {
        n = split($5, ids, " "); bytes = 0
        for (i = 1; i <= n; i++) {
            cmd = "stat -c %s " repo "/data/" substr(ids[i], 1, 2) "/" ids[i] " 2>/dev/null"
            s = 0; cmd | getline s; close(cmd); bytes += s
        }
        if ($6 == "pack") {
            m = split($1, ps, " "); names = ""
            for (i = 1; i <= m && i <= 6; i++) names = names (i > 1 ? ", " : "") relname(ps[i])
            if (m > 6) names = names sprintf(", ... (%d changed files)", m)
            printf "%d\tpack of %d small file%s (%.0f KiB), changed: %s\t%s\t%s\n", bytes, $3, ($3 == 1 ? "" : "s"), $2 / 1024, names, "1/1", bytes
        } else {
            printf "%d\t%s (%.1f MiB)\t%s/%s\t%d\n", bytes, relname($1), $2 / 1048576, $4, $3, bytes
        }
    }' "$WORK/$v-new.tsv" | sort -t$'\t' -k1,1nr | cut -f2- >"$WORK/$v-breakdown.tsv"
}

# The files pgBackRest's incremental copied (the others are references to the
# full backup), largest stored first.
pgbackrest_breakdown() {
    local incr=${V_INCR[pgbackrest]:-} dir
    [ -n "$incr" ] || return 0
    dir="${V_DIR[pgbackrest]}/repo/backup/bench/$incr/pg_data"
    [ -d "$dir" ] || return 0
    find "$dir" -type f -printf '%s\t%P\n' | sort -t$'\t' -k1,1nr | awk -F'\t' -v relmap="$RELMAP" -v data="$DATA" '
    BEGIN { while ((getline line < relmap) > 0) { split(line, f, "\t"); rel[f[1]] = f[2] } }
    {
        p = $2; sub(/\.(zst|gz|lz4|bz2)$/, "", p)
        base = p; fork = ""; seg = ""
        if (match(base, /\.[0-9]+$/)) { seg = substr(base, RSTART); base = substr(base, 1, RSTART - 1) }
        if (match(base, /_(fsm|vm|init)$/)) { fork = substr(base, RSTART + 1); base = substr(base, 1, RSTART - 1) }
        name = (base in rel) ? rel[base] (fork == "" ? "" : " (" fork ")") (seg == "" ? "" : " segment " substr(seg, 2)) : p
        cmd = "stat -c %s " data "/" p " 2>/dev/null"; s = 0; cmd | getline s; close(cmd)
        printf "%s (%s)\t%d\n", name, (s >= 1048576 ? sprintf("%.1f MiB", s / 1048576) : sprintf("%.0f KiB", s / 1024)), $1
    }' >"$WORK/pgbackrest-breakdown.tsv"
}

# --- report -----------------------------------------------------------------------

report() {
    local out mem_gib cpu pgv pgbrv lbv zstdv v
    mkdir -p "$OUT_DIR"
    out="$OUT_DIR/incremental-$STAMP.md"
    mem_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    pgv=$("$PG_BIN/postgres" --version)
    pgbrv=$(version_of pgbackrest version)
    lbv=$(version_of "$LIFEBOAT_BIN" --version)
    zstdv=$(version_of zstd --version | grep -o "v[0-9][0-9.]*" || true)
    {
        printf '# Incremental backup benchmark, %s\n\n' "$STARTED"
        printf -- '- machine: %s cores (%s), %s GiB memory, kernel %s\n' "$(nproc)" "${cpu:-?}" "$mem_gib" "$(uname -r)"
        printf -- '- work dir: %s (%s), %s free at the start\n' "$WORK" \
            "$(findmnt -no SOURCE,FSTYPE -T "$WORK" | tr -s ' ' ' ')" "$DISK_FREE_START"
        printf -- '- versions: %s; %s; %s (%s); zstd %s\n' "$pgv" "${pgbrv:-pgBackRest not installed}" \
            "${lbv:-lifeboat not built}" "$LB_BIN_INFO" "${zstdv:-?}"
        [ -z "$LB_BIN_CHANGED" ] || printf -- '- **warning: the Lifeboat binary was replaced during the run**, %sthe figures of the steps before and after it are not comparable\n' "$LB_BIN_CHANGED"
        printf -- '- SCALE=%s SECONDS_HOT=%s CLIENTS=%s HOT_PERCENT=%s BLOCK_SIZES="%s" TOOLS="%s" VERIFY=%s IDLE_MAX_MS_PER_S=%s IDLE_WAIT_SECONDS=%s; load average at the end: %s\n' \
            "$SCALE" "$SECONDS_HOT" "$CLIENTS" "$HOT_PERCENT" "$BLOCK_SIZES" "$TOOLS" "$VERIFY" \
            "$IDLE_MAX_MS_PER_S" "$IDLE_WAIT_SECONDS" "$(cut -d' ' -f1-3 /proc/loadavg)"
        printf -- '- data directory without pg_wal: %.0f MiB (pgbench -i in %s s)\n' \
            "$(awk -v b="$(get_info data_bytes)" 'BEGIN {print b / 1048576}')" "$(get_info load_seconds)"
        # shellcheck disable=SC2016 # backquotes are Markdown
        printf -- '- workload: `pgbench -c %s -j %s -T %s -n -f hot.sql`, aid 1..%s: %s transactions (%s tps), %s; aid %s in pgbench_history; %.0f MiB of WAL; machine busy before %s ms CPU/s, load average %s\n' \
            "$CLIENTS" "$CLIENTS" "$SECONDS_HOT" "$(get_info hot_max)" "$(get_info transactions)" "$(get_info tps)" \
            "$(get_info updates)" "$(get_info aid_range)" \
            "$(awk -v b="$(get_info wal_bytes)" 'BEGIN {print b / 1048576}')" \
            "$(get_info workload_busy_before)" "$(get_info workload_load_before)"
        printf -- '- after it: %s; sum(abalance) = %s\n\n' "$(get_info sizes)" "$SUM_AFTER"
        awk -F'\t' -v extra="$EXTRA" -v clk="$CLK_TCK" '
        function mib(x) { return (x == "") ? "-" : sprintf("%.2f", x / 1048576) }
        function kib(x) { return (x == "") ? "-" : sprintf("%.0f", x / 1024) }
        function cell(x) { return (x == "") ? "-" : x }
        function name(v) { if (v == "pgbackrest") return "pgBackRest"; sub(/^lifeboat-/, "", v); return "Lifeboat, " v " KiB blocks" }
        function verdict(r, t) { return (r == "") ? "-" : (r <= t ? "met" : "not met") }
        BEGIN {
            while ((getline line < extra) > 0) {
                split(line, f, "\t"); k = f[1] SUBSEP f[2]
                label[k] = f[3]; ssize[k] = f[4]; bread[k] = f[5]; reused[k] = f[6]; growth[k] = f[7]; dirb[k] = f[8]; man[k] = f[9]
            }
        }
        $3 == "verify" { verify[$2] = $4; next }
        {
            n++; v[n] = $2; st[n] = $3; status[n] = $4; note[n] = $5
            if (!($2 in seen)) { seen[$2] = 1; order[++nv] = $2 }
            if ($4 != "ok") next
            k = $2 SUBSEP $3
            wall[k] = $5 / 1e6; syncs[k] = $6 / 1e6; rss[k] = $7 / 1024; tree[k] = $8 / 1024
            cpu[k] = $9 + $10; mach[k] = $11 / clk; load[k] = $14; busy[k] = $15; ok[k] = 1
        }
        END {
            printf "## The incremental backup, after the workload\n\n"
            printf "| tool | wall s | of which sync s | stored MiB (repository growth, without WAL) | stored_size MiB (Lifeboat report) | backup directory MiB (pgBackRest) | manifest KiB | files reused | MiB read | CPU s, command | CPU s, machine | peak RSS MiB, largest process | peak RSS MiB, process tree | machine busy before, ms/s | load avg before | restored copy |\n"
            printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
            for (j = 1; j <= nv; j++) {
                x = order[j]; k = x SUBSEP "incr"
                if (!ok[k]) {
                    for (i = 1; i <= n; i++) if (v[i] == x && status[i] != "ok") { printf "| %s | %s: %s |||||||||||||||\n", name(x), status[i], note[i]; break }
                    continue
                }
                printf "| %s | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %.1f | %.1f | %s | %s | %s |\n",
                    name(x), wall[k], syncs[k], mib(growth[k]), mib(ssize[k]), mib(dirb[k]), kib(man[k]),
                    cell(reused[k]), mib(bread[k]), cpu[k], mach[k], rss[k], tree[k], busy[k], load[k], cell(verify[x])
            }
            kp = "pgbackrest" SUBSEP "incr"
            if (ok[kp]) {
                printf "\nLifeboat / pgBackRest, incremental (targets of issue 4: bytes at most 0.25, time at most 0.5):\n\n"
                printf "| Lifeboat | bytes stored, ratio | bytes: target 0.25 | wall time, ratio | time: target 0.5 | CPU, ratio | peak RSS (tree), ratio |\n"
                printf "|---|---:|---|---:|---|---:|---:|\n"
                for (j = 1; j <= nv; j++) {
                    x = order[j]; k = x SUBSEP "incr"
                    if (x == "pgbackrest" || !ok[k]) continue
                    rb = (growth[kp] > 0) ? growth[k] / growth[kp] : ""
                    rt = wall[k] / wall[kp]
                    printf "| %s | %s | %s | %.2f | %s | %s | %.2f |\n", name(x), (rb == "" ? "-" : sprintf("%.3f", rb)),
                        verdict(rb, 0.25), rt, verdict(rt, 0.5), (cpu[kp] > 0 ? sprintf("%.2f", cpu[k] / cpu[kp]) : "-"), tree[k] / tree[kp]
                }
            }
            nl = 0
            for (j = 1; j <= nv; j++) if (order[j] != "pgbackrest") nl++
            if (nl > 1) {
                printf "\nLifeboat block size (`[backup] block_size_kib`), same workload for every repository:\n\n"
                printf "| block_size_kib | incremental: stored MiB | stored_size MiB | manifest KiB | wall s | CPU s | peak RSS MiB (tree) | full: stored MiB | manifest KiB | wall s | peak RSS MiB (tree) |\n"
                printf "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
                for (j = 1; j <= nv; j++) {
                    x = order[j]; if (x == "pgbackrest") continue
                    k = x SUBSEP "incr"; kf = x SUBSEP "full"; bs = x; sub(/^lifeboat-/, "", bs)
                    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", bs,
                        mib(growth[k]), mib(ssize[k]), kib(man[k]),
                        ok[k] ? sprintf("%.2f", wall[k]) : "-", ok[k] ? sprintf("%.2f", cpu[k]) : "-", ok[k] ? sprintf("%.1f", tree[k]) : "-",
                        mib(growth[kf]), kib(man[kf]), ok[kf] ? sprintf("%.2f", wall[kf]) : "-", ok[kf] ? sprintf("%.1f", tree[kf]) : "-"
                }
            }
            printf "\n## The full backups, before the workload (for reference)\n\n"
            printf "| tool | wall s | stored MiB | manifest KiB | CPU s, command | peak RSS MiB, process tree | machine busy before, ms/s | load avg before |\n"
            printf "|---|---:|---:|---:|---:|---:|---:|---:|\n"
            for (j = 1; j <= nv; j++) {
                x = order[j]; k = x SUBSEP "full"
                if (!ok[k]) {
                    for (i = 1; i <= n; i++) if (v[i] == x && st[i] == "full") { printf "| %s | %s: %s |||||||\n", name(x), status[i], note[i]; break }
                    continue
                }
                printf "| %s | %.2f | %s | %s | %.2f | %.1f | %s | %s |\n", name(x), wall[k], mib(growth[k]), kib(man[k]), cpu[k], tree[k], busy[k], load[k]
            }
        }' "$RESULTS"
        printf '\n## What each incremental stored\n'
        for v in "${VARIANTS[@]}"; do
            case "${V_KIND[$v]}" in
            lifeboat)
                [ -s "$WORK/$v-breakdown.tsv" ] || continue
                printf '\nLifeboat, %s KiB blocks: chunks of the incremental that its full backup does not reference (the new data), by file, largest first:\n\n' "${V_BS[$v]}"
                printf '| file | new / all blocks | stored KiB |\n|---|---:|---:|\n'
                head -n 15 "$WORK/$v-breakdown.tsv" | awk -F'\t' '{printf "| %s | %s | %.0f |\n", $1, $2, $3 / 1024}'
                awk -F'\t' 'NR > 15 {n++; s += $3} END {if (n) printf "| %d more | | %.0f |\n", n, s / 1024}' "$WORK/$v-breakdown.tsv"
                ;;
            pgbackrest)
                [ -s "$WORK/pgbackrest-breakdown.tsv" ] || continue
                printf '\npgBackRest: the files its incremental copied (whole, compressed), largest first:\n\n'
                printf '| file | stored KiB |\n|---|---:|\n'
                head -n 10 "$WORK/pgbackrest-breakdown.tsv" | awk -F'\t' '{printf "| %s | %.0f |\n", $1, $2 / 1024}'
                awk -F'\t' 'NR > 10 {n++; s += $2} END {if (n) printf "| %d more | %.0f |\n", n, s / 1024}' "$WORK/pgbackrest-breakdown.tsv"
                ;;
            esac
        done
        cat <<'EOF'

How to read it (bench/README.md has the details):

- Every tool took its full backup before the workload and its incremental after the same
  workload and one `CHECKPOINT`. Each measured backup ran with only its own tool's
  `archive_command`; everything else archived to every repository.
- wall s: from the start of the command to the end of a `sync -f` (syncfs) of the filesystem
  holding the repository, run right after it; "of which sync s" is that syncfs. Every backup
  starts after a `CHECKPOINT` and one read of the whole data directory (warm page cache).
- stored MiB: what the backup added to its repository, archived WAL excluded (Lifeboat: the
  repository minus `wal/`; pgBackRest: the repository minus `archive/`, i.e. the backup directory,
  its copy of the manifest in `backup.history/` and the updated `backup.info`). The ratio uses
  this column. stored_size: Lifeboat's own figure (encoded bytes of the chunks it added); backup
  directory: pgBackRest's `backup/bench/<label>`; manifest: `backups/<label>/manifest`
  (Lifeboat, compressed object) or `backup.manifest` (pgBackRest, plain text).
- files reused, MiB read: from Lifeboat's `--json` report when the binary has them (the fast path
  for files unchanged since the previous backup), "-" otherwise.
- CPU s, command: user + system CPU of the command and its children (`/usr/bin/time`); CPU s,
  machine: all busy CPU of the machine over the step. Peak RSS: largest single process
  (`/usr/bin/time %M`) and the sum over the process tree, sampled every RSS_SAMPLE_SECONDS.
- machine busy before: busy CPU of the machine (all cores: 2000 is a 2-core machine flat out)
  just before the step, after waiting up to IDLE_WAIT_SECONDS for it to fall under
  IDLE_MAX_MS_PER_S. Well above that means another job overlapped the step.
- restored copy: the incremental restored into an empty directory, started with archiving off
  and recovery from the tool's archive; count(*) and sum(abalance) of pgbench_accounts must
  equal the source's after the workload (VERIFY=1; not timed).
EOF
    } >"$out"
    cat "$out"
    log "report written to $out"
}

main() {
    local v
    check_prereqs
    open_workdir 54441
    EXTRA="$WORK/extra.tsv"
    INFO="$WORK/info.tsv"
    : >"$EXTRA"
    : >"$INFO"
    DISK_FREE_START=$(df -Ph "$WORK" | awk 'NR==2 {print $4}')
    log "work dir $WORK; SCALE=$SCALE SECONDS_HOT=$SECONDS_HOT BLOCK_SIZES=\"$BLOCK_SIZES\" TOOLS=\"$TOOLS\"; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    init_cluster
    load_data
    prepare_variants
    for v in "${VARIANTS[@]}"; do run_backup "$v" full; done
    hot_workload
    for v in "${VARIANTS[@]}"; do
        if [ -n "${V_FULL[$v]:-}" ]; then
            run_backup "$v" incr
        else
            printf '%s\t%s\tincr\tskipped\tno full backup\n' "$SCALE" "$v" >>"$RESULTS"
        fi
    done
    relation_map
    for v in "${VARIANTS[@]}"; do
        case "${V_KIND[$v]}" in lifeboat) lifeboat_breakdown "$v" ;; pgbackrest) pgbackrest_breakdown ;; esac
    done
    for v in "${VARIANTS[@]}"; do verify_variant "$v"; done
    set_archive_command /bin/true
    pg_stop "$DATA"
    report
    exit_if_failed
}

main "$@"
