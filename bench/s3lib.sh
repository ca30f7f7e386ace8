# The S3 test stack of the benchmarks: s3s-fs (a disk-backed S3 server) on a directory, behind
# HAProxy, which terminates TLS with the test certificate of bench/setup-s3.sh, can add a fixed
# delay to every request (S3_DELAY_MS, to play a remote region) and logs every request (method,
# status, bytes) so that a benchmark can count requests per step.
#
# Sourced by bench/s3_backup_restore.sh and bench/wal_push_drain.sh; also a command of its own:
#
#   bash bench/s3lib.sh start [DIR]      # prints the environment to use (also in DIR/env)
#   bash bench/s3lib.sh stop [DIR]
#   bash bench/s3lib.sh counts [DIR] [FROM_LINE]   # requests by kind since line FROM_LINE of the log
#
# DIR defaults to $S3_DIR or /var/tmp/lifeboat-s3. See bench/README.md.
# shellcheck shell=bash

S3_TLS_DIR=${S3_TLS_DIR:-/var/tmp/lifeboat-s3-tls}
S3_BUCKET=${S3_BUCKET:-bench}
S3_REGION=${S3_REGION:-us-east-1}
# Fixed test credentials of a server that listens on 127.0.0.1 only.
S3_ACCESS_KEY=${S3_ACCESS_KEY:-lifeboatbench}
S3_SECRET_KEY=${S3_SECRET_KEY:-lifeboatbenchsecret}

s3_log() { printf '[s3 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
s3_die() { printf '[s3] ERROR: %s\n' "$*" >&2; exit 1; }

# First port from $1 up on which nothing answers on 127.0.0.1.
s3_free_port() { # from [not this one]
    local p
    for p in $(seq "$1" $(($1 + 500))); do
        [ "$p" != "${2:-}" ] || continue
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    s3_die "no free TCP port from $1"
}

# Starts a command in the background in its own session, without the descriptors of the
# calling script (a benchmark's lock must not outlive it in a server); writes its pid.
s3_spawn() { # pidfile stdout stderr cmd...
    local pidfile=$1 out=$2 err=$3
    shift 3
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -le 2 ] || eval "exec $n>&-"; done; exec "$@"' \
        _ "$@" </dev/null >"$out" 2>"$err" &
    echo $! >"$pidfile"
}

s3_pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Starts the stack in DIR (made if missing; its data/ kept across restarts), with
# S3_DELAY_MS (default 0) added to every request. Writes DIR/env (the variables a client
# needs) and sets them in the caller: S3_ENDPOINT, S3_PORT, S3_BUCKET, S3_DATA (the bucket's
# directory: object KEY is file $S3_DATA/KEY), S3_REQUEST_LOG, AWS_* and SSL_CERT_FILE.
s3_start() { # dir
    local dir=$1 delay=${S3_DELAY_MS:-0} bport fport s3sfs deadline lua=""
    case "$delay" in ''|*[!0-9]*) s3_die "S3_DELAY_MS must be a whole number of milliseconds, not '$delay'" ;; esac
    s3sfs=$(command -v s3s-fs || true)
    [ -n "$s3sfs" ] || s3_die "s3s-fs is not installed: run bash bench/setup-s3.sh"
    command -v haproxy >/dev/null || s3_die "haproxy is not installed: run bash bench/setup-s3.sh"
    [ -s "$S3_TLS_DIR/server.pem" ] && [ -s "$S3_TLS_DIR/ca.pem" ] \
        || s3_die "no test certificate in $S3_TLS_DIR: run bash bench/setup-s3.sh"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    if s3_pid_alive "$dir/s3s-fs.pid" || s3_pid_alive "$dir/haproxy.pid"; then
        s3_die "an S3 stack already runs in $dir (bash bench/s3lib.sh stop $dir)"
    fi
    mkdir -p "$dir/data/$S3_BUCKET" "$dir/logs"
    bport=$(s3_free_port "${S3_BACKEND_PORT:-19080}")
    fport=$(s3_free_port "${S3_PORT:-19443}" "$bport")

    s3_spawn "$dir/s3s-fs.pid" "$dir/logs/s3s-fs.log" "$dir/logs/s3s-fs.err" \
        env RUST_LOG=warn "$s3sfs" --host 127.0.0.1 --port "$bport" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$dir/data"

    # The delay: a Lua action that sleeps (yielding, so other requests go on) before the request
    # is sent to the server, i.e. before its body is forwarded: one round trip per request.
    if [ "$delay" -gt 0 ]; then
        printf 'core.register_action("s3delay", { "http-req" }, function(txn) core.msleep(%d) end)\n' \
            "$delay" >"$dir/delay.lua"
        lua="lua-load $dir/delay.lua"
    fi
    cat >"$dir/haproxy.cfg" <<EOF
