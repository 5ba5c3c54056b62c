"""Automatic failover (failover.mode auto) on a throwaway primary + 2 standbys of our own (initdb,
pg_basebackup with replication slots, on free ports): promotion changes the cluster for good, so
the shared cluster is not used.

- The primary is killed (pg_ctl stop -m immediate) under a write load through pgrelay: the most
  advanced standby is promoted, the other re-pointed to it, writes through pgrelay succeed again;
  with synchronous_standby_names = 'ANY 1 (*)' and synchronous_commit = on every acknowledged
  insert is on the new primary; the write unavailability is measured and printed.
- The old primary restarted afterwards still claims to be primary: it is fenced (no traffic,
  pgrelay_fenced_nodes = 1).
- A restarted pgrelay reads the state file and routes writes to the new primary at once.
- When only pgrelay loses the primary (a TCP forwarder in front of it is cut) while the standbys
  still stream from it, nothing is promoted.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

import psycopg
import pytest

from conftest import DIRECT, wait_until
from scratch_cluster import (Forwarder, Scratch, Writer, in_recovery, log_has, metric,  # noqa: F401
                             scratch, wait_log)

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's failover (PGRELAY_TEST_DIRECT=1)")


def relay_config(scratch: Scratch, state_file: pathlib.Path, ports: Optional[tuple] = None) -> dict:
    return {"nodes": scratch.nodes(ports), "backend": {"user": "postgres"},
            "routing": {"strategy": "follower"},
            "failover": {"mode": "auto", "state_file": str(state_file)},
            "health": {"database": "postgres"}, "log": {"level": "debug"}}


def test_primary_killed_under_writes_is_failed_over(scratch, make_pgrelay, tmp_path):
    scratch.create(sync=True)
    state = tmp_path / "pgrelay.state"
    hooks_out = tmp_path / "hooks.out"
    config = relay_config(scratch, state)
    config["failover"]["hooks"] = {
        "before_promote": f"echo before {{failed}} {{failed_port}} {{candidate}} {{epoch}} >> {hooks_out}",
        "after_promote": f"echo after {{failed}} {{candidate}} {{candidate_port}} >> {hooks_out}; echo hook-output",
        "timeout": "10s"}
    relay = make_pgrelay(config)
    wait_log(relay, r"primary is p0 .*epoch 1", 10)
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")

    writer = Writer(relay)
    writer.start()
    # A pgbench write load through pgrelay as well (its clients abort on the error of the
    # statement the kill interrupts; the run after the failover must be clean).
    script = tmp_path / "insert.sql"
    script.write_text("INSERT INTO fo(v) VALUES (2);\n")
    env = dict(os.environ, PGPASSWORD="secret")
    bench = ["pgbench", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "app", "-n", "-f", str(script),
             "-c", "4", "-j", "2", "postgres"]
    load = subprocess.Popen(bench + ["-T", "6"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_until(lambda: len(writer.acked) > 50, 20, what="writes before the failure")
    time.sleep(1)
    scratch.stop(0)
    killed = time.time()
    promoted = wait_log(relay, r"promoted (s1|s2) .* to primary at epoch 2", 30)
    new = 1 if "promoted s1" in promoted else 2
    other = 3 - new
    wait_until(lambda: any(t > killed for _, t in writer.acked), 30, what="a write after the failover")
    time.sleep(1)
    writer.stop.set()
    writer.join(30)

    before = max(t for _, t in writer.acked if t <= killed)
    after = min(t for _, t in writer.acked if t > killed)
    print(f"write unavailability: {after - before:.2f} s (last write before the kill -> first after); "
          f"{len(writer.errors)} errors: {writer.errors[:3]}")
    assert after - before <= 15, f"writes were unavailable for {after - before:.1f} s"
    assert not in_recovery(scratch, new)
    load.communicate(timeout=60)
    again = subprocess.run(bench + ["-T", "3"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"number of failed transactions: 0 ", again.stdout), again.stdout
    assert int(re.search(r"number of transactions actually processed: (\d+)", again.stdout).group(1)) > 0

    # Quorum commit (ANY 1 of the standbys): every acknowledged insert survived.
    acked = {i for i, _ in writer.acked}
    with scratch.connect(new) as c:
        present = {r[0] for r in c.execute("SELECT id FROM fo").fetchall()}
    assert acked <= present, f"{len(acked - present)} acknowledged inserts lost: {sorted(acked - present)[:10]}"

    # The other standby follows the new primary.
    def follows():
        with scratch.connect(other) as c:
            row = c.execute("SELECT status, sender_port FROM pg_stat_wal_receiver").fetchone()
        return row is not None and row[0] == "streaming" and row[1] == scratch.ports[new]
    wait_until(follows, 30, what=f"{scratch.names[other]} to stream from {scratch.names[new]}")
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        marker = conn.execute("INSERT INTO fo(v) VALUES (42) RETURNING id").fetchone()[0]
    def replicated():
        with scratch.connect(other) as c:
            return c.execute("SELECT count(*) FROM fo WHERE id = %s", (marker,)).fetchone()[0] == 1
    wait_until(replicated, 15, what="a post-failover write on the re-pointed standby")
    assert metric(relay, "pgrelay_failovers_total") == 1
    assert metric(relay, "pgrelay_topology_epoch") == 2
    # The hooks ran around the promotion, with their placeholders filled in, output logged.
    wait_log(relay, r"after_promote succeeded: hook-output", 10)
    assert hooks_out.read_text().splitlines() == [
        f"before p0 {scratch.ports[0]} {scratch.names[new]} 2",
        f"after p0 {scratch.names[new]} {scratch.ports[new]}"]

    # The old primary comes back, still claiming to be primary: fenced, no traffic.
    scratch.start(0)
    assert not in_recovery(scratch, 0)
    wait_log(relay, r"node p0 \(\S+\) is fenced", 10)
    wait_until(lambda: metric(relay, "pgrelay_fenced_nodes") == 1, 5, what="pgrelay_fenced_nodes 1")
    with scratch.connect(0) as c:
        old_count = c.execute("SELECT count(*) FROM fo").fetchone()[0]
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        for _ in range(20):
            port = conn.execute("INSERT INTO fo(v) VALUES (7) RETURNING inet_server_port()").fetchone()[0]
            assert port == scratch.ports[new]
        for _ in range(20):
            assert conn.execute("SELECT inet_server_port()").fetchone()[0] != scratch.ports[0]
    with scratch.connect(0) as c:
        assert c.execute("SELECT count(*) FROM fo").fetchone()[0] == old_count

    # A restarted pgrelay knows the new primary from its state file at once.
    relay.stop()
    assert f"primary={scratch.names[new]}" in state.read_text()
    relay2 = make_pgrelay(relay_config(scratch, state))
    with relay2.connect(dbname="postgres", autocommit=True) as conn:
        port = conn.execute("INSERT INTO fo(v) VALUES (8) RETURNING inet_server_port()").fetchone()[0]
        assert port == scratch.ports[new]
    assert log_has(relay2, r"node p0 \(\S+\) is fenced") or metric(relay2, "pgrelay_fenced_nodes") == 1


def test_no_promotion_when_only_pgrelay_loses_the_primary(scratch, make_pgrelay, tmp_path):
    scratch.create(sync=False)
    fwd = Forwarder(scratch.ports[0])
    try:
        ports = (fwd.port, scratch.ports[1], scratch.ports[2])
        relay = make_pgrelay(relay_config(scratch, tmp_path / "state", ports))
        wait_log(relay, r"primary is p0 .*epoch 1", 10)
        fwd.cut_off()
        wait_log(relay, r"node p0 \(\S+\) is down after", 15)
        line = wait_log(relay, r"still streams from the primary p0", 10)
        assert "no promotion" in line
        time.sleep(2)
        assert log_has(relay, r"promoting") is None
        assert not in_recovery(scratch, 0)
        assert in_recovery(scratch, 1) and in_recovery(scratch, 2)
        # Writes wait failover.hold_writes for a primary, then fail clearly.
        with relay.connect(dbname="postgres", autocommit=True) as conn:
            started = time.time()
            with pytest.raises(psycopg.Error, match="no primary node is available"):
                conn.execute("CREATE TABLE never (x int)")
            assert 4 <= time.time() - started <= 15
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)  # reads go on
    finally:
        fwd.close()


def test_repeated_failovers_lose_no_acknowledged_write(scratch, make_pgrelay, tmp_path):
    """Quorum commit (ANY 1 (*), synchronous_commit = on): five failovers in a row, the old
    primary rejoined as a standby after each; every acknowledged insert survives all of them."""
    scratch.create(sync=True)
    relay = make_pgrelay(relay_config(scratch, tmp_path / "state"))
    wait_log(relay, r"primary is p0 .*epoch 1", 10)
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")
    primary = 0
    acked: set[int] = set()
    for cycle in range(5):
        epoch = cycle + 2
        writer = Writer(relay)
        writer.start()
        wait_until(lambda: len(writer.acked) > 30, 30, what=f"writes before failure {cycle + 1}")
        scratch.stop(primary)
        killed = time.time()
        line = wait_log(relay, rf"promoted (\S+) .* to primary at epoch {epoch}\b", 30)
        new = scratch.names.index(re.search(r"promoted (\S+) ", line).group(1))
        assert new != primary
        wait_until(lambda: any(t > killed for _, t in writer.acked), 30, what="a write after the failover")
        writer.stop.set()
        writer.join(30)
        acked |= {i for i, _ in writer.acked}
        with scratch.connect(new) as c:
            present = {r[0] for r in c.execute("SELECT id FROM fo").fetchall()}
        lost = acked - present
        assert not lost, f"failover {cycle + 1}: {len(lost)} acknowledged inserts lost: {sorted(lost)[:10]}"
        # The operator rejoins the old primary as a standby; pgrelay uses it as a replica again.
        scratch.rejoin(primary, new)
        others = [i for i in range(3) if i != new]
        wait_until(lambda: all(scratch.streams_from(i, new) for i in others), 60,
                   what=f"both standbys streaming from {scratch.names[new]}")
        wait_log(relay, rf"node {scratch.names[primary]} \(\S+\) (is up again|changed role: primary -> replica)", 15)
        time.sleep(2 * 0.5)  # two health rounds: every replica seen streaming again
        primary = new
    assert metric(relay, "pgrelay_failovers_total") == 5
    print(f"{len(acked)} acknowledged inserts, all present after 5 failovers")


def test_hung_primary_is_failed_over_and_fenced_when_it_resumes(scratch, make_pgrelay, tmp_path):
    """SIGSTOP of every process of the primary: probes time out, the standbys' WAL receivers
    give up (wal_receiver_timeout = 2s), a standby is promoted; statements stuck on the hung
    primary get an error instead of waiting forever. SIGCONT: the old primary is fenced."""
    import signal
    scratch.create(sync=False)
    relay = make_pgrelay(dict(relay_config(scratch, tmp_path / "state"),
                              health={"database": "postgres", "timeout": "1s"}))
    wait_log(relay, r"primary is p0 .*epoch 1", 10)
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")
    writer = Writer(relay)
    writer.start()
    wait_until(lambda: len(writer.acked) > 30, 30, what="writes before the hang")
    pids = scratch.pids(0)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped = time.time()
    try:
        line = wait_log(relay, r"promoted (s1|s2) .* to primary at epoch 2", 40)
        new = 1 if "promoted s1" in line else 2
        wait_until(lambda: sum(1 for _, t in writer.acked if t > stopped) >= 5, 30,
                   what="writes after the failover")
        times = sorted(t for _, t in writer.acked)
        gap = max(b - a for a, b in zip(times, times[1:]) if b > stopped)
        print(f"hung primary: the longest pause between acknowledged writes was {gap:.1f} s; "
              f"{sum(1 for t in times if stopped < t < stopped + 1)} writes in the first second, "
              f"errors {writer.errors[:2]}")
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    wait_log(relay, r"node p0 \(\S+\) is fenced", 15)
    with scratch.connect(0) as c:
        old_count = c.execute("SELECT count(*) FROM fo").fetchone()[0]
    time.sleep(1)
    writer.stop.set()
    writer.join(30)
    with scratch.connect(0) as c:
        assert c.execute("SELECT count(*) FROM fo").fetchone()[0] == old_count, "writes reached the fenced node"
    with scratch.connect(new) as c:
        assert c.execute("SELECT count(*) FROM fo").fetchone()[0] >= len({i for i, t in writer.acked if t > stopped})


REJOIN = """#!/bin/bash
# after_promote hook of the switchover test: the old primary becomes a standby of the new one.
set -euo pipefail
dir=$1 primary_port=$2 name=$3 port=$4 sockdir=$5 bindir=$6
rm -rf "$dir"
runuser -u postgres -- psql -h 127.0.0.1 -p "$primary_port" -U postgres -d postgres -Atqc \
  "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$name'"
