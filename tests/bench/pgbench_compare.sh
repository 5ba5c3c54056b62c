#!/usr/bin/env bash
# Benchmark (not a test): pgbench select-only, direct to the primary and through pgrelay under
# `leader` and `follower`, in the same run, interleaved (direct, leader, follower, direct, ...)
# to cancel drift. Prints each TPS figure and the ratios to direct.
#
#   tests/bench/pgbench_compare.sh [--clients 8] [--seconds 10] [--rounds 2] [--mode simple|extended|prepared]
#
# Uses the release build (build/release/proxy/pgrelay; built if missing or older than the
# sources) and the local cluster from scripts/cluster.sh (started if not running, in
# ${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

# shellcheck source=tests/bench/lib.sh
source "$root/tests/bench/lib.sh"
bench_args "$@"
bench_setup
start_relay leader; leader_port=$relay_port
start_relay follower; follower_port=$relay_port

run() {  # port -> tps
  pgbench -h 127.0.0.1 -p "$1" -U "$PGRELAY_PG_APP_USER" -S -M "$mode" -c "$clients" -j 2 \
    -T "$seconds" "$PGRELAY_PG_DATABASE" 2>&1 | awk '/^tps =/ {print $3}'
}
add() { awk -v a="$1" -v b="$2" 'BEGIN {print a + b}'; }

direct_sum=0 leader_sum=0 follower_sum=0
for r in $(seq "$rounds"); do
  d=$(run "$PGRELAY_PG_PRIMARY_PORT"); l=$(run "$leader_port"); f=$(run "$follower_port")
  echo "round $r: direct $d tps, pgrelay leader $l tps, pgrelay follower $f tps"
  direct_sum=$(add "$direct_sum" "$d"); leader_sum=$(add "$leader_sum" "$l")
  follower_sum=$(add "$follower_sum" "$f")
done
printf '\npgbench -S -M %s, %s clients, %s s x %s rounds (averages)\n' "$mode" "$clients" "$seconds" "$rounds"
awk -v d="$direct_sum" -v l="$leader_sum" -v f="$follower_sum" -v n="$rounds" 'BEGIN {
  printf "%-18s %10.0f tps\n", "direct (primary)", d / n
  printf "%-18s %10.0f tps  ratio to direct %.2f\n", "pgrelay leader", l / n, l / d
  printf "%-18s %10.0f tps  ratio to direct %.2f\n", "pgrelay follower", f / n, f / d
}'
