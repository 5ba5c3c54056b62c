"""psycopg 3 through pgrelay: parameters (extended protocol), server-side prepared statements,
COPY both ways, pipeline mode with a failure in the middle, transaction status tracking."""

import datetime
import decimal
import uuid

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus


@pytest.fixture
def table(pgrelay):
    """A fresh table name; the table is dropped after the test (and after `conn` is closed)."""
    name = f"pg3_{uuid.uuid4().hex[:12]}"
    yield name
    with pgrelay.connect(autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def conn(pgrelay, table):
    # Depends on `table` so that it is closed (ending its transaction) before the table is dropped.
    with pgrelay.connect() as c:
        yield c


def test_parameters(conn):
    params = (41, "it's a \"quoted\" ünïcode string", b"\x00\x01\xff bytes", None,
              decimal.Decimal("12345678901234567890.123456789"), [1, 2, 3],
              datetime.date(2024, 2, 29), True)
    row = conn.execute(
        "SELECT %s::int + 1, %s::text, %s::bytea, %s::text IS NULL, %s::numeric * 2, %s::int[], "
        "%s::date + 1, NOT %s::bool", params).fetchone()
    assert row == (42, params[1], params[2], True, decimal.Decimal("24691357802469135780.246913578"),
                   [1, 2, 3], datetime.date(2024, 3, 1), False)


def test_parameters_binary_results(conn):
    cur = conn.cursor(binary=True)
    row = cur.execute("SELECT %s::int8 * 2, %s::text, %s::float8", (2**40, "binary ✓", 0.5)).fetchone()
    assert row == (2**41, "binary ✓", 0.5)


def test_many_rows_streamed(conn):
    # ~10 MB of DataRows through pgrelay in one result.
    cur = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g")
    count = total = 0
    for g, text in cur:
        count += 1
        total += g
        assert len(text) == 100
    assert (count, total) == (100000, 100000 * 100001 // 2)


def test_server_side_prepare_true(conn):
    query = "SELECT %s::int * 10, %s::text || '!'"
    results = [conn.execute(query, (i, f"v{i}"), prepare=True).fetchone() for i in range(5)]
    assert results == [(i * 10, f"v{i}!") for i in range(5)]
    # The named statement exists in the backend session behind pgrelay.
    names = conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall()
    assert any(stmt.startswith("SELECT $1::int * 10") for _, stmt in names), names


def test_prepare_threshold_zero(pgrelay):
    with pgrelay.connect(prepare_threshold=0) as c:
        for i in range(20):
            q = f"SELECT %s::int + {i % 4}"  # 4 distinct statements, each prepared at first use
            assert c.execute(q, (i,)).fetchone() == (i + i % 4,)
        prepared = c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        assert prepared >= 4
        # executemany on a prepared statement
        c.execute("CREATE TEMP TABLE pt(a int, b text)")
        c.cursor().executemany("INSERT INTO pt VALUES (%s, %s)", [(i, str(i)) for i in range(100)])
        assert c.execute("SELECT count(*), sum(a) FROM pt").fetchone() == (100, 4950)


def test_prepared_statement_error_then_reuse(conn):
    conn.autocommit = True
    query = "SELECT 100 / %s::int"
    assert conn.execute(query, (4,), prepare=True).fetchone() == (25,)
    with pytest.raises(errors.DivisionByZero):
        conn.execute(query, (0,), prepare=True)
    assert conn.execute(query, (5,), prepare=True).fetchone() == (20,)


def test_copy_from_stdin_and_to_stdout(conn, table):
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, data bytea)")
    rows = [(i, f"name\t{i}\n\\", bytes([i % 256]) * (i % 50)) for i in range(5000)]
    rows.append((5000, None, None))
    cur = conn.cursor()
    with cur.copy(f"COPY {table} (id, name, data) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    assert cur.rowcount == 5001
    conn.commit()
    with cur.copy(f"COPY (SELECT id, name, data FROM {table} ORDER BY id) TO STDOUT") as copy:
        copy.set_types(["int4", "text", "bytea"])
        out = list(copy.rows())
    assert out == rows


def test_copy_binary_roundtrip(conn, table):
    conn.execute(f"CREATE TABLE {table} (id int8, v float8, t text)")
    rows = [(i, i / 3, f"t{i}" * 10) for i in range(2000)]
    cur = conn.cursor()
    with cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "float8", "text"])
        for row in rows:
            copy.write_row(row)
    with cur.copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "float8", "text"])
        out = sorted(copy.rows())
    assert out == rows


