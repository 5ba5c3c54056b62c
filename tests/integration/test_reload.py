"""Config hot reload (issue 7): POST /reload and SIGHUP against the real 1 primary + 2 replica
cluster.

- leader -> follower takes effect without dropping a connection: idle sessions read on the
  replicas from their next statement, a session inside a transaction finishes it on the primary
  and switches after COMMIT;
- an invalid file is refused with every error listed (HTTP body, log), counted as a failure, and
  the running config keeps serving;
- nodes added and removed by a reload: reads reach the new replica, the removed one gets no more
  reads, /cluster and the node metrics follow, open sessions keep working;
- the primary cannot be removed by a reload; a new admin token applies at once.

Which node served a read is read from the statement itself (inet_server_port()).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import time

import psycopg
import pytest

from conftest import DIRECT, merge_config, to_yaml, wait_until
from test_admin import http, samples, scrape

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's config reload (PGRELAY_TEST_DIRECT=1)")

HEALTH = {"interval": "200ms"}
PORT_SQL = "SELECT inet_server_port()"


def rewrite(relay, extra: dict) -> dict:
    """Writes relay's config file anew: its current config deep-merged with `extra`."""
    relay.config = merge_config(relay.config, extra)
    relay.config_path.write_text("# rewritten by test_reload.py\n" + to_yaml(relay.config) + "\n")
    relay.config_path.chmod(0o600)
    return relay.config


def reload_ok(relay, token=None) -> str:
    status, _, body = http(relay, "POST", "/reload", token=token, timeout=15)
    assert status == 200, f"{status} {body}\nlog:\n{relay.log_tail()[-3000:]}"
    assert body.startswith("reloaded "), body
    return body


def connect(relay) -> psycopg.Connection:
    return relay.connect(autocommit=True)


def ports(conn: psycopg.Connection, n: int) -> collections.Counter:
    return collections.Counter(conn.execute(PORT_SQL).fetchone()[0] for _ in range(n))


def metric(relay, name: str, **labels) -> float:
    total = 0.0
    for sample_name, sample_labels, value in samples(scrape(relay)):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


def node_label_values(relay, family: str) -> set[str]:
    return {labels["node"] for name, labels, _ in samples(scrape(relay))
            if name == family and "node" in labels}


def cluster_nodes(relay) -> dict[str, dict]:
    import json
    status, _, body = http(relay, "GET", "/cluster")
    assert status == 200, body
    return {n["name"]: n for n in json.loads(body)["nodes"]}


def test_leader_to_follower_without_dropping_a_connection(make_pgrelay, cluster):
    relay = make_pgrelay({"routing": {"strategy": "leader"}, "health": HEALTH})
    primary, replicas = cluster.primary_port, set(cluster.replica_ports)
    idle = [connect(relay) for _ in range(4)]
    in_tx = relay.connect()  # not autocommit: psycopg opens a transaction with the first statement
    for conn in idle:
        assert ports(conn, 5) == {primary: 5}
        assert conn.execute("SHOW pgrelay.strategy").fetchone()[0] == "leader"
    assert in_tx.execute(PORT_SQL).fetchone()[0] == primary  # transaction open on the primary
    pids = [conn.info.backend_pid for conn in idle]
    accepted = metric(relay, "pgrelay_client_connections_total")

    rewrite(relay, {"routing": {"strategy": "follower"}})
    body = reload_ok(relay)
    assert "routing.strategy leader -> follower" in body, body

    # Idle sessions: the next statement already follows the new strategy.
    for conn in idle:
        assert conn.execute("SHOW pgrelay.strategy").fetchone()[0] == "follower"
        counts = ports(conn, 20)
        assert set(counts) <= replicas and sum(counts.values()) == 20, counts
    # The open transaction stays where it is until it ends, then the session switches too.
    assert ports(in_tx, 5) == {primary: 5}
    in_tx.commit()
    in_tx.autocommit = True
    counts = ports(in_tx, 10)
    assert set(counts) <= replicas, counts
    # No connection was dropped or re-established: same client connections, same sessions.
    assert [conn.info.backend_pid for conn in idle] == pids
    assert metric(relay, "pgrelay_client_connections_total") == accepted
    assert metric(relay, "pgrelay_config_reloads_total", result="success") == 1
    assert metric(relay, "pgrelay_config_reloads_total", result="failure") == 0
    for conn in [*idle, in_tx]:
        conn.close()
    relay.assert_healthy()


