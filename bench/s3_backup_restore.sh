#!/usr/bin/env bash
# Full backup and restore to an S3 server over TLS: Lifeboat and pgBackRest side by side, both
# writing to the same disk-backed S3 server (s3s-fs behind HAProxy, bench/s3lib.sh), optionally
# with a fixed delay added to every request (S3_DELAY_MS) to play a remote region. For each tool:
# wall time of a full backup and of a restore into an empty directory, the S3 requests each made
# (per GiB of database), peak memory. Run by hand, as root (or via sudo), never in CI. Needs
# bash bench/setup-s3.sh once. See bench/README.md.
#
#   sudo bash bench/s3_backup_restore.sh                     # SCALE=50, ROUNDS=3, no delay
#   SCALE=5 ROUNDS=1 S3_DELAY_MS=20 bash bench/s3_backup_restore.sh
#   LIFEBOAT_ARGS="--parallel 8" bash bench/s3_backup_restore.sh
#
# Output: a Markdown report on stdout and in bench/out/s3_backup_restore-<date>.md, the figures
# in bench/out/s3_backup_restore.json.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALE=${SCALE:-50}                       # pgbench scale
ROUNDS=${ROUNDS:-3}                      # backup and restore of every tool this many times; medians
TOOLS=${TOOLS:-"lifeboat pgbackrest"}
S3_DELAY_MS=${S3_DELAY_MS:-0}            # added to every S3 request by the proxy
LIFEBOAT_ARGS=${LIFEBOAT_ARGS:-}         # extra flags of lifeboat backup and restore, e.g. "--parallel 8"
LIFEBOAT_BACKUP_ARGS=${LIFEBOAT_BACKUP_ARGS:-$LIFEBOAT_ARGS}
LIFEBOAT_RESTORE_ARGS=${LIFEBOAT_RESTORE_ARGS:-$LIFEBOAT_ARGS}
LB_EXTRA_CONF=${LB_EXTRA_CONF:-}         # more lines for lifeboat.toml (e.g. a [storage] section)
LIFEBOAT_BIN=${LIFEBOAT_BIN:-target/release/lifeboat} # relative to the repo root
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench-s3-backup-restore} # the work dir itself (S3 data too)
KEEP=${KEEP:-0}
VERIFY=${VERIFY:-1}
STEP_TIMEOUT=${STEP_TIMEOUT:-3600}
RSS_SAMPLE_SECONDS=${RSS_SAMPLE_SECONDS:-0.2}
IDLE_MAX_MS_PER_S=${IDLE_MAX_MS_PER_S:-200}
IDLE_WAIT_SECONDS=${IDLE_WAIT_SECONDS:-300}
SETTLE_SECONDS=${SETTLE_SECONDS:-300}
IDLE_SAMPLE_SECONDS=${IDLE_SAMPLE_SECONDS:-2}
OUT_DIR=${OUT_DIR:-$REPO_ROOT/bench/out}

