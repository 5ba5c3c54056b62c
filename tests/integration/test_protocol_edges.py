"""Start-up edge cases of the wire protocol, byte by byte (raw sockets): SSLRequest,
GSSENCRequest, protocol version negotiation, protocol 2.0, replication connections."""

import struct

import psycopg
import pytest

from conftest import (AUTH_SASL, DIRECT, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE,
                      parse_fields, request_packet, startup_packet)


def test_ssl_request_answered_n_then_startup_works(pgrelay):
    with pgrelay.raw() as conn:
        conn.send(request_packet(SSL_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.login("app", "secret", "app")
        rows, _, _ = conn.simple_query("SELECT 'after SSLRequest'")
        assert rows == [["after SSLRequest"]]


def test_psycopg_sslmode_prefer_and_disable(pgrelay):
    for mode in ("prefer", "disable", "allow"):
        with pgrelay.connect(sslmode=mode) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.pgconn.ssl_in_use is False


def test_sslmode_require_is_refused_cleanly(pgrelay):
    # pgrelay does not offer TLS: libpq gives up on its own after the 'N'.
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        pgrelay.connect(sslmode="require")
    pgrelay.assert_healthy()


@pytest.mark.skipif(DIRECT, reason="this PostgreSQL build answers 'G' (GSSAPI compiled in)")
def test_gssenc_request_answered_n_then_ssl_then_startup(pgrelay):
    # What libpq does with gssencmode=prefer and sslmode=prefer: GSSENCRequest, then
    # SSLRequest, then the StartupMessage, all on one connection.
    with pgrelay.raw() as conn:
        conn.send(request_packet(GSSENC_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.send(request_packet(SSL_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.login("app", "secret", "app")
        rows, _, _ = conn.simple_query("SELECT 2")
        assert rows == [["2"]]


@pytest.mark.skipif(DIRECT, reason="this PostgreSQL build answers 'G' (GSSAPI compiled in)")
def test_gssenc_request_then_plain_startup(pgrelay):
    with pgrelay.raw() as conn:
        conn.send(request_packet(GSSENC_REQUEST_CODE))
        assert conn.recv_exact(1) == b"N"
        conn.login("app", "secret", "app")
        assert conn.simple_query("SELECT 3")[0] == [["3"]]


@pytest.mark.parametrize("minor", [1, 0])
def test_negotiate_protocol_version(pgrelay, minor):
    # A 3.1 request (or any _pq_.* option) gets NegotiateProtocolVersion before the
    # authentication request: newest version supported 3.0, and the options not recognized.
    with pgrelay.raw() as conn:
        conn.send(startup_packet({"user": "app", "database": "app", "_pq_.foo": "bar"},
                                 version=(3 << 16) | minor))
        kind, payload = conn.recv_message()
        assert kind == b"v", f"expected NegotiateProtocolVersion, got {kind!r} {payload!r}"
        version, count = struct.unpack("!II", payload[:8])
        # The Int32 is "the newest minor version supported" for major 3; PostgreSQL sends it as
        # the full version number 3.0 (0x00030000), which is what libpq 16+ checks. Minor 0.
        assert version == PROTOCOL_3_0
        assert version & 0xFFFF == 0
        names = payload[8:].split(b"\0")
        assert count == 1
        assert names[0] == b"_pq_.foo"
        # Then authentication proceeds as usual; the next message is the SASL request.
        conn.authenticate("secret")
        assert conn.auth_codes[0] == AUTH_SASL
        conn.read_until_ready()
        assert conn.simple_query("SELECT 'negotiated'")[0] == [["negotiated"]]


def test_protocol_3_1_without_options(pgrelay):
    with pgrelay.raw() as conn:
        conn.send(startup_packet({"user": "app", "database": "app"}, version=(3 << 16) | 1))
        kind, payload = conn.recv_message()
        assert kind == b"v"
        version, count = struct.unpack("!II", payload[:8])
        assert (version, count) == (PROTOCOL_3_0, 0)
        conn.authenticate("secret")
        conn.read_until_ready()


def test_protocol_2_refused(pgrelay):
    with pgrelay.raw() as conn:
        conn.send(startup_packet({"user": "app", "database": "app"}, version=2 << 16))
        data = b""
        while True:
            try:
                chunk = conn.sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        if DIRECT and not data.startswith(b"E\0"):
            # PostgreSQL 15 answers a 2.0 client in the old 2.0 format: 'E' + text.
            assert data.startswith(b"EFATAL:  unsupported frontend protocol 2.0"), data
            return
        assert data[:1] == b"E", data
        (length,) = struct.unpack("!I", data[1:5])
        assert len(data) == 1 + length, f"one ErrorResponse, then close: {data!r}"
        fields = parse_fields(data[5:])
        assert fields["C"] == "0A000", fields
        assert fields["S"] == "FATAL"
        assert "protocol" in fields["M"]
    pgrelay.assert_healthy()


@pytest.mark.parametrize("value", ["true", "database", "on", "1"])
def test_replication_connection_refused(pgrelay, value):
    with pgrelay.raw() as conn:
        conn.send(startup_packet({"user": "app", "database": "app", "replication": value}))
        # Refused with an ErrorResponse, either at once or after authentication.
        err = None
        try:
            conn.authenticate("secret")
            conn.read_until_ready()
        except Exception as exc:  # ServerError expected
            err = exc
        assert err is not None and getattr(err, "sqlstate", None), f"replication={value} was accepted"
        assert err.severity == "FATAL"
        conn.expect_closed()
    pgrelay.assert_healthy()


def test_startup_options_and_parameters_reach_the_session(pgrelay):
    with pgrelay.raw() as conn:
        conn.login("app", "secret", "app", application_name="raw-edge",
                   options="-c search_path=pg_catalog,public -c statement_timeout=12345")
        assert conn.parameters.get("application_name") == "raw-edge"
        rows, _, _ = conn.simple_query(
            "SELECT current_setting('application_name'), current_setting('search_path'), "
            "current_setting('statement_timeout')")
        assert rows == [["raw-edge", "pg_catalog,public", "12345ms"]]


def test_terminate_message_closes_cleanly(pgrelay):
    with pgrelay.raw() as conn:
        conn.login("app", "secret", "app")
        conn.send(b"X\0\0\0\4")
        conn.expect_closed()
    pgrelay.assert_healthy()
