#!/usr/bin/env bash
# Benchmark (not a test): pgrelay's memory per idle client session. Starts a release pgrelay
# (`leader`) on the local cluster, opens N client sessions that stay idle (each holds its
# connection to the primary: pgrelay pools server connections per session, not per
# transaction), and prints pgrelay's resident memory (VmRSS from /proc) before and with them, and
# the difference per session.
#
#   tests/bench/idle_rss.sh [--sessions 1000] [--no-build]
#
# N is bounded by the cluster's max_connections (1100 in scripts/cluster.sh; a cluster made
# before that setting has 300: recreate it with scripts/cluster.sh stop --destroy) and by open
# files (two per session in pgrelay, one in this script).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
sessions=1000
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sessions) sessions=$2; shift 2 ;;
    --no-build) args+=(--no-build); shift ;;
    *) echo "idle_rss: unknown argument $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=tests/bench/lib.sh
source "$root/tests/bench/lib.sh"
bench_args "${args[@]}"
bench_setup
max_conn=$(psql -X -h 127.0.0.1 -p "$PGRELAY_PG_PRIMARY_PORT" -U "$PGRELAY_PG_APP_USER" -Atc \
  'show max_connections' "$PGRELAY_PG_DATABASE")
if [ "$max_conn" -lt $((sessions + 10)) ]; then
  echo "idle_rss: the cluster's max_connections is $max_conn, too low for $sessions sessions;" \
    "recreate it (scripts/cluster.sh stop --destroy --dir $cluster_dir) or pass --sessions" >&2
  exit 1
fi
# Two descriptors per session in pgrelay, one in the client below.
ulimit -n $((3 * sessions + 256)) 2>/dev/null || true
start_relay leader "limits: {max_client_connections: $((sessions + 100))}"
relay_pid=${pids[-1]}
export PGRELAY_PG_APP_USER PGRELAY_PG_APP_PASSWORD PGRELAY_PG_DATABASE

/usr/bin/python3 - "$relay_pid" "$relay_port" "$sessions" <<'PY'
import os, sys, time
import psycopg

pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def rss_kib() -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

def connect():
    return psycopg.connect(host="127.0.0.1", port=port, user=os.environ["PGRELAY_PG_APP_USER"],
                           password=os.environ["PGRELAY_PG_APP_PASSWORD"],
                           dbname=os.environ["PGRELAY_PG_DATABASE"], autocommit=True)

# Warm up: a few sessions come and go (pools, caches, first allocations).
for _ in range(5):
    with connect() as c:
        c.execute("SELECT 1")
time.sleep(0.5)
before = rss_kib()
conns = []
for _ in range(n):
    c = connect()
    c.execute("SELECT 1")
    conns.append(c)
time.sleep(1.0)
during = rss_kib()
for c in conns:
    c.close()
time.sleep(1.0)
after = rss_kib()
print(f"pgrelay RSS: {before} KiB before, {during} KiB with {n} idle sessions, {after} KiB after")
print(f"per idle session: {(during - before) / n:.1f} KiB")
PY