case "$LIFEBOAT_BIN" in /*) ;; *) LIFEBOAT_BIN="$REPO_ROOT/$LIFEBOAT_BIN" ;; esac
MARKER=".lifeboat-bench-s3-backup-restore"

# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=bench/s3lib.sh
. "$SCRIPT_DIR/s3lib.sh"
require_root "$@"
bench_setup

S3_RUN=""        # the stack's directory while it runs
SCALE_INFO=""
REQS=""          # TSV: tag then the s3_counts fields, one line per measured step
REQ_MARK=0
SOURCE_SUM=""

# The stack goes down with the run, before the work dir is kept or deleted.
s3_cleanup() {
    local rc=$?
    [ -z "$S3_RUN" ] || s3_stop "$S3_RUN"
    (exit "$rc")
    cleanup
}
trap s3_cleanup EXIT

check_prereqs() {
    local t
    check_common_prereqs /usr/bin/time setpriv timeout flock findmnt curl
    for t in $TOOLS; do
        case "$t" in lifeboat|pgbackrest) ;; *) die "unknown tool '$t' in TOOLS (lifeboat, pgbackrest)" ;; esac
    done
    case "$ROUNDS" in ''|*[!0-9]*|0) die "ROUNDS must be a positive number, not '$ROUNDS'" ;; esac
    case "$SCALE" in ''|*[!0-9]*|0) die "SCALE must be a positive number, not '$SCALE'" ;; esac
}

# --- requests per measured step ---------------------------------------------------
mark_requests() { REQ_MARK=$(s3_mark); }
count_requests() { # tag exit_status
    nap 0.3 # HAProxy logs a request once its response is sent
    printf '%s\t%s\n' "$1" "$(s3_counts "$REQ_MARK" | tr ' ' '\t')" >>"$REQS"
}
MEASURE_BEFORE=mark_requests
MEASURE_AFTER=count_requests

# --- tools ----------------------------------------------------------------------
PREFIX=""        # the round's prefix in the bucket: s<scale>-r<round>-<tool>

# Each round of each tool into an empty prefix of the bucket.
set_prefix() { # tool
    PREFIX="s$SCALE-r$ROUND-$1"
    [ ! -e "$S3_DATA/$PREFIX" ] || die "prefix $PREFIX of the bucket is not empty"
    log "  [$1] repository s3://$S3_BUCKET/$PREFIX"
}

prepare_lifeboat() {
    set_prefix lifeboat
    [ -x "$LIFEBOAT_BIN" ] || { SKIP_REASON="no binary at $LIFEBOAT_BIN (set LIFEBOAT_BIN)"; return; }
    as_pg test -x "$LIFEBOAT_BIN" \
        || die "user postgres cannot execute $LIFEBOAT_BIN (chmod o+x the directories on its path)"
    LB_CONF="$TOOL_DIR/lifeboat.toml"
    # Endpoint and keys in the config file (never on a command line); the CA through
    # SSL_CERT_FILE, exported for every command and for the clusters (restore_command).
    s3_lifeboat_toml "$PREFIX" >"$LB_CONF"
    [ -z "$LB_EXTRA_CONF" ] || printf '%s\n' "$LB_EXTRA_CONF" >>"$LB_CONF"
    chown postgres:postgres "$LB_CONF"
    chmod 0600 "$LB_CONF"
    as_pg "$LIFEBOAT_BIN" --config "$LB_CONF" init --unencrypted >"$WORK/logs/$PREFIX-init.log" 2>&1 \
        || die "lifeboat init failed; see $WORK/logs/$PREFIX-init.log"
    ARCHIVE_COMMAND="$LIFEBOAT_BIN --config $LB_CONF wal-push %p"
    ARCHIVE_DIR="$S3_DATA/$PREFIX/wal"
}
stored_lifeboat() { echo "$(bytes_in "$S3_DATA/$PREFIX" wal) $(bytes_in "$S3_DATA/$PREFIX/wal")"; }
backup_lifeboat() {
    # shellcheck disable=SC2086 # LIFEBOAT_BACKUP_ARGS: flags split on spaces
    measure "$SCALE" lifeboat backup stored_lifeboat "$S3_DATA/$PREFIX" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" backup --pgdata "$DATA" \
        --db "host=$SOCK port=$PORT user=postgres dbname=postgres" --json $LIFEBOAT_BACKUP_ARGS
}
restore_lifeboat() {
    # shellcheck disable=SC2086
    measure "$SCALE" lifeboat restore "" "$RESTORE_DIR" \
        "$LIFEBOAT_BIN" --config "$LB_CONF" restore --target-dir "$RESTORE_DIR" --backup latest $LIFEBOAT_RESTORE_ARGS
}

prepare_pgbackrest() {
    set_prefix pgbackrest
    pgbackrest_stanza "$(s3_pgbackrest_repo "$PREFIX")" "$S3_DATA/$PREFIX/archive"
}
stored_pgbackrest() { echo "$(bytes_in "$S3_DATA/$PREFIX/backup") $(bytes_in "$S3_DATA/$PREFIX/archive")"; }
backup_pgbackrest() {
    measure "$SCALE" pgbackrest backup stored_pgbackrest "$S3_DATA/$PREFIX" \
        pgbackrest --config="$PGBR_CONF" --stanza=bench --type=full backup
}
restore_pgbackrest() {
    measure "$SCALE" pgbackrest restore "" "$RESTORE_DIR" \
        pgbackrest --config="$PGBR_CONF" --stanza=bench --pg1-path="$RESTORE_DIR" restore
}

# run_tool (bench/lib.sh) with these: the round's prefix goes to trash/ after the round.
discard_prefix() { [ "$KEEP" = 1 ] || discard "$S3_DATA/$PREFIX"; }
AFTER_TOOL=discard_prefix

# --- report -----------------------------------------------------------------------

report() {
    local md json data_bytes
    mkdir -p "$OUT_DIR"
    md="$OUT_DIR/s3_backup_restore-$STAMP.md"
    json="$OUT_DIR/s3_backup_restore.json"
    data_bytes=$(awk -F'\t' 'NR == 1 {print $2}' "$SCALE_INFO")
    awk -F'\t' -v reqs="$REQS" -v data="$data_bytes" -v clk="$CLK_TCK" -v json="$json" \
        -v md="$md" -v scale="$SCALE" -v rounds="$ROUNDS" -v delay="$S3_DELAY_MS" \
        -v lbargs="$LIFEBOAT_ARGS" -v started="$STARTED" -v pgbrv="$(version_of pgbackrest version)" \
        -v lbv="$(version_of "$LIFEBOAT_BIN" --version)" -v load_end="$(cut -d' ' -f1-3 /proc/loadavg)" '
    function median(V, k, m,    i, j, x, a) {
        if (m == 0) return ""
        for (i = 1; i <= m; i++) a[i] = V[k, i]
        for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    function num(x, fmt) { return (x == "") ? "null" : sprintf(fmt, x) }
    function cell(x, fmt) { return (x == "") ? "-" : sprintf(fmt, x) }
    function out(s) { print s; print s > md }
    BEGIN {
        gib = data / 1073741824
        split("GET PUT HEAD DELETE POST LIST other total bin bout", F, " ")
        # tag = s<scale>-<tool>-<step>; one line per measured step, in the order of RESULTS
        while ((getline line < reqs) > 0) {
            split(line, f, "\t"); rq[f[1], ++rqn[f[1]]] = line
        }
        label["lifeboat"] = "Lifeboat"; label["pgbackrest"] = "pgBackRest"
    }
    $3 == "verify" { verify[$2, $5] = $4; next }
    {
        tag = "s" $1 "-" $2 "-" $3
        if ($4 != "skipped") seen_tag[tag]++ # a skipped tool made no measured step
        split(rq[tag, seen_tag[tag]], r, "\t")
        n++; tool[n] = $2; step[n] = $3; status[n] = $4; rnd[n] = $16
        if ($4 != "ok") { note[n] = $5; rnd[n] = ""; next }
        wall[n] = $5 / 1e6; rss[n] = $7 / 1024; tree[n] = $8 / 1024; cpu[n] = $9 + $10; stored[n] = $12
        for (i = 1; i <= 10; i++) R[n, F[i]] = r[i + 1]
        k = $2 SUBSEP $3; c = ++cnt[k]
        W[k, c] = wall[n]; C[k, c] = cpu[n]; M[k, c] = rss[n]; TR[k, c] = tree[n]
        for (i = 1; i <= 10; i++) Q[k, F[i], c] = r[i + 1]
    }
    END {
        out(sprintf("# S3 backup and restore benchmark, %s\n", started))
        out(sprintf("- scale %s (%.0f MiB data directory without pg_wal, %.3f GiB), %s rounds, S3_DELAY_MS=%s, LIFEBOAT_ARGS=\"%s\"", scale, data / 1048576, gib, rounds, delay, lbargs))
        out(sprintf("- %s; %s; s3s-fs 0.14.1 behind HAProxy (TLS); load average at the end: %s\n", lbv, pgbrv, load_end))
        out("| round | tool | step | wall s | CPU s | peak RSS MiB (largest process) | peak RSS MiB (tree) | requests | GET | PUT | HEAD | DELETE | POST | LIST | MiB up | MiB down | restored copy |")
        out("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for (i = 1; i <= n; i++) {
            if (status[i] != "ok") { out(sprintf("| | %s | %s | %s: %s ||||||||||||||", label[tool[i]], step[i], status[i], note[i])); continue }
            out(sprintf("| %s | %s | %s | %.2f | %.2f | %.1f | %.1f | %d | %d | %d | %d | %d | %d | %d | %.1f | %.1f | %s |", rnd[i], label[tool[i]], step[i],
                wall[i], cpu[i], rss[i], tree[i], R[i, "total"], R[i, "GET"], R[i, "PUT"], R[i, "HEAD"], R[i, "DELETE"], R[i, "POST"], R[i, "LIST"],
                R[i, "bin"] / 1048576, R[i, "bout"] / 1048576, (step[i] == "restore") ? verify[tool[i], rnd[i]] : ""))
        }
        out("\nMedians over the rounds:\n")
        out("| tool | backup s | restore s | backup / pgBackRest | restore / pgBackRest | backup requests per GiB | restore requests per GiB | backup peak RSS MiB | restore peak RSS MiB |")
        out("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        split("lifeboat pgbackrest", T, " ")
        for (t = 1; t <= 2; t++) for (s = 1; s <= 2; s++) {
            st = (s == 1) ? "backup" : "restore"; k = T[t] SUBSEP st; m = cnt[k] + 0
            MW[t, st] = median(W, k, m); MR[t, st] = median(M, k, m); MT[t, st] = median(TR, k, m); MC[t, st] = median(C, k, m)
            for (i = 1; i <= 10; i++) { delete tmp; for (c = 1; c <= m; c++) tmp[1, c] = Q[k, F[i], c]; MQ[t, st, F[i]] = median(tmp, 1, m) }
        }
        for (t = 1; t <= 2; t++) {
            for (s = 1; s <= 2; s++) {
                st = (s == 1) ? "backup" : "restore"
                ratio[t, st] = (MW[t, st] != "" && MW[2, st] > 0) ? MW[t, st] / MW[2, st] : ""
                per[t, st] = (MQ[t, st, "total"] != "") ? MQ[t, st, "total"] / gib : ""
                det = ""
                for (i = 1; i <= 6; i++) if (MQ[t, st, F[i]] > 0) det = det sprintf("%s%s %.0f", det == "" ? "" : ", ", F[i], MQ[t, st, F[i]] / gib)
                pd[t, st] = (per[t, st] == "") ? "-" : sprintf("%.0f (%s)", per[t, st], det)
            }
            out(sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", label[T[t]], cell(MW[t, "backup"], "%.2f"), cell(MW[t, "restore"], "%.2f"),
                cell(ratio[t, "backup"], "%.2f"), cell(ratio[t, "restore"], "%.2f"), pd[t, "backup"], pd[t, "restore"],
                cell(MR[t, "backup"], "%.1f"), cell(MR[t, "restore"], "%.1f")))
        }
        # JSON: the medians per tool and step, and every measured step.
        printf "{\n  \"started\": \"%s\", \"scale\": %s, \"rounds\": %s, \"s3_delay_ms\": %s, \"lifeboat_args\": \"%s\",\n", started, scale, rounds, delay, lbargs > json
        printf "  \"data_bytes\": %s, \"lifeboat_version\": \"%s\", \"pgbackrest_version\": \"%s\", \"load_avg_end\": \"%s\",\n", data, lbv, pgbrv, load_end > json
        printf "  \"medians\": [" > json
        sep = ""
        for (t = 1; t <= 2; t++) for (s = 1; s <= 2; s++) {
            st = (s == 1) ? "backup" : "restore"
            if (MW[t, st] == "") continue
            printf "%s\n    {\"tool\": \"%s\", \"step\": \"%s\", \"wall_s\": %.3f, \"cpu_s\": %.2f, \"ratio_to_pgbackrest\": %s, \"peak_rss_mib\": %.1f, \"peak_rss_tree_mib\": %.1f, \"requests_per_gib\": %s, \"requests\": {", sep, T[t], st, MW[t, st], MC[t, st], num(ratio[t, st], "%.3f"), MR[t, st], MT[t, st], num(per[t, st], "%.1f") > json
            for (i = 1; i <= 8; i++) printf "%s\"%s\": %s", (i > 1 ? ", " : ""), F[i], num(MQ[t, st, F[i]], "%.0f") > json
            printf "}}" > json; sep = ","
        }
        printf "\n  ],\n  \"steps\": [" > json
        sep = ""
        for (i = 1; i <= n; i++) {
            if (status[i] != "ok") continue
            printf "%s\n    {\"round\": %s, \"tool\": \"%s\", \"step\": \"%s\", \"wall_s\": %.3f, \"cpu_s\": %.2f, \"peak_rss_mib\": %.1f, \"peak_rss_tree_mib\": %.1f, \"stored_bytes\": %s, \"restored_copy\": \"%s\", \"requests\": {", sep, rnd[i], tool[i], step[i], wall[i], cpu[i], rss[i], tree[i], (stored[i] == "" ? "null" : stored[i]), (step[i] == "restore") ? verify[tool[i], rnd[i]] : "" > json
            for (j = 1; j <= 10; j++) printf "%s\"%s\": %s", (j > 1 ? ", " : ""), F[j], (R[i, F[j]] == "" ? "null" : R[i, F[j]]) > json
            printf "}}" > json; sep = ","
        }
        printf "\n  ]\n}\n" > json
    }' "$RESULTS"
    tee -a "$md" <<'EOF'

- wall s: command, then a `sync -f` of the filesystem holding its output (the S3 server's directory
  for a backup, the restored directory for a restore); the S3 server itself does not fsync.
- requests: every request HAProxy passed to the S3 server during the step (the WAL archived by the
  tool's own `archive_command` during a backup included). LIST is a GET of the bucket itself.
  Per GiB: divided by the size of the data directory without pg_wal. In the medians table, the
  breakdown is the median of each kind, per GiB.
- peak RSS, largest process: `/usr/bin/time %M`; tree: the sum over the command's processes
  (the figure to compare for pgBackRest, whose process-max workers run at the same time).
- The S3 server (s3s-fs) and HAProxy are in no CPU or memory figure.
EOF
    log "report written to $md and $json"
}

main() {
    local tool
    check_prereqs
    open_workdir 54461
    SCALE_INFO="$WORK/scales.tsv"
    REQS="$WORK/requests.tsv"
    : >"$SCALE_INFO"
    : >"$REQS"
    S3_RUN="$WORK/s3"
    s3_start "$S3_RUN"
    log "work dir $WORK; SCALE=$SCALE ROUNDS=$ROUNDS TOOLS=\"$TOOLS\" S3_DELAY_MS=$S3_DELAY_MS; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    init_cluster
    load_scale "$SCALE"
    SOURCE_SUM=$(sql "SELECT sum(abalance) FROM pgbench_accounts")
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for tool in $(rotate "$((ROUND - 1))" $TOOLS); do run_tool "$SCALE" "$tool"; done
    done
    quiesce_archiving
    pg_stop "$DATA"
    report
    exit_if_failed
}

main "$@"
