#!/usr/bin/env bash
# Benchmark (not a test): pgrelay side by side with PgBouncer, HAProxy (TCP mode) and Pgpool-II,
# all from Debian 12 packages, on loopback, in the same run. Targets, interleaved in every round
# (direct, pgbouncer, haproxy, pgpool, pgrelay-leader, pgrelay-follower, pgrelay-read-your-writes,
# pgrelay-quorum, then the next round) to cancel drift:
#   direct            the primary itself
#   pgbouncer         PgBouncer, session pooling, to the primary (SCRAM, userlist.txt)
#   haproxy           HAProxy, mode tcp, nbthread 2, to the primary
#   pgpool            Pgpool-II, streaming-replication mode, load balancing over all three nodes
#   pgrelay-leader    pgrelay, routing.strategy leader
#   pgrelay-follower  pgrelay, routing.strategy follower
#   pgrelay-read-your-writes, pgrelay-quorum  pgrelay under the consistency strategies
#   pgrelay-leader-pool, pgrelay-follower-pool  leader / follower with pool.mode session (server
#                     connections kept between client sessions, as PgBouncer does)
# Workloads: pgbench -S (select-only) with each --modes protocol at each --clients count, and the
# TPC-B-like default mix (first of --modes) at each --clients count.
#
#   tests/bench/peers_bench.sh [--seconds 10] [--rounds 2] [--clients "1 8 64"]
#       [--modes "simple extended prepared"] [--targets "direct pgbouncer ..."] [--quick]
#       [--no-build] [--out FILE] [--keep] [--tls] [--settle SECONDS] [--relay-yaml LINE]...
#       [--syscalls] [--relay-routing "KEY: VALUE, ..."] [--connect]
#
#   --tls       clients use TLS (sslmode=require) to the proxies; targets direct (plain, the
#               baseline), pgbouncer and pgrelay unless --targets says otherwise
#   --quick     smoke run: -T 2, 1 round, 8 clients, simple protocol (later options override)
#   --no-build  use build/release/proxy/pgrelay as it is (same as PGRELAY_BENCH_NO_BUILD=1)
#   --targets   a subset of the targets above, in that order (default: all ten)
#   --out FILE  where the Markdown report goes (default: $work/peers.md, removed with the work
#               directory at exit); it is printed at the end either way
#   --keep      keep the work directory (configs, proxy logs) at exit
#   --relay-yaml LINE  appended to every pgrelay's config (repeatable), e.g. "workers: 1"
#   --relay-routing "KEY: VALUE, ..."  added to every pgrelay's routing map, e.g.
#               "replica_affinity: session"
#   --connect   every transaction on a new connection (pgbench -C): what short-lived clients
#               (PHP, serverless, scripts) cost; TPS then includes the logins
#   --syscalls  also count each proxy's system calls and context switches per transaction
#               (perf stat on its process tree for the whole pgbench run, logins included; a
#               second table). Needs perf (Debian linux-perf) and root.
#   --settle S  before each run, pause S seconds (default 1) and then wait (up to 10 s) until no
#               node has an active client statement left from the previous target, so one
#               target's aftermath (server processes exiting, a pooler resetting its
#               connections) is not measured against the next
#
# Before each measured run an unmeasured warm-up (the same number of clients, each holding its
# session for 0.5 s) fills the poolers' server connections, as a long-running application would.
# Per target and workload: TPS ("without initial connection time"), average latency, p50/p99
# transaction latency (pgbench -l logs; per-round percentiles, averaged over rounds) and the CPU
# the proxy used per 1000 transactions: utime+stime of its whole process tree (/proc/PID/stat,
# reaped children included; sampled every 0.2 s) between the first transaction's start and the
# last one's end, so the logins (SCRAM) before the run are not counted. pgbench -T includes the
# logins: with many clients on a slow machine keep --seconds well above "initial connection time".
#
# Runs as root: installs pgbouncer, haproxy, pgpool2 with apt-get when their commands are missing
# (with a policy-rc.d that keeps their system services from starting) and stops those services;
# its own instances listen on free 127.0.0.1 ports with configs in the work directory
# (pgbouncer and pgpool as the postgres user). Uses the local cluster of scripts/cluster.sh (started
# if not running) and the release build, like the other benchmarks (tests/bench/lib.sh).
# Everything started is stopped at exit, except the cluster, which stays running for the next
# run (scripts/cluster.sh stop --dir /tmp/pgrelay-cluster). Uses all cores: run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$PATH:/usr/sbin:/sbin

