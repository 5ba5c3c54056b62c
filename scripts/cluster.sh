#!/usr/bin/env bash
# A local PostgreSQL 15 test cluster: one primary + two streaming replicas on 127.0.0.1.
#
#   scripts/cluster.sh start  [--dir DIR]            create (first time) or start; waits for streaming
#   scripts/cluster.sh stop   [--dir DIR] [--destroy] fast shutdown (replicas first); --destroy removes DIR
#   scripts/cluster.sh status [--dir DIR]            role and port of each node; exit 0 iff all running
#   scripts/cluster.sh env    [--dir DIR]            prints DIR/cluster.env (KEY=VALUE lines)
#
# DIR defaults to ${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}. Everything lives under DIR: data
# directories (owned by the postgres user), unix sockets, logs (DIR/<node>/log/postgresql.log).
# Ports: the first free TCP ports from ${PGRELAY_CLUSTER_BASE_PORT:-15432} up (below 32768, see
# GUIDE §4). The system cluster (/var/lib/postgresql, /var/run/postgresql) is never touched.
# Test clusters only: fsync=off and trust for the postgres superuser on loopback.
set -euo pipefail

SCRIPT="$(realpath -- "${BASH_SOURCE[0]}")"
readonly SCRIPT
# Connection settings from the caller's environment must not redirect our own psql calls.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE \
  PGGSSENCMODE PGPASSFILE PGPASSWORD PGDATA PGTARGETSESSIONATTRS PGREQUIRESSL

readonly PG_BIN="${PGRELAY_PG_BIN:-/usr/lib/postgresql/15/bin}"
readonly BASE_PORT="${PGRELAY_CLUSTER_BASE_PORT:-15432}"
readonly NODES=(primary replica1 replica2)
readonly HOST=127.0.0.1
readonly STREAM_TIMEOUT=60

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
say() { echo "cluster.sh: $*"; }

usage() {
  sed -n '2,8p' "$SCRIPT" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

# ---- arguments ------------------------------------------------------------------------------
CMD="${1:-}"
[[ -n "$CMD" ]] || usage
shift
DIR="${PGRELAY_CLUSTER_DIR:-/tmp/pgrelay-cluster}"
DESTROY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --destroy) DESTROY=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done
[[ -n "$DIR" ]] || die "empty --dir"
DIR="$(realpath -m -- "$DIR")"
case "$DIR" in
  /|/tmp|/var|/usr|/etc|/home|/root|/var/lib/postgresql*|/var/run/postgresql*|/run/postgresql*)
    die "refusing to use '$DIR' as a cluster directory" ;;
esac
[[ "$DESTROY" == 0 || "$CMD" == stop ]] || die "--destroy only goes with stop"
ENV_FILE="$DIR/cluster.env"
# Run from a directory every user can enter (the postgres user cannot enter e.g. /root).
cd /

[[ -x "$PG_BIN/postgres" ]] || die "PostgreSQL server binaries not found in $PG_BIN (run scripts/install-deps.sh)"

# ---- helpers --------------------------------------------------------------------------------
ME="$(id -un)"
# Runs a command as the user who owns the data directories: postgres when we are root.
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
PG_OWNER="$([[ "$(id -u)" == 0 ]] && echo postgres || echo "$ME")"

datadir() { echo "$DIR/$1"; }

node_port() {  # the port a node's data dir is configured for (empty if none)
  local f
  f="$(datadir "$1")/pgrelay_node.conf"
  [[ -f "$f" ]] || return 0
  sed -n "s/^port *= *\([0-9][0-9]*\).*/\1/p" "$f" | tail -n1
}

is_running() {  # pg_ctl status: 0 = running
  local d
  d="$(datadir "$1")"
  [[ -f "$d/PG_VERSION" ]] || return 1
  as_pg "$PG_BIN/pg_ctl" -D "$d" status >/dev/null 2>&1
}

