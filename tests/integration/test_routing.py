"""Per-statement routing against the real 1 primary + 2 replica cluster (issue 4 acceptance).

Which node served a statement is read from the statement itself: `inet_server_port()` (on the
side-effect-free list, so it does not change a statement's class) returns the port of the
PostgreSQL node that ran it. Covered:

- `follower`: reads on replicas (pg_is_in_recovery() is true), spread by weight; every kind of
  write (DML, writing CTEs, nextval, row locks, volatile functions that write, CALL, DO) on the
  primary; read-only transactions on a replica, other transactions wholly on the primary, 25006
  for a write in a read-only transaction.
- `leader`: every read on the primary. Comment hints under both strategies.
- The lag bound (bytes and time) with a replica whose replay is paused, and its return.
- Fallback to the primary, or a clear error, when no replica is eligible.
- Session state (SET / SET LOCAL / RESET ALL / DISCARD ALL) on every node a session uses.
- Session pins (temporary tables, LISTEN, WITH HOLD cursors, advisory locks).
- Pipelined extended-protocol batches with reads and writes: replies in order.

Every test that pauses replay resumes it in a finally block and waits until the replica has
caught up, so the shared cluster is left healthy. Tables get unique names and are dropped.
"""

from __future__ import annotations

import collections
import select
import struct
import threading
import time
import uuid
from typing import Any, Iterable, Optional

import psycopg
import pytest
from psycopg import errors

from conftest import DIRECT, Cluster, RawConn, message, parse_fields, wait_until
from replication import Paused, app_primary, node_connect, wait_replayed

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's routing (PGRELAY_TEST_DIRECT=1)")

HEALTH_INTERVAL = 0.5  # seconds; every pgrelay here probes this often
HEALTH = {"interval": f"{int(HEALTH_INTERVAL * 1000)}ms"}
FOLLOWER = {"routing": {"strategy": "follower"}, "health": HEALTH}
LEADER = {"routing": {"strategy": "leader"}, "health": HEALTH}
PORT_SQL = "SELECT inet_server_port()"
READS = 1000  # reads for the distribution checks
TOLERANCE = 0.20  # relative: a replica's share is within ±20% of its weight's share


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def unique(prefix: str = "rt") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def port_of(conn: psycopg.Connection, query: str = PORT_SQL, params: Any = None) -> int:
    return conn.execute(query, params).fetchone()[0]


def count_ports(conn: psycopg.Connection, n: int, query: str = PORT_SQL) -> collections.Counter:
    return collections.Counter(port_of(conn, query) for _ in range(n))


def assert_shares(counts: collections.Counter, weights: dict[int, float], what: str) -> None:
    """Every read on a replica of `weights`, each replica's share within TOLERANCE of its weight."""
    total = sum(counts.values())
    assert set(counts) <= set(weights), f"{what}: reads served by nodes other than the replicas: {dict(counts)}"
    for port, weight in weights.items():
        expected = weight / sum(weights.values())
        share = counts.get(port, 0) / total
        assert abs(share - expected) <= TOLERANCE * expected, (
            f"{what}: replica {port} served {share:.1%} of {total} reads, expected {expected:.1%} "
            f"±{TOLERANCE:.0%} (all counts: {dict(counts)})")


def log_text(relay) -> str:
    try:
        return relay.log_path.read_text(errors="replace")
    except (AttributeError, OSError):
        return ""


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def follower(module_pgrelay):
    return module_pgrelay(FOLLOWER)


@pytest.fixture(scope="module")
def leader(module_pgrelay):
    return module_pgrelay(LEADER)


@pytest.fixture(scope="module")
def objects(cluster):
    """A table, a sequence, a writing plpgsql function and procedure, created directly on the
    primary and replayed on both replicas (so a misrouted write fails with 25006 there, not with
    'does not exist')."""
    name = unique()
    with app_primary(cluster) as conn:
        conn.execute(f"""
            CREATE TABLE {name} (id serial PRIMARY KEY, v int NOT NULL, pad text);
            CREATE SEQUENCE {name}_seq;
            CREATE FUNCTION {name}_ins(x int) RETURNS int LANGUAGE plpgsql VOLATILE AS
              $$ BEGIN INSERT INTO {name}(v) VALUES (x); RETURN x; END $$;
            CREATE PROCEDURE {name}_proc(x int) LANGUAGE plpgsql AS
              $$ BEGIN INSERT INTO {name}(v) VALUES (x); END $$;
            INSERT INTO {name}(v) SELECT g FROM generate_series(1, 10) g;
        """)
    wait_replayed(cluster)
    yield name
    with app_primary(cluster) as conn:
        conn.execute(f"DROP PROCEDURE IF EXISTS {name}_proc(int); DROP FUNCTION IF EXISTS {name}_ins(int);"
                     f" DROP SEQUENCE IF EXISTS {name}_seq; DROP TABLE IF EXISTS {name}")


def primary_count(cluster: Cluster, table: str, where: str = "true") -> int:
    with app_primary(cluster) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


# ---------------------------------------------------------------------------------------------
# follower: reads on replicas, spread by weight
# ---------------------------------------------------------------------------------------------


def test_follower_pg_is_in_recovery_is_true(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        for _ in range(10):
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,), \
                "SELECT pg_is_in_recovery() under follower ran on the primary"
        assert port_of(conn) in cluster.replica_ports


def test_follower_equal_weights_one_session(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        counts = count_ports(conn, READS)
    assert_shares(counts, {p: 1 for p in cluster.replica_ports}, "equal weights, one session")


def test_follower_equal_weights_many_sessions(follower, cluster):
    # 50 sessions x 20 reads: the balance holds across sessions too, not only within one.
    counts: collections.Counter = collections.Counter()
    for _ in range(50):
        with follower.connect(autocommit=True) as conn:
            counts += count_ports(conn, READS // 50)
    assert_shares(counts, {p: 1 for p in cluster.replica_ports}, "equal weights, 50 sessions")


def test_follower_session_affinity(make_pgrelay, cluster):
    """routing.replica_affinity session: every read of a session goes to the replica its first
    read got, and the sessions are spread over the replicas."""
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "replica_affinity": "session"}})
    sessions: collections.Counter = collections.Counter()
    for _ in range(40):
        with relay.connect(autocommit=True) as conn:
            counts = count_ports(conn, 10)
            assert len(counts) == 1, f"one session's reads went to several nodes: {dict(counts)}"
            (port,) = counts
            assert port in cluster.replica_ports, f"reads on {port}, not a replica"
            sessions[port] += 1
    assert_shares(sessions, {p: 1 for p in cluster.replica_ports}, "sessions with replica affinity")


