"""Health monitor against the real cluster: role discovery, lag, failure detection with hysteresis.

pgrelay has no /cluster endpoint yet, so these tests read its log: info lines for every state and
role change, and at log level debug one line per probe round:

  ... debug [health] round 12 version=12 epoch=0 primary=pg1 conflict=no pg1{state=up role=primary
      up=yes tli=1 lsn=0/5000 lag_bytes=0 lag_s=0.000 fails=0} pg2{state=up role=replica ...}

Every test that breaks a node (pause replay, stop, SIGSTOP) repairs it in a finally block and
waits until the replica streams again, so later tests find the cluster healthy.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

import psycopg
import pytest

from conftest import DIRECT, Cluster, free_port, wait_until
from replication import as_postgres, data_dir, is_running, start_node, stop_node_immediate, superuser

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's health monitor (PGRELAY_TEST_DIRECT=1)")

LINE = re.compile(r"^(\S+) (\w+) \[(\w+)\] (.*)$")
ROUND = re.compile(r"^round (\d+) version=(\d+) epoch=(\d+) primary=(\S+) conflict=(\w+)(.*)$")
NODE = re.compile(r"(\w+)\{([^}]*)\}")

# Fast settings so failures are detected in about a second.
INTERVAL = 0.3
TIMEOUT = 1.0
FAILURES = 3
RECOVERIES = 2
FAST_HEALTH = {"interval": f"{int(INTERVAL * 1000)}ms", "timeout": f"{int(TIMEOUT * 1000)}ms",
               "failure_threshold": FAILURES, "recovery_threshold": RECOVERIES}
SLACK = 0.75  # scheduling noise of an ASan build on 2 shared cores


# ---------------------------------------------------------------------------------------------
# Reading pgrelay's log
# ---------------------------------------------------------------------------------------------


def parse_ts(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def log_lines(relay) -> list[tuple[float, str, str, str]]:
    """(unix time, level, component, text) for every log line so far."""
    out = []
    for raw in relay.log_path.read_text(errors="replace").splitlines():
        m = LINE.match(raw)
        if m:
            try:
                out.append((parse_ts(m.group(1)), m.group(2), m.group(3), m.group(4)))
            except ValueError:
                continue
    return out


def rounds(relay) -> list[dict[str, Any]]:
    """Every per-round summary: {'time', 'round', 'primary', 'conflict', 'nodes': {name: {...}}}."""
    out = []
    for ts, level, component, text in log_lines(relay):
        if level != "debug" or component != "health":
            continue
        m = ROUND.match(text)
        if not m:
            continue
        nodes = {name: dict(kv.split("=", 1) for kv in body.split()) for name, body in NODE.findall(m.group(6))}
        out.append({"time": ts, "round": int(m.group(1)), "epoch": int(m.group(3)),
                    "primary": m.group(4), "conflict": m.group(5) == "yes", "nodes": nodes})
    return out


def wait_round(relay, predicate: Callable[[dict], bool], timeout: float, what: str,
               since: float = 0.0) -> dict:
    """The first round summary logged at or after `since` that satisfies predicate."""
    def find():
        relay.check_alive()
        for r in rounds(relay):
            if r["time"] >= since and predicate(r):
                return r
        return None
    try:
        return wait_until(find, timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlog tail:\n{relay.log_tail()[-6000:]}") from None


def wait_log(relay, pattern: str, timeout: float, since: float = 0.0) -> tuple[float, str]:
    """The first health log line at or after `since` whose text matches the regex."""
    rx = re.compile(pattern)

    def find():
        relay.check_alive()
        for ts, _level, component, text in log_lines(relay):
            if ts >= since and component == "health" and rx.search(text):
                return ts, text
        return None
    try:
        return wait_until(find, timeout, interval=0.05, what=f"log line /{pattern}/")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlog tail:\n{relay.log_tail()[-6000:]}") from None


def health_lines(relay, since: float = 0.0) -> list[str]:
    return [f"{level} {text}" for ts, level, comp, text in log_lines(relay)
            if comp == "health" and level != "debug" and ts >= since]


def num(value: str) -> Optional[float]:
    return None if value == "?" else float(value)


# ---------------------------------------------------------------------------------------------
# Controlling the cluster's nodes
# ---------------------------------------------------------------------------------------------


def wait_streaming(cluster: Cluster, replica_port: int, timeout: float = 60) -> None:
    """Until the replica answers as a standby and its WAL receiver streams from the primary."""
    def streaming():
        try:
            with superuser(cluster, replica_port) as conn:
                row = conn.execute("SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)").fetchone()
                return row == (True, "streaming")
        except psycopg.OperationalError:
            return False
    wait_until(streaming, timeout, interval=0.2, what=f"replica on port {replica_port} streaming")


def postmaster_and_children(d: pathlib.Path) -> list[int]:
    pid = int((d / "postmaster.pid").read_text().split()[0])
    pids = [pid]
    for status in pathlib.Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        m = re.search(r"^PPid:\s*(\d+)", text, re.M)
        if m and int(m.group(1)) == pid:
            pids.append(int(status.parent.name))
    return pids


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_primary_is_found_not_configured(make_pgrelay, cluster):
    # The primary is listed last: its role comes from pg_is_in_recovery(), not from the config.
    # backend: postgres (superuser) makes pg_stat_wal_receiver visible to the probes.
    nodes = list(reversed(cluster.nodes()))
    relay = make_pgrelay({"nodes": nodes, "backend": {"user": cluster.superuser},
                          "log": {"level": "debug"}})
    primary_name = nodes[-1]["name"]
    _, line = wait_log(relay, r"^primary is ", timeout=10)
    assert line.startswith(f"primary is {primary_name} ({cluster.host}:{cluster.primary_port}), timeline ")
    r = wait_round(relay, lambda r: all(n["state"] == "up" for n in r["nodes"].values()), 10,
                   "every node up")
    assert r["primary"] == primary_name and not r["conflict"] and r["epoch"] == 0
    p = r["nodes"][primary_name]
    assert p["role"] == "primary" and p["lag_bytes"] == "0" and int(p["tli"]) >= 1
    assert p["lsn"] != "0/0"
    for node in nodes[:-1]:
        n = r["nodes"][node["name"]]
        assert n["role"] == "replica", n
        assert n["streaming"] == "yes", n
        assert n["tli"] == p["tli"], (n, p)
        assert n["replay"] != "0/0" and n["paused"] == "no", n
    lines = health_lines(relay)
    for node in nodes:
        assert any(re.match(rf"info node {node['name']} \(\S+\) is up, role ", l) for l in lines), lines
    # The proxy routes writes to the discovered primary.
    with relay.connect(autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_wal_receiver_status_hidden_without_pg_monitor(make_pgrelay, cluster):
    # The probes log in as a role made here without pg_monitor (the cluster grants it to its
    # test users), so pg_stat_wal_receiver hides the status.
    role, password = "health_nomon", "nomon-secret"
    with superuser(cluster, cluster.primary_port) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        relay = make_pgrelay({"log": {"level": "debug"},
                              "backend": {"user": role, "password": password}})
        r = wait_round(relay, lambda r: all(n["state"] == "up" for n in r["nodes"].values()), 20,
                       "every node up")
        assert r["primary"] == "pg1"
        for name in ("pg2", "pg3"):
            assert r["nodes"][name]["role"] == "replica"
            assert r["nodes"][name]["streaming"] == "?"
            assert r["nodes"][name]["replay"] != "0/0"
    finally:
        with superuser(cluster, cluster.primary_port) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_paused_replay_shows_lag(make_pgrelay, cluster):
    relay = make_pgrelay({"log": {"level": "debug"}, "health": {"interval": "200ms"}})
    wait_round(relay, lambda r: r["primary"] == "pg1" and r["nodes"]["pg2"]["state"] == "up", 10,
               "pg2 up")
    paused_port = cluster.replica_ports[0]  # pg2
    table = f"health_lag_{uuid.uuid4().hex[:10]}"
    try:
        with superuser(cluster, paused_port) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
        with cluster.superuser_connect() as conn:
            conn.execute(f"CREATE TABLE {table} (id int, pad text)")
            conn.execute(f"INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
        since = time.time()

        def lagging(r):
            pg2, pg3 = r["nodes"]["pg2"], r["nodes"]["pg3"]
            lag2, lag3 = num(pg2["lag_bytes"]), num(pg3["lag_bytes"])
            return (pg2["paused"] == "yes" and lag2 is not None and lag2 >= 100_000
                    and lag3 is not None and lag3 < lag2)
        r = wait_round(relay, lagging, 15, "pg2's replay lag visible", since=since)
        pg2 = r["nodes"]["pg2"]
        assert pg2["state"] == "up" and pg2["receive"] != pg2["replay"], pg2
        assert num(pg2["lag_s"]) is not None and num(pg2["lag_s"]) > 0, pg2
        # The lag grows while replay stays paused, in seconds too.
        later = wait_round(relay, lambda x: num(x["nodes"]["pg2"]["lag_s"]) is not None
                           and num(x["nodes"]["pg2"]["lag_s"]) > num(pg2["lag_s"]) + 0.3,
                           10, "pg2's lag in seconds growing", since=r["time"])
        assert later["nodes"]["pg2"]["replay"] == pg2["replay"]
    finally:
        with superuser(cluster, paused_port) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
        with cluster.superuser_connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    resumed = time.time()
    r = wait_round(relay, lambda r: r["nodes"]["pg2"]["paused"] == "no"
                   and num(r["nodes"]["pg2"]["lag_bytes"]) is not None
                   and num(r["nodes"]["pg2"]["lag_bytes"]) < 100_000, 15, "pg2 caught up", since=resumed)
    assert r["nodes"]["pg2"]["state"] == "up"


def test_stopped_replica_is_down_then_up_again(make_pgrelay, cluster):
    relay = make_pgrelay({"log": {"level": "debug"}, "health": FAST_HEALTH})
    wait_round(relay, lambda r: all(n["state"] == "up" for n in r["nodes"].values()), 10, "every node up")
    port = cluster.replica_ports[1]  # pg3
    d = data_dir(cluster, port)
    label = rf"pg3 \({re.escape(cluster.host)}:{port}\)"
    try:
        stop_node_immediate(cluster, d)
        stopped = time.time()
        t_suspect, _ = wait_log(relay, rf"^node {label} is suspect \(1 failed probe", 10, since=stopped - 1)
        t_down, line = wait_log(relay, rf"^node {label} is down after {FAILURES} failed probes: ", 10,
                                since=stopped - 1)
        assert t_suspect <= t_down
        bound = FAILURES * INTERVAL + TIMEOUT
        assert t_down - stopped <= bound + SLACK, (
            f"down after {t_down - stopped:.2f} s, bound {bound:.2f} s: {line}")
        r = wait_round(relay, lambda r: r["nodes"]["pg3"]["state"] == "down", 5, "pg3 down in a round",
                       since=t_down)
        assert r["primary"] == "pg1" and r["nodes"]["pg2"]["state"] == "up"
        assert r["nodes"]["pg3"]["role"] == "replica"  # last known role is kept
        # Reads would go to pg2 only; the session path keeps working.
        with relay.connect(autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        time.sleep(2 * INTERVAL)
        assert not [l for l in health_lines(relay, since=t_down + 0.001) if "pg3" in l], \
            "a down node logs nothing more while it stays down"
    finally:
        start_node(cluster, d)
    restarted = time.time()
    t_up, line = wait_log(relay, rf"^node {label} is up again \(was down\), role replica", 30,
                          since=restarted - 1)
    wait_streaming(cluster, port)
    r = wait_round(relay, lambda r: r["nodes"]["pg3"]["state"] == "up", 5, "pg3 up in a round", since=t_up)
    assert r["nodes"]["pg3"]["role"] == "replica"


def test_hung_replica_is_down_by_timeout_without_delaying_others(make_pgrelay, cluster):
    relay = make_pgrelay({"log": {"level": "debug"}, "health": FAST_HEALTH})
    wait_round(relay, lambda r: all(n["state"] == "up" for n in r["nodes"].values()), 10, "every node up")
    port = cluster.replica_ports[0]  # pg2
    d = data_dir(cluster, port)
    label = rf"pg2 \({re.escape(cluster.host)}:{port}\)"
    pids = postmaster_and_children(d)
    try:
        signal_all(pids, signal.SIGSTOP)
        stopped = time.time()
        t_down, line = wait_log(relay, rf"^node {label} is down after {FAILURES} failed probes: ", 15,
                                since=stopped - 1)
        # Suspect at the first probe timeout; then each interval without an answer counts.
        bound = FAILURES * INTERVAL + TIMEOUT
        assert t_down - stopped <= bound + SLACK, (
            f"down after {t_down - stopped:.2f} s, bound {bound:.2f} s: {line}")
        suspect = [l for l in health_lines(relay, since=stopped - 1) if re.search(rf"node {label} is suspect", l)]
        assert suspect and "no answer within 1000 ms (health.timeout)" in suspect[0], suspect
        # The other nodes kept being probed and published every interval meanwhile.
        during = [r for r in rounds(relay) if stopped <= r["time"] <= t_down]
        assert len(during) >= int((t_down - stopped) / INTERVAL) - 1, during
        gaps = [b["time"] - a["time"] for a, b in zip(during, during[1:])]
        assert max(gaps, default=0) <= INTERVAL + SLACK, gaps
        assert all(r["primary"] == "pg1" and r["nodes"]["pg3"]["state"] == "up" for r in during)
    finally:
        signal_all(postmaster_and_children(d), signal.SIGCONT)
        signal_all(pids, signal.SIGCONT)
    resumed = time.time()
    wait_log(relay, rf"^node {label} is up again \(was down\), role replica", 30, since=resumed - 1)
    wait_streaming(cluster, port)


def test_unresponsive_node_never_delays_the_rounds(make_pgrelay, cluster):
    # A listener that accepts TCP connections (kernel backlog) and never says a word: connect
    # succeeds, the startup handshake never finishes. Only the probe timeout can end it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        nodes = cluster.nodes() + [{"name": "pg4", "host": "127.0.0.1", "port": port}]
        relay = make_pgrelay({"nodes": nodes, "log": {"level": "debug"}, "health": FAST_HEALTH})
        t_down, line = wait_log(relay, r"^node pg4 \(127\.0\.0\.1:\d+\) is down: ", 10)
        assert "no answer within 1000 ms (health.timeout) while connecting" in line, line
        # Start-up did not wait for pg4's probe to time out: the first round was published at
        # the first interval, with pg4 not answered yet (down) and the primary found.
        first = rounds(relay)[0]
        assert first["primary"] == "pg1" and first["nodes"]["pg4"]["state"] == "down"
        assert first["nodes"]["pg4"]["up"] == "no" and first["time"] < t_down
        time.sleep(3 * TIMEOUT)
        rs = [r for r in rounds(relay) if r["time"] >= t_down]
        gaps = [b["time"] - a["time"] for a, b in zip(rs, rs[1:])]
        assert len(rs) >= 5 and max(gaps) <= INTERVAL + SLACK, gaps
        assert all(r["primary"] == "pg1" and r["nodes"]["pg4"]["state"] == "down" for r in rs)
        assert all(r["nodes"][n]["state"] == "up" for r in rs for n in ("pg1", "pg2", "pg3"))
        with relay.connect(autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


# ---------------------------------------------------------------------------------------------
# Role changes made outside pgrelay need a promotion, which the shared cluster cannot undo: this
# test builds its own throwaway primary + standby (initdb, pg_basebackup) on free ports.
# ---------------------------------------------------------------------------------------------


class ScratchCluster:
    def __init__(self, cluster: Cluster):
        self.bin = cluster.pg_bin
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pgrelay-health-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.ports = (free_port(), free_port())
        self.dirs = (self.dir / "a", self.dir / "b")

    def run(self, program: str, *args: str) -> None:
        out = as_postgres(os.path.join(self.bin, program), *args)
        assert out.returncode == 0, f"{program} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"

    def start(self, i: int) -> None:
        self.run("pg_ctl", "-D", str(self.dirs[i]), "-l", str(self.dir / f"{i}.log"), "-w", "-t", "60",
                 "-o", f"-p {self.ports[i]} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                 "start")

    def create(self) -> None:
        self.run("initdb", "-D", str(self.dirs[0]), "-U", "postgres", "-A", "trust", "--no-sync",
                 "--no-instructions")
        self.start(0)
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                 "-D", str(self.dirs[1]), "-R", "-X", "stream", "--no-sync")
        self.start(1)

    def destroy(self) -> None:
        for d in self.dirs:
            if (d / "postmaster.pid").exists():
                as_postgres(os.path.join(self.bin, "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def scratch(cluster):
    c = ScratchCluster(cluster)
    try:
        c.create()
        yield c
    finally:
        c.destroy()


def test_external_promotion_is_followed(scratch, make_pgrelay):
    nodes = [{"name": "a", "host": "127.0.0.1", "port": scratch.ports[0]},
             {"name": "b", "host": "127.0.0.1", "port": scratch.ports[1]}]
    relay = make_pgrelay({"nodes": nodes, "backend": {"user": "postgres"}, "log": {"level": "debug"},
                          "health": FAST_HEALTH})
    r = wait_round(relay, lambda r: r["primary"] == "a" and r["nodes"]["b"]["state"] == "up", 15,
                   "a primary, b up")
    assert r["nodes"]["b"]["role"] == "replica" and r["nodes"]["b"]["streaming"] == "yes"
    assert r["nodes"]["a"]["tli"] == "1"

    # Promote b outside pgrelay: both nodes now claim to be primary (the split brain fencing
    # will handle later): pgrelay follows b's role change within an interval, then refuses to
    # pick a primary and says so.
    scratch.run("pg_ctl", "-D", str(scratch.dirs[1]), "-w", "promote")
    promoted = time.time()
    t_role, line = wait_log(relay, r"^node b \(\S+\) changed role: replica -> primary", 10,
                            since=promoted - 1)
    assert t_role - promoted <= INTERVAL + SLACK, f"{t_role - promoted:.2f} s: {line}"
    _, line = wait_log(relay, r"^2 nodes report themselves primary: a \(\S+\), b \(\S+\)", 10,
                       since=promoted - 1)
    r = wait_round(relay, lambda r: r["conflict"], 5, "conflict published", since=promoted)
    assert r["primary"] == "-"
    assert r["nodes"]["b"]["role"] == "primary" and r["nodes"]["b"]["tli"] == "2"
    with pytest.raises(psycopg.OperationalError,
                       match="no primary node is available|more than one node reports itself primary"):
        relay.connect(dbname="postgres", autocommit=True)

    # The old primary goes away: b is the primary as soon as a stops answering (a's stale claim
    # loses to b's confirmed one), without waiting for a to be down.
    as_postgres(os.path.join(scratch.bin, "pg_ctl"), "-D", str(scratch.dirs[0]), "-m", "immediate", "-w",
                "stop")
    stopped = time.time()
    t_primary, line = wait_log(relay, r"^primary is b \(\S+\), timeline 2, epoch 0", 10, since=stopped - 1)
    assert t_primary - stopped <= INTERVAL + SLACK, f"{t_primary - stopped:.2f} s: {line}"
    with relay.connect(dbname="postgres", autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
