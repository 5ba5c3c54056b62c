#!/usr/bin/env bash
# Benchmark (not a test): a 90/10 read/write pgbench script (reads: one account by key; writes:
# update one account) direct to the primary and through pgrelay under every strategy, in the
# same run, interleaved (direct, leader, follower, read-your-writes, quorum, direct, ...) to
# cancel drift. Prints TPS and p50/p99 transaction latency per path, and the share of reads
# that ran on a replica (from pgrelay's /metrics).
#
#   tests/bench/consistency_bench.sh [--clients 8] [--seconds 10] [--rounds 2] [--mode simple|extended|prepared]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

# shellcheck source=tests/bench/lib.sh
source "$root/tests/bench/lib.sh"
bench_args "$@"
bench_setup

cat >"$work/mix.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set r random(1, 100)
\if :r <= 10
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
\else
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
\endif
SQL

strategies=(leader follower read-your-writes quorum)
declare -A port admin
for s in "${strategies[@]}"; do
  start_relay "$s"
  port[$s]=$relay_port
  admin[$s]=$relay_admin_port
done

run() {  # label port -> "tps p50_ms p99_ms"
  local label=$1 p=$2 dir="$work/log-$1-$RANDOM"
  mkdir -p "$dir"
  local tps
  tps=$(cd "$dir" && pgbench -h 127.0.0.1 -p "$p" -U "$PGRELAY_PG_APP_USER" -n -f "$work/mix.sql" \
          -M "$mode" -c "$clients" -j 2 -T "$seconds" -l "$PGRELAY_PG_DATABASE" 2>&1 |
        awk '/^tps =/ {print $3}')
  # Per-transaction logs: the third field is the latency in microseconds.
  cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk -v tps="$tps" '
    { v[NR] = $1 }
    END { printf "%s %.3f %.3f\n", tps, v[int(NR * 0.50)] / 1000, v[int(NR * 0.99)] / 1000 }'
  rm -rf "$dir"
}

replica_share() {  # admin port -> share of read statements that ran on a replica
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    /^pgrelay_statements_total\{/ && /class="read"/ {
      n = $NF; total += n; if ($0 !~ /node="pg1"/) on_replica += n }
    END { if (total > 0) printf "%.0f%%", 100 * on_replica / total; else print "-" }'
}

declare -A tps p50 p99
labels=(direct "${strategies[@]}")
for r in $(seq "$rounds"); do
  for l in "${labels[@]}"; do
    if [ "$l" = direct ]; then p=$PGRELAY_PG_PRIMARY_PORT; else p=${port[$l]}; fi
    read -r t a b < <(run "$l" "$p")
    echo "round $r: $l $t tps, p50 $a ms, p99 $b ms"
    tps[$l]=$(awk -v x="${tps[$l]:-0}" -v y="$t" 'BEGIN {print x + y}')
    p50[$l]=$(awk -v x="${p50[$l]:-0}" -v y="$a" 'BEGIN {print x + y}')
    p99[$l]=$(awk -v x="${p99[$l]:-0}" -v y="$b" 'BEGIN {print x + y}')
  done
done

printf '\n90/10 read/write (pgbench -f mix.sql -M %s), %s clients, %s s x %s rounds (averages)\n\n' \
  "$mode" "$clients" "$seconds" "$rounds"
echo "| path | TPS | ratio to direct | p50 ms | p99 ms | reads on replicas |"
echo "|---|---|---|---|---|---|"
for l in "${labels[@]}"; do
  share="-"
  [ "$l" != direct ] && share=$(replica_share "${admin[$l]}")
  awk -v l="$l" -v t="${tps[$l]}" -v d="${tps[direct]}" -v a="${p50[$l]}" -v b="${p99[$l]}" \
      -v n="$rounds" -v s="$share" 'BEGIN {
    printf "| %s | %.0f | %.2f | %.2f | %.2f | %s |\n", l, t / n, t / d, a / n, b / n, s }'
done
