"""The consistency strategies against the real 1 primary + 2 replica cluster (issue 5 acceptance),
with replica lag made on purpose by pausing WAL replay (pg_wal_replay_pause()).

- `follower` with replicas paused: a session's read after its own write returns the old value
  (this proves the lag is real, so the other tests prove something).
- `read-your-writes`: the same sequence returns the new value every time; the causal token
  (ParameterStatus / SHOW pgrelay.causal_lsn) handed to another session via SET pgrelay.min_lsn
  or the start-up option makes that session see the write.
- `quorum`: a write on session A, then a read on session B, returns the new value every time.
- Replicas caught up: both strategies serve >= 90% of a read-mostly workload from replicas.
- A concurrent checker: writers increment per-key counters while readers read and replay is
  paused and resumed at random; each strategy's guarantee is checked over the whole history.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import pytest

from conftest import DIRECT, Cluster
from replication import (Paused, app_primary, data_dir, node_connect, start_node, stop_node_immediate,
                         wait_replayed)

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's routing (PGRELAY_TEST_DIRECT=1)")

HEALTH = {"interval": "500ms"}
PORT_SQL = "SELECT inet_server_port()"


def config(strategy: str, max_wait: str = "20ms") -> dict:
    return {"routing": {"strategy": strategy, "ryw": {"max_wait": max_wait},
                        "quorum": {"max_wait": max_wait}},
            "health": HEALTH}


@pytest.fixture(scope="module")
def follower(module_pgrelay):
    return module_pgrelay(config("follower"))


@pytest.fixture(scope="module")
def ryw(module_pgrelay):
    return module_pgrelay(config("read-your-writes"))


@pytest.fixture(scope="module")
def ryw_short(module_pgrelay):
    """read-your-writes with a 2 ms wait: with replay paused every read waits that long."""
    return module_pgrelay(config("read-your-writes", "2ms"))


@pytest.fixture(scope="module")
def quorum(module_pgrelay):
    return module_pgrelay(config("quorum"))


@pytest.fixture(scope="module")
def quorum_short(module_pgrelay):
    return module_pgrelay(config("quorum", "2ms"))


@pytest.fixture
def table(cluster):
    """A one-row table (id 1, v 0) created on the primary and replayed on both replicas."""
    name = f"cs_{uuid.uuid4().hex[:10]}"
    with app_primary(cluster) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v bigint NOT NULL)")
        conn.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 8) g")
    wait_replayed(cluster)
    yield name
    with app_primary(cluster) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


class PausedAll:
    """Both replicas paused at once."""

    def __init__(self, cluster: Cluster):
        self.paused = [Paused(cluster, port) for port in cluster.replica_ports]

    def __enter__(self):
        for p in self.paused:
            p.__enter__()
        return self

    def __exit__(self, *exc):
        for p in self.paused:
            p.__exit__(*exc)


def read_v(conn: psycopg.Connection, table: str, key: int = 1) -> tuple[int, int]:
    return conn.execute(f"SELECT v, inet_server_port() FROM {table} WHERE id = %s", (key,)).fetchone()


def metric(relay, name: str, labels: str = "") -> float:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    prefix = name + (f"{{{labels}}}" if labels else "") + " "
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.split()[-1])
    return total


# ---------------------------------------------------------------------------------------------
# Lag on purpose: follower shows it, read-your-writes and quorum do not
# ---------------------------------------------------------------------------------------------


def test_follower_reads_stale_own_write_when_replicas_paused(follower, cluster, table):
    with PausedAll(cluster), follower.connect(autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET v = 42 WHERE id = 1")
        v, port = read_v(conn, table)
        assert port in cluster.replica_ports
        assert v == 0, "the replicas are paused: follower must read the old value (else no lag)"


def test_ryw_reads_own_writes_with_replicas_paused_1000_times(ryw_short, cluster, table):
    stale, ports = 0, collections.Counter()
    with PausedAll(cluster), ryw_short.connect(autocommit=True) as conn:
        for i in range(1, 1001):
            conn.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (i,))
            v, port = read_v(conn, table)
            ports[port] += 1
            stale += v != i
    assert stale == 0, f"{stale} of 1000 reads missed the session's own write (ports {dict(ports)})"
    assert set(ports) == {cluster.primary_port}, "paused replicas cannot have served these reads"


def test_ryw_session_that_never_wrote_reads_replicas(ryw, cluster, table):
    with ryw.connect(autocommit=True) as conn:
        ports = collections.Counter(read_v(conn, table)[1] for _ in range(40))
    assert set(ports) == set(cluster.replica_ports), dict(ports)


def test_ryw_transaction_write_then_read(ryw_short, cluster, table):
    with PausedAll(cluster), ryw_short.connect(autocommit=True) as conn:
        with conn.transaction():
            conn.execute(f"UPDATE {table} SET v = 7 WHERE id = 2")
            conn.execute(f"UPDATE {table} SET v = 8 WHERE id = 3")
        assert read_v(conn, table, 2)[0] == 7
        assert read_v(conn, table, 3)[0] == 8


def test_quorum_write_on_a_read_on_b_with_replicas_paused(quorum_short, cluster, table):
    stale = 0
    with PausedAll(cluster), quorum_short.connect(autocommit=True) as a, \
            quorum_short.connect(autocommit=True) as b:
        for i in range(1, 301):
            a.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (i,))
            stale += read_v(b, table)[0] != i
    assert stale == 0, f"{stale} of 300 quorum reads on session B missed A's acknowledged write"


def test_quorum_sees_writes_made_directly_on_the_primary(quorum_short, cluster, table):
    """Writes pgrelay never saw (another application on the primary) are covered too."""
    with PausedAll(cluster), app_primary(cluster) as direct, quorum_short.connect(autocommit=True) as b:
        for i in range(1, 51):
            direct.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (i,))
            assert read_v(b, table)[0] == i


def test_quorum_uses_the_replica_that_caught_up(quorum, cluster, table):
    paused_port, live_port = cluster.replica_ports
    with Paused(cluster, paused_port), quorum.connect(autocommit=True) as a, \
            quorum.connect(autocommit=True) as b:
        ports = collections.Counter()
        for i in range(1, 101):
            a.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (i,))
            v, port = read_v(b, table)
            assert v == i
            ports[port] += 1
    assert paused_port not in ports, dict(ports)
    assert ports[live_port] >= 90, f"the live replica should serve nearly all reads: {dict(ports)}"


# ---------------------------------------------------------------------------------------------
# The causal token
# ---------------------------------------------------------------------------------------------


def test_causal_token_handed_to_another_session(ryw, cluster, table):
    with PausedAll(cluster), ryw.connect(autocommit=True) as a, ryw.connect(autocommit=True) as b:
        a.execute(f"UPDATE {table} SET v = 99 WHERE id = 4")
        token = a.execute("SHOW pgrelay.causal_lsn").fetchone()[0]
        assert token != "0/0"
        assert a.info.parameter_status("pgrelay.causal_lsn") == token
        # Without the token B never wrote: it reads a (paused, stale) replica.
        v, port = read_v(b, table, 4)
        assert (v, port in cluster.replica_ports) == (0, True)
        b.execute(f"SET pgrelay.min_lsn = '{token}'")
        assert b.execute("SHOW pgrelay.min_lsn").fetchone()[0] == token
        assert read_v(b, table, 4)[0] == 99
        # Through the start-up options, in a third session.
        with ryw.connect(autocommit=True, options=f"-c pgrelay.min_lsn={token}") as c:
            assert c.execute("SHOW pgrelay.min_lsn").fetchone()[0] == token
            assert read_v(c, table, 4)[0] == 99
        b.execute("RESET pgrelay.min_lsn")
        assert b.execute("SHOW pgrelay.min_lsn").fetchone()[0] == "0/0"


def test_causal_lsn_parameter_status_advances(ryw, cluster, table):
    with ryw.connect(autocommit=True) as conn:
        assert conn.execute("SHOW pgrelay.causal_lsn").fetchone()[0] == "0/0"
        seen = []
        for i in range(3):
            conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 5")
            seen.append(conn.execute("SHOW pgrelay.causal_lsn").fetchone()[0])
            assert conn.info.parameter_status("pgrelay.causal_lsn") == seen[-1]
        lsns = [int(a, 16) << 32 | int(b, 16) for a, b in (s.split("/") for s in seen)]
        assert lsns == sorted(lsns) and lsns[0] < lsns[-1], seen
        # It also arrives unasked, with the reply to a later statement.
        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 5")
        deadline = time.time() + 5
        while conn.info.parameter_status("pgrelay.causal_lsn") == seen[-1] and time.time() < deadline:
            conn.execute("SELECT 1")
        assert conn.info.parameter_status("pgrelay.causal_lsn") != seen[-1]


def test_pgrelay_settings_never_reach_postgresql(ryw, cluster):
    with ryw.connect(autocommit=True) as conn:
        conn.execute("SET pgrelay.min_lsn = '0/1'")
        assert conn.execute("SELECT current_setting('pgrelay.min_lsn', true)").fetchone()[0] is None
        assert conn.execute("SHOW pgrelay.strategy").fetchone()[0] == "read-your-writes"


@pytest.mark.parametrize("sql, sqlstate", [
    ("SET pgrelay.min_lsn = 'not-an-lsn'", "22023"),
    ("SET pgrelay.causal_lsn = '0/1'", "55P02"),
    ("SHOW pgrelay.no_such_setting", "42704"),
    ("SET LOCAL pgrelay.min_lsn = '0/1'", "0A000"),
])
def test_pgrelay_settings_errors(ryw, sql, sqlstate):
    with ryw.connect(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(sql)
        assert e.value.sqlstate == sqlstate
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on


def test_bad_min_lsn_startup_option_is_refused(ryw):
    with pytest.raises(psycopg.OperationalError, match="invalid value for parameter"):
        ryw.connect(options="-c pgrelay.min_lsn=bogus")


# ---------------------------------------------------------------------------------------------
# Caught up: the strategies use the replicas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["ryw", "quorum"])
def test_caught_up_read_mostly_workload_uses_replicas(request, strategy, cluster, table):
    relay = request.getfixturevalue(strategy)
    wait_replayed(cluster)
    ports = collections.Counter()
    with relay.connect(autocommit=True) as conn:
        for i in range(300):
            if i % 10 == 0:
                conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 6")
            else:
                ports[read_v(conn, table, 6)[1]] += 1
    on_replicas = sum(n for p, n in ports.items() if p in cluster.replica_ports)
    assert on_replicas >= 0.9 * sum(ports.values()), f"{strategy}: reads by port {dict(ports)}"


def test_consistency_metrics_count_waits_and_fallbacks(ryw_short, cluster, table):
    fallbacks = metric(ryw_short, "pgrelay_consistency_fallbacks_total", 'strategy="read-your-writes"')
    with PausedAll(cluster), ryw_short.connect(autocommit=True) as conn:
        for i in range(5):
            conn.execute(f"UPDATE {table} SET v = %s WHERE id = 7", (i,))
            read_v(conn, table, 7)
    assert metric(ryw_short, "pgrelay_consistency_fallbacks_total",
                  'strategy="read-your-writes"') >= fallbacks + 5
    assert metric(ryw_short, "pgrelay_consistency_wait_seconds_count",
                  'strategy="read-your-writes"') >= 5


# ---------------------------------------------------------------------------------------------
# A concurrent checker over a whole history
# ---------------------------------------------------------------------------------------------


@dataclass
class History:
    # (key, value, acked_at) for every acknowledged increment
    writes: list = field(default_factory=list)
    # (session, key, value, started_at, own_last_write_value) for every read
    reads: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_history(relay, cluster: Cluster, table: str, seconds: float) -> History:
    h = History()
    stop = threading.Event()
    keys = [1, 2, 3, 4]

    def writer(n: int):
        rnd = random.Random(n)
        own: dict[int, int] = {}
        try:
            with relay.connect(autocommit=True) as conn:
                while not stop.is_set():
                    key = rnd.choice(keys)
                    if rnd.random() < 0.5:
                        v = conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s RETURNING v",
                                         (key,)).fetchone()[0]
                        t = time.monotonic()
                        own[key] = max(own.get(key, 0), v)
                        with h.lock:
                            h.writes.append((key, v, t))
                    else:
                        t = time.monotonic()
                        v = conn.execute(f"SELECT v FROM {table} WHERE id = %s", (key,)).fetchone()[0]
                        with h.lock:
                            h.reads.append((f"w{n}", key, v, t, own.get(key, 0)))
        except Exception as e:  # noqa: BLE001 - reported by the test
            h.errors.append(f"writer {n}: {e!r}")

    def reader(n: int):
        rnd = random.Random(100 + n)
        try:
            with relay.connect(autocommit=True) as conn:
                while not stop.is_set():
                    key = rnd.choice(keys)
                    t = time.monotonic()
                    v = conn.execute(f"SELECT v FROM {table} WHERE id = %s", (key,)).fetchone()[0]
                    with h.lock:
                        h.reads.append((f"r{n}", key, v, t, 0))
        except Exception as e:  # noqa: BLE001
            h.errors.append(f"reader {n}: {e!r}")

    def lagger():
        rnd = random.Random(7)
        conns = {p: node_connect(cluster, p) for p in cluster.replica_ports}
        try:
            while not stop.is_set():
                port = rnd.choice(cluster.replica_ports)
                fn = "pg_wal_replay_pause" if rnd.random() < 0.5 else "pg_wal_replay_resume"
                conns[port].execute(f"SELECT {fn}()")
                stop.wait(rnd.uniform(0.05, 0.3))
        finally:
            for c in conns.values():
                c.execute("SELECT pg_wal_replay_resume()")
                c.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=lagger))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    wait_replayed(cluster)
    return h


def violations(h: History) -> dict[str, int]:
    """Own-writes-visible: a session's read returns at least its own last acknowledged write.
    Linearizable: a read returns at least every write acknowledged before the read started.
    Monotonic: a session's reads of a key never go backwards."""
    acked = collections.defaultdict(list)  # key -> sorted [(acked_at, value)]
    for key, v, t in h.writes:
        acked[key].append((t, v))
    for key in acked:
        acked[key].sort()
    own = linear = mono = 0
    last: dict[tuple[str, int], int] = {}
    for session, key, v, started, own_last in sorted(h.reads, key=lambda r: r[3]):
        own += v < own_last
        floor = max((val for t, val in acked[key] if t < started), default=0)
        linear += v < floor
        mono += v < last.get((session, key), 0)
        last[(session, key)] = max(v, last.get((session, key), 0))
    return {"own_writes": own, "linearizable": linear, "monotonic": mono}


