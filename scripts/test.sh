#!/usr/bin/env bash
# THE test command for the Lifeboat workspace:
#
#   bash scripts/test.sh [extra cargo-nextest args, e.g. a test name filter]
#
# Fails first on an unused dependency (scripts/check-deps.sh) or a module cycle
# inside a crate (scripts/check-structure.sh, which also lists files over 600
# lines). Then builds and
# runs every test of the workspace with cargo-nextest (profile `ci` when CI=true,
# `default` otherwise; see .config/nextest.toml), or with `cargo test` when
# nextest is not installed. The runner's summary is the last thing printed. Run
# scripts/setup.sh once first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd -P)

LOG_TAG="test"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Files cargo creates must be readable by the postgres user too.
umask 022

export RUST_BACKTRACE=1
# PostgreSQL server tools (initdb, pg_ctl, ...) are not on Debian's default
# PATH; moto_server may live in ~/.local/bin after a `pip install --user`.
export PATH="$PATH:/usr/lib/postgresql/15/bin:$HOME/.local/bin"

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO_ROOT/$TARGET_DIR" ;; esac
ensure_postgres_can_reach "$TARGET_DIR"

command -v cargo >/dev/null || die "cargo is not on PATH"

# Unused dependencies cost build time and audit surface, and come back unnoticed when code moves:
# fail before the tests when a Cargo.toml names one no code uses (scripts/check-deps.sh says
# what to do).
# The whole workspace unless a package is named (`-p NAME`): --workspace would override it.
scope=--workspace
for arg in "$@"; do
    case "$arg" in -p|--package|-p*|--package=*) scope= ;; esac
done

bash scripts/check-deps.sh || die "unused dependencies: see above"
bash scripts/check-structure.sh || die "module cycles: see above; move the shared piece to the module that owns it (docs/ARCHITECTURE.md)"

if cargo nextest --version >/dev/null 2>&1; then
    profile=default
    case "${CI:-}" in true|1) profile=ci ;; esac
    log "cargo nextest run $scope --no-fail-fast --profile $profile $*"
    exec cargo nextest run $scope --no-fail-fast --profile "$profile" "$@"
else
    log "cargo-nextest not installed (scripts/setup.sh installs it); falling back to cargo test"
    exec cargo test $scope --no-fail-fast "$@"
fi
