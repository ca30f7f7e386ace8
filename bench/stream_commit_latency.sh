#!/usr/bin/env bash
# Commit latency and throughput of a PostgreSQL 15 cluster with `lifeboat wal-stream`, in three
# modes: no receiver; the receiver asynchronous (flush every FLUSH_MS); the receiver synchronous
# (synchronous_standby_names = 'lifeboat', `--synchronous`: a commit returns once the repository
# holds it). pgbench's simple-update transaction, CLIENTS clients, DURATION seconds each, into a
# local encrypted repository on this disk. Run by hand, as root, never in CI.
#
#   bash bench/stream_commit_latency.sh
#   CLIENTS=1 DURATION=20 bash bench/stream_commit_latency.sh
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
LIFEBOAT_BIN=${LIFEBOAT_BIN:-$REPO_ROOT/target/release/lifeboat}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-4}
DURATION=${DURATION:-15}
FLUSH_MS=${FLUSH_MS:-1000}
BENCH_TMP=${BENCH_TMP:-/var/tmp}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (the cluster runs as postgres)"
[ -x "$LIFEBOAT_BIN" ] || die "build it first: cargo build --release -p lifeboat"
as_pg() { runuser -u postgres -- "$@"; }

WORK=$(mktemp -d "$BENCH_TMP/lifeboat-stream-latency.XXXXXX")
chown postgres: "$WORK"
chmod 700 "$WORK"
DATA=$WORK/data
PORT=$(( 20000 + RANDOM % 20000 ))
RECEIVER=""
cleanup() {
    [ -n "$RECEIVER" ] && kill "$RECEIVER" 2>/dev/null && wait "$RECEIVER" 2>/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql() { as_pg "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -d postgres -c "$1"; }
as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$WORK'
listen_addresses = ''
wal_level = replica
max_wal_senders = 5
shared_buffers = 256MB
EOF
as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$WORK/postgres.log" -w start >/dev/null
as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1

printf 'a long benchmark passphrase\n' >"$WORK/passphrase"
chmod 600 "$WORK/passphrase"
cat >"$WORK/lifeboat.toml" <<EOF
repo = "$WORK/repo"
passphrase_file = "$WORK/passphrase"
db = "host=$WORK port=$PORT user=postgres"
EOF
chown postgres: "$WORK/passphrase" "$WORK/lifeboat.toml"
as_pg "$LIFEBOAT_BIN" --config "$WORK/lifeboat.toml" init >/dev/null

start_receiver() {
    runuser -u postgres -- "$LIFEBOAT_BIN" --config "$WORK/lifeboat.toml" wal-stream \
        --flush-interval-ms "$FLUSH_MS" "$@" 2>"$WORK/receiver.log" &
    RECEIVER=$!
    for _ in $(seq 1 100); do
        [ "$(psql "select count(*) from pg_stat_replication where application_name = 'lifeboat' and state = 'streaming'")" = 1 ] && return
        sleep 0.1
    done
    die "the receiver did not start streaming: $(tail -5 "$WORK/receiver.log")"
}
stop_receiver() {
    kill "$RECEIVER" && wait "$RECEIVER" || true
    RECEIVER=""
}

# One pgbench run; prints "tps latency_ms".
run_pgbench() {
    psql "checkpoint" >/dev/null
    as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -n -N -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" postgres 2>/dev/null |
        awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%.0f %.2f\n", tps, lat}'
}

declare -A RESULT
log "no receiver ($CLIENTS clients, ${DURATION} s)"
RESULT[none]=$(run_pgbench)
log "receiver, asynchronous (flush every ${FLUSH_MS} ms)"
start_receiver
RESULT[async]=$(run_pgbench)
stop_receiver
log "receiver, synchronous"
psql "alter system set synchronous_standby_names = 'lifeboat'" >/dev/null
psql "select pg_reload_conf()" >/dev/null
start_receiver --synchronous
RESULT[sync]=$(run_pgbench)
pieces=$(find "$WORK/repo/stream" -type f 2>/dev/null | wc -l)
segments=$(find "$WORK/repo/wal" -type f 2>/dev/null | wc -l)
stop_receiver
psql "alter system reset synchronous_standby_names" >/dev/null
psql "select pg_reload_conf()" >/dev/null

printf '\nCommit latency with wal-stream: PostgreSQL 15, pgbench -N scale %s, %s clients, %s s per mode, local encrypted repository, %s cores\n\n' \
    "$SCALE" "$CLIENTS" "$DURATION" "$(nproc)"
printf '| mode | tps | latency average ms | tps vs no receiver |\n|---|---:|---:|---:|\n'
base=${RESULT[none]%% *}
for mode in none async sync; do
    read -r tps lat <<<"${RESULT[$mode]}"
    printf '| %s | %s | %s | %.2f |\n' "$mode" "$tps" "$lat" "$(awk -v a="$tps" -v b="$base" 'BEGIN {print a / b}')"
done
printf '\nAfter the synchronous run the repository held %s WAL objects and %s streamed pieces.\n' "$segments" "$pieces"
