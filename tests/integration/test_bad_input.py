"""Hostile and broken clients: garbage, truncated and lying packets, oversized and undersized
messages, connection floods. pgrelay must answer with an ErrorResponse (real SQLSTATE) or close
the connection, never hang (every socket read here times out after 5 s), never crash, and keep
serving normal clients afterwards."""

import pathlib
import random
import resource
import socket
import struct
import subprocess
import time

import psycopg
import pytest

from conftest import (AUTH_SASL, DIRECT, PROTOCOL_3_0, SSL_REQUEST_CODE, ConnectionClosed, message,
                      parse_fields, pgrelay_only, query_message, request_packet, startup_packet,
                      wait_until)
from test_reload import reload_ok, rewrite

STARTUP_TIMEOUT_S = 2
MAX_MESSAGE = 1 << 20  # 1MB


@pytest.fixture(scope="module")
def relay(module_pgrelay):
    return module_pgrelay({"limits": {"startup_timeout": f"{STARTUP_TIMEOUT_S}s", "max_message_size": "1MB"}})


def _check_error_or_close(conn, allowed_codes=None, allowed_classes=None):
    """The server answers with an ErrorResponse (then closes) or just closes."""
    err = conn.expect_error_or_close()
    if err is not None:
        if allowed_codes:
            assert err.sqlstate in allowed_codes, err
        if allowed_classes:
            assert err.sqlstate[:2] in allowed_classes, err
        conn.expect_closed()
    return err


def _expect_error_then_close(conn, codes):
    """An ErrorResponse with one of `codes`, then close. (PostgreSQL itself closes silently on
    some of these; in direct mode a silent close is accepted.)"""
    err = conn.expect_error_or_close()
    if err is None and DIRECT:
        return None
    assert err is not None, f"connection closed without an ErrorResponse (expected {codes})"
    assert err.sqlstate in codes, err
    assert err.severity == "FATAL", err
    conn.expect_closed()
    return err


# ---- garbage before / during start-up -------------------------------------------------------

