"""psql through pgrelay: simple queries, multi-statement strings, \\copy both ways, errors."""

import os
import uuid

import pytest


@pytest.fixture
def table(pgrelay):
    """A fresh table name in the app database; dropped afterwards (via pgrelay)."""
    name = f"psql_copy_{uuid.uuid4().hex[:12]}"
    yield name
    pgrelay.psql("-c", f"DROP TABLE IF EXISTS {name}")


def test_query(pgrelay):
    out = pgrelay.psql("-At", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 40 + 2, current_user, current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42|app|app"


def test_multi_statement_string(pgrelay):
    # psql -c sends the whole string as one simple Query: three statements, one round trip,
    # three results (psql 15 prints each).
    sql = ("CREATE TEMP TABLE m(x int); INSERT INTO m SELECT generate_series(1, 10); "
           "SELECT sum(x), count(*) FROM m")
    out = pgrelay.psql("-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 10", "55|10"]


def test_multi_statement_string_with_error_is_one_transaction(pgrelay, table):
    # An implicit transaction: the error in the 3rd statement rolls back the 2nd.
    assert pgrelay.psql("-c", f"CREATE TABLE {table} (x int)").returncode == 0
    out = pgrelay.psql("-At", "-c", f"INSERT INTO {table} VALUES (1); SELECT 1/0; INSERT INTO {table} VALUES (2)")
    assert out.returncode != 0
    assert "division by zero" in out.stderr
    out = pgrelay.psql("-At", "-c", f"SELECT count(*) FROM {table}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_copy_in_and_out(pgrelay, table, tmp_path):
    null = "\\N"
    rows = [f"{i}\tname {i} \\\\ tab\\tend\t{null if i % 7 == 0 else 'ünïcødé-' + str(i * i)}"
            for i in range(1, 20001)]
    src = tmp_path / "in.tsv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    dst = tmp_path / "out.tsv"
    script = (f"CREATE TABLE {table} (id int PRIMARY KEY, name text, note text);\n"
              f"\\copy {table} FROM '{src}'\n"
              f"SELECT count(*), count(note), sum(id) FROM {table};\n"
              f"\\copy (SELECT * FROM {table} ORDER BY id) TO '{dst}'\n")
    out = pgrelay.psql("-At", "-v", "ON_ERROR_STOP=1", input=script)
    assert out.returncode == 0, out.stderr
    assert "COPY 20000" in out.stdout
    assert "20000|17143|200010000" in out.stdout
    assert dst.read_bytes() == src.read_bytes()
    assert os.path.getsize(dst) > 500_000


def test_copy_in_bad_data_then_session_goes_on(pgrelay, table, tmp_path):
    src = tmp_path / "bad.tsv"
    src.write_text("1\tok\n2\tok\nnot-a-number\tbad\n4\tok\n")
    script = (f"CREATE TABLE {table} (id int, name text);\n"
              f"\\copy {table} FROM '{src}'\n"
              f"SELECT 'rows=' || count(*) FROM {table};\n")
    out = pgrelay.psql("-At", input=script)
    assert 'invalid input syntax for type integer: "not-a-number"' in out.stderr
    assert "rows=0" in out.stdout


def test_error_then_good_query_in_same_session(pgrelay):
    script = ("SET app.marker = 'kept';\n"
              "SELECT 1/0;\n"
              "SELECT no_such_column FROM pg_class LIMIT 1;\n"
              "SELECT 'after-error', current_setting('app.marker');\n"
              "BEGIN;\n"
              "SELECT 1/0;\n"
              "SELECT 'in-failed-txn';\n"
              "ROLLBACK;\n"
              "SELECT 'after-rollback';\n")
    out = pgrelay.psql("-At", input=script)
    assert out.returncode == 0, out.stderr  # without ON_ERROR_STOP psql carries on
    assert "division by zero" in out.stderr
    assert 'column "no_such_column" does not exist' in out.stderr
    assert "current transaction is aborted" in out.stderr
    lines = out.stdout.split()
    assert "after-error|kept" in lines
    assert "in-failed-txn" not in lines
    assert "after-rollback" in lines


def test_on_error_stop_exit_status(pgrelay):
    out = pgrelay.psql("-At", "-v", "ON_ERROR_STOP=1", input="SELECT 1/0;\nSELECT 'unreached';\n")
    assert out.returncode == 3
    assert "unreached" not in out.stdout
    pgrelay.assert_healthy()
