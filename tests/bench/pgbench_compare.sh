#!/usr/bin/env bash
# Benchmark (not a test): pgbench select-only, direct to the primary and through pgrelay, in the
# same run, interleaved (A B A B) to cancel drift. Prints both TPS figures and their ratio.
#
#   tests/bench/pgbench_compare.sh [--clients N] [--seconds S] [--rounds R] [--mode simple|extended|prepared]
#
# Uses the release build (build/release/proxy/pgrelay; built if missing) and the local cluster
# from scripts/cluster.sh (started if not running, in ${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

clients=8 seconds=10 rounds=2 mode=simple strategy=leader
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --strategy) strategy=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

bin=$root/build/release/proxy/pgrelay
if [ ! -x "$bin" ]; then
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DPGRELAY_BUILD_TESTS=OFF >/dev/null
  cmake --build build/release -j2 >/dev/null
fi
cluster_dir=${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}
scripts/cluster.sh start --dir "$cluster_dir" >/dev/null
# shellcheck disable=SC1091
source "$cluster_dir/cluster.env"

work=$(mktemp -d /tmp/pgrelay-bench.XXXXXX)
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/pgrelay.yaml" <<YAML
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
"$bin" --config "$work/pgrelay.yaml" 2>"$work/pgrelay.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

export PGPASSWORD=$PGRELAY_PG_APP_PASSWORD
run() {  # port -> tps
  pgbench -h 127.0.0.1 -p "$1" -U "$PGRELAY_PG_APP_USER" -S -M "$mode" -c "$clients" -j 2 \
    -T "$seconds" "$PGRELAY_PG_DATABASE" 2>&1 | awk '/^tps =/ {print $3}'
}
if ! psql -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -Atc \
    "select 1 from pgbench_accounts limit 1" "$PGRELAY_PG_DATABASE" >/dev/null 2>&1; then
  pgbench -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -i -s 10 -q \
    "$PGRELAY_PG_DATABASE" >/dev/null 2>&1
fi

direct_sum=0 relay_sum=0
for r in $(seq "$rounds"); do
  d=$(run "$PGRELAY_PG_PRIMARY_PORT"); p=$(run "$port")
  echo "round $r: direct $d tps, pgrelay $p tps"
  direct_sum=$(awk -v a="$direct_sum" -v b="$d" 'BEGIN {print a + b}')
  relay_sum=$(awk -v a="$relay_sum" -v b="$p" 'BEGIN {print a + b}')
done
direct=$(awk -v a="$direct_sum" -v n="$rounds" 'BEGIN {print a / n}')
relay=$(awk -v a="$relay_sum" -v n="$rounds" 'BEGIN {print a / n}')
printf '\npgbench -S -M %s, %s clients, %s s x %s rounds, strategy %s\n' "$mode" "$clients" "$seconds" "$rounds" "$strategy"
printf '%-10s %12.0f tps\n' direct "$direct" pgrelay "$relay"
printf 'ratio pgrelay/direct: %.2f\n' "$(awk -v a="$relay" -v b="$direct" 'BEGIN {print a / b}')"
