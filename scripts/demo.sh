#!/usr/bin/env bash
# THE demo command:
#   scripts/demo.sh          build a release pgrelay, start the local cluster and pgrelay on :6432
#   scripts/demo.sh stop     stop pgrelay (by its PID) and the cluster
#   scripts/demo.sh status   show whether pgrelay and the cluster run
# Files: .work/demo/pgrelay.yaml (config), .work/demo/pgrelay.log, .work/demo/pgrelay.pid.
# The cluster lives in ${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster} (scripts/cluster.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO_DIR="$ROOT/.work/demo"
CONFIG="$DEMO_DIR/pgrelay.yaml"
LOG="$DEMO_DIR/pgrelay.log"
PIDFILE="$DEMO_DIR/pgrelay.pid"
BIN="$ROOT/build/release/proxy/pgrelay"
LISTEN_PORT=6432
ADMIN_PORT=9187
CLUSTER_DIR="${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}"

die() { echo "demo.sh: error: $*" >&2; exit 1; }
say() { echo "demo.sh: $*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pgrelay_pid() {  # prints the PID if pgrelay from our PID file is alive
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled PID: it must still be our binary with our config.
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *"$BIN --config $CONFIG"* ]] || return 1
  echo "$pid"
}

stop_pgrelay() {
  local pid
  if pid="$(pgrelay_pid)"; then
    say "stopping pgrelay (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pgrelay did not exit within 10 s of SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    say "pgrelay is not running"
  fi
  rm -f "$PIDFILE"
}

cmd_stop() {
  stop_pgrelay
  scripts/cluster.sh stop --dir "$CLUSTER_DIR"
}

cmd_status() {
  local pid rc=0
  if pid="$(pgrelay_pid)"; then
    say "pgrelay running (pid $pid) on 127.0.0.1:$LISTEN_PORT, admin on 127.0.0.1:$ADMIN_PORT"
  else
    say "pgrelay not running"; rc=1
  fi
  scripts/cluster.sh status --dir "$CLUSTER_DIR" || rc=1
  return "$rc"
}

cmd_start() {
  scripts/install-deps.sh

  say "building build/release"
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DPGRELAY_BUILD_TESTS=OFF
  cmake --build build/release -j2
  [[ -x "$BIN" ]] || die "build produced no $BIN"

  scripts/cluster.sh start --dir "$CLUSTER_DIR"
  # shellcheck disable=SC1091
  source "$CLUSTER_DIR/cluster.env"

  mkdir -p "$DEMO_DIR"
  stop_pgrelay >/dev/null  # a pgrelay left from an earlier demo run: restart with the new build
  port_open "$LISTEN_PORT" && die "port $LISTEN_PORT is already in use by another program"
  port_open "$ADMIN_PORT" && die "admin port $ADMIN_PORT is already in use by another program"

  cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh
listen: 127.0.0.1:$LISTEN_PORT
nodes:
  - name: pg1
    host: $PGRELAY_PG_HOST
    port: $PGRELAY_PG_PRIMARY_PORT
  - name: pg2
    host: $PGRELAY_PG_HOST
    port: $PGRELAY_PG_REPLICA1_PORT
  - name: pg3
    host: $PGRELAY_PG_HOST
    port: $PGRELAY_PG_REPLICA2_PORT
users:
  - name: $PGRELAY_PG_APP_USER
    password: $PGRELAY_PG_APP_PASSWORD
auth: scram-sha-256
routing:
  strategy: leader
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  level: info
EOF

  say "starting pgrelay (log: ${LOG#"$ROOT"/})"
  nohup "$BIN" --config "$CONFIG" >"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  disown "$pid" 2>/dev/null || true

  local deadline=$((SECONDS + 15))
  until port_open "$LISTEN_PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      echo "---- $LOG ----" >&2; tail -n 40 "$LOG" >&2 || true
      die "pgrelay exited during start-up"
    fi
    if [[ $SECONDS -ge $deadline ]]; then
      echo "---- $LOG ----" >&2; tail -n 40 "$LOG" >&2 || true
      die "pgrelay (pid $pid) is not accepting on 127.0.0.1:$LISTEN_PORT after 15 s"
    fi
    sleep 0.2
  done

  cat <<EOF

pgrelay is running (pid $pid), relaying to the primary at $PGRELAY_PG_HOST:$PGRELAY_PG_PRIMARY_PORT.

  Connect:   PGPASSWORD=$PGRELAY_PG_APP_PASSWORD psql -h 127.0.0.1 -p $LISTEN_PORT -U $PGRELAY_PG_APP_USER $PGRELAY_PG_DATABASE
  Metrics:   curl -s http://127.0.0.1:$ADMIN_PORT/metrics
  Log:       tail -f ${LOG#"$ROOT"/}
  Stop:      scripts/demo.sh stop
EOF
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h|--help|help) sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (start|stop|status)" ;;
esac
