#!/usr/bin/env bash
# Copies and logical dumps (issue 17, item 6). Run by hand, as root (or via sudo), never in CI.
# Needs bash bench/setup-s3.sh once. See bench/README.md.
#
# (a) `lifeboat copy` from a local repository holding a full backup of pgbench at SCALE to the S3
#     test stack (s3s-fs behind HAProxy over TLS, bench/s3lib.sh): each round copies into an empty
#     prefix (wall time, MiB/s, objects, requests from HAProxy's log); then, after a small change
#     and a second backup in the source, each round's copy receives it (the incremental copy).
# (b) `lifeboat dump` of the pgbench database into a fresh local repository against
#     `pg_dump -Fc -Z0 | zstd -1 > file`, `pg_dump -Fc | zstd -1 > file` and `pg_dump -Fc > file`
#     (default compression): wall time and
#     bytes stored; then, after a small change, a second dump of each: the bytes each stores
#     (Lifeboat: what the second dump adds to the repository; pg_dump: a whole new file).
#
#   sudo bash bench/copy_dump.sh                 # SCALE=50, ROUNDS=3
#   SCALE=5 ROUNDS=1 bash bench/copy_dump.sh     # a quick check of the script
#
# Output: a Markdown report on stdout and in bench/out/copy_dump-<date>.md, the figures in
# bench/out/copy_dump.json.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)

# --- knobs (environment) ------------------------------------------------------
SCALE=${SCALE:-50}                       # pgbench scale
ROUNDS=${ROUNDS:-3}                      # each measured step this many times; medians
S3_DELAY_MS=${S3_DELAY_MS:-0}            # added to every S3 request by the proxy
LIFEBOAT_BIN=${LIFEBOAT_BIN:-target/release/lifeboat} # relative to the repo root
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-/var/tmp/lifeboat-bench-copy-dump} # the work dir itself (S3 data too)
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
MARKER=".lifeboat-bench-copy-dump"

# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"
# shellcheck source=bench/s3lib.sh
. "$SCRIPT_DIR/s3lib.sh"
require_root "$@"
bench_setup

S3_RUN=""        # the stack's directory while it runs
SCALE_INFO=""
EXTRA=""         # TSV: step round copied_bytes objects requests GET PUT HEAD LIST stored_bytes
REQ_MARK=0
REQ_LINE=""      # the s3_counts of the last measured step

s3_cleanup() {
    local rc=$?
    [ -z "$S3_RUN" ] || s3_stop "$S3_RUN"
    (exit "$rc")
    cleanup
}
trap s3_cleanup EXIT

check_prereqs() {
    check_common_prereqs /usr/bin/time setpriv timeout flock findmnt curl jq zstd
    [ -x "$PG_BIN/pg_dump" ] || die "pg_dump not found in $PG_BIN"
    [ -x "$LIFEBOAT_BIN" ] || die "no binary at $LIFEBOAT_BIN (cargo build --release, or set LIFEBOAT_BIN)"
    case "$ROUNDS" in ''|*[!0-9]*|0) die "ROUNDS must be a positive number, not '$ROUNDS'" ;; esac
    case "$SCALE" in ''|*[!0-9]*|0) die "SCALE must be a positive number, not '$SCALE'" ;; esac
}

mark_requests() { REQ_MARK=$(s3_mark); }
count_requests() { # tag exit_status
    nap 0.3 # HAProxy logs a request once its response is sent
    REQ_LINE=$(s3_counts "$REQ_MARK")
}
MEASURE_BEFORE=mark_requests
MEASURE_AFTER=count_requests

lb() { as_pg env SSL_CERT_FILE="$SSL_CERT_FILE" "$LIFEBOAT_BIN" --config "$LB_CONF" "$@"; }
conninfo() { echo "host=$SOCK port=$PORT user=postgres dbname=postgres"; }

# A small change: a few rows updated, a few inserted.
small_change() {
    sql "UPDATE pgbench_branches SET bbalance = bbalance + 7 WHERE bid = 1" \
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (10, 1000, 100000)" \
        "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() FROM generate_series(1, 5) g" >/dev/null
}

