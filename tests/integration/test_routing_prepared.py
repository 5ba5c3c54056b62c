"""Named prepared statements under the `follower` strategy (issue 4 acceptance).

A session's reads move between replicas statement by statement, so a statement prepared on one
node must work wherever its later Bind/Execute/EXECUTE runs: pgrelay re-prepares it there.
Covered: pgbench -M prepared (select-only and TPC-B-like) with zero failures and the selects
really served by the replicas (pg_stat_statements on each node); psycopg with
prepare_threshold=0; SQL PREPARE/EXECUTE after writes; DEALLOCATE / Close followed by a new
statement of the same name (no stale copy on any node).

pgbench runs in a database of its own (created and dropped here), so it cannot collide with
other tests' pgbench tables on the shared cluster.
"""

from __future__ import annotations

import collections
import re
import subprocess

import pytest
from psycopg import errors

from conftest import DIRECT, client_env
from test_routing import (FOLLOWER, SYNC, _bind, _execute, _parse, _read_batch, app_primary, node_connect,
                          port_of, unique, wait_replayed)

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's routing (PGRELAY_TEST_DIRECT=1)")

PGBENCH_SECONDS = 8
SELECT_ONLY_QUERY = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


@pytest.fixture(scope="module")
def follower(module_pgrelay):
    return module_pgrelay(FOLLOWER)


@pytest.fixture(scope="module")
def bench_db(cluster):
    name = unique("rtpb")
    with node_connect(cluster, cluster.primary_port) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {cluster.app_user}")
    wait_replayed(cluster)
    yield name
    with node_connect(cluster, cluster.primary_port) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pgbench(relay, cluster, db, *args, timeout=300):
    cmd = [f"{cluster.pg_bin}/pgbench", "-h", relay.host, "-p", str(relay.port), "-U", cluster.app_user,
           *args, db]
    out = subprocess.run(cmd, capture_output=True, text=True, env=client_env(cluster.app_password),
                         timeout=timeout)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(scope="module")
def initialized(follower, cluster, bench_db):
    rc, text = pgbench(follower, cluster, bench_db, "-i", "-s", "1", "-q")
    assert rc == 0, f"pgbench -i through pgrelay (follower) failed:\n{text}"
    wait_replayed(cluster)
    with app_primary(cluster, bench_db) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone() == (100_000,)
    return bench_db


def stat_calls(cluster, port, db, query_prefix):
    """pg_stat_statements calls of statements starting with query_prefix in database db on one node."""
    with node_connect(cluster, port) as conn:
        return conn.execute(
            "SELECT coalesce(sum(s.calls), 0)::bigint FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.query LIKE %s",
            (db, query_prefix + "%")).fetchone()[0]


def all_stat_calls(cluster, db, query_prefix):
    ports = (cluster.primary_port, *cluster.replica_ports)
    return {p: stat_calls(cluster, p, db, query_prefix) for p in ports}


def check_run(text, rc):
    assert rc == 0, f"pgbench exited with {rc}:\n{text}"
    failed = re.search(r"number of failed transactions: (\d+)", text)
    assert failed, f"no failed-transaction count in pgbench output:\n{text}"
    assert int(failed.group(1)) == 0, text
    assert "aborted" not in text, text
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    assert processed, text
    return int(processed.group(1))


# ---------------------------------------------------------------------------------------------
# pgbench
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["prepared", "extended"])
def test_pgbench_select_only_under_follower(follower, cluster, initialized, mode):
    before = all_stat_calls(cluster, initialized, SELECT_ONLY_QUERY)
    rc, text = pgbench(follower, cluster, initialized, "-M", mode, "-S", "-c", "4", "-j", "2",
                       "-T", str(PGBENCH_SECONDS), "-n")
    processed = check_run(text, rc)
    assert processed > 100, text
    after = all_stat_calls(cluster, initialized, SELECT_ONLY_QUERY)
    delta = {p: after[p] - before[p] for p in after}
    on_replicas = sum(delta[p] for p in cluster.replica_ports)
    # Every select ran on a replica, spread over both.
    assert on_replicas >= 0.99 * processed, f"selects per node {delta}, processed {processed}"
    assert delta[cluster.primary_port] <= 0.01 * processed, f"selects on the primary: {delta}"
    for p in cluster.replica_ports:
        assert delta[p] >= 0.3 * processed, f"replica {p} served too few selects: {delta}"


