"""Server connections kept between client sessions (pool.mode: session), against the real
1 primary + 2 replica cluster.

Which server connection a session got is read from PostgreSQL itself: pg_backend_pid(), and
pg_stat_activity on each node. Covered:

- off by default: a session's connections close with it;
- the next session with the same user, database and start-up parameters reuses a parked
  connection (same backend pid), on the primary and on the replicas; others get their own;
- what the first session left behind is gone for the next (settings, prepared statements,
  temporary tables, LISTEN, advisory locks, WITH HOLD cursors): DISCARD ALL ran;
- a connection whose client left inside a transaction, or in the middle of a statement, is not
  kept, and the transaction is rolled back;
- a parked connection the server ended (pg_terminate_backend) is not handed out;
- pool.idle_timeout and pool.max_idle close parked connections;
- pgbench connecting per transaction (-C) through the pool;
- the metrics, and a clean shutdown with connections parked.

Every pgrelay here runs one worker: parked connections belong to a worker, and with one every
session sees them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
import uuid

import psycopg
import pytest

from conftest import DIRECT, RawConn, merge_config, query_message, to_yaml, wait_until
from replication import app_primary, node_connect
from scratch_cluster import scratch  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's pool (PGRELAY_TEST_DIRECT=1)")

HEALTH = {"interval": "500ms"}
POOL = {"workers": 1, "health": HEALTH, "pool": {"mode": "session"}}


def unique(prefix: str = "pool") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def alive(cluster, port: int, pid: int) -> bool:
    with node_connect(cluster, port) as direct:
        return direct.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                              (pid,)).fetchone()[0] == 1


def wait_closed(cluster, pid: int, what: str) -> None:
    """Waits until the primary's server process `pid` has exited."""
    wait_until(lambda: not alive(cluster, cluster.primary_port, pid), timeout=10, what=what)


def pids_by_app(cluster, port: int, app_name: str) -> set[int]:
    with node_connect(cluster, port) as direct:
        rows = direct.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                              " AND backend_type = 'client backend'", (app_name,)).fetchall()
    return {r[0] for r in rows}