seconds=10 rounds=2 clients_list="1 8 64" modes="simple extended prepared" out="" keep=0 tls=0
settle=1 relay_extra=() syscalls=0 connect=0
all_targets="direct pgbouncer haproxy pgpool pgrelay-leader pgrelay-leader-pool pgrelay-follower pgrelay-follower-pool pgrelay-read-your-writes pgrelay-quorum"
target_list=$all_targets
targets_given=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --clients) clients_list=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --targets) target_list=$2; targets_given=1; shift 2 ;;
    --tls) tls=1; shift ;;
    --keep) keep=1; shift ;;
    --settle) settle=$2; shift 2 ;;
    --relay-yaml) relay_extra+=("$2"); shift 2 ;;
    --syscalls) syscalls=1; shift ;;
    --connect) connect=1; shift ;;
    --relay-routing) relay_routing=$2; shift 2 ;;
    --quick) seconds=2 rounds=1 clients_list=8 modes=simple; shift ;;
    --no-build) export PGRELAY_BENCH_NO_BUILD=1; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "peers_bench: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
# --tls: the clients connect to the proxies with sslmode=require (a self-signed certificate made
# here); direct stays plain text as the baseline. Of the peers only PgBouncer terminates TLS.
if [ "$tls" = 1 ] && [ "$targets_given" = 0 ]; then
  target_list="direct pgbouncer pgrelay-leader pgrelay-follower"
fi
say() { echo "peers_bench: $*" >&2; }
die() { say "error: $*"; exit 1; }
targets=()
for t in $all_targets; do  # in the canonical order
  case " $target_list " in *" $t "*) targets+=("$t") ;; esac
done
for t in $target_list; do
  case " $all_targets " in *" $t "*) ;; *) die "unknown target $t (one of: $all_targets)" ;; esac
