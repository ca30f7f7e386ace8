#!/usr/bin/env bash
# Installs what the S3 benchmarks need (bench/s3_backup_restore.sh, the S3 archivers of
# bench/wal_push_drain.sh) and makes their TLS material. Idempotent: what is already there is
# kept. For benchmarks only: CI never runs it (the tests use moto over plain HTTP).
#
#   sudo bash bench/setup-s3.sh
#
# - s3s-fs 0.14.1, a disk-backed S3 server: `cargo install s3s-fs --version 0.14.1 --features
#   binary --locked` (a few minutes of compiling);
# - HAProxy (apt), which terminates TLS in front of it, adds a per-request delay and logs every
#   request (bench/s3lib.sh);
# - a test CA and a server certificate for `localhost` and 127.0.0.1, signed by it, in
#   $S3_TLS_DIR (default /var/tmp/lifeboat-s3-tls): ca.pem (what the clients trust:
#   SSL_CERT_FILE for Lifeboat, repo1-storage-ca-file for pgBackRest) and server.pem (key and
#   certificate, for HAProxy). Readable by everyone: a throwaway test CA, never trust it elsewhere.
set -euo pipefail

S3S_FS_VERSION=0.14.1
S3_TLS_DIR=${S3_TLS_DIR:-/var/tmp/lifeboat-s3-tls}

log() { printf '[setup-s3] %s\n' "$*" >&2; }
die() { printf '[setup-s3] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || exec sudo -E bash "$0" "$@"

# s3s-fs: cargo installs into ~/.cargo/bin; also reachable as /usr/local/bin/s3s-fs so that
# scripts run through sudo find it.
s3s_fs_version() { "$1" --version 2>/dev/null | awk '{print $2; exit}' || true; }
S3S_FS=$(command -v s3s-fs || true)
[ -n "$S3S_FS" ] || { [ ! -x "$HOME/.cargo/bin/s3s-fs" ] || S3S_FS=$HOME/.cargo/bin/s3s-fs; }
if [ -n "$S3S_FS" ] && [ "$(s3s_fs_version "$S3S_FS")" = "$S3S_FS_VERSION" ]; then
    log "s3s-fs $S3S_FS_VERSION already installed: $S3S_FS"
else
    command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup first)"
    log "cargo install s3s-fs --version $S3S_FS_VERSION --features binary --locked (several minutes)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
    S3S_FS=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
fi
[ -x "$S3S_FS" ] || die "s3s-fs not found after installing it"
[ "$S3S_FS" = /usr/local/bin/s3s-fs ] || ln -sf "$S3S_FS" /usr/local/bin/s3s-fs

if command -v haproxy >/dev/null; then
    log "HAProxy already installed: $(haproxy -v | head -n 1)"
else
    log "apt-get install haproxy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null; } \
        || die "could not install haproxy with apt-get"
fi
# Not `haproxy -vv | grep -q`: grep stops reading at the match, haproxy dies of SIGPIPE and
# pipefail turns the match into a failure.
grep -q 'USE_LUA=1' <<<"$(haproxy -vv 2>/dev/null)" \
    || die "this HAProxy has no Lua: bench/s3lib.sh needs it for the per-request delay"
# The package enables a system-wide instance; the benchmarks start their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet haproxy 2>/dev/null; then
    systemctl stop haproxy || true
fi

command -v openssl >/dev/null || die "openssl is not installed"
mkdir -p "$S3_TLS_DIR"
if [ -s "$S3_TLS_DIR/ca.pem" ] && [ -s "$S3_TLS_DIR/server.pem" ] \
    && openssl verify -CAfile "$S3_TLS_DIR/ca.pem" "$S3_TLS_DIR/server.crt" >/dev/null 2>&1 \
    && openssl x509 -checkend 86400 -noout -in "$S3_TLS_DIR/server.crt" >/dev/null; then
    log "test CA and server certificate already in $S3_TLS_DIR"
else
    log "making a test CA and a server certificate for localhost/127.0.0.1 in $S3_TLS_DIR"
    (
        cd "$S3_TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=Lifeboat bench test CA' \
            -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr 2>/dev/null
        printf '%s\n' 'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
            'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt 2>/dev/null
        cat server.crt server.key >server.pem
        rm -f server.csr
    )
    openssl verify -CAfile "$S3_TLS_DIR/ca.pem" "$S3_TLS_DIR/server.crt" >/dev/null \
        || die "the new server certificate does not verify against the new CA"
fi
# The postgres user runs the tools (archive_command, restore_command): it must read ca.pem.
chmod 0755 "$S3_TLS_DIR"
chmod 0644 "$S3_TLS_DIR/ca.pem" "$S3_TLS_DIR/server.crt"
chmod 0600 "$S3_TLS_DIR/ca.key" "$S3_TLS_DIR/server.key" "$S3_TLS_DIR/server.pem"

command -v pgbackrest >/dev/null || log "warning: pgbackrest is not installed (bash scripts/setup.sh installs 2.45)"
log "ready: s3s-fs $(s3s_fs_version "$S3S_FS"), $(haproxy -v | head -n 1 | cut -d' ' -f1-3), CA $S3_TLS_DIR/ca.pem"
