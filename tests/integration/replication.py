"""Helpers for tests that need the cluster's replication: direct node connections, waiting for
replicas to replay, and pausing replay on purpose (pg_wal_replay_pause) to make lag."""

from __future__ import annotations

from typing import Iterable, Optional

import psycopg

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