done
[ ${#targets[@]} -gt 0 ] || die "no targets"
want() { case " ${targets[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
[ "$(id -u)" = 0 ] || die "run as root (installs packages, runs pgbouncer/pgpool as postgres)"
[ "$syscalls" = 0 ] || command -v perf >/dev/null || die "--syscalls needs perf (apt-get install linux-perf)"

# ---- packages ------------------------------------------------------------------------------
system_services=(pgbouncer haproxy pgpool2)
install_peers() {
  local need=() policy=/usr/sbin/policy-rc.d made_policy=0
  command -v pgbouncer >/dev/null || need+=(pgbouncer)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v pgpool >/dev/null || need+=(pgpool2)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    if [ ! -e "$policy" ]; then  # keep the packages' services from starting at install
      printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; made_policy=1
    fi
    local pkg
    for pkg in "${need[@]}"; do
      if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -qq; break
      fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
      >/dev/null
    [ "$made_policy" = 0 ] || rm -f "$policy"
  fi
  local s
  for s in "${system_services[@]}"; do  # the packages' own services must not run
    [ -x "/etc/init.d/$s" ] || continue
    if service "$s" status >/dev/null 2>&1; then
      say "stopping the system service $s"; service "$s" stop >/dev/null 2>&1 || true
    fi
    if [ "$(systemctl is-system-running 2>/dev/null || true)" != offline ] &&
        command -v systemctl >/dev/null; then
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    else
      update-rc.d "$s" disable >/dev/null 2>&1 || true
    fi
  done
  for s in pgbouncer haproxy pgpool; do command -v "$s" >/dev/null || die "$s not installed"; done
}
install_peers

# ---- cluster, pgrelay build, work directory (tests/bench/lib.sh) ------------------------------
# shellcheck source=tests/bench/lib.sh
source "$root/tests/bench/lib.sh"
bench_setup
chmod 755 "$work"
[ -n "$out" ] || out=$work/peers.md
app=$PGRELAY_PG_APP_USER db=$PGRELAY_PG_DATABASE primary=$PGRELAY_PG_PRIMARY_PORT
relay_tls=()
if [ "$tls" = 1 ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$work/tls.key" -out "$work/tls.crt" >/dev/null 2>&1
  relay_tls=("tls: {mode: require, cert_file: $work/tls.crt, key_file: $work/tls.key}")
fi
max_clients=0
for c in $clients_list; do [ "$c" -le "$max_clients" ] || max_clients=$c; done
pgpool_children=$((max_clients + 6))  # every client gets a child; max_pool 1
# While one target runs, the poolers may still hold idle server connections from their own runs
# (they close them after 5 s): the primary must take about three times the clients.
max_conn=$(psql -X -h 127.0.0.1 -p "$primary" -U "$app" -Atc 'show max_connections' "$db")
[ $((3 * max_clients + 20)) -le "$max_conn" ] ||
  say "warning: max_connections $max_conn on the cluster may be too low for $max_clients clients"

peer_pids=()      # pgbouncer, haproxy, pgpool (main processes)
pgpool_pid="" sampler_pid=""
peers_cleanup() {
  local rc=$? p deadline
  [ -z "$sampler_pid" ] || kill "$sampler_pid" 2>/dev/null || true
  if [ -n "$pgpool_pid" ] && kill -0 "$pgpool_pid" 2>/dev/null; then
    local kids
    kids=$(helper pids "$pgpool_pid" || true)
    kill -INT "$pgpool_pid" 2>/dev/null || true  # fast shutdown
    deadline=$((SECONDS + 10))
    while kill -0 "$pgpool_pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    for p in $kids; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  for p in "${peer_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ] && [ -n "$work" ]; then say "keeping $work"; work=""; fi
  bench_cleanup || true
  exit "$rc"
}
trap peers_cleanup EXIT
trap 'exit 130' INT TERM

# Helper (python3): "pids PID" lists PID and its descendants; "sample PID FILE" appends
# "unix-time ticks" every 0.2 s, ticks = utime+stime+cutime+cstime (/proc/PID/stat fields 14-17,
# so reaped children count) summed over PID's process tree; "analyze DIR SAMPLES|-" reads
# pgbench -l logs and prints "transactions p50_ms p99_ms cpu_ticks" where cpu_ticks is the tree's
# CPU between the first transaction's start and the last one's end (logins excluded), interpolated
# between samples ("-" without samples).
helper() { /usr/bin/python3 "$work/peers_helper.py" "$@"; }
write_helper() {
  cat >"$work/peers_helper.py" <<'PY'
import glob, math, os, sys, time

def scan():
    procs = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            t = stat(int(d))
            if t:
                procs[int(d)] = t
    return procs

def stat(pid):  # (ppid, ticks) or None
    try:
        with open(f'/proc/{pid}/stat') as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(')') + 2:].split()  # f[0] is field 3 (state)
    return int(f[1]), sum(int(x) for x in f[11:15])

def tree(root, procs):
    kids = {}
    for p, (pp, _) in procs.items():
        kids.setdefault(pp, []).append(p)
    seen, stack = [], [root]
    while stack:
        p = stack.pop()
        if p in procs:
            seen.append(p)
            stack.extend(kids.get(p, []))
    return seen

def sample(root, path):
    parent = os.getppid()
    with open(path, 'a') as out:
        pids, rescan = [], 0.0
        while os.getppid() == parent and stat(root):  # never outlive the script or the proxy
            now = time.time()
            if now >= rescan:
                pids, rescan = tree(root, scan()), now + 1.0
            ticks = 0
            for p in pids:
                t = stat(p)
                if t:
                    ticks += t[1]
            out.write(f'{now:.6f} {ticks}\n')
            out.flush()
            time.sleep(0.2)

def analyze(logdir, samples_path):
    lat, first, last = [], math.inf, 0.0
    for name in glob.glob(os.path.join(logdir, 'tx.*')):
        with open(name) as f:
            for line in f:
                v = line.split()
                us = int(v[2])
                end = int(v[4]) + int(v[5]) / 1e6
                lat.append(us)
                first = min(first, end - us / 1e6)
                last = max(last, end)
    if not lat:
        print('0 - - -')
        return
    lat.sort()
    q = lambda x: lat[min(len(lat) - 1, max(0, math.ceil(x * len(lat)) - 1))] / 1000
    cpu = '-'
    if samples_path != '-':
        pts = []
        with open(samples_path) as f:
            for line in f:
                v = line.split()
                if len(v) == 2:
                    pts.append((float(v[0]), int(v[1])))
        def at(t):
            if t <= pts[0][0]:
                return pts[0][1]
            for (t0, c0), (t1, c1) in zip(pts, pts[1:]):
                if t <= t1:
                    return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
            return pts[-1][1]
        if pts:
            cpu = f'{at(last) - at(first):.2f}'
    print(len(lat), f'{q(0.50):.3f}', f'{q(0.99):.3f}', cpu)

cmd = sys.argv[1]
if cmd == 'pids':
    print(' '.join(map(str, tree(int(sys.argv[2]), scan()))))
elif cmd == 'sample':
    sample(int(sys.argv[2]), sys.argv[3])
elif cmd == 'analyze':
    analyze(sys.argv[2], sys.argv[3])
PY
}
write_helper

wait_port() {  # port seconds name
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt "$deadline" ]; do
    if psql -X -h 127.0.0.1 -p "$1" -U "$app" -Atqc 'select 1' "$db" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.3
  done
  psql -X -h 127.0.0.1 -p "$1" -U "$app" -Atqc 'select 1' "$db" >&2 || true
  die "$3 on port $1 does not answer after $2 s (logs in $work/$3/)"
}

peer_dir() {  # name -> a directory the postgres user owns
  mkdir -p "$work/$1"; chown postgres: "$work/$1"; chmod 700 "$work/$1"
}

# ---- PgBouncer: session pooling to the primary ---------------------------------------------
start_pgbouncer() {
  local d=$work/pgbouncer port
  port=$(free_port); peer_dir pgbouncer
  printf '"%s" "%s"\n' "$app" "$PGRELAY_PG_APP_PASSWORD" >"$d/userlist.txt"
  cat >"$d/pgbouncer.ini" <<EOF
[databases]
$db = host=127.0.0.1 port=$primary dbname=$db

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
pool_mode = session
max_client_conn = $((max_clients + 100))
default_pool_size = $max_clients
max_db_connections = $max_clients
server_idle_timeout = 5
logfile = $d/pgbouncer.log
pidfile = $d/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
  if [ "$tls" = 1 ]; then
    cp "$work/tls.crt" "$work/tls.key" "$d/"
    printf 'client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n' \
      "$d/tls.crt" "$d/tls.key" >>"$d/pgbouncer.ini"
  fi
  chown postgres: "$d"/*; chmod 600 "$d"/*
  setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$d/pgbouncer.ini" \
    >"$d/stdout.log" 2>&1 &
  peer_pids+=($!); pid_of[pgbouncer]=$!; port_of[pgbouncer]=$port
  wait_port "$port" 20 pgbouncer
}

# ---- HAProxy: TCP mode to the primary, 2 threads --------------------------------------------
start_haproxy() {
  local d=$work/haproxy port
  port=$(free_port); mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 2000

defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h

frontend pg
  bind 127.0.0.1:$port
  default_backend primary

backend primary
  server primary 127.0.0.1:$primary
EOF
  haproxy -db -f "$d/haproxy.cfg" >"$d/haproxy.log" 2>&1 &
  peer_pids+=($!); pid_of[haproxy]=$!; port_of[haproxy]=$port
  wait_port "$port" 20 haproxy
}

# ---- Pgpool-II: streaming replication, load balancing over the three nodes ------------------
start_pgpool() {
  local d=$work/pgpool port pcp i node_ports
  port=$(free_port); pcp=$(free_port); peer_dir pgpool
  node_ports=("$primary" "$PGRELAY_PG_REPLICA1_PORT" "$PGRELAY_PG_REPLICA2_PORT")
  {
    cat <<EOF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$d'
pcp_listen_addresses = '127.0.0.1'
pcp_port = $pcp
pcp_socket_dir = '$d'
pid_file_name = '$d/pgpool.pid'
logdir = '$d'
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
use_watchdog = off
num_init_children = $pgpool_children
max_pool = 1
reserved_connections = 0
child_life_time = 0
connection_life_time = 5
enable_pool_hba = on
pool_passwd = 'pool_passwd'
authentication_timeout = 60
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 0
sr_check_user = '$app'
sr_check_password = '$PGRELAY_PG_APP_PASSWORD'
sr_check_database = '$db'
delay_threshold = 0
health_check_period = 0
failover_command = ''
failback_command = ''
failover_on_backend_error = off
search_primary_node_timeout = 30
memory_cache_enabled = off
EOF
    for i in 0 1 2; do
      cat <<EOF
backend_hostname$i = '127.0.0.1'
backend_port$i = ${node_ports[$i]}
backend_weight$i = 1
backend_flag$i = 'DISALLOW_TO_FAILOVER'
backend_application_name$i = 'node$i'
EOF
    done
  } >"$d/pgpool.conf"
  printf '%s:TEXT%s\n' "$app" "$PGRELAY_PG_APP_PASSWORD" >"$d/pool_passwd"
  printf 'host all all 127.0.0.1/32 scram-sha-256\n' >"$d/pool_hba.conf"
  : >"$d/pcp.conf"
  chown postgres: "$d"/*; chmod 600 "$d"/*
  # -n: foreground; -D: ignore any saved node status (every start sees all three nodes up).
  setpriv --reuid=postgres --regid=postgres --init-groups pgpool -n -D -f "$d/pgpool.conf" \
    -F "$d/pcp.conf" -a "$d/pool_hba.conf" >"$d/pgpool.log" 2>&1 &
  pgpool_pid=$!; pid_of[pgpool]=$!; port_of[pgpool]=$port
  wait_port "$port" 90 pgpool
  local up
  up=$(psql -X -h 127.0.0.1 -p "$port" -U "$app" -Atc 'show pool_nodes' "$db" |
       awk -F'|' '$4 == "up" || $4 == "waiting" {n++} END {print n + 0}')
  [ "$up" = 3 ] || say "warning: pgpool sees $up of 3 nodes up: $(psql -X -h 127.0.0.1 -p "$port" \
    -U "$app" -Atc 'show pool_nodes' "$db" | tr '\n' ';')"
}

declare -A pid_of port_of
port_of[direct]=$primary
say "targets: ${targets[*]}"
want pgbouncer && start_pgbouncer
want haproxy && start_haproxy
want pgpool && start_pgpool
for t in pgrelay-leader pgrelay-leader-pool pgrelay-follower pgrelay-follower-pool \
         pgrelay-read-your-writes pgrelay-quorum; do
  want "$t" || continue
  s=${t#pgrelay-}; s=${s%-pool}
  pool=()
  [[ $t == *-pool ]] && pool=("pool: {mode: session}")
  start_relay "$s" "${relay_tls[@]}" "${relay_extra[@]}" "${pool[@]}"
  port_of[$t]=$relay_port; pid_of[$t]=${pids[-1]}
  wait_port "$relay_port" 20 "$t"
done
printf 'SELECT 1;\n\\sleep 500 ms\n' >"$work/warmup.sql"

# ---- workloads -----------------------------------------------------------------------------
workloads=()  # "kind mode clients"
for m in $modes; do for c in $clients_list; do workloads+=("select-only $m $c"); done; done
first_mode=${modes%% *}
for c in $clients_list; do workloads+=("tpcb $first_mode $c"); done

clk_tck=$(getconf CLK_TCK)
declare -A n_ok n_fail tps_sum lat_sum p50_sum p99_sum tx_sum cpu_sum sys_sum cs_sum sys_tx

settle_nodes() {  # pause, then until no node runs a client statement (at most 10 s)
  sleep "$settle"
  local deadline=$((SECONDS + 10)) busy p
  local ports=("$primary" "$PGRELAY_PG_REPLICA1_PORT" "$PGRELAY_PG_REPLICA2_PORT")
  while [ $SECONDS -lt $deadline ]; do
    busy=0
    for p in "${ports[@]}"; do
      busy=$(( busy + $(psql -X -Atq -h 127.0.0.1 -p "$p" -U "$app" -c "select count(*) from \
        pg_stat_activity where backend_type = 'client backend' and state = 'active' \
        and pid <> pg_backend_pid()" "$db" 2>/dev/null || echo 0) ))
    done
    [ "$busy" = 0 ] && return 0
    sleep 0.2
  done
}

run_one() {  # workload target round
  local kind mode c
  read -r kind mode c <<<"$1"
  local target=$2 key="$1|$2" dir=$work/run-$RANDOM$RANDOM port=${port_of[$2]} j=2 args=()
  [ "$c" -ge 2 ] || j=1
  [ "$kind" = select-only ] && args+=(-S)
  [ "$connect" = 1 ] && args+=(-C)
  local sslmode=disable  # PGSSLMODE for the pgbench runs only
  [ "$tls" = 1 ] && [ "$target" != direct ] && sslmode=require
  if [ "$kind" = tpcb ]; then  # what pgbench's own vacuum step does, directly on the primary
    psql -X -q -h 127.0.0.1 -p "$primary" -U "$app" -c 'vacuum pgbench_branches' \
      -c 'vacuum pgbench_tellers' -c 'truncate pgbench_history' "$db" >/dev/null
  fi
  settle_nodes
  # Warm-up (unmeasured): every client opens its session and holds it for 0.5 s.
  PGSSLMODE=$sslmode pgbench -h 127.0.0.1 -p "$port" -U "$app" -n -f "$work/warmup.sql" -c "$c" \
    -j "$j" -t 1 "$db" \
    >/dev/null 2>&1 || say "round $3: $1 $target: warm-up failed"
  mkdir -p "$dir"
  local samples=- output
  sampler_pid=""
  if [ -n "${pid_of[$target]:-}" ]; then
    samples=$dir/cpu
    /usr/bin/python3 "$work/peers_helper.py" sample "${pid_of[$target]}" "$samples" &
    sampler_pid=$!  # python itself (not a subshell), so that kill stops it
  fi
  local perf_pid=""
  if [ "$syscalls" = 1 ] && [ -n "${pid_of[$target]:-}" ]; then
    local tree
    tree=$(ps -e -o pid=,ppid= | awk -v root="${pid_of[$target]}" '
      { parent[$1] = $2 } END { for (p in parent) { q = p
        while (q != "" && q != root && q != 1 && q != 0) q = parent[q]
        if (q == root) printf "%s%s", (n++ ? "," : ""), p } }')
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$tree" -o "$dir/perf" &
    perf_pid=$!
  fi
  output=$(PGSSLMODE=$sslmode pgbench -h 127.0.0.1 -p "$port" -U "$app" -n "${args[@]}" -M "$mode" \
             -c "$c" -j "$j" \
             -T "$seconds" -l --log-prefix="$dir/tx" "$db" 2>&1) || true
  if [ -n "$sampler_pid" ]; then  # one more sample after the last transaction, then stop
    sleep 0.3; kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true
    sampler_pid=""
  fi
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
  fi
  local tps lat tx p50 p99 ticks
  tps=$(awk '/^tps = / {print $3}' <<<"$output")
  lat=$(awk '/^latency average = / {print $4}' <<<"$output")
  read -r tx p50 p99 ticks < <(helper analyze "$dir" "$samples")
  local nsys="" ncs=""
  if [ -n "$perf_pid" ] && [ -s "$dir/perf" ]; then
    nsys=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$dir/perf")
    ncs=$(awk -F, '$3 == "context-switches" {print $1}' "$dir/perf")
  fi
  rm -rf "$dir"
  if [ -z "$tps" ] || [ -z "$lat" ] || [ "$tx" = 0 ] || grep -qi 'error\|abort' <<<"$output"; then
    n_fail[$key]=$(( ${n_fail[$key]:-0} + 1 ))
    if [ "$tx" = 0 ]; then
      say "round $3: $1 $target FAILED (no transaction: did the logins take all of -T $seconds?):"
    else
      say "round $3: $1 $target FAILED:"
    fi
    { grep -i -m 5 'error\|abort\|fatal' <<<"$output" || tail -n 4 <<<"$output"
      grep '^initial connection time' <<<"$output" || true; } | sed 's/^/  /' >&2
    return 0
  fi
  n_ok[$key]=$(( ${n_ok[$key]:-0} + 1 ))
  if [ -n "$perf_pid" ]; then
    if [[ "$nsys" =~ ^[0-9]+$ ]] && [[ "$ncs" =~ ^[0-9]+$ ]]; then
      sys_sum[$key]=$(( ${sys_sum[$key]:-0} + nsys )); cs_sum[$key]=$(( ${cs_sum[$key]:-0} + ncs ))
      sys_tx[$key]=$(( ${sys_tx[$key]:-0} + tx ))
    fi
  fi
  tps_sum[$key]=$(awk -v a="${tps_sum[$key]:-0}" -v b="$tps" 'BEGIN {print a + b}')
  lat_sum[$key]=$(awk -v a="${lat_sum[$key]:-0}" -v b="$lat" 'BEGIN {print a + b}')
  p50_sum[$key]=$(awk -v a="${p50_sum[$key]:-0}" -v b="$p50" 'BEGIN {print a + b}')
  p99_sum[$key]=$(awk -v a="${p99_sum[$key]:-0}" -v b="$p99" 'BEGIN {print a + b}')
  local cpu=-
  if [ "$ticks" != - ]; then
    tx_sum[$key]=$(( ${tx_sum[$key]:-0} + tx ))
    cpu_sum[$key]=$(awk -v a="${cpu_sum[$key]:-0}" -v b="$ticks" 'BEGIN {print a + b}')
    cpu=$(awk -v t="$ticks" -v hz="$clk_tck" -v n="$tx" 'BEGIN {printf "%.3f", t / hz / n * 1000}')
  fi
  printf 'round %s: %-26s %-17s %9.0f tps  avg %7.3f ms  p50 %7.3f ms  p99 %8.3f ms  cpu %s s/1000tx\n' \
    "$3" "$1" "$target" "$tps" "$lat" "$p50" "$p99" "$cpu" >&2
}

say "${#workloads[@]} workloads x ${#targets[@]} targets x $rounds rounds x $seconds s"
for r in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    for t in "${targets[@]}"; do run_one "$w" "$t" "$r"; done
  done
done

pgpool_nodes=""
want pgpool && pgpool_nodes=$(psql -X -h 127.0.0.1 -p "${port_of[pgpool]}" -U "$app" -Atc \
  'show pool_nodes' "$db" |
  awk -F'|' '{printf "%s%s:%s %s %s selects", (NR > 1 ? ", " : ""), $2, $3, $4, $9}')

# ---- report --------------------------------------------------------------------------------
version_line() { "$@" 2>&1 | head -n 1 || true; }
pg_version=$(psql -X -h 127.0.0.1 -p "$primary" -U "$app" -Atc 'show server_version' "$db")
avg() {  # key sum-array-name -> average over successful rounds (empty if none)
  local -n arr=$2
  [ "${n_ok[$1]:-0}" -gt 0 ] || return 0
  awk -v s="${arr[$1]}" -v n="${n_ok[$1]}" 'BEGIN {printf "%.6f", s / n}'
}
{
  echo "# pgrelay vs PgBouncer, HAProxy, Pgpool-II"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
       "$(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)," \
       "kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "- PostgreSQL $pg_version (scripts/cluster.sh: primary + 2 streaming replicas, fsync off," \
       "loopback), pgbench scale 10, $(version_line pgbench --version)"
  echo "- $(version_line pgbouncer --version); $(version_line haproxy -v | awk '{print $1, $2, $3}');" \
       "$(version_line pgpool --version); $(version_line "$bin" --version) (release build)"
  [ "$connect" = 0 ] || echo "- --connect: pgbench -C, a new connection for every transaction (TPS includes the logins)"
  echo "- $seconds s per run, $rounds round(s), targets interleaved; pgbench -j 2 (-j 1 for 1 client);" \
       "p50/p99 per round from pgbench -l, averaged; proxy CPU = utime+stime of the proxy's process" \
       "tree (pgpool: all its processes) from the first transaction's start to the last one's end" \
       "(logins excluded), per 1000 transactions"
  echo "- pgbouncer: session pooling; haproxy: mode tcp, nbthread 2; pgpool: streaming replication," \
       "load balancing over 3 nodes, num_init_children $pgpool_children, max_pool 1; pgrelay: ${relay_extra[*]:-default workers (0: half the cores, every node being on this machine)}${relay_routing:+, routing: $relay_routing};" \
       "direct, pgbouncer, haproxy and pgrelay-leader(-pool) run everything on the primary"
  [ -z "$pgpool_nodes" ] || echo "- pgpool's nodes at the end (show pool_nodes): $pgpool_nodes"
  echo
  echo "| workload | target | TPS | ratio to direct | ratio to best of PgBouncer/HAProxy | avg ms | p50 ms | p99 ms | proxy CPU s / 1000 tx |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for w in "${workloads[@]}"; do
    read -r kind mode c <<<"$w"
    label="$kind -M $mode -c $c"
    direct_tps=$(avg "$w|direct" tps_sum)
    best=0
    for t in pgbouncer haproxy; do
      x=$(avg "$w|$t" tps_sum)
      [ -z "$x" ] || best=$(awk -v a="$best" -v b="$x" 'BEGIN {print (b > a) ? b : a}')
    done
    for t in "${targets[@]}"; do
      key="$w|$t"
      tps=$(avg "$key" tps_sum)
      if [ -z "$tps" ]; then
        echo "| $label | $t | failed | | | | | | |"; continue
      fi
      awk -v l="$label" -v t="$t" -v tps="$tps" -v d="${direct_tps:-0}" -v best="$best" \
          -v lat="$(avg "$key" lat_sum)" -v p50="$(avg "$key" p50_sum)" -v p99="$(avg "$key" p99_sum)" \
          -v cpu="${cpu_sum[$key]:-0}" -v tx="${tx_sum[$key]:-0}" -v hz="$clk_tck" \
          -v fail="${n_fail[$key]:-0}" 'BEGIN {
        rd = d > 0 ? sprintf("%.2f", tps / d) : "-"
        rb = (t ~ /^pgrelay/ && best > 0) ? sprintf("%.2f", tps / best) : "-"
        c = (t == "direct" || tx == 0) ? "-" : sprintf("%.3f", cpu / hz / tx * 1000)
        f = fail > 0 ? sprintf(" (%d failed)", fail) : ""
        printf "| %s | %s | %.0f%s | %s | %s | %.3f | %.3f | %.3f | %s |\n",
               l, t, tps, f, rd, rb, lat, p50, p99, c }'
    done
  done
  ratio() {  # workload target peer -> TPS ratio, or "-" when either failed
    local a b
    a=$(avg "$1|$2" tps_sum); b=$(avg "$1|$3" tps_sum)
    if [ -z "$a" ] || [ -z "$b" ]; then echo -; return; fi
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", ((b > 0) ? a / b : 0)}'
  }
  peers=(); relays=()
  for t in pgbouncer haproxy pgpool; do ! want "$t" || peers+=("$t"); done
  for t in "${targets[@]}"; do [[ $t != pgrelay* ]] || relays+=("$t"); done
  if [ ${#peers[@]} -gt 0 ] && [ ${#relays[@]} -gt 0 ]; then
    echo
    echo "pgrelay's TPS over each peer's, same rounds (above 1: pgrelay ahead):"
    echo
    printf '| workload | target'; printf ' | / %s' "${peers[@]}"; echo ' |'
    printf '|---|---'; for _ in "${peers[@]}"; do printf '|---'; done; echo '|'
    for w in "${workloads[@]}"; do
      read -r kind mode c <<<"$w"
      for t in "${relays[@]}"; do
        row="| $kind -M $mode -c $c | $t"
        for p in "${peers[@]}"; do row+=" | $(ratio "$w" "$t" "$p")"; done
        echo "$row |"
      done
    done
  fi
  # The performance targets of issue 8, as this run measured them.
  target_rows=()
  for w in "${workloads[@]}"; do
    read -r kind mode c <<<"$w"
    [ "$kind" = select-only ] || continue
    if [ "$c" = 8 ] && want pgrelay-leader && { want pgbouncer || want haproxy; }; then
      best=""
      for p in pgbouncer haproxy; do
        x=$(ratio "$w" pgrelay-leader "$p")
        [ "$x" = - ] || best=$(awk -v a="${best:-999}" -v b="$x" 'BEGIN {print ((b < a) ? b : a)}')
      done
      [ -z "$best" ] || target_rows+=("| leader ≥ 1.10× the best of PgBouncer/HAProxy, $mode, 8 clients | $best | $(awk -v r="$best" 'BEGIN {print ((r >= 1.1) ? "yes" : "no")}') |")
    fi
    if [ "$c" = 8 ] && want pgrelay-follower && want pgpool; then
      x=$(ratio "$w" pgrelay-follower pgpool)
      [ "$x" = - ] || target_rows+=("| follower ≥ 2.50× Pgpool-II, $mode, 8 clients | $x | $(awk -v r="$x" 'BEGIN {print ((r >= 2.5) ? "yes" : "no")}') |")
    fi
    if [ "$c" = 1 ] && want direct && want pgrelay-leader; then
      d=$(avg "$w|direct" lat_sum); x=$(avg "$w|pgrelay-leader" lat_sum)
      if [ -n "$d" ] && [ -n "$x" ]; then
        us=$(awk -v a="$x" -v b="$d" 'BEGIN {printf "%+.0f", (a - b) * 1000}')
        target_rows+=("| leader's added latency ≤ 15 µs, $mode, 1 client | $us µs | $(awk -v u="$us" 'BEGIN {print ((u + 0 <= 15) ? "yes" : "no")}') |")
      fi
    fi
  done
  if [ ${#target_rows[@]} -gt 0 ]; then
    echo
    echo "Issue 8's targets in this run (ratios are pgrelay's TPS over the peer's; for the best of"
    echo "two peers, over the faster one):"
    echo
    echo "| target | this run | met |"
    echo "|---|---|---|"
    printf '%s\n' "${target_rows[@]}"
  fi
  if [ "$syscalls" = 1 ]; then
    echo
    echo "System calls and context switches of the proxy per transaction (perf stat on its process" \
         "tree, the whole pgbench run):"
    echo
    echo "| workload | target | syscalls / tx | context switches / tx |"
    echo "|---|---|---|---|"
    for w in "${workloads[@]}"; do
      read -r kind mode c <<<"$w"
      for t in "${targets[@]}"; do
        key="$w|$t"
        [ "${sys_tx[$key]:-0}" -gt 0 ] || continue
        awk -v l="$kind -M $mode -c $c" -v t="$t" -v s="${sys_sum[$key]}" -v cs="${cs_sum[$key]}" \
            -v n="${sys_tx[$key]}" 'BEGIN {printf "| %s | %s | %.2f | %.2f |\n", l, t, s / n, cs / n}'
      done
    done
  fi
  echo
  one=()
  for w in "${workloads[@]}"; do read -r _ _ c <<<"$w"; [ "$c" != 1 ] || one+=("$w"); done
  if [ ${#one[@]} -eq 0 ]; then
    echo "Latency added over direct at 1 client: no 1-client runs (--clients has no 1)."
  else
    echo "Latency added over direct at 1 client (average latency difference, µs):"
    echo
    proxies=()
    for t in "${targets[@]}"; do [ "$t" = direct ] || proxies+=("$t"); done
    printf '| workload'; printf ' | %s' "${proxies[@]}"; echo ' |'
    printf '|---'; for _ in "${proxies[@]}"; do printf '|---'; done; echo '|'
    for w in "${one[@]}"; do
      read -r kind mode c <<<"$w"
      row="| $kind -M $mode"
      d=$(avg "$w|direct" lat_sum)
      for t in "${proxies[@]}"; do
        x=$(avg "$w|$t" lat_sum)
        if [ -z "$x" ] || [ -z "$d" ]; then row+=" | -"
        else row+=" | $(awk -v a="$x" -v b="$d" 'BEGIN {printf "%+.0f", (a - b) * 1000}')"; fi
      done
      echo "$row |"
    done
  fi
} >"$out"
echo
cat "$out"
[ "$out" != "$work/peers.md" ] || say "(the report above is removed with $work at exit; use --out FILE to keep it)"
