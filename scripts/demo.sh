#!/usr/bin/env bash
# The README's first command: install what is needed, build, and run `lifeboat demo` (a scratch
# cluster archiving into a local encrypted repository, a base backup with `lifeboat backup`, rows
# written, the primary lost, and `lifeboat restore` back to a moment between two of those rows).
#
#   bash scripts/demo.sh [demo options, e.g. --keep or --seconds 10]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd -P)
LOG_TAG=demo
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

bash scripts/setup.sh
umask 022
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
# PostgreSQL's archiver runs lifeboat as the postgres user, so it must reach the binary.
ensure_postgres_can_reach "$TARGET_DIR"
log "cargo build --release -p lifeboat"
cargo build --release -p lifeboat
exec "$TARGET_DIR/release/lifeboat" demo "$@"