@pytest.mark.parametrize("balance", ["round_robin", "random", "least_connections"])
def test_follower_weights_1_and_3(make_pgrelay, cluster, balance):
    r1, r2 = cluster.replica_ports
    nodes = cluster.nodes()
    nodes[1]["weight"], nodes[2]["weight"] = 1, 3
    relay = make_pgrelay({**FOLLOWER, "nodes": nodes,
                          "routing": {"strategy": "follower", "load_balance": balance}})
    with relay.connect(autocommit=True) as conn:
        counts = count_ports(conn, READS)
    if balance == "least_connections":
        # One sequential client never has a statement in flight, so the tie-break decides; the
        # only firm claims: reads on replicas only, and not all on one.
        assert set(counts) <= {r1, r2}, f"least_connections: reads on the primary: {dict(counts)}"
        return
    assert_shares(counts, {r1: 1, r2: 3}, f"weights 1:3, {balance}")


def test_follower_least_connections_concurrent(make_pgrelay, cluster):
    # With concurrent clients each statement goes to the replica with fewest in flight: both used.
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "load_balance": "least_connections"}})
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client():
        try:
            with relay.connect(autocommit=True) as conn:
                local = collections.Counter(port_of(conn, "SELECT inet_server_port() FROM pg_sleep(0.005)")
                                            for _ in range(50))
            with lock:
                counts.update(local)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert set(counts) <= set(cluster.replica_ports), dict(counts)
    assert all(counts[p] >= 0.2 * sum(counts.values()) for p in cluster.replica_ports), dict(counts)


# ---------------------------------------------------------------------------------------------
# follower: everything that writes goes to the primary
# ---------------------------------------------------------------------------------------------

# (statement template, expected first column). {t} is the test table; {n} a value unique to the
# test case, and a row with v = {n} exists before the statement runs (inserted directly on the
# primary). Each statement returns inet_server_port() last.
WRITES_RETURNING_PORT = [
    ("INSERT INTO {t}(v) VALUES ({n}) RETURNING v, inet_server_port()", "n"),
    ("UPDATE {t} SET pad = 'u' WHERE v = {n} RETURNING v, inet_server_port()", "n"),
    ("DELETE FROM {t} WHERE v = {n} RETURNING v, inet_server_port()", "n"),
    ("WITH w AS (INSERT INTO {t}(v) VALUES ({n}) RETURNING v) SELECT v, inet_server_port() FROM w", "n"),
    ("WITH w AS (UPDATE {t} SET pad = 'u' WHERE v = {n} RETURNING v) SELECT v, inet_server_port() FROM w", "n"),
    ("WITH w AS (DELETE FROM {t} WHERE v = {n} RETURNING v) SELECT count(*), inet_server_port() FROM w", 1),
    ("WITH r AS (SELECT {n} AS x), w AS (INSERT INTO {t}(v) SELECT x FROM r RETURNING v)"
     " SELECT (SELECT v FROM w), inet_server_port()", "n"),
    ("SELECT nextval('{t}_seq') > 0, inet_server_port()", True),
    ("SELECT setval('{t}_seq', 500) = 500, inet_server_port()", True),
    ("SELECT pg_catalog.nextval('{t}_seq') > 0, inet_server_port()", True),
    ("SELECT \"nextval\"('{t}_seq') > 0, inet_server_port()", True),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR UPDATE", "n"),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR NO KEY UPDATE", "n"),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR SHARE", "n"),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR KEY SHARE", "n"),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR UPDATE SKIP LOCKED", "n"),
    ("SELECT v, inet_server_port() FROM {t} WHERE v = {n} FOR UPDATE OF {t} NOWAIT", "n"),
    ("SELECT v, inet_server_port() FROM (SELECT v FROM {t} WHERE v = {n} FOR UPDATE) s", "n"),
    ("SELECT {t}_ins({n}), inet_server_port()", "n"),
    ("SELECT x, inet_server_port() FROM {t}_ins({n}) AS x", "n"),
    ("SELECT x, inet_server_port() FROM (VALUES ({n})) AS s(x) WHERE {t}_ins(x) = {n}", "n"),
    ("WITH x AS (SELECT {t}_ins({n}) AS y) SELECT y, inet_server_port() FROM x", "n"),
    ("SELECT (SELECT {t}_ins({n})), inet_server_port()", "n"),
    ("SELECT 1, inet_server_port() FROM (SELECT {t}_ins({n})) s", 1),
    ("SELECT pg_try_advisory_xact_lock({n}), inet_server_port()", True),
    ("SELECT lo_unlink(lo_create(0)) = 1, inet_server_port()", True),
    ("SELECT txid_current() > 0, inet_server_port()", True),
]


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("template,expected", WRITES_RETURNING_PORT,
                         ids=[w[0].split(" ", 3)[0] + "-" + str(i) for i, w in enumerate(WRITES_RETURNING_PORT)])
def test_follower_write_runs_on_primary(follower, cluster, objects, template, expected, protocol):
    # psycopg sends a statement without parameters as a simple Query; binary=True forces
    # Parse/Bind/Execute/Sync.
    n = 1_000_000 + uuid.uuid4().int % 1_000_000_000
    with app_primary(cluster) as direct:
        direct.execute(f"INSERT INTO {objects}(v) VALUES ({n})")
    with follower.connect(autocommit=True) as conn:
        row = conn.execute(template.format(t=objects, n=n), binary=protocol == "extended").fetchone()
    assert row is not None, "no row returned"
    assert row[-1] == cluster.primary_port, f"served by {row[-1]}, not the primary"
    assert row[0] == (n if expected == "n" else expected)


def test_follower_other_writes_succeed(follower, cluster, objects):
    t = objects
    with follower.connect(autocommit=True) as conn:
        # EXPLAIN ANALYZE executes the statement.
        conn.execute(f"EXPLAIN ANALYZE INSERT INTO {t}(v) VALUES (901)")
        conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) WITH w AS (INSERT INTO {t}(v) VALUES (902) RETURNING 1) SELECT * FROM w")
        conn.execute(f"CREATE TABLE {t}_ctas AS SELECT inet_server_port() AS p")
        conn.execute(f"SELECT inet_server_port() AS p INTO {t}_si")
        with conn.cursor().copy(f"COPY {t}(v) FROM STDIN") as copy:
            for v in (903, 904, 905):
                copy.write_row((v,))
        conn.execute(f"INSERT INTO {t}(v) SELECT 906")
        conn.execute(f"INSERT INTO {t}(v) VALUES ($1)".replace("$1", "%s"), (907,))  # extended protocol
        conn.execute(f"MERGE INTO {t} USING (VALUES (908)) s(x) ON false WHEN NOT MATCHED THEN INSERT (v) VALUES (s.x)")
    try:
        with app_primary(cluster) as direct:
            assert direct.execute(f"SELECT p FROM {t}_ctas").fetchone() == (cluster.primary_port,)
            assert direct.execute(f"SELECT p FROM {t}_si").fetchone() == (cluster.primary_port,)
            assert direct.execute(f"SELECT count(*) FROM {t} WHERE v BETWEEN 901 AND 908").fetchone() == (8,)
    finally:
        with app_primary(cluster) as direct:
            direct.execute(f"DROP TABLE IF EXISTS {t}_ctas; DROP TABLE IF EXISTS {t}_si")


