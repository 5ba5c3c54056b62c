"""The statement classifier with the live function catalog of the real cluster.

User functions are unknown to the built-in catalog, so the classifier treats them as volatile
(primary). Loaded from the primary (health/function_catalog_loader.h), their real volatility
decides: a VOLATILE function that INSERTs is a write, an IMMUTABLE or STABLE one may go to a
replica. The replica itself confirms each verdict: a write fails there, a read runs.

Runs the `pgrelay_classify` tool (CMake target of routing/CMakeLists.txt), located by
PGRELAY_CLASSIFY_BIN (set by CTest), else build/asan/routing/pgrelay_classify.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time

import psycopg
import pytest

SCHEMA = "pgrelay_classifier_it"
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classify_bin() -> str:
    path = os.environ.get("PGRELAY_CLASSIFY_BIN") or str(REPO / "build/asan/routing/pgrelay_classify")
    if not os.access(path, os.X_OK):
        pytest.fail(f"pgrelay_classify not found at {path}: build the target pgrelay_classify "
                    "or set PGRELAY_CLASSIFY_BIN")
    return path


@pytest.fixture(scope="module")
def conninfo(cluster) -> str:
    return (f"host={cluster.host} port={cluster.primary_port} user={cluster.superuser} "
            f"dbname={cluster.database}")


@pytest.fixture(scope="module")
def user_functions(cluster):
    """Creates the schema with the test's functions on the primary; drops it afterwards."""
    with cluster.superuser_connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.t (a int)")
        # The case: a VOLATILE SQL function that INSERTs.
        conn.execute(f"CREATE FUNCTION {SCHEMA}.f() RETURNS int VOLATILE LANGUAGE sql "
                     f"AS $$ INSERT INTO {SCHEMA}.t VALUES (1) RETURNING 1 $$")
        # A plpgsql function that INSERTs (volatile by default).
        conn.execute(f"CREATE FUNCTION {SCHEMA}.record_visit(n int) RETURNS void LANGUAGE plpgsql "
                     f"AS $$ BEGIN INSERT INTO {SCHEMA}.t VALUES (n); END $$")
        conn.execute(f"CREATE FUNCTION {SCHEMA}.twice(n int) RETURNS int IMMUTABLE LANGUAGE sql "
                     f"AS $$ SELECT n * 2 $$")
        conn.execute(f"CREATE FUNCTION {SCHEMA}.row_count() RETURNS bigint STABLE LANGUAGE sql "
                     f"AS $$ SELECT count(*) FROM {SCHEMA}.t $$")
        # Callable as x.touch (attribute notation) with a row of t.
        conn.execute(f"CREATE FUNCTION {SCHEMA}.touch(r {SCHEMA}.t) RETURNS int VOLATILE "
                     f"LANGUAGE sql AS $$ INSERT INTO {SCHEMA}.t VALUES (r.a) RETURNING 1 $$")
        conn.execute(f"CREATE FUNCTION {SCHEMA}.eq_log(a int, b int) RETURNS boolean VOLATILE "
                     f"LANGUAGE sql AS $$ INSERT INTO {SCHEMA}.t VALUES (a) RETURNING a = b $$")
        conn.execute(f"CREATE OPERATOR {SCHEMA}.=~= (LEFTARG = int, RIGHTARG = int, "
                     f"FUNCTION = {SCHEMA}.eq_log)")
        conn.execute(f"INSERT INTO {SCHEMA}.t VALUES (1)")
    yield
    with cluster.superuser_connect() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def classify(classify_bin: str, statements: list[str], conninfo: str | None) -> dict[str, dict]:
    args = [classify_bin] + (["--conninfo", conninfo] if conninfo else [])
    proc = subprocess.run(args, input="\n".join(statements) + "\n", capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        item = json.loads(line)
        out[item["sql"]] = item["classification"]
    assert len(out) == len(statements), proc.stdout
    return out


def replica_connect(cluster) -> psycopg.Connection:
    return psycopg.connect(host=cluster.host, port=cluster.replica_ports[0], user=cluster.superuser,
                           dbname=cluster.database, connect_timeout=10, autocommit=True)


def wait_for_replica(cluster, timeout: float = 30.0) -> None:
    """Waits until the first replica has replayed the test schema's last object."""
    deadline = time.monotonic() + timeout
    with replica_connect(cluster) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_operator o JOIN pg_namespace n "
                               "ON n.oid = o.oprnamespace WHERE n.nspname = %s", (SCHEMA,)).fetchone()
            if row[0] > 0 and conn.execute(f"SELECT count(*) FROM {SCHEMA}.t").fetchone()[0] > 0:
                return
            time.sleep(0.1)
    pytest.fail("the replica did not replay the test schema in time")


WRITES = [
    f"SELECT {SCHEMA}.f()",
    "SELECT f()",  # unqualified: the highest volatility of any schema's f
    f"SELECT {SCHEMA}.record_visit(7)",
    f"SELECT x.touch FROM {SCHEMA}.t x",
    f"SELECT (x).touch FROM {SCHEMA}.t x",
    f"SELECT 1 OPERATOR({SCHEMA}.=~=) 1",
]
READS = [
    f"SELECT {SCHEMA}.twice(21)",
    f"SELECT twice(a) FROM {SCHEMA}.t",
    f"SELECT {SCHEMA}.row_count()",
    f"SELECT x.a FROM {SCHEMA}.t x",
]


def test_loaded_catalog_classifies_user_functions(cluster, user_functions, classify_bin, conninfo):
    result = classify(classify_bin, WRITES + READS, conninfo)
    for sql in WRITES:
        c = result[sql]
        assert c["target"] == "primary", (sql, c)
        assert "volatile_function" in c["flags"], (sql, c)
    for sql in READS:
        c = result[sql]
        assert c["target"] == "replica", (sql, c)


def test_without_the_catalog_user_functions_are_volatile(user_functions, classify_bin):
    result = classify(classify_bin, [f"SELECT {SCHEMA}.twice(21)", f"SELECT {SCHEMA}.row_count()"],
                      None)
    for sql, c in result.items():
        assert c["target"] == "primary", (sql, c)
        assert "volatile_function" in c["flags"], (sql, c)


def test_the_replica_agrees(cluster, user_functions, classify_bin, conninfo):
    """Every statement classified a write fails on a hot standby; every read runs there."""
    wait_for_replica(cluster)
    result = classify(classify_bin, WRITES + READS, conninfo)
    with replica_connect(cluster) as conn:
        for sql in WRITES:
            assert result[sql]["target"] == "primary"
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute(f"SET search_path = {SCHEMA}, public")
                conn.execute(sql)
        for sql in READS:
            assert result[sql]["target"] == "replica"
            conn.execute(f"SET search_path = {SCHEMA}, public")
            conn.execute(sql).fetchall()


def test_catalog_load_failure_is_reported(classify_bin):
    proc = subprocess.run([classify_bin, "--conninfo", "host=127.0.0.1 port=1 connect_timeout=2"],
                          input="SELECT 1\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "connecting failed" in proc.stderr
