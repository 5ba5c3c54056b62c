"""Helpers for tests that need the cluster's replication: direct node connections, waiting for
replicas to replay, and pausing replay on purpose (pg_wal_replay_pause) to make lag."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
from typing import Iterable, Optional

import psycopg
import pytest

from conftest import Cluster, wait_until


def node_connect(cluster: Cluster, port: int, dbname: Optional[str] = None) -> psycopg.Connection:
    """Direct superuser connection to one node (setup, checks, pausing replay)."""
    return psycopg.connect(host=cluster.host, port=port, user=cluster.superuser,
                           dbname=dbname or cluster.database, connect_timeout=10, autocommit=True)


def app_primary(cluster: Cluster, dbname: Optional[str] = None) -> psycopg.Connection:
    """Direct connection to the primary as the app user (so objects it creates belong to app)."""
    return psycopg.connect(host=cluster.host, port=cluster.primary_port, user=cluster.app_user,
                           password=cluster.app_password, dbname=dbname or cluster.database,
                           connect_timeout=10, autocommit=True)


def wait_replayed(cluster: Cluster, timeout: float = 30.0, ports: Optional[Iterable[int]] = None) -> None:
    """Waits until the replicas have replayed everything the primary has written so far."""
    with node_connect(cluster, cluster.primary_port) as primary:
        target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    for port in ports or cluster.replica_ports:
        with node_connect(cluster, port) as replica:
            def caught_up():
                return replica.execute("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0",
                                       (target,)).fetchone()[0]
            wait_until(caught_up, timeout, interval=0.05, what=f"replica {port} to replay up to {target}")


class Paused:
    """Pauses WAL replay on one replica; always resumes (and waits for it to catch up) on exit."""

    def __init__(self, cluster: Cluster, port: int):
        self.cluster, self.port = cluster, port

    def __enter__(self) -> "Paused":
        with node_connect(self.cluster, self.port) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            wait_until(lambda: conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused",
                       10, what=f"replay on {self.port} to pause")
        return self

    def resume(self) -> None:
        with node_connect(self.cluster, self.port) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def __exit__(self, *exc) -> None:
        self.resume()
        wait_replayed(self.cluster, ports=[self.port])


def as_postgres(*cmd: str, timeout: float = 90) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def data_dir(cluster: Cluster, port: int) -> pathlib.Path:
    """The data directory of the node listening on port (scripts/cluster.sh writes its port into
    pgrelay_node.conf)."""
    for conf in pathlib.Path(cluster.dir).glob("*/pgrelay_node.conf"):
        if re.search(rf"^port\s*=\s*{port}\b", conf.read_text(), re.M):
            return conf.parent
    pytest.fail(f"no data directory under {cluster.dir} is configured for port {port}")


def superuser(cluster: Cluster, port: int, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host=cluster.host, port=port, user=cluster.superuser, dbname=dbname,
                           connect_timeout=5, autocommit=True)


def is_running(cluster: Cluster, d: pathlib.Path) -> bool:
    return as_postgres(os.path.join(cluster.pg_bin, "pg_ctl"), "-D", str(d), "status").returncode == 0


def start_node(cluster: Cluster, d: pathlib.Path) -> None:
    if is_running(cluster, d):
        return
    out = as_postgres(os.path.join(cluster.pg_bin, "pg_ctl"), "-D", str(d), "-l",
                      str(d / "startup.log"), "-w", "-t", "60", "start")
    assert out.returncode == 0, f"pg_ctl start {d} failed:\n{out.stdout}\n{out.stderr}"


def stop_node_immediate(cluster: Cluster, d: pathlib.Path) -> None:
    out = as_postgres(os.path.join(cluster.pg_bin, "pg_ctl"), "-D", str(d), "-m", "immediate", "-w",
                      "stop")
    assert out.returncode == 0, f"pg_ctl stop {d} failed:\n{out.stdout}\n{out.stderr}"