def test_follower_copy_to_stdout_is_a_read(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        ports = set()
        for _ in range(6):
            with conn.cursor().copy("COPY (SELECT inet_server_port()) TO STDOUT") as copy:
                ports |= {int(bytes(row).strip()) for row in copy}
    assert ports == set(cluster.replica_ports), f"COPY TO ran on {ports}"


def test_follower_nextval_values_are_consecutive(follower, cluster, objects):
    with follower.connect(autocommit=True) as conn:
        values = [conn.execute(f"SELECT nextval('{objects}_seq')").fetchone()[0] for _ in range(20)]
    assert values == list(range(values[0], values[0] + 20))


def test_follower_call_and_do_succeed(follower, cluster, objects):
    with follower.connect(autocommit=True) as conn:
        conn.execute(f"CALL {objects}_proc(201)")
        conn.execute(f"DO $$ BEGIN INSERT INTO {objects}(v) VALUES (202); END $$")
        conn.execute(f"DO LANGUAGE plpgsql $$ BEGIN PERFORM {objects}_ins(203); END $$")
    assert primary_count(cluster, objects, "v IN (201, 202, 203)") == 3


def test_follower_plpgsql_write_function_rows_land_on_primary(follower, cluster, objects):
    with follower.connect(autocommit=True) as conn:
        for i in range(20):
            assert conn.execute(f"SELECT {objects}_ins(%s)", (300 + i,)).fetchone() == (300 + i,)
    assert primary_count(cluster, objects, "v BETWEEN 300 AND 319") == 20


def test_follower_select_for_update_in_transaction(follower, cluster, objects):
    with follower.connect() as conn:  # psycopg opens the transaction itself
        row = conn.execute(f"SELECT v, inet_server_port() FROM {objects} WHERE v = 2 FOR UPDATE").fetchone()
        assert row == (2, cluster.primary_port)
        conn.execute(f"UPDATE {objects} SET pad = 'locked' WHERE v = 2")
        conn.commit()
    assert primary_count(cluster, objects, "v = 2 AND pad = 'locked'") == 1


def test_follower_write_batch_string_on_primary(follower, cluster, objects):
    # A multi-statement simple query that writes runs wholly on the primary (implicit transaction).
    with follower.raw_login() as raw:
        rows, tags, status = raw.simple_query(
            f"INSERT INTO {objects}(v) VALUES (401); SELECT inet_server_port()")
        assert rows == [[str(cluster.primary_port)]] and status == "I"
        rows, _, _ = raw.simple_query("SELECT 1; SELECT inet_server_port()")
        assert int(rows[0][0]) in cluster.replica_ports
    assert primary_count(cluster, objects, "v = 401") == 1


# ---------------------------------------------------------------------------------------------
# follower: transactions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("begin", ["BEGIN READ ONLY", "START TRANSACTION READ ONLY",
                                   "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"])
def test_follower_read_only_transaction_on_replica(follower, cluster, objects, begin):
    seen = set()
    with follower.connect(autocommit=True) as conn:
        for _ in range(6):
            conn.execute(begin)
            first = port_of(conn)
            assert first in cluster.replica_ports, f"{begin}: ran on {first}, not a replica"
            assert conn.execute(f"SELECT count(*) >= 10, inet_server_port() FROM {objects}").fetchone() == (True, first)
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert port_of(conn) == first, "a read-only transaction moved between nodes"
            conn.execute("COMMIT")
            seen.add(first)
    assert seen == set(cluster.replica_ports), f"read-only transactions used only {seen}"


def test_follower_psycopg_read_only_connection(follower, cluster):
    with follower.connect() as conn:
        conn.read_only = True  # psycopg then starts every transaction with BEGIN READ ONLY
        for _ in range(4):
            assert port_of(conn) in cluster.replica_ports
            conn.commit()