@pytest.mark.timeout(300)
def test_pgbench_tpcb_prepared_under_follower(follower, cluster, initialized):
    rc, text = pgbench(follower, cluster, initialized, "-M", "prepared", "-c", "4", "-j", "2",
                       "-T", str(PGBENCH_SECONDS), "-n")
    processed = check_run(text, rc)
    assert processed > 50, text
    with app_primary(cluster, initialized) as conn:
        sums = conn.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history),"
            " (SELECT count(*) FROM pgbench_history)").fetchone()
    assert sums[0] == sums[1] == sums[2] == sums[3], sums
    assert sums[4] >= processed


# ---------------------------------------------------------------------------------------------
# psycopg with prepare_threshold=0 (every statement a named prepared statement)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(cluster):
    name = unique("rtp")
    with app_primary(cluster) as conn:
        conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, v int NOT NULL)")
    wait_replayed(cluster)
    yield name
    with app_primary(cluster) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def test_psycopg_prepare_threshold_0_reads_and_writes(follower, cluster, table):
    read_ports: collections.Counter = collections.Counter()
    with follower.connect(autocommit=True, prepare_threshold=0) as conn:
        for i in range(200):
            if i % 3 == 0:
                row = conn.execute(f"INSERT INTO {table}(v) VALUES (%s) RETURNING v, inet_server_port()",
                                   (i,)).fetchone()
                assert row == (i, cluster.primary_port), row
            else:
                row = conn.execute("SELECT %s::int * 2, inet_server_port()", (i,)).fetchone()
                assert row[0] == 2 * i, row
                read_ports[row[1]] += 1
        # The same prepared statements inside transactions: read-only (replica) and read-write.
        conn.execute("BEGIN READ ONLY")
        row = conn.execute("SELECT %s::int * 2, inet_server_port()", (7,)).fetchone()
        assert row[0] == 14 and row[1] in cluster.replica_ports, row
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        assert conn.execute("SELECT %s::int * 2, inet_server_port()", (8,)).fetchone() == (16, cluster.primary_port)
        assert conn.execute(f"INSERT INTO {table}(v) VALUES (%s) RETURNING v, inet_server_port()",
                            (-1,)).fetchone() == (-1, cluster.primary_port)
        conn.execute("COMMIT")
    assert set(read_ports) == set(cluster.replica_ports), f"reads ran on {dict(read_ports)}"
    with app_primary(cluster) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE v >= 0 AND v % 3 = 0").fetchone() == (67,)


def test_psycopg_prepare_threshold_0_many_sessions(follower, cluster, table):
    for s in range(10):
        with follower.connect(autocommit=True, prepare_threshold=0) as conn:
            for i in range(20):
                assert conn.execute("SELECT %s::int + %s::int", (s, i)).fetchone() == (s + i,)
            assert conn.execute(f"INSERT INTO {table}(v) VALUES (%s) RETURNING v", (1000 + s,)).fetchone() == \
                (1000 + s,)


# ---------------------------------------------------------------------------------------------
# SQL PREPARE / EXECUTE
# ---------------------------------------------------------------------------------------------


def test_sql_prepare_execute_after_writes(follower, cluster, table):
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute("PREPARE rt_r(int) AS SELECT $1 * 3, inet_server_port()")
        conn.execute(f"PREPARE rt_w(int) AS INSERT INTO {table}(v) VALUES ($1) RETURNING v, inet_server_port()")
        for i in range(60):
            assert conn.execute(f"EXECUTE rt_w({2000 + i})").fetchone() == (2000 + i, cluster.primary_port)
            assert conn.execute(f"INSERT INTO {table}(v) VALUES ({3000 + i})").rowcount == 1
            assert conn.execute(f"EXECUTE rt_r({i})").fetchone()[0] == 3 * i
    with app_primary(cluster) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table} WHERE v BETWEEN 2000 AND 3059").fetchone() == (120,)


def test_sql_execute_of_a_read_runs_on_replicas(follower, cluster):
    # EXECUTE of a prepared SELECT is a read: it spreads over the replicas like the SELECT would.
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute("PREPARE rt_p AS SELECT inet_server_port()")
        ports = collections.Counter(conn.execute("EXECUTE rt_p").fetchone()[0] for _ in range(40))
    assert set(ports) == set(cluster.replica_ports), \
        f"EXECUTE of a prepared SELECT ran on {dict(ports)}, not on both replicas"


def test_sql_execute_of_a_write_runs_on_primary(follower, cluster, table):
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"INSERT INTO {table}(v) VALUES (-5)")
        conn.execute(f"PREPARE rt_u AS UPDATE {table} SET v = v WHERE v = -5 RETURNING inet_server_port()")
        conn.execute(f"PREPARE rt_c AS WITH w AS (INSERT INTO {table}(v) VALUES (-2) RETURNING v)"
                     " SELECT inet_server_port() FROM w")
        for _ in range(5):
            assert port_of(conn, "EXECUTE rt_u") == cluster.primary_port
            assert port_of(conn, "EXECUTE rt_c") == cluster.primary_port


