"""TLS toward clients (issue 10): certificates made here with the openssl CLI (a test CA, a
server certificate for 127.0.0.1 / localhost signed by it, and an unrelated CA).

- psql with sslmode=verify-full against the test CA works, and fails against another CA;
- psycopg with sslmode=require is encrypted (ssl_in_use), a plain client still works under
  tls.mode allow and is refused with 28000 and a clear message under require;
- SCRAM-SHA-256-PLUS: psql and psycopg with channel_binding=require log in;
- plaintext bytes pipelined after the SSLRequest are refused (CVE-2021-23214);
- a reload picks up a renewed certificate; a reload with a missing key file is refused.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import struct
import subprocess
import urllib.request

import psycopg
import pytest

from conftest import DIRECT, client_env, merge_config, to_yaml, wait_until
from test_admin import http

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's TLS (PGRELAY_TEST_DIRECT=1)")

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: pathlib.Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_server_cert(d: pathlib.Path, ca: str, name: str) -> None:
    (d / f"{name}.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    (d / f"{name}.key").chmod(0o600)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "test-ca")
    make_ca(d, "other-ca")
    make_server_cert(d, "test-ca", "pgrelay-one")
    make_server_cert(d, "test-ca", "pgrelay-two")
    return d


def tls_config(certs: pathlib.Path, mode: str, name: str = "pgrelay-one") -> dict:
    return {"tls": {"mode": mode, "cert_file": str(certs / f"{name}.crt"),
                    "key_file": str(certs / f"{name}.key")}}


def psql(relay, conninfo: str, sql: str = "SELECT 'ok'") -> subprocess.CompletedProcess:
    dsn = (f"host={relay.host} port={relay.port} user={relay.cluster.app_user} "
           f"dbname={relay.cluster.database} {conninfo}")
    return subprocess.run(["psql", "-X", "-At", "-d", dsn, "-c", sql], capture_output=True, text=True,
                          timeout=30, env=client_env(relay.cluster.app_password))


def served_certificate_subject(relay) -> str:
    out = subprocess.run(["openssl", "s_client", "-connect", f"{relay.host}:{relay.port}",
                          "-starttls", "postgres"], input="", capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        if line.startswith("subject="):
            return line
    raise AssertionError(f"no certificate in openssl s_client output:\n{out.stdout}\n{out.stderr}")


def test_verify_full_against_the_test_ca(make_pgrelay, certs):
    relay = make_pgrelay(tls_config(certs, "allow"))
    ok = psql(relay, f"sslmode=verify-full sslrootcert={certs / 'test-ca.crt'}")
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    wrong = psql(relay, f"sslmode=verify-full sslrootcert={certs / 'other-ca.crt'}")
    assert wrong.returncode != 0
    assert "certificate verify failed" in wrong.stderr, wrong.stderr
    # The same for psycopg; the session is encrypted.
    with relay.connect(sslmode="verify-full", sslrootcert=str(certs / "test-ca.crt")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # TLS 1.2 is the minimum: a TLS 1.1 handshake is refused.
    old = subprocess.run(["openssl", "s_client", "-connect", f"{relay.host}:{relay.port}",
                          "-starttls", "postgres", "-tls1_1"], input="", capture_output=True,
                         text=True, timeout=30)
    assert "BEGIN CERTIFICATE" not in old.stdout and old.returncode != 0, old.stdout
    # tls.mode allow: plain clients are still served.
    with relay.connect(sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 2").fetchone() == (2,)
    relay.assert_healthy()


def test_require_refuses_plain_clients(make_pgrelay, certs):
    relay = make_pgrelay(tls_config(certs, "require"))
    plain = psql(relay, "sslmode=disable")
    assert plain.returncode != 0
    assert "pgrelay accepts only TLS connections" in plain.stderr, plain.stderr
    with pytest.raises(psycopg.OperationalError) as refused:
        relay.connect(sslmode="disable")
    assert "accepts only TLS" in str(refused.value)
    with relay.connect(sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 3").fetchone() == (3,)
    relay.assert_healthy()


def test_channel_binding(make_pgrelay, certs):
    relay = make_pgrelay(tls_config(certs, "allow"))
    ok = psql(relay, "channel_binding=require sslmode=require")
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    with relay.connect(sslmode="require", channel_binding="require") as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)
    # Without TLS there is no channel binding to require.
    no_tls = psql(relay, "channel_binding=require sslmode=disable")
    assert no_tls.returncode != 0 and "channel binding" in no_tls.stderr, no_tls.stderr
    # A wrong password over TLS still fails as a wrong password.
    bad = subprocess.run(["psql", "-X", "-At", "-d",
                          f"host={relay.host} port={relay.port} user={relay.cluster.app_user} "
                          f"dbname={relay.cluster.database} sslmode=require channel_binding=require",
                          "-c", "SELECT 1"], capture_output=True, text=True, timeout=30,
                         env=client_env("not-the-password"))
    assert bad.returncode != 0 and "password authentication failed" in bad.stderr, bad.stderr
    relay.assert_healthy()


def test_plaintext_after_ssl_request_is_refused(make_pgrelay, certs):
    relay = make_pgrelay(tls_config(certs, "allow"))
    startup = b"\x00\x03\x00\x00user\x00app\x00\x00"
    startup = struct.pack("!I", len(startup) + 4) + startup
    with socket.create_connection((relay.host, relay.port), timeout=5) as s:
        s.sendall(SSL_REQUEST + startup)  # the start-up packet must not count as encrypted
        reply = s.recv(4096)
    assert reply[:1] == b"E", reply
    assert b"received unencrypted data after SSL request" in reply, reply
    relay.assert_healthy()


def test_reload_picks_up_a_renewed_certificate(make_pgrelay, certs, tmp_path):
    # The relay reads its certificate from paths that the "renewal" overwrites.
    live = tmp_path / "live"
    live.mkdir()
    for suffix in ("crt", "key"):
        (live / f"server.{suffix}").write_bytes((certs / f"pgrelay-one.{suffix}").read_bytes())
    (live / "server.key").chmod(0o600)
    relay = make_pgrelay({"tls": {"mode": "allow", "cert_file": str(live / "server.crt"),
                                  "key_file": str(live / "server.key")}})
    assert "CN = pgrelay-one" in served_certificate_subject(relay)
    with relay.connect(sslmode="require") as before:
        for suffix in ("crt", "key"):
            (live / f"server.{suffix}").write_bytes((certs / f"pgrelay-two.{suffix}").read_bytes())
        status, _, body = http(relay, "POST", "/reload", timeout=15)
        assert status == 200, body
        assert "CN = pgrelay-two" in served_certificate_subject(relay)
        assert before.execute("SELECT 5").fetchone() == (5,)  # the open session is untouched
    # A reload whose key file is gone is refused and the old certificate stays.
    relay.config = merge_config(relay.config, {"tls": {"key_file": str(live / "missing.key")}})
    relay.config_path.write_text(to_yaml(relay.config) + "\n")
    status, _, body = http(relay, "POST", "/reload", timeout=15)
    assert status == 422 and "tls.key_file" in body and "no such file" in body, body
    assert "CN = pgrelay-two" in served_certificate_subject(relay)
    relay.assert_healthy()


# ---- TLS toward the nodes (backend.tls) ------------------------------------------------------


@pytest.fixture
def nodes_with_ssl(cluster, certs):
    """Turns ssl on on every node of the shared cluster (with the test CA's server certificate),
    and off again afterwards."""
    import pwd
    import shutil
    postgres = pwd.getpwnam("postgres")
    # The servers run as postgres: the files go where that user can read them (the test's own
    # temporary directories are private to root).
    where = pathlib.Path(cluster.dir) / "tls-test"
    where.mkdir(exist_ok=True)
    for name in ("pgrelay-one.crt", "pgrelay-one.key"):
        shutil.copy(certs / name, where / name)
        os.chown(where / name, postgres.pw_uid, postgres.pw_gid)
        (where / name).chmod(0o600)
    os.chown(where, postgres.pw_uid, postgres.pw_gid)
    settings = {"ssl_cert_file": str(where / "pgrelay-one.crt"),
                "ssl_key_file": str(where / "pgrelay-one.key")}

    def each_node(statements):
        for port in (cluster.primary_port, *cluster.replica_ports):
            with psycopg.connect(host=cluster.host, port=port, user=cluster.superuser, sslmode="disable",
                                 dbname=cluster.database, autocommit=True) as conn:
                for sql in statements:
                    conn.execute(sql)
                conn.execute("SELECT pg_reload_conf()")

    each_node([f"ALTER SYSTEM SET {k} = '{v}'" for k, v in settings.items()] + ["ALTER SYSTEM SET ssl = on"])
    try:
        wait_until(lambda: _ssl_on(cluster), timeout=10, what="ssl = on on every node")
        yield
    finally:
        each_node(["ALTER SYSTEM RESET ssl", "ALTER SYSTEM RESET ssl_cert_file",
                   "ALTER SYSTEM RESET ssl_key_file"])
        shutil.rmtree(where, ignore_errors=True)


def _ssl_on(cluster) -> bool:
    for port in (cluster.primary_port, *cluster.replica_ports):
        try:
            with psycopg.connect(host=cluster.host, port=port, user=cluster.superuser,
                                 sslmode="require", dbname=cluster.database, autocommit=True):
                pass
        except psycopg.OperationalError:
            return False
    return True


def test_backend_verify_full(make_pgrelay, cluster, certs, nodes_with_ssl):
    relay = make_pgrelay({"routing": {"strategy": "follower"},
                          "backend": {"tls": "verify-full", "ca_file": str(certs / "test-ca.crt")}})
    with relay.connect(autocommit=True) as conn:
        # Sessions: the write on the primary and reads on the replicas all run over TLS.
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            " /* pgrelay:primary */").fetchone() == (True,)
        for _ in range(6):
            assert conn.execute("SELECT ssl, pg_is_in_recovery() FROM pg_stat_ssl"
                                " WHERE pid = pg_backend_pid()").fetchone() == (True, True)
    # The health probes (libpq) use the same settings.
    with psycopg.connect(host=cluster.host, port=cluster.primary_port, user=cluster.superuser,
                         dbname=cluster.database, autocommit=True, sslmode="disable") as direct:
        rows = direct.execute("SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                              " WHERE a.application_name = 'pgrelay-health'").fetchall()
        assert rows and all(r == (True,) for r in rows), rows
    relay.assert_healthy()


def test_backend_tls_connections_are_pooled(make_pgrelay, cluster, certs, nodes_with_ssl):
    """pool.mode session over backend TLS: the next session takes the parked TLS connection
    (same server process, still encrypted) and it works."""
    relay = make_pgrelay({"workers": 1, "pool": {"mode": "session"},
                          "backend": {"tls": "verify-full", "ca_file": str(certs / "test-ca.crt")}})
    sql = "SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    conn = relay.connect(autocommit=True, application_name="tls-pool")
    first = conn.execute(sql).fetchone()
    assert first[1] is True
    conn.close()

    def parked() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=5) as r:
            return re.search(r'^pgrelay_pool_idle_connections\{node="pg1"\} 1$', r.read().decode(),
                             re.M) is not None
    wait_until(parked, timeout=10, what="the TLS connection to be parked")
    for _ in range(2):
        with relay.connect(autocommit=True, application_name="tls-pool") as conn:
            assert conn.execute(sql).fetchone() == first
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
        wait_until(parked, timeout=10, what="the TLS connection to be parked again")


def test_backend_wrong_ca_names_the_node(make_pgrelay, cluster, certs, nodes_with_ssl):
    relay = make_pgrelay({"backend": {"tls": "verify-full", "ca_file": str(certs / "other-ca.crt")}},
                         wait_ready=False)
    wait_until(lambda: "certificate verify failed" in relay.log_tail(), timeout=15,
               what="the health check to report the certificate")
    log = relay.log_tail()
    assert re.search(r"node pg1 \(127\.0\.0\.1:\d+\) is down: .*certificate verify failed", log), log[-2000:]
    with pytest.raises(psycopg.OperationalError):
        relay.connect()
    relay.check_alive()


# ---- JDBC ------------------------------------------------------------------------------------

JDBC_JAR = pathlib.Path("/usr/share/java/postgresql.jar")


@pytest.fixture(scope="module")
def jdbc_probe(tmp_path_factory) -> list[str]:
    """The java command line prefix that runs jdbc/JdbcProbe.java with Debian's JDBC driver."""
    if not JDBC_JAR.exists():
        pytest.fail(f"{JDBC_JAR} is missing: scripts/install-deps.sh installs "
                    "libpostgresql-jdbc-java", pytrace=False)
    out = tmp_path_factory.mktemp("jdbc")
    source = pathlib.Path(__file__).parent / "jdbc" / "JdbcProbe.java"
    subprocess.run(["javac", "-cp", str(JDBC_JAR), "-d", str(out), str(source)], check=True,
                   capture_output=True, timeout=120)
    return ["java", "-cp", f"{JDBC_JAR}:{out}", "JdbcProbe"]


def test_jdbc_over_tls(make_pgrelay, certs, jdbc_probe):
    relay = make_pgrelay(tls_config(certs, "require"))
    base = f"jdbc:postgresql://{relay.host}:{relay.port}/{relay.cluster.database}"
    creds = [relay.cluster.app_user, relay.cluster.app_password]
    ok = subprocess.run(jdbc_probe + [f"{base}?ssl=true&sslmode=verify-full&sslrootcert={certs / 'test-ca.crt'}",
                                      *creds], capture_output=True, text=True, timeout=60)
    assert ok.stdout.strip() == "result=42", ok.stdout + ok.stderr
    plain = subprocess.run(jdbc_probe + [f"{base}?sslmode=disable", *creds], capture_output=True,
                           text=True, timeout=60)
    assert plain.returncode != 0 and "28000" in plain.stdout, plain.stdout + plain.stderr
    assert "pgrelay accepts only TLS connections" in plain.stdout, plain.stdout
    relay.assert_healthy()