# Written by bench/s3lib.sh: TLS in front of s3s-fs, S3_DELAY_MS=$delay.
global
    maxconn 4096
    log stdout format raw local0
    ssl-server-verify none
    $lua

defaults
    mode http
    log global
    # One line per request: method, status, bytes received from the client, bytes sent to it,
    # ms from the request's headers to the end of the response (%Ta), ms the server took to
    # send its response headers (%Tr), then the URI last (it has no spaces).
    log-format "%HM %ST %U %B %Ta %Tr %HU"
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    timeout http-request 10m
    timeout http-keep-alive 10m

frontend s3
    bind 127.0.0.1:$fport ssl crt $S3_TLS_DIR/server.pem alpn http/1.1
    $([ "$delay" -gt 0 ] && echo "http-request lua.s3delay")
    # s3s-fs does not set TCP_NODELAY: on a reused connection, the body of a GET response waits
    # for the ACK of its headers, which HAProxy's side delays (~40 ms per GET). GET and HEAD get
    # a new server connection each (the client's connection stays open); PUT and POST, which
    # are slower on new connections here, reuse them.
    use_backend s3s_fs_new if METH_GET || METH_HEAD
    default_backend s3s_fs

backend s3s_fs
    http-reuse always
    server s3s_fs 127.0.0.1:$bport

backend s3s_fs_new
    option http-server-close
    http-reuse never
    server s3s_fs 127.0.0.1:$bport
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" || s3_die "invalid HAProxy configuration $dir/haproxy.cfg"
    : >>"$dir/logs/requests.log"
    # -db: foreground, logs on stdout (appended to the request log).
    s3_spawn "$dir/haproxy.pid" /dev/null "$dir/logs/haproxy.err" \
        bash -c 'exec haproxy -db -f "$1" >>"$2"' _ "$dir/haproxy.cfg" "$dir/logs/requests.log"

    S3_PORT=$fport
    S3_ENDPOINT="https://localhost:$fport"
    S3_DATA="$dir/data/$S3_BUCKET"
    S3_REQUEST_LOG="$dir/logs/requests.log"
    deadline=$((SECONDS + 30))
    # Up when an unsigned request through TLS gets an S3 answer (403), verified by the test CA.
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$S3_TLS_DIR/ca.pem" "$S3_ENDPOINT/$S3_BUCKET" 2>/dev/null)" = 403 ]; do
        if [ "$SECONDS" -ge "$deadline" ] || ! s3_pid_alive "$dir/s3s-fs.pid" || ! s3_pid_alive "$dir/haproxy.pid"; then
            tail -n 5 "$dir/logs/s3s-fs.err" "$dir/logs/haproxy.err" >&2 || true
            s3_stop "$dir"
            s3_die "the S3 stack in $dir did not come up (logs in $dir/logs)"
        fi
        sleep 0.1
    done
    cat >"$dir/env" <<EOF
# The S3 test stack in $dir (bench/s3lib.sh), S3_DELAY_MS=$delay. Source this file.
export S3_DIR=$dir
export S3_ENDPOINT=$S3_ENDPOINT
export S3_PORT=$fport
export S3_BUCKET=$S3_BUCKET
export S3_DATA=$S3_DATA
export S3_REQUEST_LOG=$S3_REQUEST_LOG
export S3_DELAY_MS=$delay
export AWS_ENDPOINT_URL=$S3_ENDPOINT
export AWS_REGION=$S3_REGION
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export SSL_CERT_FILE=$S3_TLS_DIR/ca.pem
EOF
    # shellcheck disable=SC1091
    . "$dir/env"
    s3_log "S3 stack up in $dir: $S3_ENDPOINT (bucket $S3_BUCKET, s3s-fs on 127.0.0.1:$bport, delay ${delay} ms per request)"
}

