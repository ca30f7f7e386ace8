#!/usr/bin/env bash
# Full backup and restore benchmark: Lifeboat, pgBackRest and pg_basebackup
# on the same PostgreSQL 15 cluster, one pgbench scale after another. For each
# tool: wall time, MiB/s, stored size, peak memory and CPU of a full backup
# and of a restore into a fresh directory. Run by hand, as root (or via sudo),
# never in CI. See bench/README.md.
#
#   sudo bash bench/backup_restore.sh
#   TOOLS="pgbackrest pg_basebackup" SCALES=5 ROUNDS=1 bash bench/backup_restore.sh
#
# Output: a Markdown report on stdout and in bench/out/backup_restore-<date>.md.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALES=${SCALES:-"50 200"}               # pgbench scales, measured in this order
ROUNDS=${ROUNDS:-3}                      # every tool's backup and restore this many times per scale, in rotated order; the ratios use medians
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
SETTLE_SECONDS=${SETTLE_SECONDS:-300}    # after deleting an earlier run, wait this long before measuring (see lib.sh)
IDLE_SAMPLE_SECONDS=${IDLE_SAMPLE_SECONDS:-2}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/bench/out}

case "$LIFEBOAT_BIN" in /*) ;; *) LIFEBOAT_BIN="$REPO_ROOT/$LIFEBOAT_BIN" ;; esac
MARKER=".lifeboat-bench-backup-restore" # a work dir holding this file is ours to delete

# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh" # log, die, measure, the cluster and archiving helpers
require_root "$@"
bench_setup

SCALE_INFO=""    # TSV: one line per scale

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
    case "$ROUNDS" in ''|*[!0-9]*|0) die "ROUNDS must be a positive number, not '$ROUNDS'" ;; esac
    [ -n "$SCALES" ] || die "SCALES is empty"
    for t in $SCALES; do
        case "$t" in ''|*[!0-9]*|0) die "bad scale '$t' in SCALES" ;; esac
    done
}

# --- tools ----------------------------------------------------------------------
# prepare_lifeboat, prepare_pgbackrest, stored_lifeboat, stored_pgbackrest, run_tool: bench/lib.sh.

backup_lifeboat() { # scale
    measure "$1" lifeboat backup stored_lifeboat "$TOOL_DIR/repo" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" backup --pgdata "$DATA" \
        --db "host=$SOCK port=$PORT user=postgres dbname=postgres" --json
}
restore_lifeboat() { # scale
    measure "$1" lifeboat restore "" "$RESTORE_DIR" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" restore --target-dir "$RESTORE_DIR" --backup latest
}

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
    discard "$TOOL_DIR/backup"
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

# A round keeps a restored copy and a backup per tool in trash/ until the end (deleting them
# between steps would charge the next step for it). When the next round would not fit, empty
# trash/ now and let the filesystem settle (SETTLE_SECONDS) before the next measured step.
make_room_for_round() { # scale
    local need_kb avail_kb tools
    tools=$(wc -w <<<"$TOOLS")
    need_kb=$(( $(awk -F'\t' -v s="$1" '$1 == s {print int($2 / 1024)}' "$SCALE_INFO") * tools * 12 / 10 + 2 * 1024 * 1024 ))
    avail_kb=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
    [ "$avail_kb" -lt "$need_kb" ] || return 0
    [ -d "$WORK/trash" ] || return 0
    log "round $ROUND needs ~$((need_kb / 1048576)) GiB, $((avail_kb / 1048576)) GiB free: emptying trash/"
    rm -rf "$WORK/trash"
    DELETED_AT=$SECONDS
}

# --- report -----------------------------------------------------------------------

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
        printf -- '- SCALES="%s" ROUNDS=%s TOOLS="%s" VERIFY=%s IDLE_MAX_MS_PER_S=%s IDLE_WAIT_SECONDS=%s; load average at the end: %s\n\n' \
            "$SCALES" "$ROUNDS" "$TOOLS" "$VERIFY" "$IDLE_MAX_MS_PER_S" "$IDLE_WAIT_SECONDS" "$(cut -d' ' -f1-3 /proc/loadavg)"
        printf '| scale | data dir without pg_wal, MiB | sum of pg_database_size, MiB | pgbench -i s |\n'
        printf '|---:|---:|---:|---:|\n'
        awk -F'\t' '{printf "| %s | %.0f | %.0f | %s |\n", $1, $2 / 1048576, $3 / 1048576, $4}' "$SCALE_INFO"
        printf '\n'
        awk -F'\t' -v scale_info="$SCALE_INFO" '
        function cell(x, fmt) { return (x == "") ? "-" : sprintf(fmt, x) }
        function ratio(a, b) { return (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-" }
        # The median of the values of key k in V (count C[k], values V[k, 1..C[k]]); "" if none.
        function median(V, C, k,    m, i, j, x, a) {
            m = C[k] + 0
            if (m == 0) return ""
            for (i = 1; i <= m; i++) a[i] = V[k, i]
            for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
            return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
        }
        BEGIN {
            while ((getline line < scale_info) > 0) { split(line, f, "\t"); data[f[1]] = f[2] }
            label["lifeboat"] = "Lifeboat"; label["pgbackrest"] = "pgBackRest"
            label["pg_basebackup"] = "pg_basebackup"
        }
        $3 == "verify" { verify[$1, $2, ($5 == "" ? 1 : $5)] = $4; next }
        {
            n++; sc[n] = $1; tool[n] = $2; step[n] = $3; status[n] = $4
            rnd[n] = ($16 == "" ? 1 : $16)
            if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 }
            if (rnd[n] > rounds[$1]) rounds[$1] = rnd[n]
            if ($4 != "ok") { note[n] = $5; next }
            wall[n] = $5 / 1e6; syncs[n] = $6 / 1e6; rss[n] = $7 / 1024; tree[n] = $8 / 1024
            cpu[n] = $9 + $10; sys[n] = $11 / clk; stored[n] = $12; wal[n] = $13; load[n] = $14; busy[n] = $15
            rate[n] = data[$1] / 1048576 / wall[n]
            k = $1 SUBSEP $2 SUBSEP $3
            TN[k]++; TV[k, TN[k]] = wall[n]; CV[k, TN[k]] = cpu[n]
            T[$1, $2, $3, rnd[n]] = wall[n]
        }
        END {
            printf "| scale | round | tool | step | wall s | of which sync s | MiB/s | stored MiB | WAL MiB | peak RSS MiB, largest process | peak RSS MiB, process tree | CPU s, command | CPU s, machine | machine busy before, ms/s | load avg before | restored copy |\n"
            printf "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
            for (i = 1; i <= n; i++) {
                name = label[tool[i]]
                if (tool[i] == "pg_basebackup" && step[i] == "restore") name = "pg_basebackup (zstd -d \\| tar -x)"
                if (status[i] != "ok") {
                    printf "| %s | %s | %s | %s | %s: %s ||||||||||||\n", sc[i], rnd[i], name, step[i], status[i], note[i]
                    continue
                }
                v = (step[i] == "restore") ? verify[sc[i], tool[i], rnd[i]] : ""
                printf "| %s | %s | %s | %s | %.2f | %.2f | %.1f | %s | %s | %.1f | %.1f | %.2f | %.2f | %s | %s | %s |\n",
                    sc[i], rnd[i], name, step[i], wall[i], syncs[i], rate[i],
                    cell(stored[i] == "" ? "" : stored[i] / 1048576, "%.1f"),
                    cell(wal[i] == "" ? "" : wal[i] / 1048576, "%.1f"),
                    rss[i], tree[i], cpu[i], sys[i], busy[i], load[i], (v == "" ? "" : v)
            }
            split("backup restore", steps, " ")
            split("lifeboat pgbackrest pg_basebackup", tools, " ")
            # One pass over scales and steps builds both tables: the medians, and their ratios.
            for (j = 1; j <= ns; j++) {
                s = order[j]
                for (q = 1; q <= 2; q++) {
                    st = steps[q]; nl++
                    medline[nl] = sprintf("| %s | %s | %s", s, st, rounds[s])
                    for (t = 1; t <= 3; t++) {
                        k = s SUBSEP tools[t] SUBSEP st
                        mw = median(TV, TN, k); mc = median(CV, TN, k); MW[t] = mw
                        medline[nl] = medline[nl] sprintf(" | %s", mw == "" ? "-" : sprintf("%.2f / %.2f", mw, mc))
                    }
                    per = ""
                    for (r = 1; r <= rounds[s]; r++)
                        per = per (r > 1 ? ", " : "") ratio(T[s, "lifeboat", st, r], T[s, "pgbackrest", st, r])
                    ratline[nl] = sprintf("| %s | %s | %s | %s | %s |", s, st, ratio(MW[1], MW[2]), ratio(MW[1], MW[3]), per)
                }
            }
            printf "\nMedians over the rounds (wall s / CPU s, command):\n\n"
            printf "| scale | step | rounds | Lifeboat | pgBackRest | pg_basebackup |\n"
            printf "|---:|---|---:|---:|---:|---:|\n"
            for (i = 1; i <= nl; i++) print medline[i] " |"
            printf "\nRatios of the median wall times (lower is better for Lifeboat; a rate ratio is the inverse):\n\n"
            printf "| scale | step | Lifeboat/pgBackRest | Lifeboat/pg_basebackup | Lifeboat/pgBackRest by round |\n"
            printf "|---:|---|---:|---:|---|\n"
            for (i = 1; i <= nl; i++) print ratline[i]
        }' clk="$CLK_TCK" "$RESULTS"
        cat <<'EOF'

How to read it (bench/README.md has the details):

- wall s: from the start of the command to the end of a `sync -f` (syncfs) of the filesystem
  holding its output, run right after it (so every step ends with its output on disk); "of
  which sync s" is that final syncfs. A `sync` also runs, untimed, before each step; every backup
  starts after a `CHECKPOINT` and one read of the whole data directory, so all tools see a warm
  page cache.
- round: every tool runs backup and restore ROUNDS times per scale; each round starts with the
  next tool in TOOLS, so no tool always runs first after the load. The ratios use the median
  wall time over the rounds (with the per-round ratios beside them, to show the spread): this VM's
  speed drifts by a third over minutes, so one round is not enough to tell 0.6 from 0.7.
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
    open_workdir 54421
    SCALE_INFO="$WORK/scales.tsv"
    : >"$RESULTS"
    : >"$SCALE_INFO"
    DISK_FREE_START=$(df -Ph "$WORK" | awk 'NR==2 {print $4}')
    log "work dir $WORK; SCALES=\"$SCALES\" TOOLS=\"$TOOLS\"; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    init_cluster
    for scale in $SCALES; do
        load_scale "$scale"
        for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
            make_room_for_round "$scale"
            # Each round starts with the next tool: none is always first after the load.
            for tool in $(rotate "$((ROUND - 1))" $TOOLS); do run_tool "$scale" "$tool"; done
        done
    done
    quiesce_archiving
    pg_stop "$DATA"
    report
    exit_if_failed
}

main "$@"