# --- (a) copy ---------------------------------------------------------------------

# The source: a local repository with the cluster archiving into it and one full backup.
prepare_source() {
    TOOL_DIR="$WORK/source"
    new_pg_dir "$TOOL_DIR"
    chmod 0755 "$TOOL_DIR"
    prepare_lifeboat
    [ -z "$SKIP_REASON" ] || die "$SKIP_REASON"
    # The [s3] settings of the copies (the source itself is local).
    s3_lifeboat_toml unused | sed '1,2d' >>"$LB_CONF"
    chmod 0600 "$LB_CONF"
    chown postgres:postgres "$LB_CONF"
    start_archiving lifeboat || die "archive_command does not archive: $ARCHIVE_COMMAND"
    log "full backup of scale $SCALE into $TOOL_DIR/repo (not measured)"
    lb backup --pgdata "$DATA" --db "$(conninfo)" --json >"$WORK/logs/source-backup-1.json" 2>"$WORK/logs/source-backup-1.err" \
        || die "backup failed; see $WORK/logs/source-backup-1.err"
}

copy_step() { # step prefix
    local step=$1 prefix=$2 out
    REQ_LINE=""
    if ! measure "$SCALE" lifeboat "$step" "" "$WORK" \
        env SSL_CERT_FILE="$SSL_CERT_FILE" "$LIFEBOAT_BIN" --config "$LB_CONF" copy --to "s3://$S3_BUCKET/$prefix" --json; then
        return 0
    fi
    out="$WORK/logs/s$SCALE-lifeboat-$step.out"
    cp "$out" "$WORK/logs/$step-r$ROUND.json"
    jq -e '.ok == true' "$out" >/dev/null || { log "  copy report not ok: $out"; FAILED=$((FAILED + 1)); }
    # shellcheck disable=SC2046 # the counts: words
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$step" "$ROUND" "$(jq -r '.copied.bytes' "$out")" \
        "$(jq -r '.copied.objects' "$out")" "$(echo "$REQ_LINE" | tr ' ' '\t')" "$(bytes_in "$S3_DATA/$prefix")" >>"$EXTRA"
    log "  [copy] $step: $(jq -r '"\(.copied.objects) objects, \(.copied.bytes) bytes, \(.copied.packs) packs, \(.copied.manifests) manifests"' "$out"); requests: $REQ_LINE"
}

# After every round's full copy, the copy of what one more backup added.
run_copies() {
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        log "[copy] round $ROUND of $ROUNDS: full copy into s3://$S3_BUCKET/s$SCALE-r$ROUND"
        copy_step copy-full "s$SCALE-r$ROUND"
    done
    small_change
    log "second backup after a small change (not measured)"
    lb backup --pgdata "$DATA" --db "$(conninfo)" --json >"$WORK/logs/source-backup-2.json" 2>"$WORK/logs/source-backup-2.err" \
        || die "second backup failed; see $WORK/logs/source-backup-2.err"
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        copy_step copy-incremental "s$SCALE-r$ROUND"
    done
    if [ "$VERIFY" = 1 ]; then
        local cfg="$WORK/copy-check.toml"
        { s3_lifeboat_toml "s$SCALE-r1"; } >"$cfg"
        chown postgres:postgres "$cfg"
        chmod 0600 "$cfg"
        if as_pg env SSL_CERT_FILE="$SSL_CERT_FILE" "$LIFEBOAT_BIN" --config "$cfg" verify >"$WORK/logs/copy-verify.log" 2>&1; then
            COPY_VERIFIED=ok
        else
            COPY_VERIFIED="verify failed (see $WORK/logs/copy-verify.log)"
            FAILED=$((FAILED + 1))
        fi
        log "  [copy] verify of the round-1 copy: $COPY_VERIFIED"
    fi
}
COPY_VERIFIED="-"

# --- (b) dumps --------------------------------------------------------------------

