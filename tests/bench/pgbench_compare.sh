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

clients=8 seconds=10 rounds=2 mode=simple
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

bin=$root/build/release/proxy/pgrelay
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DPGRELAY_BUILD_TESTS=OFF >/dev/null
cmake --build build/release -j2 --target pgrelay >/dev/null
cluster_dir=${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}
scripts/cluster.sh start --dir "$cluster_dir" >/dev/null
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"

work=$(mktemp -d /tmp/pgrelay-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
start_relay() {  # strategy -> sets relay_port (no command substitution: pgrelay runs on)
  local strategy=$1 port admin
  port=$(free_port); admin=$(free_port)
  cat >"$work/$strategy.yaml" <<YAML
listen: 127.0.0.1:$port
nodes:
  - {name: pg1, host: 127.0.0.1, port: $PGRELAY_PG_PRIMARY_PORT}
  - {name: pg2, host: 127.0.0.1, port: $PGRELAY_PG_REPLICA1_PORT}
  - {name: pg3, host: 127.0.0.1, port: $PGRELAY_PG_REPLICA2_PORT}
users: [{name: $PGRELAY_PG_APP_USER, password: $PGRELAY_PG_APP_PASSWORD}]
routing: {strategy: $strategy}
admin: {listen: 127.0.0.1:$admin}
log: {level: warning}
YAML
  "$bin" --config "$work/$strategy.yaml" >/dev/null 2>"$work/$strategy.log" &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  relay_port=$port
}
start_relay leader; leader_port=$relay_port
start_relay follower; follower_port=$relay_port

export PGPASSWORD=$PGRELAY_PG_APP_PASSWORD
if ! psql -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -Atc \
    "select 1 from pgbench_accounts limit 1" "$PGRELAY_PG_DATABASE" >/dev/null 2>&1; then
  pgbench -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -i -s 10 -q \
    "$PGRELAY_PG_DATABASE" >/dev/null 2>&1
fi
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