runuser -u postgres -- "$bindir/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$dir" \
  -R -X stream -C -S "$name" -c fast --no-sync
runuser -u postgres -- "$bindir/pg_ctl" -D "$dir" -l "$dir.log" -w -t 60 -o \
  "-p $port -k $sockdir -c listen_addresses=127.0.0.1 -c fsync=off -c cluster_name=$name -c wal_receiver_timeout=2s" \
  start >/dev/null
echo "rejoined $name as a standby of port $primary_port"
"""


def test_planned_switchover_without_client_errors(scratch, make_pgrelay, tmp_path):
    """POST /switchover?to=s2 (failover.mode manual) under a running pgbench (TPC-B-like: reads
    and updates in transactions) and a writer: new statements wait at transaction boundaries,
    running transactions finish, before_promote stops the primary cleanly, s2 is promoted, s1
    re-pointed, and after_promote rejoins the old primary as a standby. Zero failed transactions."""
    scratch.create(sync=False)
    pg_ctl = os.path.join(scratch.bin, "pg_ctl")
    rejoin = tmp_path / "rejoin.sh"
    rejoin.write_text(REJOIN)
    rejoin.chmod(0o755)
    config = relay_config(scratch, tmp_path / "state")
    config["failover"]["mode"] = "manual"
    config["failover"]["hooks"] = {
        "before_promote": f"runuser -u postgres -- {pg_ctl} -D {scratch.dir}/{{failed}} -m fast -w stop",
        "after_promote": f"{rejoin} {scratch.dir}/{{failed}} {{candidate_port}} {{failed}} {{failed_port}} "
                         f"{scratch.dir} {scratch.bin}",
        "timeout": "60s"}
    relay = make_pgrelay(config)
    wait_log(relay, r"primary is p0 .*epoch 1", 10)
    scratch.run("pgbench", "-h", "127.0.0.1", "-p", str(scratch.ports[0]), "-U", "postgres", "-i", "-s", "1",
                "-q", "postgres")
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")
    wait_until(lambda: scratch.streams_from(1, 0) and scratch.streams_from(2, 0), 20, what="streaming")
    time.sleep(1)  # the monitor sees both replicas streaming
    env = dict(os.environ, PGPASSWORD="secret")
    load = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "app", "-n", "-c", "4",
                             "-j", "2", "-T", "10", "postgres"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    writer = Writer(relay)
    writer.start()
    wait_until(lambda: len(writer.acked) > 30, 30, what="writes before the switchover")
    time.sleep(1)

    def post(path: str) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{relay.admin_port}{path}", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    assert post("/switchover?to=nope")[0] == 409
    started = time.time()
    # The admin endpoint keeps answering (scrapes, /cluster) while the switchover runs.
    outcome: dict = {}
    request = threading.Thread(target=lambda: outcome.update(result=post("/switchover?to=s2")))
    request.start()
    scrapes_during = []
    while request.is_alive():
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=5) as r:
            assert r.status == 200
        if request.is_alive():
            scrapes_during.append(time.monotonic() - t0)
        time.sleep(0.05)
    request.join()
    status, body = outcome["result"]
    assert status == 200, body
    assert scrapes_during and max(scrapes_during) < 1.0, scrapes_during
    assert "switched over from p0 to s2 at epoch 2" in body
    wait_until(lambda: sum(1 for _, t in writer.acked if t > started + 0.5) > 20, 30,
               what="writes after the switchover")
    out, _ = load.communicate(timeout=60)
    writer.stop.set()
    writer.join(30)
    assert load.returncode == 0 and "aborted" not in out, out
    assert re.search(r"number of failed transactions: 0 ", out), out
    assert writer.errors == [], f"clients saw errors during a planned switchover: {writer.errors[:3]}"
    times = sorted(t for _, t in writer.acked)
    processed = re.search(r"number of transactions actually processed: (\d+)", out).group(1)
    print(f"switchover: writes paused {max(b - a for a, b in zip(times, times[1:])):.2f} s; "
          f"pgbench: {processed} transactions, none failed")
    assert not in_recovery(scratch, 2)
    wait_until(lambda: scratch.streams_from(1, 2), 30, what="s1 streaming from s2")
    wait_log(relay, r"after_promote succeeded: rejoined p0", 60)
    wait_until(lambda: scratch.streams_from(0, 2), 30, what="the old primary streaming from s2")
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        assert conn.execute("INSERT INTO fo(v) VALUES (9) RETURNING inet_server_port()").fetchone()[0] == \
            scratch.ports[2]
    assert metric(relay, "pgrelay_topology_epoch") == 2


def test_manual_mode_promotes_only_on_request(scratch, make_pgrelay, tmp_path):
    """failover.mode manual: a dead primary is not replaced by itself; POST /switchover?to=s1
    then fails over to s1 (under the same safety rules as auto)."""
    scratch.create(sync=False)
    config = relay_config(scratch, tmp_path / "state")
    config["failover"]["mode"] = "manual"
    config["failover"]["hooks"] = {"before_promote": "echo fencing {failed}"}
    relay = make_pgrelay(config)
    wait_log(relay, r"primary is p0 .*epoch 1", 10)
    wait_until(lambda: scratch.streams_from(1, 0) and scratch.streams_from(2, 0), 20, what="streaming")
    scratch.stop(0)
    wait_log(relay, r"node p0 \(\S+\) is down after", 15)
    time.sleep(2)
    assert log_has(relay, r"promot") is None, "manual mode promoted on its own"

    req = urllib.request.Request(f"http://127.0.0.1:{relay.admin_port}/switchover?to=s1", method="POST",
                                 data=b"")
    with urllib.request.urlopen(req, timeout=90) as r:
        body = r.read().decode()
    assert "failed over from p0 to s1 at epoch 2" in body, body
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE after_manual (x int)")
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] in (scratch.ports[1], scratch.ports[2])
    wait_until(lambda: scratch.streams_from(2, 1), 30, what="s2 streaming from s1")