port_in_use() {
  local p="$1"
  if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then return 0; fi
  if (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then return 0; fi
  [[ -e "$DIR/.s.PGSQL.$p" ]] && return 0
  return 1
}

TAKEN=()
PICKED=""
pick_port() {  # sets PICKED to the first free port >= BASE_PORT not yet handed out by this run
  local p="$BASE_PORT" t skip
  while [[ "$p" -lt 32768 ]]; do
    skip=0
    for t in "${TAKEN[@]}"; do [[ "$t" == "$p" ]] && skip=1; done
    if [[ "$skip" == 0 ]] && ! port_in_use "$p"; then
      TAKEN+=("$p"); PICKED="$p"; return 0
    fi
    p=$((p + 1))
  done
  die "no free TCP port between $BASE_PORT and 32767"
}

psql_primary() {  # psql as the superuser on the primary; extra args follow
  local port
  port="$(node_port primary)"
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$port" -U postgres "$@"
}

write_node_conf() {  # per-node settings (basebackup copies the primary's; we overwrite them)
  local node="$1" port="$2"
  as_pg tee "$(datadir "$node")/pgrelay_node.conf" >/dev/null <<EOF
# Written by scripts/cluster.sh: per-node settings.
port = $port
cluster_name = '$node'
EOF
}

common_conf() {
  cat <<EOF

# ---- pgrelay test cluster (scripts/cluster.sh) ----
listen_addresses = '$HOST'
unix_socket_directories = '$DIR'
max_connections = 1100          # tests/bench/idle_rss.sh holds 1000 sessions
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
wal_log_hints = on
hot_standby = on
hot_standby_feedback = on
fsync = off                    # test clusters only
shared_preload_libraries = 'pg_stat_statements'
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql.log'
log_rotation_age = 0
log_rotation_size = 0
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = on
log_disconnections = off
include = 'pgrelay_node.conf'
EOF
}

hba_conf() {
  cat <<EOF
# Written by scripts/cluster.sh (loopback only).
# TYPE  DATABASE     USER       ADDRESS          METHOD
local   all          postgres                    trust
local   replication  all                         trust
local   all          all                         scram-sha-256
host    replication  all        127.0.0.1/32     trust
host    all          postgres   127.0.0.1/32     trust
host    all          trustuser  127.0.0.1/32     trust
host    all          md5user    127.0.0.1/32     md5
host    all          pwuser     127.0.0.1/32     password
host    all          all        127.0.0.1/32     scram-sha-256
EOF
}

start_node() {
  local node="$1" d
  d="$(datadir "$node")"
  if is_running "$node"; then
    return 0
  fi
  local port
  port="$(node_port "$node")"
  say "starting $node on $HOST:$port"
  # 9>&-: the server must not inherit the start lock (see cmd_start).
  if ! as_pg "$PG_BIN/pg_ctl" -D "$d" -l "$d/startup.log" -w -t 60 start >/dev/null 9>&-; then
    echo "---- $d/startup.log ----" >&2; tail -n 30 "$d/startup.log" >&2 || true
    echo "---- $d/log/postgresql.log ----" >&2; tail -n 30 "$d/log/postgresql.log" >&2 || true
    die "$node did not start"
  fi
}

# A stopped node whose port was taken meanwhile moves to a free one (replicas follow the primary).
fix_port_if_taken() {
  local node="$1" port
  is_running "$node" && return 0
  port="$(node_port "$node")"
  if [[ -n "$port" ]] && ! port_in_use "$port"; then
    return 0
  fi
  local newport
  pick_port
  newport="$PICKED"
  say "port ${port:-?} of $node is taken; moving $node to $newport"
  write_node_conf "$node" "$newport"
  if [[ "$node" == primary ]]; then
    local r
    for r in replica1 replica2; do
      local auto
      auto="$(datadir "$r")/postgresql.auto.conf"
      [[ -f "$auto" ]] && as_pg sed -i "s/port=$port\b/port=$newport/" "$auto"
    done
  fi
}

init_primary() {
  local d port
  d="$(datadir primary)"
  pick_port
  port="$PICKED"
  say "initializing primary in $d (port $port)"
  rm -rf "$d"
  as_pg mkdir -m 0700 "$d"
  as_pg "$PG_BIN/initdb" -D "$d" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$DIR/initdb.log" 2>&1 ||
    { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
  common_conf | as_pg tee -a "$d/postgresql.conf" >/dev/null
  hba_conf | as_pg tee "$d/pg_hba.conf" >/dev/null
  write_node_conf primary "$port"
}

setup_primary_objects() {  # roles, database, grants; once per cluster (marker file)
  local marker
  marker="$(datadir primary)/pgrelay_setup.done"
  [[ -f "$marker" ]] && return 0
  say "creating roles and database app"
  psql_primary -d postgres <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE app LOGIN PASSWORD 'secret';
CREATE ROLE pwuser LOGIN PASSWORD 'pwsecret';
CREATE ROLE trustuser LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD 'md5secret';
RESET password_encryption;
CREATE DATABASE app OWNER app;
SQL
  psql_primary -d app <<'SQL'
GRANT CONNECT ON DATABASE app TO app, md5user, pwuser, trustuser;
GRANT CREATE, USAGE ON SCHEMA public TO app, md5user, pwuser, trustuser;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
-- pgrelay's health probes log in as the backend user or the first configured user; pg_monitor
-- lets them see pg_stat_wal_receiver / pg_stat_replication in full.
GRANT pg_monitor TO app, md5user, pwuser, trustuser;
SQL
  for slot in replica1 replica2; do
    psql_primary -d postgres -c \
      "SELECT pg_create_physical_replication_slot('$slot') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$slot')" >/dev/null
  done
  as_pg touch "$marker"
}

init_replica() {
  local node="$1" d port
  d="$(datadir "$node")"
  pick_port
  port="$PICKED"
  say "cloning $node from the primary into $d (port $port)"
  rm -rf "$d"
  as_pg mkdir -m 0700 "$d"
  psql_primary -d postgres -c \
    "SELECT pg_create_physical_replication_slot('$node') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$node')" >/dev/null
  as_pg "$PG_BIN/pg_basebackup" -h "$HOST" -p "$(node_port primary)" -U postgres -D "$d" \
    -R -X stream -S "$node" -c fast >"$DIR/basebackup-$node.log" 2>&1 ||
    { cat "$DIR/basebackup-$node.log" >&2; die "pg_basebackup for $node failed"; }
  as_pg rm -rf "$d/log" "$d/startup.log" "$d/pgrelay_setup.done"
  write_node_conf "$node" "$port"
}

wait_streaming() {
  local deadline=$((SECONDS + STREAM_TIMEOUT)) n=""
  while [[ $SECONDS -lt $deadline ]]; do
    n="$(psql_primary -d postgres -Atc \
      "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || true)"
    [[ "$n" == 2 ]] && return 0
    sleep 0.5
  done
  psql_primary -d postgres -c "SELECT application_name, state, sent_lsn, replay_lsn FROM pg_stat_replication" >&2 || true
  die "replicas not streaming after ${STREAM_TIMEOUT}s (found ${n:-?}); see $DIR/*/log/postgresql.log"
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  {
    echo "# Written by scripts/cluster.sh; source it or parse KEY=VALUE lines."
    printf 'PGRELAY_CLUSTER_DIR=%q\n' "$DIR"
    printf 'PGRELAY_PG_BIN=%q\n' "$PG_BIN"
    echo "PGRELAY_PG_HOST=$HOST"
    echo "PGRELAY_PG_PRIMARY_PORT=$(node_port primary)"
    echo "PGRELAY_PG_REPLICA1_PORT=$(node_port replica1)"
    echo "PGRELAY_PG_REPLICA2_PORT=$(node_port replica2)"
    printf 'PGRELAY_PG_SOCKET_DIR=%q\n' "$DIR"
    echo "PGRELAY_PG_SUPERUSER=postgres"
    echo "PGRELAY_PG_DATABASE=app"
    echo "PGRELAY_PG_APP_USER=app"
    echo "PGRELAY_PG_APP_PASSWORD=secret"
  } >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# ---- commands -------------------------------------------------------------------------------
cmd_start() {
  if [[ ! -d "$DIR" ]]; then
    mkdir -p "$DIR"
  fi
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres: "$DIR"
  fi
  chmod 0755 "$DIR"
  as_pg test -w "$DIR" -a -x "$DIR" ||
    die "user $PG_OWNER cannot write $DIR (is a parent directory closed to it?)"

  # One start at a time per machine: port picking must not race with another cluster's start.
  exec 9>"/tmp/pgrelay-cluster.$(id -u).lock"
  flock -w 300 9 || die "timed out waiting for another cluster.sh start"

  local all_running=1 node
  for node in "${NODES[@]}"; do is_running "$node" || all_running=0; done
  if [[ "$all_running" == 1 && -f "$ENV_FILE" ]]; then
    say "cluster in $DIR is already running"
    cmd_status_lines
    return 0
  fi

  # Ports configured for our own nodes are reserved: a node that must move never takes a sibling's.
  for node in "${NODES[@]}"; do
    [[ -z "$(node_port "$node")" ]] || TAKEN+=("$(node_port "$node")")
  done

  # Primary: create if absent (or half-created), else start.
  if [[ ! -f "$(datadir primary)/PG_VERSION" || ! -f "$(datadir primary)/pgrelay_node.conf" ]]; then
    init_primary
  else
    fix_port_if_taken primary
  fi
  start_node primary
  setup_primary_objects

  for node in replica1 replica2; do
    if [[ ! -f "$(datadir "$node")/PG_VERSION" || ! -f "$(datadir "$node")/pgrelay_node.conf" ]]; then
      init_replica "$node"
    else
      fix_port_if_taken "$node"
    fi
    start_node "$node"
  done

  wait_streaming
  write_env
  say "cluster ready (env: $ENV_FILE)"
  cmd_status_lines
}

cmd_status_lines() {  # prints one line per node; returns 0 iff all running
  local node ok=0 port role
  for node in "${NODES[@]}"; do
    port="$(node_port "$node")"
    if [[ ! -f "$(datadir "$node")/PG_VERSION" ]]; then
      printf '  %-9s %-16s %s\n' "$node" "-" "absent"; ok=1; continue
    fi
    if is_running "$node"; then
      role="$("$PG_BIN/psql" -X -Atq -h "$HOST" -p "$port" -U postgres -d postgres -c \
        "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END" 2>/dev/null || echo '?')"
      printf '  %-9s %-16s running (%s)\n' "$node" "$HOST:$port" "$role"
    else
      printf '  %-9s %-16s stopped\n' "$node" "$HOST:$port"; ok=1
    fi
  done
  return "$ok"
}

cmd_status() {
  if [[ ! -d "$DIR" ]]; then
    say "no cluster in $DIR"; return 1
  fi
  echo "cluster in $DIR:"
  cmd_status_lines
}

cmd_stop() {
  local node d
  if [[ -d "$DIR" ]]; then
    for node in replica2 replica1 primary; do
      d="$(datadir "$node")"
      if is_running "$node"; then
        say "stopping $node"
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null ||
          die "could not stop $node ($d)"
      fi
    done
    # Extra nodes that tests may have added under DIR (e.g. re-cloned ones).
    for d in "$DIR"/*/; do
      d="${d%/}"
      [[ -f "$d/postmaster.pid" && -f "$d/PG_VERSION" ]] || continue
      if as_pg "$PG_BIN/pg_ctl" -D "$d" status >/dev/null 2>&1; then
        say "stopping $(basename "$d")"
        as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null || die "could not stop $d"
      fi
    done
  else
    say "no cluster in $DIR"
  fi
  if [[ "$DESTROY" == 1 && -d "$DIR" ]]; then
    # Only remove a directory that is one of our clusters (or empty).
    if [[ -f "$ENV_FILE" || -f "$(datadir primary)/pgrelay_node.conf" || -z "$(ls -A "$DIR")" ]]; then
      rm -rf -- "$DIR"
      say "removed $DIR"
    else
      die "not removing $DIR: it does not look like a cluster.sh directory"
    fi
  fi
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE (run: scripts/cluster.sh start --dir $DIR)"
  cat "$ENV_FILE"
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h|--help|help) usage 0 ;;
  *) die "unknown command '$CMD' (start|stop|status|env)" ;;
esac
