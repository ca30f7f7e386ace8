#!/usr/bin/env bash
# Data-loss trials of `lifeboat wal-stream` (issue 15, must-show 1): the e2e tests
# stream_trials::* with the full number of trials, printing one line per trial (acknowledged,
# restored, missing rows and how long before the crash they were acknowledged). Run by hand, as
# root, on a quiet machine; figures go to docs/BENCHMARKS.md.
#
#   bash bench/stream_trials.sh                  # 10 async + 20 synchronous trials
#   ASYNC=3 SYNC=3 bash bench/stream_trials.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export LIFEBOAT_STREAM_TRIALS_ASYNC=${ASYNC:-10}
export LIFEBOAT_STREAM_TRIALS_SYNC=${SYNC:-20}
mkdir -p bench/out
out=bench/out/stream_trials-$(date -u +%Y%m%dT%H%M%SZ).log
bash scripts/test.sh -E 'binary(e2e) and test(/^stream_trials::/)' --no-capture 2>&1 | tee "$out" |
    grep -E '^stream trial|PASS|FAIL|Summary'
echo "full output: $out"