s3_stop() { # dir
    local dir=$1 f pid i
    for f in haproxy s3s-fs; do
        [ -s "$dir/$f.pid" ] || continue
        pid=$(cat "$dir/$f.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/$f.pid"
    done
}

# The repository settings of each tool for PREFIX of the bucket of the running stack. The CA:
# for pgBackRest its repo1-storage-ca-file, for Lifeboat SSL_CERT_FILE in its environment (and in
# that of a PostgreSQL server running it as archive_command or restore_command).
s3_pgbackrest_repo() { # prefix
    printf '%s\n' "repo1-type=s3" "repo1-path=/$1" "repo1-s3-bucket=$S3_BUCKET" \
        "repo1-s3-endpoint=localhost" "repo1-storage-port=$S3_PORT" "repo1-s3-region=$AWS_REGION" \
        "repo1-s3-key=$AWS_ACCESS_KEY_ID" "repo1-s3-key-secret=$AWS_SECRET_ACCESS_KEY" \
        "repo1-s3-uri-style=path" "repo1-storage-ca-file=$SSL_CERT_FILE"
}
s3_lifeboat_toml() { # prefix
    printf '%s\n' "repo = \"s3://$S3_BUCKET/$1\"" "" "[s3]" "endpoint = \"$S3_ENDPOINT\"" \
        "region = \"$AWS_REGION\"" "access_key_id = \"$AWS_ACCESS_KEY_ID\"" \
        "secret_access_key = \"$AWS_SECRET_ACCESS_KEY\""
}

# Number of lines in the request log: a mark to count from.
s3_mark() { wc -l <"$S3_REQUEST_LOG"; }

# Requests logged after line FROM of the log, by kind: "GET PUT HEAD DELETE POST LIST other total
# bytes_in bytes_out". LIST is a GET of the bucket itself (ListObjects, ListObjectsV2,
# ListMultipartUploads, GetBucketLocation); GET is a GET of an object. HAProxy logs a request
# when its response is sent: wait a moment after the client is done.
s3_counts() { # from_line [log]
    tail -n +"$(($1 + 1))" "${2:-$S3_REQUEST_LOG}" | awk -v bucket="$S3_BUCKET" '
        BEGIN { split("GET PUT HEAD DELETE POST LIST other", K, " "); for (i in K) c[K[i]] = 0 }
        NF >= 7 && $1 ~ /^[A-Z]+$/ { # request lines only (not TLS handshake errors)
            m = $1; path = $NF; sub(/\?.*/, "", path)
            if (m == "GET" && (path == "/" bucket || path == "/" bucket "/" || path == "/")) m = "LIST"
            if (!(m in c)) m = "other"
            c[m]++; n++; bin += $3; bout += $4
        }
        END { printf "%d %d %d %d %d %d %d %d %.0f %.0f\n", c["GET"], c["PUT"], c["HEAD"], c["DELETE"], c["POST"], c["LIST"], c["other"], n, bin, bout }'
}

# As a command: start, stop, counts.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cmd=${1:-}
    S3_DIR=${2:-${S3_DIR:-/var/tmp/lifeboat-s3}}
    case "$cmd" in
        start)
            s3_start "$S3_DIR"
            cat "$S3_DIR/env"
            ;;
        stop) s3_stop "$S3_DIR" ;;
        counts)
            S3_REQUEST_LOG="$S3_DIR/logs/requests.log"
            echo "GET PUT HEAD DELETE POST LIST other total bytes_in bytes_out"
            s3_counts "${3:-0}"
            ;;
        *) s3_die "usage: bash bench/s3lib.sh start|stop|counts [DIR] [FROM_LINE]" ;;
    esac
fi