def test_follower_default_transaction_read_only_session(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("BEGIN")
        assert port_of(conn) in cluster.replica_ports
        conn.execute("COMMIT")
        conn.execute("RESET default_transaction_read_only")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("BEGIN")
        assert port_of(conn) in cluster.replica_ports
        conn.execute("COMMIT")


def test_follower_read_write_transaction_all_on_primary(follower, cluster, objects):
    with follower.connect(autocommit=True) as conn:
        conn.execute("BEGIN")
        assert port_of(conn) == cluster.primary_port, "first SELECT of a read-write transaction on a replica"
        row = conn.execute(f"UPDATE {objects} SET pad = 'rw' WHERE v = 3 RETURNING inet_server_port()").fetchone()
        assert row == (cluster.primary_port,)
        assert conn.execute(f"SELECT pad, inet_server_port() FROM {objects} WHERE v = 3").fetchone() == \
            ("rw", cluster.primary_port)
        conn.execute("COMMIT")
        # After the transaction reads spread to the replicas again.
        assert port_of(conn) in cluster.replica_ports
    assert primary_count(cluster, objects, "v = 3 AND pad = 'rw'") == 1


def test_follower_psycopg_transaction_on_primary(follower, cluster, objects):
    with follower.connect() as conn:
        for _ in range(3):
            with conn.transaction():
                assert port_of(conn) == cluster.primary_port
                conn.execute(f"UPDATE {objects} SET pad = 'tx' WHERE v = 4")
        conn.rollback()


def test_follower_write_in_read_only_transaction_gets_25006(follower, cluster, objects):
    with follower.connect(autocommit=True) as conn:
        for _ in range(2):  # both replicas, round robin
            conn.execute("BEGIN READ ONLY")
            assert port_of(conn) in cluster.replica_ports
            with pytest.raises(errors.ReadOnlySqlTransaction) as info:
                conn.execute(f"INSERT INTO {objects}(v) VALUES (999)")
            assert info.value.sqlstate == "25006"
            assert "read-only transaction" in str(info.value)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.execute("ROLLBACK")
        # The session is fine afterwards.
        assert conn.execute(f"INSERT INTO {objects}(v) VALUES (998) RETURNING inet_server_port()").fetchone() == \
            (cluster.primary_port,)
    assert primary_count(cluster, objects, "v = 999") == 0


def test_follower_error_on_replica_relayed_and_session_continues(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        for _ in range(4):
            with pytest.raises(errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            assert port_of(conn) in cluster.replica_ports


# ---------------------------------------------------------------------------------------------
# leader, and comment hints
# ---------------------------------------------------------------------------------------------


def test_leader_all_reads_on_primary(leader, cluster):
    with leader.connect(autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        counts = count_ports(conn, 200)
    assert counts == {cluster.primary_port: 200}


def test_hint_primary_under_follower(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        for _ in range(10):
            assert port_of(conn, "/* pgrelay:primary */ SELECT inet_server_port()") == cluster.primary_port
        assert port_of(conn, "SELECT /* pgrelay:primary */ inet_server_port()") == cluster.primary_port


def test_hint_replica_under_leader(leader, cluster, objects):
    with leader.connect(autocommit=True) as conn:
        ports = {port_of(conn, "/* pgrelay:replica */ SELECT inet_server_port()") for _ in range(10)}
        assert ports <= set(cluster.replica_ports) and ports, f"replica hint under leader ran on {ports}"
        # Unhinted statements stay on the primary.
        assert port_of(conn) == cluster.primary_port
        # A replica hint never sends a write to a replica.
        row = conn.execute(f"/* pgrelay:replica */ INSERT INTO {objects}(v) VALUES (501)"
                           " RETURNING inet_server_port()").fetchone()
        assert row == (cluster.primary_port,)


# ---------------------------------------------------------------------------------------------
# Replica connections at login (routing.lazy_connect)
# ---------------------------------------------------------------------------------------------


def _backends_by_node(cluster: Cluster, app_name: str) -> dict[int, int]:
    """Client backends with `app_name` on each node (pgrelay forwards application_name)."""
    counts = {}
    for port in (cluster.primary_port, *cluster.replica_ports):
        with node_connect(cluster, port) as direct:
            counts[port] = direct.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND backend_type = 'client backend'", (app_name,)).fetchone()[0]
    return counts


def test_follower_session_connects_to_every_replica_at_login(follower, cluster):
    """Default (lazy_connect false): right after login, without a statement, the session has a
    connection to each eligible replica, so its first read does not wait for a replica login."""
    app_name = unique("warm")
    r1, r2 = cluster.replica_ports
    with follower.connect(autocommit=True, application_name=app_name) as conn:
        want = {cluster.primary_port: 1, r1: 1, r2: 1}
        wait_until(lambda: _backends_by_node(cluster, app_name) == want, timeout=10,
                   what="one connection per node right after login")
        # Reads use those connections: no node gets a second one.
        assert set(count_ports(conn, 10)) == {r1, r2}
        assert _backends_by_node(cluster, app_name) == want
    wait_until(lambda: sum(_backends_by_node(cluster, app_name).values()) == 0, timeout=10,
               what="the session's connections to close with it")


def test_first_read_at_once_after_login_shares_the_warm_up_connection(follower, cluster):
    """A read sent while the warm-up's login to its replica is under way waits for that login
    and uses the connection: one connection per replica, never two."""
    r1, r2 = cluster.replica_ports
    for _ in range(5):
        app_name = unique("warm")
        with follower.connect(autocommit=True, application_name=app_name) as conn:
            assert set(count_ports(conn, 4)) == {r1, r2}
            assert _backends_by_node(cluster, app_name) == {cluster.primary_port: 1, r1: 1, r2: 1}


def test_session_ending_during_warm_up_leaves_no_connection(follower, cluster):
    app_name = unique("warm")
    for _ in range(10):
        follower.connect(autocommit=True, application_name=app_name).close()
    wait_until(lambda: sum(_backends_by_node(cluster, app_name).values()) == 0, timeout=10,
               what="every connection of sessions that ended at once to close")
    follower.assert_healthy()


def test_affinity_session_connects_to_its_replica_at_login(make_pgrelay, cluster):
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "replica_affinity": "session"}})
    for _ in range(4):
        app_name = unique("warm")
        with relay.connect(autocommit=True, application_name=app_name) as conn:
            def one_replica():
                counts = _backends_by_node(cluster, app_name)
                return counts[cluster.primary_port] == 1 and sorted(
                    counts[p] for p in cluster.replica_ports) == [0, 1]
            wait_until(one_replica, timeout=10, what="one replica connection right after login")
            counts = _backends_by_node(cluster, app_name)
            (warm,) = [p for p in cluster.replica_ports if counts[p] == 1]
            # The session's reads go to the replica it was connected to at login.
            assert set(count_ports(conn, 10)) == {warm}


def test_lazy_connect_opens_a_replica_connection_on_first_read(make_pgrelay, cluster):
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "lazy_connect": True}})
    app_name = unique("lazy")
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        time.sleep(1.0)  # time enough for a warm-up, were there one
        assert _backends_by_node(cluster, app_name) == {
            cluster.primary_port: 1, cluster.replica_ports[0]: 0, cluster.replica_ports[1]: 0}
        port = port_of(conn)
        assert port in cluster.replica_ports
        assert _backends_by_node(cluster, app_name)[port] == 1


def test_leader_session_opens_no_replica_connection(leader, cluster):
    app_name = unique("warm")
    with leader.connect(autocommit=True, application_name=app_name) as conn:
        time.sleep(1.0)
        assert port_of(conn) == cluster.primary_port
        assert _backends_by_node(cluster, app_name) == {
            cluster.primary_port: 1, cluster.replica_ports[0]: 0, cluster.replica_ports[1]: 0}


# ---------------------------------------------------------------------------------------------
# Lag bound
# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_lag_bytes_bound_excludes_paused_replica(make_pgrelay, cluster, objects):
    r1, r2 = cluster.replica_ports
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "max_lag_bytes": "8kB",
                                                  "max_lag": "1h"}})
    with relay.connect(autocommit=True) as conn:
        assert set(count_ports(conn, 20)) == {r1, r2}, "both replicas should serve reads before the pause"
        with Paused(cluster, r1) as paused:
            before = conn.execute(f"SELECT count(*) FROM {objects} WHERE pad = 'lag'").fetchone()[0]
            # ~200 kB of WAL through pgrelay (goes to the primary).
            conn.execute(f"INSERT INTO {objects}(v, pad) SELECT 600, 'lag' || repeat('x', 1000)"
                         " FROM generate_series(1, 200)")
            time.sleep(3 * HEALTH_INTERVAL + 0.5)
            counts = count_ports(conn, 200)
            assert counts.get(r1, 0) == 0, f"paused replica {r1} (beyond 8kB) still got reads: {dict(counts)}"
            assert counts.get(r2, 0) > 0, f"the healthy replica got no reads: {dict(counts)}"
            with node_connect(cluster, r1) as direct:  # sanity: the pause really holds back replay
                stale = direct.execute(f"SELECT count(*) FROM {objects} WHERE v = 600").fetchone()[0]
            assert stale == 0
            assert before == 0
            paused.resume()
            wait_replayed(cluster, ports=[r1])
            time.sleep(4 * HEALTH_INTERVAL)
            counts = count_ports(conn, 200)
            assert counts.get(r1, 0) >= 40, f"replica {r1} gets no reads again after catching up: {dict(counts)}"