_rng = random.Random(20240229)
GARBAGE = {
    "random": bytes([0xFF]) + bytes(_rng.randrange(256) for _ in range(63)),
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n",
    "tls_client_hello": bytes.fromhex("16030100f1010000ed0303") + bytes(_rng.randrange(256) for _ in range(40)),
    "unknown_protocol_code": struct.pack("!II", 8, (1234 << 16) | 5678),
    "zero_length": b"\0\0\0\0" + b"\0" * 12,
    "length_3": b"\0\0\0\3abcdefgh",
    "huge_length": struct.pack("!I", 0x7FFFFFFF) + b"\0\3\0\0user\0app\0\0",
    "negative_length": struct.pack("!I", 0xFFFFFFF0) + b"\0" * 16,
    "nul_bytes": b"\0" * 64,
    "startup_without_terminator": struct.pack("!II", 20, PROTOCOL_3_0) + b"user\0app\0data",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_first_packet(relay, name):
    with relay.raw(timeout=5) as conn:
        try:
            conn.send(GARBAGE[name])
        except (BrokenPipeError, ConnectionResetError):
            pass
        err = _check_error_or_close(conn)
        if err is not None:
            assert err.sqlstate in ("08P01", "0A000", "28000", "08004"), err
    relay.assert_healthy()


def test_garbage_after_ssl_request(relay):
    with relay.raw(timeout=5) as conn:
        conn.send(request_packet(SSL_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.send(GARBAGE["random"])
        _check_error_or_close(conn)
    relay.assert_healthy()


def test_repeated_ssl_requests(relay):
    # A second SSLRequest after the 'N' is refused (PostgreSQL: FATAL 0A000, "unsupported
    # frontend protocol 1234.5679").
    with relay.raw(timeout=5) as conn:
        conn.send(request_packet(SSL_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.send(request_packet(SSL_REQUEST_CODE))
        _check_error_or_close(conn, allowed_codes=("08P01", "0A000"))
    relay.assert_healthy()


def test_truncated_startup_then_close(relay):
    packet = startup_packet({"user": "app", "database": "app"})
    for cut in (1, 4, 7, 10, len(packet) - 1):
        with relay.raw(timeout=5) as conn:
            conn.send(packet[:cut])
            conn.sock.shutdown(socket.SHUT_WR)
            _check_error_or_close(conn)
        with relay.raw(timeout=5) as conn:
            conn.send(packet[:cut])  # and an abrupt close without shutdown
    relay.assert_healthy()


@pgrelay_only
def test_startup_length_lies_closed_by_startup_timeout(relay):
    with relay.raw(timeout=5) as conn:
        conn.send(struct.pack("!II", 100, PROTOCOL_3_0) + b"user\0app\0database\0")  # 20 of 100 bytes
        started = time.monotonic()
        _check_error_or_close(conn, allowed_classes=("08", "57"))  # connection exception / operator intervention
        elapsed = time.monotonic() - started
    assert elapsed >= STARTUP_TIMEOUT_S - 0.5, f"closed after {elapsed:.2f} s: before the startup timeout"
    assert elapsed < STARTUP_TIMEOUT_S + 2.5, f"closed after {elapsed:.2f} s"
    relay.assert_healthy()


@pgrelay_only
def test_stalled_authentication_closed_by_startup_timeout(relay):
    # Startup sent, SASL request received, then silence: the startup timeout covers
    # authentication too.
    with relay.raw(timeout=5) as conn:
        conn.startup("app", "app")
        kind, payload = conn.recv_message()
        assert kind == b"R" and struct.unpack("!I", payload[:4])[0] == AUTH_SASL
        started = time.monotonic()
        _check_error_or_close(conn, allowed_classes=("08", "57", "28"))
        elapsed = time.monotonic() - started
    assert elapsed < STARTUP_TIMEOUT_S + 2.5
    relay.assert_healthy()


@pgrelay_only
def test_slow_startup_trickle_closed_by_startup_timeout(relay):
    # One byte every 0.3 s: each read makes progress, but the whole start-up takes too long.
    packet = startup_packet({"user": "app", "database": "app", "application_name": "x" * 40})
    with relay.raw(timeout=5) as conn:
        started = time.monotonic()
        closed = False
        for byte in packet:
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.3)
            if time.monotonic() - started > STARTUP_TIMEOUT_S + 3:
                break
        if not closed:
            _check_error_or_close(conn)
        assert time.monotonic() - started < STARTUP_TIMEOUT_S + 5
    relay.assert_healthy()


# ---- broken messages after login -------------------------------------------------------------


@pytest.mark.parametrize("length", [
    0x7FFFFFFF, 0xFFFFFFFF, 0x80000000,
    # 1 GB: under PostgreSQL's own limit (it would wait for the bytes), far over max_message_size.
    pytest.param(0x40000000, marks=pgrelay_only),
])
def test_huge_message_length_after_login(relay, length):
    with relay.raw_login() as conn:
        conn.send(b"Q" + struct.pack("!I", length) + b"SELECT 1")
        _expect_error_then_close(conn, ("54000", "08P01"))
    relay.assert_healthy()


@pytest.mark.parametrize("length", [0, 1, 3])
def test_message_length_below_4(relay, length):
    with relay.raw_login() as conn:
        conn.send(b"Q" + struct.pack("!I", length) + b"SELECT 1\0")
        _expect_error_then_close(conn, ("08P01",))
    relay.assert_healthy()


def test_unknown_message_type(relay):
    with relay.raw_login() as conn:
        conn.send(message(b"@", b"junk"))
        err = conn.expect_error_or_close()
        assert err is not None and err.sqlstate == "08P01", err
        assert "invalid frontend message type" in err.fields["M"] or "message type" in err.fields["M"], err
        conn.expect_closed()
    relay.assert_healthy()


@pgrelay_only
@pytest.mark.parametrize("kind", [b"Q", b"P"])
def test_message_over_max_message_size(relay, kind):
    body = b"SELECT '" + b"x" * (2 * MAX_MESSAGE) + b"'\0"
    if kind == b"P":
        body = b"\0" + body + b"\0\0"  # Parse: unnamed statement, query, no parameter types
    data = kind + struct.pack("!I", len(body) + 4) + body
    with relay.raw_login() as conn:
        try:
            for i in range(0, len(data), 65536):
                conn.send(data[i:i + 65536])
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # pgrelay may refuse before reading it all
        err = conn.expect_error_or_close()
        assert err is not None, "closed without an ErrorResponse"
        assert err.sqlstate == "54000", err
        conn.expect_closed()
    relay.assert_healthy()


def test_large_query_under_the_limit_works(relay):
    with relay.connect(autocommit=True) as c:
        text = "y" * (MAX_MESSAGE - 4096)
        assert c.execute(f"SELECT length('{text}')").fetchone() == (len(text),)
        assert c.execute("SELECT length(%s)", (text,)).fetchone() == (len(text),)


def test_half_message_then_close(relay):
    with relay.raw_login() as conn:
        conn.send(b"Q" + struct.pack("!I", 100) + b"SELECT")
    with relay.raw_login() as conn:
        conn.send(b"Q")
    relay.assert_healthy()


def test_client_vanishes_mid_query_backend_session_ends(relay, cluster):
    app_name = f"pgrelay-vanish-{time.monotonic_ns()}"
    with relay.raw() as conn:
        conn.login("app", "secret", "app", application_name=app_name)
        conn.send(query_message("SELECT pg_sleep(1)"))
        time.sleep(0.2)
    with cluster.superuser_connect() as su:
        def gone():
            return su.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                              (app_name,)).fetchone()[0] == 0
        wait_until(gone, 10, what="the backend session of a vanished client to end")
    relay.assert_healthy()


# ---- too many clients --------------------------------------------------------------------------


def _first_reply(conn):
    try:
        kind, payload = conn.recv_message()
    except ConnectionClosed:
        return "refused", None
    if kind == b"E":
        return "error", parse_fields(payload)
    if kind == b"R":
        return "accepted", None
    raise AssertionError(f"unexpected first reply {kind!r}")


@pgrelay_only
def test_connection_flood(make_pgrelay):
    relay = make_pgrelay({"limits": {"max_client_connections": 5}})
    conns, outcomes, errors = [], {"accepted": 0, "error": 0, "refused": 0}, []
    try:
        for _ in range(50):
            try:
                conn = relay.raw(timeout=5)
            except ConnectionRefusedError:
                outcomes["refused"] += 1
                continue
            conns.append(conn)
            try:
                conn.send(startup_packet({"user": "app", "database": "app"}))
            except (BrokenPipeError, ConnectionResetError):
                pass
        for conn in conns:
            outcome, fields = _first_reply(conn)
            outcomes[outcome] += 1
            if fields is not None:
                errors.append(fields)
        assert outcomes["accepted"] == 5, outcomes
        assert outcomes["error"] + outcomes["refused"] == 45, outcomes
        for fields in errors:
            assert fields["C"] == "53300", fields
            assert fields["M"] == "sorry, too many clients already", fields
        # While the flood holds every slot, a normal client is turned away the same way.
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            relay.connect()
    finally:
        for conn in conns:
            conn.close()
    # After the flood is gone, a normal client gets in (slots free up as pgrelay sees the EOFs).
    def works():
        try:
            with relay.connect(autocommit=True) as c:
                return c.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False
    wait_until(works, 5, interval=0.2, what="a normal client to get in after the flood")
    relay.assert_healthy()


@pgrelay_only
def test_connection_limit_exact(make_pgrelay):
    relay = make_pgrelay({"limits": {"max_client_connections": 5}})
    sessions = [relay.raw_login() for _ in range(5)]
    try:
        for s in sessions:
            assert s.simple_query("SELECT 1")[0] == [["1"]]
        with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
            relay.connect()
        with relay.raw() as extra:
            extra.startup("app", "app")
            err = extra.expect_error_or_close()
            assert err is not None and err.sqlstate == "53300", err
        sessions.pop().close()

        def works():
            try:
                with relay.connect(autocommit=True) as c:
                    return c.execute("SELECT 'sixth'").fetchone() == ("sixth",)
            except psycopg.OperationalError:
                return False
        wait_until(works, 5, interval=0.2, what="a free slot after one client left")
        for s in sessions:  # the others were never disturbed
            assert s.simple_query("SELECT 2")[0] == [["2"]]
    finally:
        for s in sessions:
            s.close()


def _open_files_limit(relay) -> tuple[int, int]:
    for line in pathlib.Path(f"/proc/{relay.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit in /proc/PID/limits")


@pgrelay_only
def test_open_files_limit_raised_for_the_configured_clients(make_pgrelay):
    # Started with 64 descriptors: 40 sessions need 80 and more (a client and a primary
    # connection each, besides listeners, health checks and the log).
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    relay = make_pgrelay({"limits": {"max_client_connections": 60}}, nofile=(64, hard))
    needed = 60 * (1 + len(relay.config["nodes"])) + 256
    assert _open_files_limit(relay) == (min(needed, hard), hard)
    assert f"open files limit raised from 64 to {needed}" in relay.log_path.read_text()
    sessions = []
    try:
        for _ in range(40):
            sessions.append(relay.raw_login())
        for s in sessions:
            assert s.simple_query("SELECT 1")[0] == [["1"]]
    finally:
        for s in sessions:
            s.close()
    relay.assert_healthy()


@pgrelay_only
def test_open_files_limit_raised_again_by_a_reload(make_pgrelay):
    hard = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    relay = make_pgrelay({"limits": {"max_client_connections": 10}}, nofile=(64, hard))
    nodes = len(relay.config["nodes"])
    assert _open_files_limit(relay) == (min(10 * (1 + nodes) + 256, hard), hard)
    rewrite(relay, {"limits": {"max_client_connections": 100}})
    reload_ok(relay)
    assert _open_files_limit(relay) == (min(100 * (1 + nodes) + 256, hard), hard)
    rewrite(relay, {"limits": {"max_client_connections": 5}})
    reload_ok(relay)
    assert _open_files_limit(relay)[0] == min(100 * (1 + nodes) + 256, hard), "never lowered"


@pgrelay_only
def test_open_files_hard_limit_too_low_draws_a_warning(make_pgrelay):
    relay = make_pgrelay({"limits": {"max_client_connections": 60}}, nofile=(64, 128))
    assert _open_files_limit(relay) == (128, 128)
    log = relay.log_path.read_text()
    assert "open files are limited to 128 (hard limit 128)" in log, log
    assert "raise the hard limit" in log
    with relay.connect(autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_config_readable_by_others_with_passwords_draws_a_warning(pgrelay_bin, tmp_path):
    path = tmp_path / "pgrelay.yaml"
    path.write_text("nodes: [{name: a, host: 127.0.0.1}]\nusers: [{name: app, password: hunter2-pw}]\n")
    path.chmod(0o644)
    out = subprocess.run([pgrelay_bin, "--check-config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "other users can read it: chmod 600" in out.stderr
    assert "hunter2-pw" not in out.stderr + out.stdout
    path.chmod(0o600)
    out = subprocess.run([pgrelay_bin, "--check-config", str(path)], capture_output=True, text=True)
    assert "warning" not in out.stderr
