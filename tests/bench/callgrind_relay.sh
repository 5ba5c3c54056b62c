#!/usr/bin/env bash
# Benchmark (not a test): CPU instructions pgrelay executes per relayed query, counted by
# valgrind's callgrind (repeatable on a noisy machine, unlike time). Starts a release pgrelay
# under callgrind, counting only what its worker threads execute (--toggle-collect on the worker
# thread's function: the relay, not the health checks), and for each strategy and pgbench
# protocol mode runs `pgbench -S -c 1` twice inside a zeroed counting window, with T1 and T2
# transactions. The difference of the two windows divided by T2 - T1 is the cost of one
# select-only transaction (login and session set-up cancel out).
#
#   tests/bench/callgrind_relay.sh [--no-build] [--modes "simple extended prepared"]
#                                  [--strategies "leader follower"] [--top N]
#
# --top N prints, for the last window of each run, the N functions with most instructions
# (inclusive of nothing: self cost), to see where they go.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
modes="simple extended prepared"
strategies="leader follower"
top=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) args+=(--no-build); shift ;;
    --modes) modes=$2; shift 2 ;;
    --strategies) strategies=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    *) echo "callgrind_relay: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "callgrind_relay: valgrind is not installed" >&2; exit 1; }

# shellcheck source=tests/bench/lib.sh
source "$root/tests/bench/lib.sh"
bench_args "${args[@]}"
bench_setup
export PGPASSWORD=$PGRELAY_PG_APP_PASSWORD
t1=500 t2=2500

# Instructions (Ir) in the callgrind dump file $1.
dump_ir() { awk '/^summary:/ {print $2}' "$1"; }

printf '%-10s %-9s %14s\n' strategy mode instr/query
for strategy in $strategies; do
  out=$work/cg-$strategy
  relay_wrapper=(valgrind --tool=callgrind --collect-atstart=no "--toggle-collect=*RunWorker*" --compress-strings=no --compress-pos=no "--callgrind-out-file=$out.%p")
  start_relay "$strategy" "workers: 1" "health: {interval: 10s}"
  pid=${pids[-1]}
  for mode in $modes; do
    ir=()
    for t in $t1 $t2; do
      # Warm-up connection first (caches, first allocations), then count one run alone.
      pgbench -n -S -c 1 -t 50 -M "$mode" -h 127.0.0.1 -p "$relay_port" \
        -U "$PGRELAY_PG_APP_USER" "$PGRELAY_PG_DATABASE" >/dev/null 2>&1
      callgrind_control -z "$pid" >/dev/null
      pgbench -n -S -c 1 -t "$t" -M "$mode" -h 127.0.0.1 -p "$relay_port" \
        -U "$PGRELAY_PG_APP_USER" "$PGRELAY_PG_DATABASE" >/dev/null 2>&1
      rm -f "$out.$pid".*
      callgrind_control -d "$pid" >/dev/null
      dump=$(ls -t "$out.$pid".* | head -1)
      ir+=("$(dump_ir "$dump")")
      [ -n "${PGRELAY_CALLGRIND_KEEP:-}" ] && cp "$dump" "$PGRELAY_CALLGRIND_KEEP.$strategy.$mode"
    done
    per=$(( (ir[1] - ir[0]) / (t2 - t1) ))
    printf '%-10s %-9s %14s\n' "$strategy" "$mode" "$per"
    if [ "$top" -gt 0 ]; then
      callgrind_annotate --threshold=100 "$dump" 2>/dev/null | grep -E "^ *[0-9,]+ \(" | sed -n "2,$((top + 1))p"
    fi
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