@pytest.mark.timeout(180)
def test_lag_time_bound_excludes_paused_replica(make_pgrelay, cluster, objects):
    r1, r2 = cluster.replica_ports
    relay = make_pgrelay({**FOLLOWER, "routing": {"strategy": "follower", "max_lag_bytes": 0,
                                                  "max_lag": "1s"}})
    with relay.connect(autocommit=True) as conn:
        assert set(count_ports(conn, 20)) == {r1, r2}
        with Paused(cluster, r1) as paused:
            # Small commits for 3 s: replica1 falls further and further behind in time.
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                conn.execute(f"INSERT INTO {objects}(v) VALUES (700)")
                time.sleep(0.1)
            time.sleep(2 * HEALTH_INTERVAL + 0.3)
            counts = count_ports(conn, 200)
            assert counts.get(r1, 0) == 0, f"replica {r1} >1 s behind still got reads: {dict(counts)}"
            paused.resume()
            wait_replayed(cluster, ports=[r1])
            time.sleep(4 * HEALTH_INTERVAL)
            counts = count_ports(conn, 200)
            assert counts.get(r1, 0) >= 40, f"replica {r1} gets no reads again after catching up: {dict(counts)}"


# ---------------------------------------------------------------------------------------------
# Fallback when no replica is eligible
# ---------------------------------------------------------------------------------------------


def _zero_weight_nodes(cluster: Cluster) -> list[dict]:
    nodes = cluster.nodes()
    nodes[1]["weight"] = nodes[2]["weight"] = 0
    return nodes


def test_fallback_to_primary_when_no_replica_eligible(make_pgrelay, cluster):
    relay = make_pgrelay({**FOLLOWER, "nodes": _zero_weight_nodes(cluster)})
    with relay.connect(autocommit=True) as conn:
        assert count_ports(conn, 50) == {cluster.primary_port: 50}
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


def test_fallback_off_read_fails_clearly_writes_work(make_pgrelay, cluster, objects):
    relay = make_pgrelay({**FOLLOWER, "nodes": _zero_weight_nodes(cluster),
                          "routing": {"strategy": "follower", "fallback_to_primary": False}})
    with relay.connect(autocommit=True) as conn:
        for _ in range(3):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(PORT_SQL)
            err = info.value
            assert err.sqlstate == "08001", f"expected 08001, got {err.sqlstate}: {err}"
            text = str(err).lower()
            assert "replica" in text, f"the error does not say why: {err}"
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # The session keeps working for writes and hinted reads.
            row = conn.execute(f"INSERT INTO {objects}(v) VALUES (801) RETURNING inet_server_port()").fetchone()
            assert row == (cluster.primary_port,)
            assert port_of(conn, "/* pgrelay:primary */ SELECT inet_server_port()") == cluster.primary_port
        conn.execute("BEGIN")
        assert port_of(conn) == cluster.primary_port  # read-write transaction: primary
        conn.execute("COMMIT")
    relay.check_alive()


# ---------------------------------------------------------------------------------------------
# Session state across nodes
# ---------------------------------------------------------------------------------------------

SETTINGS_SQL = ("SELECT inet_server_port(), current_setting('search_path'), current_setting('application_name'),"
                " current_setting('statement_timeout')")


@pytest.fixture(scope="module")
def schema(cluster):
    name = unique("rts")
    with app_primary(cluster) as conn:
        conn.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.marker (v text);"
                     f" INSERT INTO {name}.marker VALUES ('in-{name}')")
    wait_replayed(cluster)
    yield name
    with app_primary(cluster) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def settings_by_port(conn, n: int = 40, query: str = SETTINGS_SQL) -> dict[int, set[tuple]]:
    out: dict[int, set[tuple]] = collections.defaultdict(set)
    for _ in range(n):
        row = conn.execute(query).fetchone()
        out[row[0]].add(tuple(row[1:]))
    return dict(out)


def primary_settings(conn) -> tuple:
    row = conn.execute("/* pgrelay:primary */ " + SETTINGS_SQL).fetchone()
    return tuple(row[1:])


def test_session_settings_seen_on_every_replica(follower, cluster, schema):
    with follower.connect(autocommit=True) as conn:
        conn.execute(f"SET search_path TO {schema}, public")
        conn.execute("SET application_name = 'x'")
        conn.execute("SET statement_timeout = '1234ms'")
        assert conn.info.parameter_status("application_name") == "x"
        seen = collections.Counter()
        for _ in range(60):
            port, path, app, timeout, marker = conn.execute(
                "SELECT inet_server_port(), current_setting('search_path'), current_setting('application_name'),"
                " current_setting('statement_timeout'), (SELECT v FROM marker)").fetchone()
            seen[port] += 1
            assert (path, app, timeout, marker) == (f"{schema}, public", "x", "1234ms", f"in-{schema}"), \
                f"node {port} does not see the session's settings"
        assert set(seen) == set(cluster.replica_ports), f"reads not spread over both replicas: {dict(seen)}"
        # statement_timeout is in force on the replicas, not only visible.
        for _ in range(2):
            with pytest.raises(errors.QueryCanceled):
                conn.execute("SELECT inet_server_port(), pg_sleep(3)")
        assert port_of(conn) in cluster.replica_ports


def test_session_settings_simple_protocol(follower, cluster, schema):
    with follower.raw_login() as raw:
        raw.simple_query(f"SET search_path TO {schema}, public; SET application_name = 'y'")
        ports = set()
        for _ in range(20):
            rows, _, _ = raw.simple_query(
                "SELECT inet_server_port(), current_setting('application_name'), (SELECT v FROM marker)")
            port, app, marker = rows[0]
            ports.add(int(port))
            assert (app, marker) == ("y", f"in-{schema}"), f"node {port} lacks the settings"
        assert ports == set(cluster.replica_ports)


