"""Several pgrelay instances share the failover record through etcd (coordination.etcd, issue #9):
a real 3-member etcd cluster on loopback and two pgrelays on the shared PostgreSQL cluster.

- The record is created once, whichever pgrelay writes it first, and both serve with it.
- A newer record written by another instance (here: written into etcd directly, as a pgrelay
  that switched over would) is followed by both: a node still claiming to be primary under the
  older epoch is fenced everywhere, writes are refused by both, and they come back when a newer
  epoch names that node again.
- One etcd member down changes nothing.
- Membership and the coordinator election: both instances list each other with their views,
  exactly one is the coordinator, only it accepts a switchover, and when it is killed (no clean
  release of its lease) the other takes over within lease TTL + one interval.

Failover by majority (failover.mode auto through the coordinator): test_coordinated_failover.py.
"""
from __future__ import annotations

import json
import signal
import time
import urllib.error
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


LEASE_TTL_S = 2
INTERVAL_S = 0.2


def coordinated(etcd: EtcdCluster, prefix: str, member: str) -> dict:
    return {
        "failover": {"mode": "manual", "hold_writes": 0},
        "coordination": {"member": member,
                         "etcd": {"endpoints": etcd.endpoints, "prefix": prefix,
                                  "lease_ttl": f"{LEASE_TTL_S}s", "timeout": "500ms"}},
        "health": {"interval": f"{int(INTERVAL_S * 1000)}ms"},
    }


def post(relay, path: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{relay.admin_port}{path}", data=b"",
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


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


def test_membership_election_and_takeover_when_the_coordinator_dies(etcd, make_pgrelay):
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    relays = {name: make_pgrelay(coordinated(etcd, prefix, name)) for name in ("relay-a", "relay-b")}

    def coordination(relay) -> dict:
        return cluster_view(relay)["coordination"]

    # Both list both members, with their views of the nodes, and agree on one coordinator.
    def agreed():
        views = [coordination(r) for r in relays.values()]
        holders = {v["coordinator"] for v in views}
        return (len(holders) == 1 and None not in holders and
                all(set(v["members"]) == set(relays) for v in views))
    wait_until(agreed, timeout=10, what="both pgrelays to list each other and agree on a coordinator")
    holder = coordination(relays["relay-a"])["coordinator"]
    other = "relay-b" if holder == "relay-a" else "relay-a"
    assert coordination(relays[holder])["is_coordinator"] is True
    assert coordination(relays[other])["is_coordinator"] is False
    view = coordination(relays[other])["members"][holder]
    assert view["primary"] == "pg1" and view["nodes"]["pg1"]["role"] == "primary", view

    # Only the coordinator may move the primary.
    status, body = post(relays[other], "/switchover?to=pg2")
    assert status == 409, body
    assert f"send the switchover to {holder}" in body, body

    # The coordinator dies without releasing its lease: the other takes over within the lease
    # TTL plus one interval (and not before the dead one's lease could have run out).
    dead = relays.pop(holder)
    killed = time.monotonic()
    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait(timeout=10)
    make_pgrelay.instances.remove(dead)
    survivor = relays[other]
    wait_until(lambda: coordination(survivor)["is_coordinator"], timeout=LEASE_TTL_S + 5,
               interval=0.05, what="the surviving pgrelay to become coordinator")
    took = time.monotonic() - killed
    print(f"takeover after {took:.2f} s (lease TTL {LEASE_TTL_S} s, interval {INTERVAL_S} s)")
    # etcd itself revokes expired leases in a loop every 500 ms: up to that much on top.
    assert took <= LEASE_TTL_S + INTERVAL_S + 1.0, f"takeover took {took:.2f} s"
    assert took >= LEASE_TTL_S * 2 / 3 - 0.2, f"takeover after {took:.2f} s: before the lease could expire"
    wait_until(lambda: set(coordination(survivor)["members"]) == {other}, timeout=5,
               what="the dead member to leave the member list with its lease")


def test_a_newer_record_is_followed_at_once_through_the_watch(etcd, make_pgrelay):
    """With a slow health interval (3 s) and the periodic read of the record every 5 s, only the
    watch can make a pgrelay follow a new record within a second."""
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    config = coordinated(etcd, prefix, "relay-w")
    config["health"] = {"interval": "3s", "timeout": "1s"}
    relay = make_pgrelay(config)
    key = prefix + "/record"
    wait_until(lambda: etcd.get(key) is not None and cluster_view(relay)["epoch"] == 1, timeout=10,
               what="the record at epoch 1")
    time.sleep(1)
    etcd.put(key, "epoch=2\nprimary=pg1\ntimeline=1\n")
    written = time.monotonic()
    wait_until(lambda: cluster_view(relay)["epoch"] == 2, timeout=10, interval=0.02,
               what="pgrelay to follow epoch 2")
    took = time.monotonic() - written
    print(f"followed a new record after {took * 1000:.0f} ms (health interval 3 s)")
    assert took < 1.0, f"following the record took {took:.2f} s: not through the watch"
    with relay.connect(autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert etcd.get(key)["version"] == 2