def test_invalid_file_is_refused_with_every_error(make_pgrelay, cluster):
    relay = make_pgrelay({"routing": {"strategy": "leader"}, "health": HEALTH})
    conn = connect(relay)
    good = dict(relay.config)
    bad = merge_config(good, {
        "routing": {"strategy": "sideways"},
        "limits": {"max_client_connections": -5},
        "health": {"interval": "soon"},
    })
    relay.config_path.write_text(to_yaml(bad) + "\n")
    status, _, body = http(relay, "POST", "/reload", timeout=15)
    assert status == 422, body
    assert "running configuration stays in effect" in body, body
    for key in ("routing.strategy", "limits.max_client_connections", "health.interval"):
        assert key in body, f"{key} missing from:\n{body}"
    assert len(re.findall(r"line \d+", body)) >= 3, body
    # The old config keeps serving, on the same connection and on new ones.
    assert conn.execute("SHOW pgrelay.strategy").fetchone()[0] == "leader"
    assert ports(conn, 3) == {cluster.primary_port: 3}
    with connect(relay) as fresh:
        assert fresh.execute("SHOW pgrelay.strategy").fetchone()[0] == "leader"
    assert metric(relay, "pgrelay_config_reloads_total", result="failure") == 1

    # SIGHUP with the same bad file: refused, logged with the errors, counted; pgrelay lives on.
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(relay, "pgrelay_config_reloads_total", result="failure") == 2,
               timeout=10, what="the SIGHUP reload to be refused")
    # The refusal is counted before its errors reach the log: wait for them.
    def logged_after_sighup():
        log = relay.log_tail()
        return "received SIGHUP" in log and "health.interval" in log[log.rindex("received SIGHUP"):]
    wait_until(logged_after_sighup, timeout=10, what="the SIGHUP reload's errors in the log")
    assert metric(relay, "pgrelay_config_reloads_total", result="success") == 0

    # A syntax error (not YAML at all) is refused the same way.
    relay.config_path.write_text("nodes: [unclosed\n")
    status, _, body = http(relay, "POST", "/reload", timeout=15)
    assert status == 422, body
    assert ports(conn, 2) == {cluster.primary_port: 2}

    # Fixed, it loads.
    rewrite(relay, {})
    reload_ok(relay)
    conn.close()
    relay.assert_healthy()


