"""Several pgrelay instances share the failover record through etcd (coordination.etcd, issue #9):
a real 3-member etcd cluster on loopback and two pgrelays on the shared PostgreSQL cluster.

- The record is created once, whichever pgrelay writes it first, and both serve with it.
- A newer record written by another instance (here: written into etcd directly, as a pgrelay
  that switched over would) is followed by both: a node still claiming to be primary under the
  older epoch is fenced everywhere, writes are refused by both, and they come back when a newer
  epoch names that node again.
- One etcd member down changes nothing.
"""
from __future__ import annotations

import json
import urllib.request
import uuid

import psycopg
import pytest

from conftest import wait_until
from etcd_cluster import EtcdCluster



@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3).start()
    yield cluster
    cluster.stop()


def cluster_view(relay) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/cluster", timeout=5) as r:
        return json.loads(r.read())


def coordinated(etcd: EtcdCluster, prefix: str, member: str) -> dict:
    return {
        "failover": {"mode": "manual", "hold_writes": 0},
        "coordination": {"member": member, "etcd": {"endpoints": etcd.endpoints, "prefix": prefix}},
        "health": {"interval": "200ms"},
    }


def write_fails(relay) -> str:
    """The error a write gets (at login or at the statement: a session may not even start
    without a primary); fails the test if the write succeeds."""
    with pytest.raises(psycopg.Error) as info:
        with relay.connect(autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE coordination_probe (x int)")
    return str(info.value)


def test_two_pgrelays_share_one_record_and_follow_a_newer_epoch(etcd, make_pgrelay, cluster):
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    key = prefix + "/record"
    a = make_pgrelay(coordinated(etcd, prefix, "relay-a"))
    b = make_pgrelay(coordinated(etcd, prefix, "relay-b"))
    primary = cluster_view(a)["primary"]
    assert primary == "pg1", cluster_view(a)

    # One record, written once, and both instances serve under its epoch.
    record = etcd.get(key)
    assert record is not None, "no failover record in etcd"
    assert record["version"] == 1, f"the record was written {record['version']} times: {record}"
    assert record["value"].startswith("epoch=1\nprimary=pg1\n"), record
    for relay in (a, b):
        assert cluster_view(relay)["epoch"] == 1
        with relay.connect(autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    # Another instance recorded pg2 as primary at epoch 2 (a later timeline): both follow, and
    # pg1, still claiming to be primary, is fenced by both: no writes anywhere.
    etcd.put(key, "epoch=2\nprimary=pg2\ntimeline=99\n")
    for relay in (a, b):
        wait_until(lambda r=relay: cluster_view(r)["epoch"] == 2, timeout=10,
                   what="pgrelay to follow epoch 2 from etcd")
        view = cluster_view(relay)
        assert view["primary"] is None, view
        pg1 = next(n for n in view["nodes"] if n["name"] == "pg1")
        assert pg1["state"] == "fenced", view
        message = write_fails(relay)
        assert "primary" in message, message
    assert "following the failover record written by another pgrelay" in a.log_tail()

    # One etcd member down: nothing changes (the others hold a majority).
    etcd.stop_member(0)
    # A newer epoch names pg1 again: both serve writes on it.
    etcd.put(key, "epoch=3\nprimary=pg1\ntimeline=1\n")
    for relay in (a, b):
        wait_until(lambda r=relay: cluster_view(r)["epoch"] == 3 and cluster_view(r)["primary"] == "pg1",
                   timeout=10, what="pgrelay to follow epoch 3 with one etcd member down")
        with relay.connect(autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE coordination_probe (x int)")
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert etcd.get(key)["version"] == 3, "a pgrelay wrote the record although nothing changed"
    etcd.start_member(0, new=False)


def test_config_refuses_auto_failover_with_etcd_until_the_election_exists(etcd, make_pgrelay, tmp_path):
    import subprocess
    import os
    from conftest import to_yaml, default_config, free_port
    config = default_config(make_pgrelay.cluster, free_port(), free_port())
    config["failover"] = {"mode": "auto"}
    config["coordination"] = {"etcd": {"endpoints": etcd.endpoints}}
    path = tmp_path / "auto.yaml"
    path.write_text(to_yaml(config) + "\n")
    path.chmod(0o600)
    out = subprocess.run([os.environ["PGRELAY_BIN"], "--check-config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "coordinator election" in out.stdout + out.stderr, out.stdout + out.stderr
