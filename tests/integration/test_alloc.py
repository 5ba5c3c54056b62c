"""Relaying allocates nothing once a session is warm (issue #8).

pgrelay's release binary (PGRELAY_RELEASE_BIN; ASan replaces the allocator, so not PGRELAY_BIN)
runs with alloc_count.cc preloaded, which counts every heap allocation made on pgrelay's worker
threads. For each pgbench protocol mode (simple: Query; extended: Parse/Bind/Describe/Execute/
Sync; prepared: Bind/Execute/Sync), four pgbench clients run a select-only script for a few
seconds; after a warm-up second the counter is read twice, WINDOW_S apart, while thousands of
statements are relayed between the reads (counted from pgrelay's own metrics). The allocations
in that window must be zero, for leader (primary) and follower (replicas, load-balanced, so the
sessions switch backends all the time).

Set PGRELAY_ALLOC_TRACE=1 to have pgrelay print a backtrace of each counted allocation in the
window to its log (finding where one comes from).
"""
import math
import mmap
import os
import pathlib
import struct
import subprocess
import time
import urllib.request

import pytest

from conftest import PgrelayFactory, client_env

HERE = pathlib.Path(__file__).resolve().parent
WARM_UP_S, WINDOW_S = 1.5, 2.0

SCRIPT = """\\set id random(1, 1000)
SELECT id, payload FROM alloc_probe WHERE id = :id;
"""


@pytest.fixture(scope="module")
def release_bin() -> str:
    path = os.environ.get("PGRELAY_RELEASE_BIN")
    if not path:
        pytest.fail("PGRELAY_RELEASE_BIN is not set (scripts/test.sh builds build/release and sets it)",
                    pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"PGRELAY_RELEASE_BIN={path} is not an executable file", pytrace=False)
    return path


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("alloc") / "alloc_count.so"
    subprocess.run(["g++", "-std=c++20", "-O2", "-shared", "-fPIC", "-o", str(out),
                    str(HERE / "alloc_count.cc")], check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def probe_table(cluster):
    with cluster.superuser_connect() as conn:
        conn.autocommit = True
        conn.execute("DROP TABLE IF EXISTS alloc_probe")
        conn.execute("CREATE TABLE alloc_probe (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO alloc_probe SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g")
        conn.execute(f"GRANT SELECT ON alloc_probe TO {cluster.app_user}")
        conn.execute("SELECT pg_sleep(0.5)")  # let the replicas replay it
    yield
    with cluster.superuser_connect() as conn:
        conn.autocommit = True
        conn.execute("DROP TABLE IF EXISTS alloc_probe")


class Counter:
    """The shared page alloc_count.cc counts into."""

    def __init__(self, path: pathlib.Path):
        path.write_bytes(b"\0" * 4096)
        self.path = path
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 4096)

    def allocations(self) -> int:
        return struct.unpack_from("<Q", self._map, 0)[0]

    def trace(self, on: bool) -> None:
        struct.pack_into("<Q", self._map, 8, 1 if on else 0)

    def close(self) -> None:
        self._map.close()
        self._file.close()


def relayed_statements(relay) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pgrelay_statements_total{"))


def pgbench(relay, script: pathlib.Path, mode: str, seconds: int) -> subprocess.Popen:
    cmd = [os.path.join(relay.cluster.pg_bin, "pgbench"), "-n", "-h", relay.host, "-p", str(relay.port),
           "-U", relay.cluster.app_user, "-c", "4", "-j", "2", "-M", mode, "-T", str(seconds),
           "-f", str(script), relay.cluster.database]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=client_env(relay.cluster.app_password))


@pytest.mark.parametrize("strategy", ["leader", "follower"])
def test_relaying_allocates_nothing_after_warm_up(cluster, release_bin, shim, probe_table, strategy,
                                                  tmp_path):
    counter = Counter(tmp_path / "counts")
    factory = PgrelayFactory(cluster, release_bin, tmp_path / "relay")
    try:
        relay = factory({"routing": {"strategy": strategy}, "log": {"level": "warning"}},
                        env={"LD_PRELOAD": str(shim), "PGRELAY_ALLOC_COUNT_FILE": str(counter.path)})
        script = tmp_path / "select.sql"
        script.write_text(SCRIPT)
        results = {}
        for mode in ("simple", "extended", "prepared"):
            proc = pgbench(relay, script, mode, math.ceil(WARM_UP_S + WINDOW_S) + 1)
            time.sleep(WARM_UP_S)
            trace = os.environ.get("PGRELAY_ALLOC_TRACE") == "1"
            counter.trace(trace)
            allocations, statements = counter.allocations(), relayed_statements(relay)
            time.sleep(WINDOW_S)
            allocations = counter.allocations() - allocations
            statements = relayed_statements(relay) - statements
            counter.trace(False)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"pgbench -M {mode} failed:\n{out}"
            results[mode] = (allocations, int(statements))
        print(f"{strategy}: (allocations, statements) in the window per mode: {results}")
        assert counter.allocations() > 0, "the counter saw no allocation at all: is the shim loaded?"
        for mode, (allocations, statements) in results.items():
            assert statements >= 1000, f"{mode}: only {statements} statements relayed in the window"
        assert all(a == 0 for a, _ in results.values()), (
            f"{strategy}: allocations on pgrelay's worker threads while relaying "
            f"(allocations, statements) per protocol mode: {results}")
    finally:
        factory.stop_all()
        counter.close()