DUMPS=""         # where pg_dump's files go
dump_step() { # step (lifeboat-1, pg_dump-zstd1-1, ...)
    local step=$1 before=0 after stored file z
    case "$step" in
        lifeboat-*)
            LB_CONF="$WORK/dump-r$ROUND/lifeboat.toml"
            before=$(bytes_in "$WORK/dump-r$ROUND/repo")
            measure "$SCALE" dump "$step" "" "$WORK/dump-r$ROUND" \
                "$LIFEBOAT_BIN" --config "$LB_CONF" dump --db postgres --from "$(conninfo)" --json || return 0
            after=$(bytes_in "$WORK/dump-r$ROUND/repo")
            stored=$((after - before)) ;;
        pg_dump-Z0-zstd1-*|pg_dump-zstd1-*)
            file="$DUMPS/r$ROUND-$step.dump.zst"
            z=""
            case "$step" in pg_dump-Z0-*) z="-Z0" ;; esac
            measure "$SCALE" dump "$step" "" "$DUMPS" bash -c \
                "set -o pipefail; '$PG_BIN/pg_dump' -Fc $z -h '$SOCK' -p '$PORT' -U postgres postgres | zstd -1 -q -o '$file'" || return 0
            stored=$(stat -c %s "$file")
            # Not timed: the archive is whole (pg_restore reads its table of contents).
            # (pg_restore stops reading after the table of contents: zstd's broken pipe is not a
            # failure, pg_restore's status is the one that counts.)
            { zstd -q -t "$file" && { zstd -dc "$file" 2>/dev/null | "$PG_BIN/pg_restore" -l >/dev/null; [ "${PIPESTATUS[1]}" -eq 0 ]; }; } \
                || { log "  [dump] $file is not a pg_dump archive"; FAILED=$((FAILED + 1)); } ;;
        pg_dump-default-*)
            file="$DUMPS/r$ROUND-$step.dump"
            measure "$SCALE" dump "$step" "" "$DUMPS" \
                "$PG_BIN/pg_dump" -Fc -h "$SOCK" -p "$PORT" -U postgres -f "$file" postgres || return 0
            stored=$(stat -c %s "$file") ;;
    esac
    # The copy columns (3 to 14) empty.
    printf '%s\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t%s\n' "$step" "$ROUND" "$stored" >>"$EXTRA"
    log "  [dump] $step: $stored bytes stored"
}

run_dumps() {
    local step
    DUMPS="$WORK/dumps"
    new_pg_dir "$DUMPS"
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        TOOL_DIR="$WORK/dump-r$ROUND"
        new_pg_dir "$TOOL_DIR"
        prepare_lifeboat
        for step in $(rotate "$((ROUND - 1))" lifeboat-1 pg_dump-Z0-zstd1-1 pg_dump-zstd1-1 pg_dump-default-1); do
            dump_step "$step"
        done
    done
    small_change
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        for step in $(rotate "$((ROUND - 1))" lifeboat-2 pg_dump-Z0-zstd1-2 pg_dump-zstd1-2 pg_dump-default-2); do
            dump_step "$step"
        done
    done
    if [ "$VERIFY" = 1 ]; then
        LB_CONF="$WORK/dump-r1/lifeboat.toml"
        if as_pg "$LIFEBOAT_BIN" --config "$LB_CONF" verify >"$WORK/logs/dump-verify.log" 2>&1; then
            DUMP_VERIFIED=ok
        else
            DUMP_VERIFIED="verify failed (see $WORK/logs/dump-verify.log)"
            FAILED=$((FAILED + 1))
        fi
        log "  [dump] verify of the round-1 dump repository: $DUMP_VERIFIED"
    fi
}
DUMP_VERIFIED="-"

# --- report -----------------------------------------------------------------------