def test_set_config_session_level_replayed(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("SELECT set_config('application_name', 'via_set_config', false)")
        values = settings_by_port(conn, 20)
        assert set(values) == set(cluster.replica_ports)
        assert {v[1] for vs in values.values() for v in vs} == {"via_set_config"}, values


def test_set_local_does_not_leak(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("SET statement_timeout = '1234ms'")
        # Read-write transaction (primary).
        conn.execute("BEGIN")
        conn.execute("SET LOCAL statement_timeout = '777ms'")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("777ms",)
        conn.execute("COMMIT")
        # Read-only transaction (a replica).
        conn.execute("BEGIN READ ONLY")
        assert port_of(conn) in cluster.replica_ports
        conn.execute("SET LOCAL statement_timeout = '778ms'")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("778ms",)
        conn.execute("COMMIT")
        values = settings_by_port(conn)
        assert set(values) == set(cluster.replica_ports)
        assert {v[2] for vs in values.values() for v in vs} == {"1234ms"}, f"SET LOCAL leaked: {values}"
        assert primary_settings(conn)[2] == "1234ms"


def test_set_in_rolled_back_transaction_is_undone(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("SET statement_timeout = '1234ms'")
        conn.execute("BEGIN")
        conn.execute("SET statement_timeout = '555ms'")
        conn.execute("ROLLBACK")
        values = settings_by_port(conn)
        assert {v[2] for vs in values.values() for v in vs} == {"1234ms"}, f"rolled-back SET leaked: {values}"
        conn.execute("BEGIN")
        conn.execute("SET statement_timeout = '556ms'")
        conn.execute("COMMIT")
        values = settings_by_port(conn)
        assert set(values) == set(cluster.replica_ports)
        assert {v[2] for vs in values.values() for v in vs} == {"556ms"}, f"committed SET not replayed: {values}"


def test_set_in_read_only_transaction_on_replica_applies_everywhere(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("BEGIN READ ONLY")
        assert port_of(conn) in cluster.replica_ports
        conn.execute("SET statement_timeout = '4321ms'")
        conn.execute("COMMIT")
        values = settings_by_port(conn)
        assert set(values) == set(cluster.replica_ports)
        assert {v[2] for vs in values.values() for v in vs} == {"4321ms"}, values
        assert primary_settings(conn)[2] == "4321ms"


@pytest.mark.parametrize("reset", ["RESET ALL", "DISCARD ALL"])
def test_reset_all_and_discard_all_restore_defaults(follower, cluster, schema, reset):
    # prepare_threshold=None: psycopg 3.1 does not forget its own prepared statements on DISCARD
    # ALL (checked directly on PostgreSQL), which would break this test for the wrong reason.
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        baseline = settings_by_port(conn)
        defaults = primary_settings(conn)
        assert set(baseline) == set(cluster.replica_ports)
        assert all(vs == {defaults} for vs in baseline.values()), f"nodes differ before any SET: {baseline} vs {defaults}"
        conn.execute(f"SET search_path TO {schema}, public")
        conn.execute("SET application_name = 'x'")
        conn.execute("SET statement_timeout = '1234ms'")
        changed = settings_by_port(conn)
        assert all(vs == {(f"{schema}, public", "x", "1234ms")} for vs in changed.values()), changed
        conn.execute(reset)
        after = settings_by_port(conn)
        assert set(after) == set(cluster.replica_ports)
        assert all(vs == {defaults} for vs in after.values()), f"after {reset}: {after}, expected {defaults}"
        assert primary_settings(conn) == defaults
        assert conn.info.parameter_status("application_name") == defaults[1]


def test_discard_all_drops_prepared_statements_everywhere(follower, cluster):
    with follower.connect(autocommit=True, prepare_threshold=None) as conn:
        conn.execute("PREPARE d1 AS SELECT 1, inet_server_port()")
        for _ in range(10):
            assert conn.execute("EXECUTE d1").fetchone()[0] == 1
        conn.execute("DISCARD ALL")
        for _ in range(4):
            with pytest.raises(errors.InvalidSqlStatementName):
                conn.execute("EXECUTE d1")
        conn.execute("PREPARE d1 AS SELECT 2, inet_server_port()")
        assert {conn.execute("EXECUTE d1").fetchone()[0] for _ in range(10)} == {2}
    # Protocol-level named statements: prepared, used on both replicas, then DISCARD ALL; every
    # later Bind of the name fails with 26000 wherever it is routed (no stale re-prepare).
    with follower.raw_login() as raw:
        raw.send(_parse("SELECT inet_server_port()", name="s_disc") + SYNC)
        assert not _read_batch(raw)["errors"]
        ports = set()
        for _ in range(10):
            raw.send(_bind(stmt="s_disc") + _execute() + SYNC)
            res = _read_batch(raw)
            assert not res["errors"], res
            ports.add(int(res["rows"][0][0]))
        assert ports == set(cluster.replica_ports), f"named statement executed on {ports}"
        raw.simple_query("DISCARD ALL")
        for _ in range(4):
            raw.send(_bind(stmt="s_disc") + _execute() + SYNC)
            res = _read_batch(raw)
            assert [e["C"] for e in res["errors"]] == ["26000"], \
                f"statement s_disc still usable after DISCARD ALL: {res}"


# ---------------------------------------------------------------------------------------------
# Session pins
# ---------------------------------------------------------------------------------------------


def test_temp_table_read_in_same_session(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE rt_tmp (x int)")
        conn.execute("INSERT INTO rt_tmp SELECT generate_series(1, 5)")
        for _ in range(10):
            assert conn.execute("SELECT count(*), sum(x) FROM rt_tmp").fetchone() == (5, 15)
            assert port_of(conn) == cluster.primary_port, "session with a temp table read on a replica"
        conn.execute("CREATE TEMP TABLE rt_tmp2 AS SELECT 42 AS y")
        assert conn.execute("SELECT y FROM rt_tmp2").fetchone() == (42,)
    assert "pinned to the primary" in log_text(follower), "the pin is not logged"


def test_temp_table_in_transaction_then_read(follower, cluster):
    with follower.connect() as conn:
        conn.execute("CREATE TEMP TABLE rt_tmp3 (x int)")
        conn.execute("INSERT INTO rt_tmp3 VALUES (7)")
        conn.commit()
        conn.autocommit = True
        for _ in range(6):
            assert conn.execute("SELECT x FROM rt_tmp3").fetchone() == (7,)


def test_discard_all_unpins_temp_table_session(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE rt_tmp4 (x int)")
        assert port_of(conn) == cluster.primary_port
        conn.execute("DISCARD ALL")
        assert {port_of(conn) for _ in range(10)} == set(cluster.replica_ports)


def test_with_hold_cursor_pins(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        conn.execute("DECLARE rt_c CURSOR WITH HOLD FOR SELECT g, inet_server_port() FROM generate_series(1, 6) g")
        got = []
        for _ in range(3):
            got += conn.execute("FETCH 2 FROM rt_c").fetchall()
        assert [g for g, _ in got] == [1, 2, 3, 4, 5, 6]
        assert {p for _, p in got} == {cluster.primary_port}
        conn.execute("CLOSE rt_c")


def test_session_advisory_lock_pins(follower, cluster):
    key = 770000 + (uuid.uuid4().int % 10000)
    with follower.connect(autocommit=True) as conn:
        assert conn.execute("SELECT pg_advisory_lock(%s), inet_server_port()", (key,)).fetchone()[1] == \
            cluster.primary_port
        for _ in range(5):
            assert port_of(conn) == cluster.primary_port
        assert conn.execute("SELECT pg_advisory_unlock(%s)", (key,)).fetchone() == (True,)


def pinned_total(relay, reason: str) -> float:
    """pgrelay_sessions_pinned_total{reason=...} from the admin endpoint's /metrics."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'pgrelay_sessions_pinned_total{{reason="{reason}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no pgrelay_sessions_pinned_total for reason {reason} in /metrics")


def test_pins_are_counted_by_reason(follower, cluster):
    before_temp, before_listen = pinned_total(follower, "temporary_objects"), pinned_total(follower, "listen")
    with follower.connect(autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE rt_pin_count(x int)")
        conn.execute("CREATE TEMP TABLE rt_pin_count2(x int)")  # already pinned: not counted again
        assert port_of(conn) == cluster.primary_port
    with follower.connect(autocommit=True) as conn:
        conn.execute("LISTEN rt_pin_chan")
        conn.execute("UNLISTEN *")
        conn.execute("LISTEN rt_pin_chan")  # unpinned in between: a second pin
    assert pinned_total(follower, "temporary_objects") == before_temp + 1
    assert pinned_total(follower, "listen") == before_listen + 2


def test_listen_receives_notify_from_other_session(follower, cluster):
    channel = unique("rtchan")
    with follower.connect(autocommit=True) as listener, follower.connect(autocommit=True) as notifier:
        got = []
        listener.add_notify_handler(got.append)
        listener.execute(f"LISTEN {channel}")
        # Reads between LISTEN and NOTIFY: the session is pinned, reads run on the primary.
        for _ in range(5):
            assert port_of(listener) == cluster.primary_port
        notifier.execute(f"NOTIFY {channel}, 'one'")
        # Delivered while the listener is idle: its socket becomes readable without a query.
        readable, _, _ = select.select([listener.fileno()], [], [], 5)
        assert readable, "the NOTIFY did not reach the idle listener within 5 s"
        notifier.execute("SELECT pg_notify(%s, 'two')", (channel,))
        def both_arrived():
            if len(got) < 2:
                listener.execute("SELECT 1")
            return len(got) >= 2
        wait_until(both_arrived, 5, what="two notifications")
        assert [(n.channel, n.payload) for n in got] == [(channel, "one"), (channel, "two")]
        listener.execute(f"UNLISTEN {channel}")
        # Still pinned (UNLISTEN of one channel keeps the pin until UNLISTEN *).
        assert port_of(listener) == cluster.primary_port
        listener.execute("UNLISTEN *")
        assert {port_of(listener) for _ in range(10)} == set(cluster.replica_ports), "UNLISTEN * did not unpin"


def _replica_backend_pid(conn, cluster):
    pid, port = conn.execute("SELECT pg_backend_pid(), inet_server_port()").fetchone()
    assert port in cluster.replica_ports
    return pid, port


def test_idle_replica_connection_killed_is_replaced(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        seen = {}
        while len(seen) < 2:
            pid, port = _replica_backend_pid(conn, cluster)
            seen[port] = pid
        for port, pid in seen.items():
            with node_connect(cluster, port) as direct:
                assert direct.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        time.sleep(0.3)
        # Both idle backends are gone: the next reads get fresh ones, without an error.
        ports = {port_of(conn) for _ in range(6)}
        assert ports == set(cluster.replica_ports)


def test_replica_lost_mid_statement_gives_error_and_session_continues(follower, cluster):
    with follower.connect(autocommit=True) as conn:
        pid, port = _replica_backend_pid(conn, cluster)
        # The next read goes to the other replica (round robin); find the pid of the one that
        # will run the sleep by asking the server during the sleep.
        def killer():
            time.sleep(0.8)
            for p in cluster.replica_ports:
                with node_connect(cluster, p) as direct:
                    direct.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                   " WHERE query LIKE '%%rt_mid_kill%%' AND pid <> pg_backend_pid()")
        t = threading.Thread(target=killer)
        t.start()
        try:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT pg_sleep(5), inet_server_port() /* rt_mid_kill */")
        finally:
            t.join()
        err = info.value
        assert err.sqlstate is not None and (err.sqlstate.startswith("08") or err.sqlstate == "57P01"), \
            f"unexpected error for a lost backend: {err.sqlstate} {err}"
        assert not conn.closed, "the client session ended although no transaction was open"
        assert port_of(conn) in cluster.replica_ports
        assert port_of(conn) in cluster.replica_ports


# ---------------------------------------------------------------------------------------------
# Pipelined extended protocol
# ---------------------------------------------------------------------------------------------


def _parse(sql_text: str, name: str = "") -> bytes:
    return message(b"P", name.encode() + b"\0" + sql_text.encode() + b"\0" + struct.pack("!H", 0))


def _bind(params: Iterable[Optional[str]] = (), stmt: str = "", portal: str = "") -> bytes:
    params = list(params)
    body = portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!H", 0) + struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            data = p.encode()
            body += struct.pack("!i", len(data)) + data
    return message(b"B", body + struct.pack("!H", 0))


def _execute(portal: str = "") -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", 0))


SYNC = message(b"S")


def _read_batch(raw: RawConn) -> dict:
    """Messages up to ReadyForQuery: {'rows': [[...]], 'tags': [...], 'errors': [...], 'status': 'I'}."""
    out: dict[str, Any] = {"rows": [], "tags": [], "errors": [], "kinds": []}
    while True:
        kind, payload = raw.recv_message()
        out["kinds"].append(kind.decode())
        if kind == b"D":
            (count,) = struct.unpack("!H", payload[:2])
            pos, row = 2, []
            for _ in range(count):
                (n,) = struct.unpack("!i", payload[pos:pos + 4])
                pos += 4
                row.append(None if n < 0 else payload[pos:pos + n].decode())
                pos += max(n, 0)
            out["rows"].append(row)
        elif kind == b"C":
            out["tags"].append(payload.rstrip(b"\0").decode())
        elif kind == b"E":
            out["errors"].append(parse_fields(payload))
        elif kind == b"Z":
            out["status"] = payload.decode()
            return out


def test_pipelined_batches_mixed_reads_writes_in_order(follower, cluster, objects):
    base = 10_000 + (uuid.uuid4().int % 100_000) * 100
    batches: list[tuple[str, Any]] = []
    data = b""
    for i in range(40):
        v = base + i
        kind = i % 5
        if kind in (0, 3):  # write batch
            data += _parse(f"INSERT INTO {objects}(v) VALUES ($1) RETURNING v, inet_server_port()")
            data += _bind([str(v)]) + _execute() + SYNC
            batches.append(("write", v))
        elif kind in (1, 4):  # read batch
            data += _parse("SELECT $1::int + 0, inet_server_port()") + _bind([str(v)]) + _execute() + SYNC
            batches.append(("read", v))
        else:  # read + write in one batch: both on the primary, in order
            data += _parse("SELECT $1::int, inet_server_port()") + _bind([str(v)]) + _execute()
            data += _parse(f"INSERT INTO {objects}(v) VALUES ($1) RETURNING v, inet_server_port()")
            data += _bind([str(-v)]) + _execute() + SYNC
            batches.append(("mixed", v))
    # One failing batch in the middle must not disturb the others.
    data_fail = _parse("SELECT 1 / ($1::int - $1::int)") + _bind(["3"]) + _execute() + SYNC
    with follower.raw_login(timeout=20) as raw:
        half = len(data) // 2
        cut = data.rfind(SYNC, 0, half) + len(SYNC)
        raw.send(data[:cut] + data_fail + data[cut:])
        n_first = data[:cut].count(SYNC)
        results = [_read_batch(raw) for _ in range(len(batches) + 1)]
        failed = results.pop(n_first)
        assert [e["C"] for e in failed["errors"]] == ["22012"], failed
        for (kind, v), res in zip(batches, results):
            assert not res["errors"], (kind, v, res["errors"])
            assert res["status"] == "I"
            if kind == "write":
                assert res["rows"] == [[str(v), str(cluster.primary_port)]], (kind, v, res)
            elif kind == "read":
                assert len(res["rows"]) == 1 and res["rows"][0][0] == str(v), (kind, v, res)
            else:
                assert res["rows"] == [[str(v), str(cluster.primary_port)], [str(-v), str(cluster.primary_port)]], \
                    (kind, v, res)
        # A pipeline of reads only stays on the replicas.
        reads = b"".join(_parse("SELECT $1::int, inet_server_port()") + _bind([str(i)]) + _execute() + SYNC
                         for i in range(30))
        raw.send(reads)
        ports = set()
        for i in range(30):
            res = _read_batch(raw)
            assert not res["errors"] and res["rows"][0][0] == str(i), res
            ports.add(int(res["rows"][0][1]))
        assert ports <= set(cluster.replica_ports), f"read-only pipeline ran on {ports}"
    written = primary_count(cluster, objects, f"v BETWEEN {base} AND {base + 39} OR v BETWEEN {-base - 39} AND {-base}")
    assert written == sum(1 for k, _ in batches if k in ("write", "mixed"))


def test_psycopg_pipeline_interleaved_insert_select(follower, cluster, objects):
    base = 20_000_000 + (uuid.uuid4().int % 100_000) * 100
    with follower.connect(autocommit=True) as conn:
        for rounds in range(3):
            with conn.pipeline():
                cursors = []
                for i in range(30):
                    v = base + rounds * 30 + i
                    cur = conn.cursor()
                    if i % 2 == 0:
                        cur.execute(f"INSERT INTO {objects}(v) VALUES (%s) RETURNING v, inet_server_port()", (v,))
                        cursors.append(("write", v, cur))
                    else:
                        cur.execute("SELECT %s::int, inet_server_port()", (v,))
                        cursors.append(("read", v, cur))
            for kind, v, cur in cursors:
                row = cur.fetchone()
                assert row[0] == v, (kind, v, row)
                if kind == "write":
                    assert row[1] == cluster.primary_port
    assert primary_count(cluster, objects, f"v BETWEEN {base} AND {base + 89}") == 45


# --- Per-session strategy overrides -------------------------------------------------------------

def test_strategy_override_by_application_name(make_pgrelay, cluster):
    """routing.overrides: a session whose application_name matches runs `leader`; others follow."""
    relay = make_pgrelay({"routing": {"strategy": "follower", "overrides": [
        {"application_name": "pinned_app", "strategy": "leader"}]}})
    with relay.connect(autocommit=True, application_name="pinned_app") as conn:
        counts = count_ports(conn, 50)
    assert set(counts) == {cluster.primary_port}, f"override to leader ignored: {counts}"
    with relay.connect(autocommit=True, application_name="someone_else") as conn:
        counts = count_ports(conn, 50)
    assert cluster.primary_port not in counts, f"follower session read on the primary: {counts}"


def test_strategy_override_by_user_and_database(make_pgrelay, cluster):
    """An override matching another user leaves the app user's sessions on the default strategy,
    and one matching the app user and database applies."""
    relay = make_pgrelay({"routing": {"strategy": "leader", "overrides": [
        {"user": "nobody_else", "strategy": "follower"},
        {"user": cluster.app_user, "database": cluster.database, "strategy": "follower"}]}})
    with relay.connect(autocommit=True) as conn:
        counts = count_ports(conn, 50)
    assert cluster.primary_port not in counts, f"override to follower ignored: {counts}"


def test_replica_killed_reads_move_without_client_errors(make_pgrelay, cluster):
    """A replica stopped (immediate): idle sessions' next reads succeed elsewhere at once, and
    within two health intervals no read is even attempted on it."""
    from replication import data_dir, start_node, stop_node_immediate
    relay = make_pgrelay(FOLLOWER)
    killed_port = cluster.replica_ports[1]
    sessions = [relay.connect(autocommit=True) for _ in range(6)]
    try:
        for conn in sessions:  # every session has used both replicas
            assert {port_of(conn) for _ in range(4)} == set(cluster.replica_ports)
        d = data_dir(cluster, killed_port)
        stop_node_immediate(cluster, d)
        killed = time.time()
        try:
            for conn in sessions:  # idle sessions: no error, never the dead node
                for _ in range(3):
                    assert port_of(conn) != killed_port
            time.sleep(max(0.0, killed + 2 * HEALTH_INTERVAL + 0.3 - time.time()))
            for conn in sessions:
                assert {port_of(conn) for _ in range(4)} == {cluster.replica_ports[0]}
        finally:
            start_node(cluster, d)
            wait_replayed(cluster, timeout=60)
    finally:
        for conn in sessions:
            conn.close()