def metric(relay, name: str, node: str | None = None) -> float:
    """The value of `name`{node="..."} (or of the unlabelled `name`) on pgrelay's /metrics; 0
    if absent."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    labels = r'\{[^}]*node="' + re.escape(node) + r'"[^}]*\}' if node is not None else ""
    pattern = re.compile(r'^' + re.escape(name) + labels + r' (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(text))


def leave(relay, conn: psycopg.Connection, node: str = "pg1") -> None:
    """Closes `conn` and waits until pgrelay has reset and parked its connection (a session
    that connects before that gets a new one)."""
    before = metric(relay, "pgrelay_pool_idle_connections", node)
    conn.close()
    wait_until(lambda: metric(relay, "pgrelay_pool_idle_connections", node) > before, timeout=10,
               what="the connection to be parked")


@pytest.fixture(scope="module")
def pooled(module_pgrelay):
    return module_pgrelay(POOL)


# ---------------------------------------------------------------------------------------------
# Reuse
# ---------------------------------------------------------------------------------------------


def test_pool_off_by_default_closes_connections(make_pgrelay, cluster):
    relay = make_pgrelay({"workers": 1, "health": HEALTH})
    app_name = unique()
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        first = backend_pid(conn)
    wait_closed(cluster, first, "the session's connection to close with it")
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        assert backend_pid(conn) != first


def test_next_session_reuses_the_parked_connection(pooled, cluster):
    app_name = unique()
    reused_before = metric(pooled, "pgrelay_pool_reused_total", "pg1")
    conn = pooled.connect(autocommit=True, application_name=app_name)
    first = backend_pid(conn)
    leave(pooled, conn)
    # Parked: still open on the primary, and shown on /cluster.
    assert alive(cluster, cluster.primary_port, first)
    with urllib.request.urlopen(f"http://127.0.0.1:{pooled.admin_port}/cluster", timeout=5) as r:
        nodes = {n["name"]: n for n in json.load(r)["nodes"]}
    assert nodes["pg1"]["pool_idle_connections"] >= 1
    for _ in range(3):
        conn = pooled.connect(autocommit=True, application_name=app_name)
        assert backend_pid(conn) == first
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        leave(pooled, conn)
    assert metric(pooled, "pgrelay_pool_reused_total", "pg1") >= reused_before + 3


def test_different_start_up_parameters_get_their_own_connection(pooled, cluster):
    a, b = unique("a"), unique("b")
    conn = pooled.connect(autocommit=True, application_name=a)
    pid_a = backend_pid(conn)
    leave(pooled, conn)
    conn = pooled.connect(autocommit=True, application_name=b)
    pid_b = backend_pid(conn)
    # The server still reports the session's own application_name.
    assert conn.execute("SHOW application_name").fetchone() == (b,)
    leave(pooled, conn)
    assert pid_a != pid_b
    conn = pooled.connect(autocommit=True, application_name=a)
    assert backend_pid(conn) == pid_a
    assert conn.execute("SHOW application_name").fetchone() == (a,)
    leave(pooled, conn)
    # Another database is another key too.
    with pooled.connect(autocommit=True, application_name=a, dbname="postgres") as conn:
        assert backend_pid(conn) not in (pid_a, pid_b)
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


def test_reused_connection_keeps_nothing_of_the_last_session(pooled, cluster):
    app_name = unique()
    table = unique("tmp")
    channel = unique("ch")
    lock_key = 424242
    conn = pooled.connect(autocommit=True, application_name=app_name)
    first = backend_pid(conn)
    conn.execute("SET work_mem = '7MB'")
    conn.execute("SET search_path = pg_catalog")
    conn.execute("PREPARE leftover AS SELECT 1")
    conn.execute(f"CREATE TEMP TABLE {table} (x int)")
    conn.execute(f"LISTEN {channel}")
    conn.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
    with conn.transaction():
        conn.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
    assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (1,)
    leave(pooled, conn)
    with pooled.connect(autocommit=True, application_name=app_name) as conn:
        assert backend_pid(conn) == first, "the parked connection should be reused"
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass(%s)", (f"pg_temp.{table}",)).fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
        # The same names can be used again.
        conn.execute("PREPARE leftover AS SELECT 2")
        assert conn.execute("EXECUTE leftover").fetchone() == (2,)
    # The advisory lock was released: another session can take it at once.
    with app_primary(cluster) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone() == (True,)
        other.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))


def test_next_session_is_told_the_servers_current_parameters(pooled, cluster):
    """A reported parameter the server changed after the connection's login (a new default in
    postgresql.conf) reaches the next session in its start-up ParameterStatus, not the value
    of the connection's own login."""
    app_name = unique()
    conn = pooled.connect(autocommit=True, application_name=app_name)
    first = backend_pid(conn)
    assert conn.info.parameter_status("DateStyle") == "ISO, MDY"

    def set_default(value):
        with node_connect(cluster, cluster.primary_port) as su:
            if value is None:
                su.execute("ALTER SYSTEM RESET datestyle")
            else:
                su.execute(f"ALTER SYSTEM SET datestyle = '{value}'")
            su.execute("SELECT pg_reload_conf()")

    set_default("ISO, DMY")
    try:
        def reported():
            conn.execute("SELECT 1")  # the server reports the change with a reply
            return conn.info.parameter_status("DateStyle") == "ISO, DMY"
        wait_until(reported, timeout=10, what="the new DateStyle to be reported")
        leave(pooled, conn)
        with pooled.connect(autocommit=True, application_name=app_name) as conn:
            assert backend_pid(conn) == first
            assert conn.info.parameter_status("DateStyle") == "ISO, DMY"
            assert conn.execute("SHOW datestyle").fetchone() == ("ISO, DMY",)
    finally:
        set_default(None)


def test_client_leaving_inside_a_transaction_is_not_pooled(pooled, cluster):
    app_name = unique()
    table = unique("t")
    with app_primary(cluster) as admin:
        admin.execute(f"CREATE TABLE {table} (x int)")
    try:
        conn = pooled.connect(application_name=app_name)  # not autocommit: BEGIN is implicit
        pid = backend_pid(conn)
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        conn.close()  # without COMMIT
        wait_closed(cluster, pid, "the connection left inside a transaction to be closed, not parked")
        with pooled.connect(autocommit=True, application_name=app_name) as conn:
            assert backend_pid(conn) != pid
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    finally:
        with app_primary(cluster) as admin:
            admin.execute(f"DROP TABLE {table}")