def test_sql_deallocate(follower, cluster):
    # DEALLOCATE of a statement the session prepared succeeds (wherever pgrelay runs it), and the
    # statement is gone on every node afterwards.
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute("PREPARE rt_q AS SELECT 1, inet_server_port()")
        assert {conn.execute("EXECUTE rt_q").fetchone()[0] for _ in range(10)} == {1}
        conn.execute("DEALLOCATE rt_q")
        for _ in range(4):
            with pytest.raises(errors.InvalidSqlStatementName):
                conn.execute("EXECUTE rt_q")
        # Right after PREPARE, before any EXECUTE.
        conn.execute("PREPARE rt_q2 AS SELECT 1")
        conn.execute("DEALLOCATE PREPARE rt_q2")
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("EXECUTE rt_q2")


def test_sql_deallocate_all_then_prepare_same_name(follower, cluster):
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute("PREPARE rt_a AS SELECT 1, inet_server_port()")
        assert {conn.execute("EXECUTE rt_a").fetchone()[0] for _ in range(10)} == {1}
        conn.execute("DEALLOCATE ALL")
        for _ in range(4):
            with pytest.raises(errors.InvalidSqlStatementName):
                conn.execute("EXECUTE rt_a")
        conn.execute("PREPARE rt_a AS SELECT 2, inet_server_port()")
        got = [conn.execute("EXECUTE rt_a").fetchone() for _ in range(10)]
        assert {g[0] for g in got} == {2}, f"a stale rt_a ran: {got}"


# ---------------------------------------------------------------------------------------------
# Protocol-level named statements
# ---------------------------------------------------------------------------------------------


def _run_named(raw, name, params=()):
    raw.send(_bind(params, stmt=name) + _execute() + SYNC)
    return _read_batch(raw)


def test_protocol_named_statement_reprepared_on_each_replica(follower, cluster):
    with follower.raw_login() as raw:
        raw.send(_parse("SELECT $1::int + 1, inet_server_port()", name="rt_n") + SYNC)
        assert not _read_batch(raw)["errors"]
        ports = set()
        for i in range(20):
            res = _run_named(raw, "rt_n", [str(i)])
            assert not res["errors"], res
            assert res["rows"][0][0] == str(i + 1)
            ports.add(int(res["rows"][0][1]))
        assert ports == set(cluster.replica_ports), f"named statement ran on {ports}"


def _close_statement(raw, name):
    payload = b"S" + name.encode() + b"\0"
    raw.send(b"C" + (len(payload) + 4).to_bytes(4, "big") + payload + SYNC)
    res = _read_batch(raw)
    assert not res["errors"], res


def _prepare_and_spread(raw, cluster, name, sql_text, expect):
    raw.send(_parse(sql_text, name=name) + SYNC)
    res = _read_batch(raw)
    assert not res["errors"], res
    ports = set()
    for _ in range(10):
        res = _run_named(raw, name)
        assert not res["errors"], res
        assert res["rows"][0][0] == expect, res
        ports.add(int(res["rows"][0][1]))
    assert ports == set(cluster.replica_ports), f"{name} ran on {ports}"


def test_protocol_close_makes_statement_unusable(follower, cluster):
    with follower.raw_login() as raw:
        _prepare_and_spread(raw, cluster, "rt_s", "SELECT 1, inet_server_port()", "1")
        _close_statement(raw, "rt_s")
        for _ in range(4):
            res = _run_named(raw, "rt_s")
            assert [e["C"] for e in res["errors"]] == ["26000"], f"closed statement still usable: {res}"


def test_protocol_close_then_parse_same_name(follower, cluster):
    # What drivers with statement caches do all the time: Close a name, Parse it anew.
    with follower.raw_login() as raw:
        _prepare_and_spread(raw, cluster, "rt_s2", "SELECT 1, inet_server_port()", "1")
        _close_statement(raw, "rt_s2")
        raw.send(_parse("SELECT 2, inet_server_port()", name="rt_s2") + SYNC)
        res = _read_batch(raw)
        assert not res["errors"], f"Parse of a closed name failed: {res['errors']}"
        for _ in range(10):
            res = _run_named(raw, "rt_s2")
            assert not res["errors"], res
            assert res["rows"][0][0] == "2", f"a stale copy of rt_s2 ran on {res['rows'][0][1]}: {res}"