def test_copy_bad_data_then_connection_works(conn, table):
    conn.execute(f"CREATE TABLE {table} (id int)")
    conn.commit()
    with pytest.raises(errors.InvalidTextRepresentation):
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write(b"1\n2\nnot-a-number\n4\n")
    assert conn.info.transaction_status == TransactionStatus.INERROR
    conn.rollback()
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_copy_to_stdout_large(conn):
    cur = conn.cursor()
    size = 0
    with cur.copy("COPY (SELECT g, md5(g::text) FROM generate_series(1, 200000) g) TO STDOUT") as copy:
        for block in copy:
            size += len(block)
    assert size > 200000 * 34


def test_pipeline_error_in_the_middle(pgrelay):
    with pgrelay.connect(autocommit=True) as c:
        with pytest.raises(errors.DivisionByZero):
            with c.pipeline():
                first = c.execute("SELECT 1")
                c.execute("SELECT 1/0")
                c.execute("SELECT 3")
        assert first.fetchone() == (1,)
        # Same connection, next statement: the right result, no leftovers from the pipeline.
        assert c.execute("SELECT %s::text", ("after pipeline",)).fetchone() == ("after pipeline",)
        assert c.info.transaction_status == TransactionStatus.IDLE


def test_pipeline_sync_points(pgrelay):
    with pgrelay.connect(autocommit=True) as c:
        with c.pipeline() as p:
            a = c.execute("SELECT 'a'")
            bad = c.execute("SELECT * FROM no_such_table")
            skipped = c.execute("SELECT 'skipped'")
            with pytest.raises(errors.UndefinedTable):
                p.sync()
            with pytest.raises(psycopg.ProgrammingError):
                skipped.fetchone()  # aborted pipeline: never executed
            after = [c.execute("SELECT %s::int * 2", (i,)) for i in range(50)]
        assert a.fetchone() == ("a",)
        assert bad is not None
        assert [cur.fetchone()[0] for cur in after] == [i * 2 for i in range(50)]


def test_pipeline_in_transaction(pgrelay, table):
    with pgrelay.connect() as c:
        with c.pipeline():
            c.execute(f"CREATE TABLE {table} (x int)")
            c.cursor().executemany(f"INSERT INTO {table} VALUES (%s)", [(i,) for i in range(1000)])
            total = c.execute(f"SELECT sum(x) FROM {table}")
        assert total.fetchone() == (499500,)
        assert c.info.transaction_status == TransactionStatus.INTRANS
        c.commit()
        assert c.info.transaction_status == TransactionStatus.IDLE


def test_transaction_status_tracking(conn):
    assert conn.info.transaction_status == TransactionStatus.IDLE
    conn.execute("SELECT 1")
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    conn.commit()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    conn.execute("SELECT 1")
    with pytest.raises(errors.UndefinedColumn):
        conn.execute("SELECT no_such_column")
    assert conn.info.transaction_status == TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.rollback()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    conn.autocommit = True
    with conn.transaction():
        conn.execute("SELECT 1")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        with conn.transaction():  # savepoint
            conn.execute("SELECT 2")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    assert conn.info.transaction_status == TransactionStatus.IDLE
    conn.execute("BEGIN")
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    conn.execute("COMMIT")
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_session_state_persists(conn):
    conn.autocommit = True
    conn.execute("SET application_name = 'pgrelay-test'")
    conn.execute("SET TIME ZONE 'Asia/Tokyo'")
    assert conn.info.parameter_status("application_name") == "pgrelay-test"
    assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
    conn.execute("CREATE TEMP TABLE s(x int)")
    conn.execute("INSERT INTO s VALUES (7)")
    assert conn.execute("SELECT x, current_setting('application_name') FROM s").fetchone() == (7, "pgrelay-test")