@pytest.mark.parametrize("strategy, guarantees", [
    ("follower", ()),  # reported, not asserted: follower promises none of these
    ("ryw", ("own_writes",)),
    ("quorum", ("own_writes", "linearizable", "monotonic")),
])
def test_concurrent_history_checker(request, strategy, guarantees, cluster, table):
    relay = request.getfixturevalue(strategy)
    h = run_history(relay, cluster, table, seconds=6)
    assert not h.errors, h.errors
    found = violations(h)
    print(f"{strategy}: {len(h.writes)} writes, {len(h.reads)} reads, violations {found}")
    assert len(h.writes) > 50 and len(h.reads) > 200, "too little traffic to check anything"
    for g in guarantees:
        assert found[g] == 0, f"{strategy} broke {g}: {found} over {len(h.reads)} reads"


# ---------------------------------------------------------------------------------------------
# Quorum commit: quorum reads while the primary is down
# ---------------------------------------------------------------------------------------------


def set_quorum_commit(cluster: Cluster, on: bool) -> None:
    with node_connect(cluster, cluster.primary_port) as conn:
        if on:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (replica1, replica2)'")
            conn.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
        else:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("ALTER SYSTEM RESET synchronous_commit")
        conn.execute("SELECT pg_reload_conf()")


def test_quorum_reads_survive_the_primary_under_quorum_commit(module_pgrelay, cluster, table):
    """k=1 of 2 standbys, remote_apply: every acknowledged commit is applied on one standby, so
    asking both (n - k + 1 = 2) and reading from the most advanced sees it, primary or not."""
    relay = module_pgrelay(dict(config("quorum", "2ms"), log={"level": "debug"}))
    primary_dir = data_dir(cluster, cluster.primary_port)
    replica_dirs = [data_dir(cluster, p) for p in cluster.replica_ports]
    paused_port = cluster.replica_ports[0]
    set_quorum_commit(cluster, True)
    try:
        time.sleep(1.5)  # the monitor's probes pick up the primary's settings
        with Paused(cluster, paused_port), relay.connect(autocommit=True) as a, \
                relay.connect(autocommit=True) as b:
            # replica1 is paused: the commit is acknowledged once replica2 has applied it.
            a.execute(f"UPDATE {table} SET v = 4242 WHERE id = 8")
            assert read_v(b, table, 8)[0] == 4242
            stop_node_immediate(cluster, primary_dir)
            try:
                for _ in range(20):
                    v, port = read_v(b, table, 8)
                    assert (v, port) == (4242, cluster.replica_ports[1]), \
                        "the most advanced standby must serve, with the acknowledged write"
                # A session opened while the primary is down reads too.
                with relay.connect(autocommit=True) as c:
                    assert read_v(c, table, 8)[0] == 4242
                # With both standbys gone there is no read quorum: a clear error, no stale read.
                for d in replica_dirs:
                    stop_node_immediate(cluster, d)
                with pytest.raises(psycopg.OperationalError, match="quorum read refused"):
                    read_v(b, table, 8)
            finally:
                for d in replica_dirs:
                    start_node(cluster, d)
                start_node(cluster, primary_dir)
    finally:
        set_quorum_commit(cluster, False)
        for port in cluster.replica_ports:
            with node_connect(cluster, port) as conn:
                conn.execute("SELECT pg_wal_replay_resume()")
        wait_replayed(cluster, timeout=60)