def test_client_leaving_during_a_statement_is_not_pooled(pooled, cluster):
    app_name = unique()
    conn = RawConn(pooled.host, pooled.port)
    conn.login(cluster.app_user, cluster.app_password, cluster.database,
               application_name=app_name)
    conn.send(query_message("SELECT pg_sleep(2)"))
    pids = wait_until(lambda: pids_by_app(cluster, cluster.primary_port, app_name), timeout=10,
                      what="the statement to start")
    conn.close()
    # The busy connection is not handed to the next session...
    with pooled.connect(autocommit=True, application_name=app_name) as c:
        assert backend_pid(c) not in pids
    # ...and closes once its statement ends (PostgreSQL notices the closed socket only then).
    wait_until(lambda: not (pids_by_app(cluster, cluster.primary_port, app_name) & pids),
               timeout=15, what="the busy connection to be closed, not parked")


def test_connection_that_ran_load_is_not_pooled(pooled, cluster):
    """DISCARD ALL cannot unload a library: a connection that ran LOAD (here refused, the app
    user not being a superuser; pgrelay goes by the statement) is closed, not parked."""
    app_name = unique()
    conn = pooled.connect(autocommit=True, application_name=app_name)
    pid = backend_pid(conn)
    with pytest.raises(psycopg.Error):
        conn.execute("LOAD 'auto_explain'")
    conn.close()
    wait_closed(cluster, pid, "the connection that ran LOAD to be closed")
    with pooled.connect(autocommit=True, application_name=app_name) as conn:
        assert backend_pid(conn) != pid


def test_parked_connection_ended_by_the_server_is_not_handed_out(pooled, cluster):
    app_name = unique()
    conn = pooled.connect(autocommit=True, application_name=app_name)
    first = backend_pid(conn)
    leave(pooled, conn)
    with node_connect(cluster, cluster.primary_port) as direct:
        assert direct.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
    wait_closed(cluster, first, "the backend to exit")
    with pooled.connect(autocommit=True, application_name=app_name) as conn:
        assert backend_pid(conn) != first
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pooled.assert_healthy()


def test_replica_connections_are_reused_too(make_pgrelay, cluster):
    relay = make_pgrelay({**POOL, "routing": {"strategy": "follower"}})
    app_name = unique()
    r1, r2 = cluster.replica_ports
    ports = (cluster.primary_port, r1, r2)

    def pids():
        return {p: pids_by_app(cluster, p, app_name) for p in ports}

    def idle():
        return [metric(relay, "pgrelay_pool_idle_connections", n) for n in ("pg1", "pg2", "pg3")]

    conn = relay.connect(autocommit=True, application_name=app_name)
    # Right after login the session connects to each replica in the background.
    wait_until(lambda: all(len(v) == 1 for v in pids().values()), timeout=10,
               what="one connection per node")
    before = pids()
    assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    conn.close()
    wait_until(lambda: idle() == [1, 1, 1], timeout=10,
               what="the session's three connections to be parked")
    for _ in range(2):
        with relay.connect(autocommit=True, application_name=app_name) as conn:
            # Its primary connection and its background replica logins took the parked ones.
            wait_until(lambda: idle() == [0, 0, 0], timeout=10,
                       what="the parked connections to be taken")
            assert pids() == before
            replica_pids = {backend_pid(conn) for _ in range(4)}
            assert replica_pids == before[r1] | before[r2]
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        wait_until(lambda: idle() == [1, 1, 1], timeout=10,
                   what="the session's three connections to be parked again")
    assert metric(relay, "pgrelay_pool_reused_total", "pg2") == 2
    assert metric(relay, "pgrelay_pool_reused_total", "pg3") == 2


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------


def test_idle_timeout_closes_parked_connections(make_pgrelay, cluster):
    relay = make_pgrelay({**POOL, "pool": {"mode": "session", "idle_timeout": "1s"}})
    app_name = unique()
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        first = backend_pid(conn)
    assert alive(cluster, cluster.primary_port, first)
    wait_closed(cluster, first, "pool.idle_timeout to close the parked connection")
    assert metric(relay, "pgrelay_pool_idle_connections", "pg1") == 0
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        assert backend_pid(conn) != first


