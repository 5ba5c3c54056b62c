"""Failover by majority through etcd (coordination.etcd with failover.mode auto, issue #9): a real
3-member etcd cluster on loopback, a throwaway PostgreSQL primary + 2 standbys of our own
(promotion changes the cluster for good) and three pgrelays.

- The primary is killed under a write load through all three pgrelays: exactly one promotion
  (the record in etcd changes once: one epoch increment), made by the coordinator alone; all
  three route writes to the new primary; under quorum commit no acknowledged write is lost.
- One pgrelay (the coordinator) is cut off from the primary, while the standbys have also
  stopped streaming (so that the single-instance checks would let it promote): the other two
  still reach the primary, the majority says no, nothing is promoted.
- One etcd member down changes nothing. The etcd majority down: every pgrelay says it is
  degraded (/readyz, pgrelay_coordination_degraded), client traffic goes on to the known
  primary, a killed primary is not replaced; when etcd is back, so is the coordination.
- Two pgrelays forced to promote at once (test hook PGRELAY_TEST_PROMOTE_WITHOUT_COORDINATOR,
  a before_promote hook that holds both in the promotion window): exactly one epoch is written.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Optional

import pytest

from conftest import DIRECT, wait_until
from etcd_cluster import EtcdCluster
from scratch_cluster import (Forwarder, Scratch, Writer, in_recovery, log_has, metric,  # noqa: F401
                             scratch, wait_log)

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's coordination (PGRELAY_TEST_DIRECT=1)")

LEASE_TTL_S = 2
INTERVAL_S = 0.25
MEMBERS = ("relay-a", "relay-b", "relay-c")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), size=3).start()
    yield cluster
    cluster.stop()


def relay_config(scratch: Scratch, etcd: EtcdCluster, prefix: str, member: str,
                 ports: Optional[tuple] = None) -> dict:
    return {"nodes": scratch.nodes(ports), "backend": {"user": "postgres"},
            "routing": {"strategy": "follower"},
            "failover": {"mode": "auto"},
            "coordination": {"member": member,
                             "etcd": {"endpoints": etcd.endpoints, "prefix": prefix,
                                      "lease_ttl": f"{LEASE_TTL_S}s", "timeout": "500ms"}},
            "health": {"database": "postgres", "interval": f"{int(INTERVAL_S * 1000)}ms"},
            "log": {"level": "debug"}}


def get(relay, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def cluster_view(relay) -> dict:
    status, body = get(relay, "/cluster")
    assert status == 200, body
    return json.loads(body)


def coordination(relay) -> dict:
    return cluster_view(relay)["coordination"]


def start_relays(make_pgrelay, configs: dict, env: Optional[dict] = None) -> dict:
    """Starts the pgrelays in order (the first becomes the coordinator) and waits until all list
    each other, agree on one coordinator and serve with epoch 1."""
    relays = {}
    for name, config in configs.items():
        relays[name] = make_pgrelay(config, env=env)
        if len(relays) == 1:
            wait_until(lambda r=relays[name]: coordination(r)["is_coordinator"], timeout=10,
                       what=f"{name} to become the coordinator")

    def agreed():
        views = [coordination(r) for r in relays.values()]
        return ({v["coordinator"] for v in views} == {next(iter(relays))} and
                all(set(v["members"]) == set(relays) for v in views) and
                all(cluster_view(r)["epoch"] == 1 for r in relays.values()))
    wait_until(agreed, timeout=15, what="the pgrelays to list each other and agree on a coordinator")
    return relays


def record(etcd: EtcdCluster, prefix: str) -> dict:
    kv = etcd.get(prefix + "/record")
    assert kv is not None, "no failover record in etcd"
    return kv


def insert_port(relay) -> int:
    with relay.connect(dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        return conn.execute("INSERT INTO fo(v) VALUES (9) RETURNING inet_server_port()").fetchone()[0]


def test_primary_killed_under_writes_through_three_pgrelays_is_promoted_once(
        etcd, scratch, make_pgrelay):
    scratch.create(sync=True)  # quorum commit: ANY 1 of the standbys
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    relays = start_relays(make_pgrelay, {m: relay_config(scratch, etcd, prefix, m) for m in MEMBERS})
    coordinator = relays["relay-a"]
    assert record(etcd, prefix)["version"] == 1
    with coordinator.connect(dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, v int)")

    writers = [Writer(r) for r in relays.values()]
    for w in writers:
        w.start()
    wait_until(lambda: all(len(w.acked) > 20 for w in writers), 30, what="writes through every pgrelay")
    scratch.stop(0)
    killed = time.time()
    assert wait_log(coordinator, r"; promoting (s1|s2)", 40)
    line = wait_log(coordinator, r"promoted (s1|s2) .* to primary at epoch 2", 40)
    new = 1 if "promoted s1" in line else 2
    wait_until(lambda: all(any(t > killed for _, t in w.acked) for w in writers), 40,
               what="a write after the failover through every pgrelay")
    time.sleep(0.5)
    for w in writers:
        w.stop.set()
    for w in writers:
        w.join(30)
    gaps = [min(t for _, t in w.acked if t > killed) - killed for w in writers]
    print("first acknowledged write after the kill, per pgrelay: " +
          ", ".join(f"{g:.2f} s" for g in gaps))

    # Exactly one promotion: the record changed once, to the new primary at epoch 2, and only the
    # coordinator promoted.
    kv = record(etcd, prefix)
    assert kv["version"] == 2, f"the record was written {kv['version']} times: {kv}"
    assert kv["value"].startswith(f"epoch=2\nprimary={scratch.names[new]}\n"), kv
    for name, relay in relays.items():
        if relay is not coordinator:
            assert log_has(relay, r"; promoting ") is None, f"{name} promoted too"
        view = cluster_view(relay)
        assert view["epoch"] == 2 and view["primary"] == scratch.names[new], (name, view)
        assert insert_port(relay) == scratch.ports[new], name
    assert not in_recovery(scratch, new)

    # Quorum commit: every insert acknowledged through any pgrelay is on the new primary.
    acked = set().union(*({i for i, _ in w.acked} for w in writers))
    with scratch.connect(new) as c:
        present = {r[0] for r in c.execute("SELECT id FROM fo").fetchall()}
    assert acked <= present, f"{len(acked - present)} acknowledged inserts lost: {sorted(acked - present)[:10]}"
    print(f"{len(acked)} acknowledged inserts through 3 pgrelays, all on {scratch.names[new]}")


def test_one_pgrelay_cut_off_from_the_primary_promotes_nothing(etcd, scratch, make_pgrelay):
    scratch.create(sync=False)
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    fwd = Forwarder(scratch.ports[0])
    try:
        configs = {m: relay_config(scratch, etcd, prefix, m) for m in MEMBERS}
        # relay-a, the coordinator, reaches the primary through a forwarder that will be cut.
        configs["relay-a"] = relay_config(scratch, etcd, prefix, "relay-a",
                                          (fwd.port, scratch.ports[1], scratch.ports[2]))
        relays = start_relays(make_pgrelay, configs)
        a = relays["relay-a"]
        # The standbys stop streaming (no primary_conninfo): on its own, relay-a would take the
        # primary for dead and promote.
        for i in (1, 2):
            with scratch.connect(i) as c:
                c.execute("ALTER SYSTEM SET primary_conninfo = ''")
                c.execute("SELECT pg_reload_conf()")
        wait_until(lambda: not any(scratch.streams_from(i, 0) for i in (1, 2)), 20,
                   what="the standbys to stop streaming")
        fwd.cut_off()
        wait_log(a, r"node p0 \(\S+\) is down after", 15)
        line = wait_log(a, r"live pgrelay members report it unreachable", 10)
        assert "only 1 of 3" in line and "no promotion without a majority" in line, line
        time.sleep(3)  # a dozen more rounds: still nothing
        for name, relay in relays.items():
            assert log_has(relay, r"; promoting ") is None, f"{name} promoted"
        assert not in_recovery(scratch, 0)
        assert in_recovery(scratch, 1) and in_recovery(scratch, 2)
        assert record(etcd, prefix)["version"] == 1
        # The two that reach the primary still write to it.
        for name in ("relay-b", "relay-c"):
            assert insert_port_or_create(relays[name]) == scratch.ports[0], name
    finally:
        fwd.close()


def insert_port_or_create(relay) -> int:
    with relay.connect(dbname="postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fo (id bigserial PRIMARY KEY, v int)")
        return conn.execute("INSERT INTO fo(v) VALUES (9) RETURNING inet_server_port()").fetchone()[0]


def test_etcd_member_down_changes_nothing_and_majority_down_blocks_promotion(etcd, scratch, make_pgrelay):
    scratch.create(sync=False)
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    relays = start_relays(make_pgrelay, {m: relay_config(scratch, etcd, prefix, m) for m in MEMBERS})
    for relay in relays.values():
        assert metric(relay, "pgrelay_coordination_degraded") == 0
        assert metric(relay, "pgrelay_coordination_members") == 3
    assert metric(relays["relay-a"], "pgrelay_coordination_is_coordinator") == 1

    # One etcd member down: the coordinator, the members and the writes stay as they are.
    etcd.stop_member(2)
    time.sleep(LEASE_TTL_S + 1)
    for name, relay in relays.items():
        c = coordination(relay)
        assert c["etcd_reachable"] and c["coordinator"] == "relay-a", (name, c)
        assert insert_port_or_create(relay) == scratch.ports[0]
    etcd.start_member(2, new=False)
    wait_until(lambda: etcd.healthy(2), 20, what="etcd member 2 back")

    # The etcd majority down: degraded everywhere, nobody is coordinator, traffic goes on.
    etcd.stop_member(0)
    etcd.stop_member(1)
    try:
        for name, relay in relays.items():
            wait_until(lambda r=relay: metric(r, "pgrelay_coordination_degraded") == 1, LEASE_TTL_S + 5,
                       what=f"{name} to report itself degraded")
            status, body = get(relay, "/readyz")
            assert status == 200 and "degraded: etcd unreachable" in body, (name, status, body)
        wait_until(lambda: not any(coordination(r)["is_coordinator"] for r in relays.values()),
                   LEASE_TTL_S + 1, what="no pgrelay to act as coordinator")
        for relay in relays.values():
            assert insert_port_or_create(relay) == scratch.ports[0]
            with relay.connect(dbname="postgres", autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM fo").fetchone()[0] > 0

        # The primary dies meanwhile: without etcd nobody promotes.
        scratch.stop(0)
        for relay in relays.values():
            wait_log(relay, r"node p0 \(\S+\) is down after", 15)
        time.sleep(3)
        for name, relay in relays.items():
            assert log_has(relay, r"; promoting ") is None, f"{name} promoted without etcd"
            assert cluster_view(relay)["epoch"] == 1
        assert in_recovery(scratch, 1) and in_recovery(scratch, 2)
        # It comes back: writes go on as before.
        scratch.start(0)
        for relay in relays.values():
            wait_until(lambda r=relay: insert_port_or_create(r) == scratch.ports[0], 20,
                       what="writes to the restarted primary")
    finally:
        etcd.start_member(0, new=False)
        etcd.start_member(1, new=False)

    # etcd is back: not degraded, a coordinator again, the record untouched.
    for name, relay in relays.items():
        wait_until(lambda r=relay: metric(r, "pgrelay_coordination_degraded") == 0, 30,
                   what=f"{name} to see etcd again")
    wait_until(lambda: sum(coordination(r)["is_coordinator"] for r in relays.values()) == 1, 30,
               what="one coordinator again")
    assert record(etcd, prefix)["version"] == 1
    for relay in relays.values():
        status, body = get(relay, "/readyz")
        assert status == 200 and "degraded" not in body, body


def test_racing_coordinators_write_exactly_one_epoch(etcd, scratch, make_pgrelay, tmp_path):
    scratch.create(sync=False)
    prefix = f"/pgrelay/test-{uuid.uuid4().hex[:8]}"
    configs = {}
    for m in MEMBERS[:2]:
        configs[m] = relay_config(scratch, etcd, prefix, m)
        # Holds each promotion for a second before pg_promote: both are inside at once.
        configs[m]["failover"]["hooks"] = {"before_promote": "sleep 1", "timeout": "10s"}
    relays = start_relays(make_pgrelay, configs, env={"PGRELAY_TEST_PROMOTE_WITHOUT_COORDINATOR": "1"})
    scratch.stop(0)
    for relay in relays.values():
        wait_log(relay, r"primary p0 \(\S+\) failed .*; promoting (s1|s2)", 30)
    for relay in relays.values():
        wait_until(lambda r=relay: cluster_view(r)["epoch"] == 2 and cluster_view(r)["primary"], 30,
                   what="pgrelay to serve with epoch 2")
    time.sleep(2)  # let any second write land, if one could
    kv = record(etcd, prefix)
    assert kv["version"] == 2, f"the record was written {kv['version']} times: {kv}"
    winner = kv["value"].split("\n")[1].removeprefix("primary=")
    assert kv["value"].startswith("epoch=2\n"), kv
    for name, relay in relays.items():
        assert cluster_view(relay)["primary"] == winner, name
        assert insert_port_or_create(relay) == scratch.ports[scratch.names.index(winner)]
    # Both promoted (the second found the node promoted already); one lost the compare-and-swap
    # and followed the winner's record.
    losers = [name for name, relay in relays.items()
              if log_has(relay, r"another pgrelay changed the failover record first")]
    for name, relay in relays.items():
        print(f"{name}:\n  " + "\n  ".join(
            line for line in relay.log_tail().splitlines()
            if "[failover]" in line and ("promot" in line or "record" in line)))
        wait_log(relay, rf"promoted {winner} .* to primary at epoch 2", 10)
    assert len(losers) == 1, losers
