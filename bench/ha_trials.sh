#!/usr/bin/env bash
# Fault trials of automatic failover (issue 16, must-show 1 to 5): the e2e tests
# failover_faults::* with more trials per fault (LIFEBOAT_HA_TRIALS), then per fault the
# p50/p95/max of the write outage through HAProxy, the acknowledged rows lost, the samples with
# two writable members and the rejoin times, as a table on stdout and a Markdown report in
# bench/out/. Run by hand, as root, on a quiet machine; figures go to docs/BENCHMARKS.md.
#
#   bash bench/ha_trials.sh                  # 10 trials per fault (~20 min)
#   TRIALS=1 bash bench/ha_trials.sh         # smoke (~2 min)
#   TRIALS=5 FAULTS=kill9_of_the_leaders_agent bash bench/ha_trials.sh
#   LOG=bench/out/ha_trials-DATE.log bash bench/ha_trials.sh   # tabulate an earlier run again
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export LIFEBOAT_HA_TRIALS=${TRIALS:-10}
# A regex over the test names of crates/lifeboat/tests/e2e/failover_faults.rs (all by default).
FAULTS=${FAULTS:-.*}
mkdir -p bench/out
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=bench/out/ha_trials-$stamp.log
report=bench/out/ha_trials-$stamp.md

status=0
if [ -n "${LOG:-}" ]; then
    # Tabulate an earlier run's output again.
    cp "$LOG" "$log"
else
    bash scripts/test.sh -E "binary(e2e) and test(/^failover_faults::($FAULTS)\$/)" --no-capture \
        >"$log" 2>&1 || status=$?
fi
grep -E '^ha trial |PASS|FAIL|Summary' "$log" || true

# One `ha trial FAULT N: key=value ...` line per trial (support/ha_trials.rs, Report::line).
table=$(grep -E '^ha trial ' "$log" | awk '
function pct(list, n, p,    i, j, t, a, k) {
    # nearest-rank percentile over the n values in list (space separated)
    k = split(list, a, " ")
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    if (k == 0) return "-"
    i = int((p * k + 99) / 100); if (i < 1) i = 1; if (i > k) i = k
    return sprintf("%.1f", a[i] / 1000)
}
{
    fault = $3
    if (!(fault in seen)) { seen[fault] = 1; order[++nf] = fault }
    trials[fault]++
    for (f = 5; f <= NF; f++) {
        split($f, kv, "=")
        if (kv[2] == "-") continue
        if (kv[1] == "outage_ms") outage[fault] = outage[fault] " " kv[2]
        if (kv[1] == "gap_ms") gap[fault] = gap[fault] " " kv[2]
        if (kv[1] == "rejoin_ms") rejoin[fault] = rejoin[fault] " " kv[2]
        if (kv[1] == "fenced_ms") fenced[fault] = fenced[fault] " " kv[2]
        if (kv[1] == "lost") lost[fault] += kv[2]
        if (kv[1] == "acked") acked[fault] += kv[2]
        if (kv[1] == "split") split_[fault] += kv[2]
        if (kv[1] == "lag_bytes" && (!(fault in maxlag) || kv[2] + 0 > maxlag[fault])) maxlag[fault] = kv[2] + 0
        if (kv[1] == "resumed_ms") resumed[fault] = resumed[fault] " " kv[2]
        if (kv[1] == "handover_ms" && (!(fault in hand) || kv[2] + 0 < hand[fault])) hand[fault] = kv[2] + 0
        if (kv[1] == "leader") { n2 = split(kv[2], ab, "->"); if (ab[1] != ab[2]) promoted[fault]++ }
    }
}
END {
    print "| fault | trials | outage p50 / p95 / max (s) | longest gap p50 / p95 / max (s) | acked | lost | split-brain samples | promotions | max lag of the promoted (bytes) | rejoin p50 / max (s) | etcd: writes until, max (s) | etcd: back to writes p50 / max (s) | old primary last write → new /primary 200, min (s) |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nf; i++) {
        f = order[i]
        printf "| %s | %d | %s / %s / %s | %s / %s / %s | %d | %d | %d | %d | %s | %s / %s | %s | %s / %s | %s |\n", f, trials[f],
            pct(outage[f], 0, 50), pct(outage[f], 0, 95), pct(outage[f], 0, 100),
            pct(gap[f], 0, 50), pct(gap[f], 0, 95), pct(gap[f], 0, 100),
            acked[f], lost[f], split_[f], promoted[f], (promoted[f] ? maxlag[f] : "-"),
            pct(rejoin[f], 0, 50), pct(rejoin[f], 0, 100), pct(fenced[f], 0, 100),
            pct(resumed[f], 0, 50), pct(resumed[f], 0, 100),
            ((f in hand) ? sprintf("%.1f", hand[f] / 1000) : "-")
        total_lost += lost[f]; total_split += split_[f]
    }
    printf "\ntotal: %d acknowledged rows lost, %d split-brain samples\n", total_lost, total_split
}')

{
    echo "# Failover fault trials ($stamp)"
    echo
    echo "\`LIFEBOAT_HA_TRIALS=$LIFEBOAT_HA_TRIALS bash bench/ha_trials.sh\` on $(hostname), $(nproc) cores,"
    echo "commit $(git rev-parse --short HEAD). Rig: 3 etcd members, 3 PostgreSQL members each with"
    echo "\`lifeboat serve\` [ha] (ttl 10 s, loop_wait 2 s, retry_timeout 4 s, asynchronous), HAProxy"
    echo "from contrib/haproxy/haproxy.cfg; a writer inserting one id every 10 ms through HAProxy."
    echo "Outage: from the fault to the first acknowledged write after writes failed; gap: the longest"
    echo "time without an acknowledged write; rejoin: from the old primary's heal (agent started"
    echo "again or continued) until it streams from the new leader. etcd fault: how long after the"
    echo "kill of two members a member still accepted writes (sampler), and from their restart to the"
    echo "first acknowledged write. Handover: from the last sample where the old primary accepted"
    echo "writes to the first where the new one answered 200 on /primary (must be positive)."
    echo
    echo "$table"
    echo
    echo "Test status: $([ "$status" = 0 ] && echo passed || echo "FAILED (exit $status)"); full output: \`$log\`."
    echo
    echo '```'
    grep -E '^ha trial ' "$log" || true
    echo '```'
} >"$report"
echo
echo "$table"
echo "report: $report; full output: $log"
exit "$status"