def test_max_idle_bounds_parked_connections(make_pgrelay, cluster):
    relay = make_pgrelay({**POOL, "pool": {"mode": "session", "max_idle": 2}})
    app_name = unique()
    conns = [relay.connect(autocommit=True, application_name=app_name) for _ in range(4)]
    pids = {backend_pid(c) for c in conns}
    assert len(pids) == 4
    for c in conns:
        c.close()
    wait_until(lambda: len(pids_by_app(cluster, cluster.primary_port, app_name)) == 2, timeout=10,
               what="two connections parked, the others closed")
    assert pids_by_app(cluster, cluster.primary_port, app_name) <= pids
    assert metric(relay, "pgrelay_pool_idle_connections", "pg1") == 2


def test_reload_to_pool_off_closes_parked_connections(make_pgrelay, cluster):
    relay = make_pgrelay(POOL)
    app_name = unique()
    conn = relay.connect(autocommit=True, application_name=app_name)
    first = backend_pid(conn)
    leave(relay, conn)
    relay.config = merge_config(relay.config, {"pool": {"mode": "off"}})
    relay.config_path.write_text(to_yaml(relay.config) + "\n")
    relay.config_path.chmod(0o600)
    relay.proc.send_signal(signal.SIGHUP)
    wait_closed(cluster, first, "the parked connection to close after the reload to pool.mode off")
    assert metric(relay, "pgrelay_pool_idle_connections", "pg1") == 0
    # And nothing is parked any more.
    conn = relay.connect(autocommit=True, application_name=app_name)
    second = backend_pid(conn)
    conn.close()
    wait_closed(cluster, second, "the session's connection to close with it")


def test_reload_lowering_max_idle_closes_the_oldest(make_pgrelay, cluster):
    relay = make_pgrelay(POOL)
    app_name = unique()
    conns = [relay.connect(autocommit=True, application_name=app_name) for _ in range(3)]
    for c in conns:
        c.close()
    wait_until(lambda: metric(relay, "pgrelay_pool_idle_connections", "pg1") == 3, timeout=10,
               what="three connections parked")
    relay.config = merge_config(relay.config, {"pool": {"mode": "session", "max_idle": 1}})
    relay.config_path.write_text(to_yaml(relay.config) + "\n")
    relay.config_path.chmod(0o600)
    relay.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: metric(relay, "pgrelay_pool_idle_connections", "pg1") == 1, timeout=10,
               what="the reload's max_idle 1 to close two parked connections")
    wait_until(lambda: len(pids_by_app(cluster, cluster.primary_port, app_name)) == 1, timeout=10,
               what="two of the three server processes to exit")


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench_connecting_per_transaction(make_pgrelay, cluster, tmp_path, mode):
    """pgbench -C: a new session per transaction. With -M prepared every session prepares the
    same statement names at the protocol level: the DISCARD ALL before reuse must have dropped
    the last session's, or the Parse fails with 42P05."""
    relay = make_pgrelay(POOL)
    script = tmp_path / "select.sql"
    script.write_text("SELECT pg_backend_pid();\n")
    out = relay.run_client("pgbench", "-n", "-C", "-M", mode, "-c", "4", "-t", "50", "-f",
                           str(script), timeout=120)
    assert out.returncode == 0, f"pgbench failed:\n{out.stdout}\n{out.stderr}"
    assert "number of transactions actually processed: 200/200" in out.stdout, out.stdout
    # 200 sessions, at most 4 at a time: nearly all took a parked connection (a reconnect
    # that beats the DISCARD ALL of the connection its client just left logs in anew; client
    # authentication takes far longer, so that is rare).
    reused = metric(relay, "pgrelay_pool_reused_total", "pg1")
    assert reused >= 150
    # What is left parked came from the few logins: none leaked, none was lost.
    wait_until(lambda: metric(relay, "pgrelay_pool_idle_connections", "pg1") >= 1, timeout=10,
               what="the last sessions' connections to be parked")
    parked = metric(relay, "pgrelay_pool_idle_connections", "pg1")
    sessions = metric(relay, "pgrelay_client_connections_total")
    assert sessions >= 200  # pgbench's own first connection too
    assert 1 <= parked <= sessions - reused


