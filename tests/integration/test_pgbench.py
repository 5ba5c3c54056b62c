"""pgbench through pgrelay: initialization (COPY, DDL, VACUUM) and 10 s runs with the simple,
extended and prepared query protocols (8 clients, 2 threads)."""

import re

import pytest

DURATION_S = 10
MIN_TRANSACTIONS = 100


@pytest.fixture(scope="module")
def initialized(pgrelay):
    out = pgrelay.run_client("pgbench", "-i", "-s", "1", "-q", timeout=300)
    assert out.returncode == 0, f"pgbench -i failed:\n{out.stdout}\n{out.stderr}"
    assert "done in" in out.stderr + out.stdout
    with pgrelay.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone() == (100_000,)
        assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)
    return pgrelay


def _run(target, *args):
    out = target.run_client("pgbench", *args, timeout=DURATION_S + 120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"pgbench exited with {out.returncode}:\n{text}"
    return text


def _processed(text):
    match = re.search(r"number of transactions actually processed: (\d+)", text)
    assert match, f"no transaction count in pgbench output:\n{text}"
    return int(match.group(1))


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_run(initialized, mode):
    text = _run(initialized, "-c", "8", "-j", "2", "-T", str(DURATION_S), "-M", mode, "-n")
    assert f"query mode: {mode}" in text
    failed = re.search(r"number of failed transactions: (\d+)", text)
    if failed:
        assert int(failed.group(1)) == 0, text
    assert "number of clients: 8" in text
    processed = _processed(text)
    assert processed > MIN_TRANSACTIONS, text
    # The balance invariant of TPC-B-like: every transaction adds delta to one account, its teller
    # and its branch and logs it in history, so the three sums and history agree.
    with initialized.connect(autocommit=True) as conn:
        sums = conn.execute(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),"
            " (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(delta) FROM pgbench_history)").fetchone()
        assert sums[0] == sums[1] == sums[2] == sums[3], sums


def test_pgbench_select_only_connect_per_transaction(initialized):
    # -C: a new connection for every transaction, so authentication and session setup through
    # pgrelay are exercised hundreds of times.
    text = _run(initialized, "-c", "4", "-j", "2", "-T", "5", "-S", "-C", "-n")
    assert _processed(text) > MIN_TRANSACTIONS, text
    initialized.assert_healthy()