def test_nodes_added_and_removed(make_pgrelay, cluster):
    pg1, pg2, pg3 = cluster.nodes()
    relay = make_pgrelay({"routing": {"strategy": "follower"}, "health": HEALTH,
                          "nodes": [pg1, pg2]})
    r1, r2 = cluster.replica_ports
    conn = connect(relay)
    assert ports(conn, 10) == {r1: 10}
    assert set(cluster_nodes(relay)) == {"pg1", "pg2"}

    # Add pg3: probed, then it takes reads; /cluster and the metrics know it.
    rewrite(relay, {"nodes": [pg1, pg2, pg3]})
    body = reload_ok(relay)
    assert f"node pg3 ({pg3['host']}:{pg3['port']}) added" in body, body
    wait_until(lambda: cluster_nodes(relay).get("pg3", {}).get("state") == "up", timeout=10,
               what="pg3 to be up")
    counts = ports(conn, 60)
    assert counts[r1] > 0 and counts[r2] > 0 and counts[cluster.primary_port] == 0, counts
    assert "pg3" in node_label_values(relay, "pgrelay_statements_total")
    assert "pg3" in node_label_values(relay, "pgrelay_node_up")

    # Remove pg2 (by SIGHUP this time): no more reads there, the same session keeps working.
    rewrite(relay, {"nodes": [pg1, pg3]})
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(relay, "pgrelay_config_reloads_total", result="success") == 2,
               timeout=10, what="the SIGHUP reload")
    assert "node pg2" in relay.log_tail() and "removed" in relay.log_tail()
    assert set(cluster_nodes(relay)) == {"pg1", "pg3"}
    counts = ports(conn, 30)
    assert counts == {r2: 30}, counts
    assert "pg2" not in node_label_values(relay, "pgrelay_statements_total")
    assert "pg2" not in node_label_values(relay, "pgrelay_node_up")
    # pgrelay's connections to pg2 are gone (the watcher drops connections to removed nodes).
    with psycopg.connect(host=cluster.host, port=r1, user=cluster.superuser,
                         dbname=cluster.database, autocommit=True) as direct:
        wait_until(lambda: direct.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'",
            (cluster.app_user,)).fetchone()[0] == 0, timeout=10,
            what="pgrelay's connections to pg2 (sessions and health probe) to close")

    # pg2 comes back to its old slot.
    rewrite(relay, {"nodes": [pg1, pg2, pg3]})
    body = reload_ok(relay)
    assert "node pg2" in body and "added back" in body, body
    wait_until(lambda: cluster_nodes(relay).get("pg2", {}).get("state") == "up", timeout=10,
               what="pg2 to be up again")
    wait_until(lambda: r1 in ports(conn, 20), timeout=10, what="reads on pg2 again")
    conn.close()
    relay.assert_healthy()


def test_the_primary_cannot_be_removed(make_pgrelay, cluster):
    pg1, pg2, pg3 = cluster.nodes()
    relay = make_pgrelay({"health": HEALTH})
    rewrite(relay, {"nodes": [pg2, pg3]})
    status, _, body = http(relay, "POST", "/reload", timeout=15)
    assert status == 422, body
    assert "pg1" in body and "is the primary" in body and "switchover" in body, body
    assert set(cluster_nodes(relay)) == {"pg1", "pg2", "pg3"}
    with connect(relay) as conn:
        conn.execute("SELECT 1")
    relay.assert_healthy()


def test_new_admin_token_applies_at_once(make_pgrelay):
    relay = make_pgrelay({"admin": {"token": "first-token-0123"}, "health": HEALTH})
    assert http(relay, "POST", "/resume")[0] == 401
    rewrite(relay, {"admin": {"token": "second-token-4567"}})
    body = reload_ok(relay, token="first-token-0123")
    assert "admin.token changed" in body
    assert "second-token" not in body and "first-token" not in body
    assert http(relay, "POST", "/resume", token="first-token-0123")[0] == 401
    assert http(relay, "POST", "/resume", token="second-token-4567")[0] == 200
    assert "second-token" not in relay.log_tail()
    relay.assert_healthy()


def test_function_lists_apply_to_open_sessions(make_pgrelay, cluster):
    """routing.primary_functions changed by a reload sends an open session's next statement that
    calls the function to the primary (the workers' classifiers get the rebuilt catalog)."""
    relay = make_pgrelay({"routing": {"strategy": "follower"}, "health": HEALTH})
    conn = connect(relay)
    sql = "SELECT lower('X'), inet_server_port()"
    # prepare=False: psycopg would prepare the statement after a few runs, and a prepared
    # statement keeps the class it was given when it was prepared.
    assert {conn.execute(sql, prepare=False).fetchone()[1] for _ in range(6)} <= set(cluster.replica_ports)
    functions = relay.config["routing"].get("primary_functions", [])
    rewrite(relay, {"routing": {"primary_functions": [*functions, "lower"]}})
    body = reload_ok(relay)
    assert "routing" in body, body
    # The same session, no new connection (a new session would refresh its worker anyway).
    assert {conn.execute(sql, prepare=False).fetchone()[1] for _ in range(6)} == {cluster.primary_port}
    conn.close()
    relay.assert_healthy()
