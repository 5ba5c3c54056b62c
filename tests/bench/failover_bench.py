#!/usr/bin/python3
"""Benchmark (not a test): write unavailability during automatic failover, with default health
settings (interval 500 ms, failure_threshold 3, timeout 3 s) and failover.hold_writes 5 s.

A throwaway primary + 2 standbys (the integration tests' Scratch cluster, quorum commit
ANY 1 (*)), the release pgrelay with failover.mode auto, and 4 writer threads inserting through
pgrelay. Each round kills the primary (pg_ctl stop -m immediate), waits for writes to flow
again, rejoins the old primary as a standby, and reports the longest pause between
acknowledged writes around the kill, the failover duration pgrelay measured, and client errors.

    tests/bench/failover_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import psycopg  # noqa: E402

from conftest import free_port, wait_until  # noqa: E402
from test_failover import Scratch  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"


def build() -> pathlib.Path:
    subprocess.run([str(ROOT / "scripts/build.sh"), "release"], check=True, stdout=subprocess.DEVNULL)
    return ROOT / "build/release/proxy/pgrelay"


class Writers:
    def __init__(self, port: int, n: int = 4):
        self.port = port
        self.acked: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(host="127.0.0.1", port=self.port, user="app", password="secret",
                                           dbname="postgres", autocommit=True, connect_timeout=5)
                conn.execute("INSERT INTO fo(v) VALUES (1)")
                with self.lock:
                    self.acked.append(time.time())
            except psycopg.Error:
                with self.lock:
                    self.errors += 1
                time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def metric(admin: int, name: str) -> float:
    """A metric's value; NaN while pgrelay does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    binary = build()
    scratch = Scratch(PG_BIN)
    work = pathlib.Path(tempfile.mkdtemp(prefix="pgrelay-failover-bench-"))
    proc = None
    try:
        scratch.create(sync=True)
        port, admin = free_port(), free_port()
        nodes = "\n".join(f"  - {{name: {n}, host: 127.0.0.1, port: {p}}}" for n, p in zip(scratch.names, scratch.ports))
        (work / "pgrelay.yaml").write_text(f"""listen: 127.0.0.1:{port}
nodes:
{nodes}
users: [{{name: app, password: secret}}]
backend: {{user: postgres}}
routing: {{strategy: follower}}
failover: {{mode: auto, state_file: {work}/state}}
health: {{database: postgres}}
admin: {{listen: 127.0.0.1:{admin}}}
log: {{level: info}}
""")
        log = open(work / "pgrelay.log", "w")
        proc = subprocess.Popen([str(binary), "--config", str(work / "pgrelay.yaml")], stderr=log, stdout=log)
        wait_until(lambda: metric(admin, "pgrelay_topology_epoch") == 1, 20, what="pgrelay ready")
        with psycopg.connect(host="127.0.0.1", port=port, user="app", password="secret", dbname="postgres",
                             autocommit=True) as c:
            c.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")
        primary = 0
        rows = []
        for r in range(args.rounds):
            writers = Writers(port)
            time.sleep(2)
            scratch.stop(primary)
            killed = time.time()
            wait_until(lambda: metric(admin, "pgrelay_topology_epoch") == r + 2, 30, what="promotion")
            wait_until(lambda: sum(1 for t in writers.acked if t > killed) > 50, 30, what="writes again")
            time.sleep(1)
            writers.close()
            times = sorted(writers.acked)
            gap = max(b - a for a, b in zip(times, times[1:]) if b > killed - 0.5)
            duration = metric(admin, "pgrelay_last_failover_duration_seconds")
            with psycopg.connect(host="127.0.0.1", port=port, user="app", password="secret",
                                 dbname="postgres", autocommit=True) as c:
                new_port = c.execute("INSERT INTO fo(v) VALUES (0) RETURNING inet_server_port()").fetchone()[0]
            new = scratch.ports.index(new_port)
            rows.append((r + 1, gap, duration, writers.errors))
            print(f"round {r + 1}: writes paused {gap:.2f} s, promotion {duration:.3f} s, "
                  f"{writers.errors} client errors", flush=True)
            scratch.rejoin(primary, new)
            others = [i for i in range(3) if i != new]
            wait_until(lambda: all(scratch.streams_from(i, new) for i in others), 60, what="standbys streaming")
            time.sleep(1.5)
            primary = new
        gaps = sorted(g for _, g, _, _ in rows)
        print("\n| round | writes paused (s) | promotion (s) | client errors |")
        print("|---|---|---|---|")
        for r, g, d, e in rows:
            print(f"| {r} | {g:.2f} | {d:.3f} | {e} |")
        print(f"\nmedian pause {gaps[len(gaps) // 2]:.2f} s over {len(gaps)} failovers "
              f"(defaults: health.interval 500ms, failure_threshold 3, 4 writer threads)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        scratch.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