def test_shutdown_with_parked_connections(make_pgrelay, cluster):
    relay = make_pgrelay(POOL)
    app_name = unique()
    with relay.connect(autocommit=True, application_name=app_name) as conn:
        first = backend_pid(conn)
    assert alive(cluster, cluster.primary_port, first)
    relay.stop()  # must exit 0 within its time limit, LeakSanitizer clean
    wait_closed(cluster, first, "parked connections to close at shutdown")


# ---------------------------------------------------------------------------------------------
# Role changes (a throwaway cluster: a switchover changes it for good)
# ---------------------------------------------------------------------------------------------


def test_switchover_parked_connections_follow_the_roles(scratch, make_pgrelay, tmp_path):
    """Connections parked before a switchover: those to the old primary (stopped, so down) are
    closed; the one to the promoted replica was made while it was a replica (the server told the
    client in_hot_standby = on at that login) and is not handed out as the new primary's: a new
    session sees in_hot_standby = off, writes there, and libpq's target_session_attrs=read-write
    accepts it."""
    scratch.create(sync=False)
    pg_ctl = os.path.join(scratch.bin, "pg_ctl")
    relay = make_pgrelay({
        **POOL, "nodes": scratch.nodes(), "backend": {"user": "postgres"},
        "routing": {"strategy": "follower"}, "health": {"database": "postgres", "interval": "500ms"},
        "failover": {"mode": "manual", "state_file": str(tmp_path / "state"), "hooks": {
            "before_promote": f"runuser -u postgres -- {pg_ctl} -D {scratch.dir}/{{failed}} -m fast -w stop",
            "timeout": "60s"}}})
    wait_until(lambda: scratch.streams_from(1, 0) and scratch.streams_from(2, 0), 20, what="streaming")

    def idle(node: str) -> float:
        return metric(relay, "pgrelay_pool_idle_connections", node)

    app_name = unique("switch")
    conn = relay.connect(dbname="postgres", autocommit=True, application_name=app_name)
    assert conn.info.parameter_status("in_hot_standby") == "off"
    wait_until(lambda: [metric(relay, "pgrelay_backend_connections", n) for n in ("s1", "s2")] == [1, 1],
               10, what="the session's background connections to both replicas")
    with scratch.connect(2) as direct:
        replica_era = {r[0] for r in direct.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,))}
    assert len(replica_era) == 1
    conn.close()
    wait_until(lambda: [idle(n) for n in ("p0", "s1", "s2")] == [1, 1, 1], 10,
               what="the session's connections to all three nodes to be parked")

    req = urllib.request.Request(f"http://127.0.0.1:{relay.admin_port}/switchover?to=s2", method="POST",
                                 data=b"")
    with urllib.request.urlopen(req, timeout=90) as r:
        assert r.status == 200, r.read().decode()
    wait_until(lambda: idle("p0") == 0, 10, what="the stopped old primary's parked connection to close")

    with relay.connect(dbname="postgres", autocommit=True, application_name=app_name) as conn:
        assert conn.info.parameter_status("in_hot_standby") == "off"
        conn.execute("CREATE TABLE after_switch (x int)")
        conn.execute("INSERT INTO after_switch VALUES (1)")
        # The primary connection is a new one, not the replica-era connection to s2.
        pid = conn.execute("/* pgrelay:primary */ SELECT pg_backend_pid()").fetchone()[0]
        assert pid not in replica_era
    dsn = (f"host=127.0.0.1 port={relay.port} user={relay.cluster.app_user} "
           f"password={relay.cluster.app_password} dbname=postgres target_session_attrs=read-write")
    with psycopg.connect(dsn, autocommit=True) as conn:
        primary_port = "/* pgrelay:primary */ SELECT inet_server_port()"
        assert conn.execute(primary_port).fetchone()[0] == scratch.ports[2]
    with scratch.connect(2) as direct:
        assert direct.execute("SELECT count(*) FROM after_switch").fetchone() == (1,)
