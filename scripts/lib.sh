#!/usr/bin/env bash
# Shared helpers for scripts/*.sh (sourced, not run).

log() { printf '[%s] %s\n' "${LOG_TAG:-lifeboat}" "$*"; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-lifeboat}" "$*" >&2; exit 1; }

# Run as root, tests and the demo start PostgreSQL as the `postgres` OS user, and that
# user has to reach binaries and fixtures under target/. Every directory from
# / down to the target dir must therefore be traversable (o+x) by it: a clone
# under /root is not, by default. As root we fix that; otherwise we only say so.
ensure_postgres_can_reach() {
    local target_dir=$1
    if [ "$(id -u)" -ne 0 ]; then
        return # non-root runs start clusters as the current user
    fi
    getent passwd postgres >/dev/null || die "OS user 'postgres' is missing: run scripts/setup.sh"
    # runuser lives in /usr/sbin, which a minimal PATH may lack.
    local runuser
    runuser=$(PATH="$PATH:/usr/sbin:/sbin" command -v runuser) || die "runuser (util-linux) not found"
    mkdir -p "$target_dir"
    local dir="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${target_dir#/}"
    for part in "" "${parts[@]}"; do
        dir="${dir%/}/$part"
        if ! "$runuser" -u postgres -- test -x "$dir"; then
            chmod o+x "$dir" || die "user postgres cannot traverse $dir and chmod o+x failed"
            log "chmod o+x $dir (so the postgres user can reach $target_dir)"
        fi
    done
}

