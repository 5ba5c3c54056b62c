"""System calls on the relay's hot path (proxy/relay_read.h, docs/benchmarks.md).

A relayed statement costs the worker, per direction, a wait (epoll_wait), one read and one
write. Asio on its own adds a read that only returns EAGAIN after every read that emptied the
socket; pgrelay's relay reads skip it when the kernel says the socket is empty (TCP_INQ) and the
peer waits for an answer. strace counts the worker thread's system calls while pgbench runs
1-client statements through it, in simple and prepared mode: reads that fail with EAGAIN, and
epoll re-arms (what a wait through async_wait would cost instead), must be rare next to the
reads that return data.
"""
import os
import pathlib
import re
import signal
import shutil
import subprocess
import time

import pytest

from conftest import client_env, pgrelay_only, wait_until

STRACE = shutil.which("strace")


def worker_thread(pid: int) -> int:
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "pgrelay-w0":
            return int(task.name)
    raise AssertionError("no pgrelay-w0 thread")


def strace_counts(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    """syscall -> (calls, errors) from strace -c output."""
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            calls = int(fields[3])
            errors = int(fields[4]) if len(fields) == 6 else 0
            counts[fields[-1]] = (calls, errors)
    return counts


@pgrelay_only
@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_one_read_per_message_and_no_eagain_reads(make_pgrelay, tmp_path, mode):
    assert STRACE, "strace is not installed: scripts/install-deps.sh installs it"
    relay = make_pgrelay({"workers": 1, "log": {"level": "warning"}})
    tid = worker_thread(relay.proc.pid)
    script = tmp_path / "select.sql"
    script.write_text("SELECT 1;\n")
    out = tmp_path / "strace.txt"
    bench = subprocess.Popen(
        [os.path.join(relay.cluster.pg_bin, "pgbench"), "-n", "-h", relay.host, "-p", str(relay.port),
         "-U", relay.cluster.app_user, "-c", "1", "-M", mode, "-T", "4", "-f", str(script),
         relay.cluster.database],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=client_env(relay.cluster.app_password))
    time.sleep(1.0)  # logged in and running
    trace = subprocess.Popen([STRACE, "-c", "-o", str(out), "-p", str(tid),
                              "-e", "trace=recvmsg,recvfrom,epoll_ctl,epoll_wait,sendto,sendmsg"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    trace.send_signal(signal.SIGINT)
    _, trace_err = trace.communicate(timeout=10)
    if "ptrace" in trace_err and "Operation not permitted" in trace_err:
        bench.communicate(timeout=30)
        # A sandbox without ptrace (no CAP_SYS_PTRACE, or a seccomp profile): nothing to count
        # with. The machines this project tests on allow it.
        pytest.skip(f"strace may not attach to processes here: {trace_err.strip()}")
    assert "ptrace" not in trace_err, f"strace could not attach to pgrelay's worker: {trace_err}"
    output, _ = bench.communicate(timeout=30)
    assert bench.returncode == 0, output
    wait_until(lambda: out.exists() and "total" in out.read_text(), 5, what="strace's summary")
    counts = strace_counts(out)
    reads, read_errors = counts.get("recvmsg", (0, 0))
    spec_reads, spec_errors = counts.get("recvfrom", (0, 0))
    rearms, _ = counts.get("epoll_ctl", (0, 0))
    data_reads = reads - read_errors
    assert data_reads > 500, f"too few statements relayed under strace: {counts}\n{out.read_text()}"
    # Each statement is a request and an answer: two reads that return data, one per direction.
    eagain = read_errors + spec_errors
    assert eagain <= data_reads * 0.02, f"{eagain} reads returned EAGAIN for {data_reads} with data: {counts}"
    assert rearms <= data_reads * 0.02, f"{rearms} epoll_ctl calls for {data_reads} reads: {counts}"
    assert spec_reads <= data_reads * 0.02, f"Asio's own reads ran: {counts}"