report() {
    local md json data_bytes db_bytes
    mkdir -p "$OUT_DIR"
    md="$OUT_DIR/copy_dump-$STAMP.md"
    json="$OUT_DIR/copy_dump.json"
    data_bytes=$(awk -F'\t' 'NR == 1 {print $2}' "$SCALE_INFO")
    db_bytes=$(awk -F'\t' 'NR == 1 {print $3}' "$SCALE_INFO")
    awk -F'\t' -v extra="$EXTRA" -v data="$data_bytes" -v db="$db_bytes" -v json="$json" -v md="$md" \
        -v scale="$SCALE" -v rounds="$ROUNDS" -v delay="$S3_DELAY_MS" -v started="$STARTED" \
        -v lbv="$(version_of "$LIFEBOAT_BIN" --version)" -v pgv="$(version_of "$PG_BIN/pg_dump" --version)" \
        -v zv="$(version_of zstd --version)" -v cv="$COPY_VERIFIED" -v dv="$DUMP_VERIFIED" \
        -v load_end="$(cut -d' ' -f1-3 /proc/loadavg)" '
    function median(V, k, m,    i, j, x, a) {
        if (m == 0) return ""
        for (i = 1; i <= m; i++) a[i] = V[k, i]
        for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    function cell(x, fmt) { return (x == "") ? "-" : sprintf(fmt, x) }
    function num(x, fmt) { return (x == "") ? "null" : sprintf(fmt, x) }
    function out(s) { print s; print s > md }
    BEGIN {
        # step round copied_bytes objects GET PUT HEAD DELETE POST LIST other total bin bout stored
        while ((getline line < extra) > 0) { split(line, f, "\t"); X[f[1], f[2]] = line }
    }
    {
        n++; step[n] = $3; status[n] = $4
        if ($4 != "ok") { note[n] = $5; next }
        rnd[n] = $16; wall[n] = $5 / 1e6; rss[n] = $7 / 1024; cpu[n] = $9 + $10
        split(X[$3, $16], e, "\t")
        cb[n] = e[3]; obj[n] = e[4]; get[n] = e[5]; put[n] = e[6]; head[n] = e[7]; list[n] = e[10]; req[n] = e[12]; st[n] = e[15]
        k = $3; c = ++cnt[k]
        if (!(k in seen)) { seen[k] = 1; K[++nk] = k }
        W[k, c] = wall[n]; S[k, c] = st[n]; Q[k, c] = req[n]; B[k, c] = cb[n]; O[k, c] = obj[n]; M[k, c] = rss[n]
    }
    END {
        out(sprintf("# Copy and dump benchmark, %s\n", started))
        out(sprintf("- scale %s (data directory without pg_wal %.0f MiB, pgbench database %.0f MiB), %s rounds, S3_DELAY_MS=%s", scale, data / 1048576, db / 1048576, rounds, delay))
        out(sprintf("- %s; %s; %s; s3s-fs behind HAProxy (TLS); load average at the end: %s", lbv, pgv, zv, load_end))
        out(sprintf("- `lifeboat verify` of the round-1 copy: %s; of the round-1 dump repository: %s\n", cv, dv))
        out("## Copy (local repository to S3)\n")
        out("| round | step | wall s | MiB copied | MiB/s | objects | requests | GET | PUT | HEAD | LIST | peak RSS MiB |")
        out("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (i = 1; i <= n; i++) {
            if (step[i] !~ /^copy/) continue
            if (status[i] != "ok") { out(sprintf("| | %s | %s: %s ||||||||||", step[i], status[i], note[i])); continue }
            out(sprintf("| %s | %s | %.2f | %.1f | %.1f | %d | %d | %d | %d | %d | %d | %.1f |", rnd[i], step[i], wall[i], cb[i] / 1048576,
                (wall[i] > 0) ? cb[i] / 1048576 / wall[i] : 0, obj[i], req[i], get[i], put[i], head[i], list[i], rss[i]))
        }
        out("\n## Dumps (local)\n")
        out("| round | step | wall s | bytes stored | peak RSS MiB |")
        out("|---:|---|---:|---:|---:|")
        for (i = 1; i <= n; i++) {
            if (step[i] ~ /^copy/) continue
            if (status[i] != "ok") { out(sprintf("| | %s | %s: %s |||", step[i], status[i], note[i])); continue }
            out(sprintf("| %s | %s | %.2f | %d | %.1f |", rnd[i], step[i], wall[i], st[i], rss[i]))
        }
        out("\nMedians over the rounds:\n")
        out("| step | wall s | MiB copied | MiB/s | objects | requests | bytes stored |")
        out("|---|---:|---:|---:|---:|---:|---:|")
        printf "{\n  \"started\": \"%s\", \"scale\": %s, \"rounds\": %s, \"s3_delay_ms\": %s, \"data_bytes\": %s, \"db_bytes\": %s,\n  \"lifeboat_version\": \"%s\", \"copy_verified\": \"%s\", \"dump_verified\": \"%s\",\n  \"medians\": [", started, scale, rounds, delay, data, db, lbv, cv, dv > json
        sep = ""
        for (j = 1; j <= nk; j++) {
            k = K[j]; m = cnt[k]
            w = median(W, k, m); s = median(S, k, m); q = median(Q, k, m); b = median(B, k, m); o = median(O, k, m)
            if (k ~ /^copy/) {
                out(sprintf("| %s | %.2f | %.1f | %.1f | %d | %d | %s |", k, w, b / 1048576, (w > 0) ? b / 1048576 / w : 0, o, q, cell(s, "%d")))
                printf "%s\n    {\"step\": \"%s\", \"wall_s\": %.3f, \"copied_bytes\": %s, \"mib_per_s\": %.2f, \"objects\": %s, \"requests\": %s, \"stored_bytes\": %s}", sep, k, w, num(b, "%.0f"), (w > 0) ? b / 1048576 / w : 0, num(o, "%.0f"), num(q, "%.0f"), num(s, "%.0f") > json
            } else {
                out(sprintf("| %s | %.2f | | | | | %d |", k, w, s))
                printf "%s\n    {\"step\": \"%s\", \"wall_s\": %.3f, \"stored_bytes\": %s}", sep, k, w, num(s, "%.0f") > json
            }
            sep = ","
        }
        printf "\n  ]\n}\n" > json
    }' "$RESULTS"
    tee -a "$md" <<'EOF'

- copy-full: into an empty prefix of the bucket, from a local repository holding one full backup
  and the WAL archived since. copy-incremental: the same copy again after a small change (3 rows
  updated, 5 inserted) and a second backup in the source. wall s: the command, then a `sync -f`
  of the work dir (the S3 server does not fsync). MiB copied: the report's `copied.bytes`
  (objects as stored); objects: `copied.objects` (indexes the copy wrote included); requests:
  every request HAProxy passed to the S3 server during the step (LIST is a GET of the bucket).
- dumps: the pgbench database (`postgres`). lifeboat-1/-2: `lifeboat dump --db postgres` into a
  fresh local repository per round (pg_dump -Fc -Z0, FastCDC chunks, zstd in the codec); bytes
  stored: what the dump added to the repository. pg_dump-Z0-zstd1: `pg_dump -Fc -Z0 | zstd -1 >
  file` (what Lifeboat does, without chunks); pg_dump-zstd1: `pg_dump -Fc | zstd -1 > file`
  (zstd over pg_dump's own gzip: pgbench's rows are so regular that even that shrinks a lot);
  pg_dump-default: `pg_dump -Fc -f file` (its default compression, gzip level 6 on PG 15);
  bytes stored: the file. -2: after a small change (1 branch, 3 accounts updated, 5 history
  rows): a pg_dump file is whole again, a Lifeboat dump stores only the chunks that changed.
EOF
    log "report written to $md and $json"
}

main() {
    check_prereqs
    open_workdir 54481
    SCALE_INFO="$WORK/scales.tsv"
    EXTRA="$WORK/extra.tsv"
    : >"$SCALE_INFO"
    : >"$EXTRA"
    S3_RUN="$WORK/s3"
    s3_start "$S3_RUN"
    log "work dir $WORK; SCALE=$SCALE ROUNDS=$ROUNDS S3_DELAY_MS=$S3_DELAY_MS; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    init_cluster
    load_scale "$SCALE"
    prepare_source
    run_copies
    quiesce_archiving
    run_dumps
    pg_stop "$DATA"
    report
    exit_if_failed
}

main "$@"
