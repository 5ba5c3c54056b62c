# Shared set-up of the pgbench benchmarks (sourced, not run): the release build, the local
# cluster, pgbench tables at scale 10, and pgrelay instances per strategy.
#   bench_args "$@"                 sets clients, seconds, rounds, mode from the command line
#                                   (--no-build: as PGRELAY_BENCH_NO_BUILD=1)
#   bench_setup                     builds, starts the cluster, initializes pgbench; sets $work.
#                                   PGRELAY_BENCH_NO_BUILD=1 skips the build when the binary exists
#                                   (e.g. while sources are being edited)
#   start_relay STRATEGY [YAML...]  starts pgrelay; sets relay_port and relay_admin_port (extra
#                                   YAML lines appended; $relay_routing, if set, is added to the
#                                   routing map, e.g. "replica_affinity: session"); runs it under
#                                   "${relay_wrapper[@]}" when set (e.g. valgrind)
# Everything started is stopped on exit, except the cluster: it stays running for the next
# benchmark (scripts/cluster.sh stop --dir /tmp/pgrelay-cluster when done).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin=$root/build/release/proxy/pgrelay
pids=()
work=""
relay_wrapper=()
relay_routing=${relay_routing:-}

bench_args() {  # --clients N --seconds N --rounds N --mode simple|extended|prepared --no-build
  clients=8 seconds=10 rounds=2 mode=simple
  while [ $# -gt 0 ]; do
    case "$1" in
      --clients) clients=$2; shift 2 ;;
      --seconds) seconds=$2; shift 2 ;;
      --rounds) rounds=$2; shift 2 ;;
      --mode) mode=$2; shift 2 ;;
      --no-build) PGRELAY_BENCH_NO_BUILD=1; shift ;;
      *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
  done
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -n "$work" ] && rm -rf "$work"
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_setup() {
  cd "$root"
  if [ "${PGRELAY_BENCH_NO_BUILD:-0}" = 1 ] && [ -x "$bin" ]; then
    echo "bench: not building (PGRELAY_BENCH_NO_BUILD=1); using $bin" >&2
  else
    scripts/build.sh release >/dev/null
  fi
  cluster_dir=${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}
  scripts/cluster.sh start --dir "$cluster_dir" >/dev/null
  # shellcheck disable=SC1091
  source "$cluster_dir/cluster.env"
  work=$(mktemp -d /tmp/pgrelay-bench.XXXXXX)
  trap bench_cleanup EXIT
  export PGPASSWORD=$PGRELAY_PG_APP_PASSWORD
  if ! psql -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -Atc \
      "select 1 from pgbench_accounts limit 1" "$PGRELAY_PG_DATABASE" >/dev/null 2>&1; then
    pgbench -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -i -s 10 -q \
      "$PGRELAY_PG_DATABASE" >/dev/null 2>&1
  fi
}

start_relay() {  # strategy [extra yaml lines] -> sets relay_port (pgrelay runs on: no $(...))
  local strategy=$1 port admin name
  shift
  port=$(free_port); admin=$(free_port); name=${strategy}-$port
  {
    cat <<YAML
listen: 127.0.0.1:$port
nodes:
  - {name: pg1, host: 127.0.0.1, port: $PGRELAY_PG_PRIMARY_PORT}
  - {name: pg2, host: 127.0.0.1, port: $PGRELAY_PG_REPLICA1_PORT}
  - {name: pg3, host: 127.0.0.1, port: $PGRELAY_PG_REPLICA2_PORT}
users: [{name: $PGRELAY_PG_APP_USER, password: $PGRELAY_PG_APP_PASSWORD}]
routing: {strategy: $strategy${relay_routing:+, $relay_routing}}
admin: {listen: 127.0.0.1:$admin}
log: {level: warning}
YAML
    for line in "$@"; do echo "$line"; done
  } >"$work/$name.yaml"
  "${relay_wrapper[@]}" "$bin" --config "$work/$name.yaml" >/dev/null 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  relay_port=$port
  relay_admin_port=$admin
}
