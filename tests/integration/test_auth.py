"""Client authentication at pgrelay (SCRAM-SHA-256, md5, trust) and the credentials pgrelay uses
toward PostgreSQL (md5, cleartext password, trust on the server side)."""

import psycopg
import pytest

from conftest import (AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, DIRECT,
                      ServerError, pgrelay_only, startup_packet)


def _raw_login_error(target, user, password, database="app"):
    """Logs in with the raw client and returns the ServerError it must end with."""
    with target.raw() as conn:
        with pytest.raises(ServerError) as info:
            conn.login(user, password, database)
        conn.expect_closed()  # FATAL: the server closes the connection
        return conn, info.value


# ---- SCRAM-SHA-256 (default) ---------------------------------------------------------------


def test_scram_login_psycopg(pgrelay):
    with pgrelay.connect() as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("app", "app")


def test_scram_login_psql(pgrelay):
    out = pgrelay.psql("-Atc", "SELECT current_user")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "app"


def test_scram_is_what_the_client_is_asked_for(pgrelay):
    with pgrelay.raw() as conn:
        conn.login("app", "secret", "app")
        assert conn.auth_codes == [AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, AUTH_OK]
        assert conn.backend_key is not None
        assert conn.parameters.get("server_version", "").startswith("15")
        assert conn.parameters.get("client_encoding") == "UTF8"
        rows, tags, status = conn.simple_query("SELECT current_user")
        assert rows == [["app"]] and tags == ["SELECT 1"] and status == "I"


def test_wrong_password(pgrelay):
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"'):
        pgrelay.connect(user="app", password="not-the-password")
    conn, err = _raw_login_error(pgrelay, "app", "not-the-password")
    assert err.sqlstate == "28P01"
    assert err.severity == "FATAL"
    assert err.fields["M"] == 'password authentication failed for user "app"'
    pgrelay.assert_healthy()


def test_empty_password(pgrelay):
    with pytest.raises(psycopg.OperationalError):
        pgrelay.connect(user="app", password="")
    pgrelay.assert_healthy()


def test_unknown_user_gets_mock_scram_exchange(pgrelay):
    # Like PostgreSQL: an unknown user is not revealed before the proof; the exchange runs to the
    # end (with a made-up salt) and fails like a wrong password.
    conn, err = _raw_login_error(pgrelay, "nobody_here", "whatever")
    assert conn.auth_codes == [AUTH_SASL, AUTH_SASL_CONTINUE]
    assert err.sqlstate == "28P01"
    assert err.fields["M"] == 'password authentication failed for user "nobody_here"'
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "nobody_here"'):
        pgrelay.connect(user="nobody_here", password="whatever")


def test_unknown_database(pgrelay):
    with pytest.raises(psycopg.OperationalError, match='database "nope" does not exist'):
        pgrelay.connect(dbname="nope")
    conn, err = _raw_login_error(pgrelay, "app", "secret", database="nope")
    assert err.sqlstate == "3D000"
    assert err.fields["M"] == 'database "nope" does not exist'
    pgrelay.assert_healthy()


def test_missing_user_in_startup(pgrelay):
    # A StartupMessage without "user" is refused (PostgreSQL: 28000 "no PostgreSQL user name specified").
    with pgrelay.raw() as conn:
        conn.send(startup_packet({"database": "app"}))
        err = conn.expect_error_or_close()
        assert err is not None and err.sqlstate == "28000", err
    pgrelay.assert_healthy()


def test_many_logins_in_a_row(pgrelay):
    for i in range(30):
        with pgrelay.connect(autocommit=True) as conn:
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)


# ---- md5 and trust at pgrelay ----------------------------------------------------------------


@pytest.fixture(scope="module")
def md5_relay(module_pgrelay):
    return module_pgrelay({"auth": "md5"})


def _md5_creds():
    # Direct mode: PostgreSQL's md5user (pg_hba md5, md5-stored password) stands in for pgrelay.
    return ("md5user", "md5secret") if DIRECT else ("app", "secret")


def test_md5_accepts_right_password(md5_relay):
    user, password = _md5_creds()
    with md5_relay.connect(user=user, password=password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    with md5_relay.raw() as conn:
        conn.login(user, password, "app")
        assert conn.auth_codes == [AUTH_MD5, AUTH_OK]
    out = md5_relay.psql("-Atc", "SELECT 'md5-ok'", user=user, password=password)
    assert out.returncode == 0 and out.stdout.strip() == "md5-ok", out.stderr


def test_md5_refuses_wrong_password(md5_relay):
    user, _ = _md5_creds()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        md5_relay.connect(user=user, password="wrong")
    conn, err = _raw_login_error(md5_relay, user, "wrong")
    assert conn.auth_codes == [AUTH_MD5]
    assert err.sqlstate == "28P01"
    md5_relay.assert_healthy()


@pgrelay_only
def test_trust_accepts_listed_users(make_pgrelay):
    relay = make_pgrelay({"auth": "trust"})
    with relay.connect(user="app", password="anything") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with relay.raw() as conn:
        conn.login("app", "", "app")
        assert conn.auth_codes == [AUTH_OK]
    # A user pgrelay does not know is refused even under trust.
    conn, err = _raw_login_error(relay, "nobody_here", "")
    assert err.sqlstate in ("28P01", "28000"), err


# ---- credentials toward PostgreSQL ---------------------------------------------------------


@pgrelay_only
@pytest.mark.parametrize("backend", [
    {"user": "md5user", "password": "md5secret"},  # server: pg_hba md5 + md5-stored password
    {"user": "pwuser", "password": "pwsecret"},  # server: pg_hba password (cleartext)
    {"user": "trustuser"},  # server: pg_hba trust
    {"user": "app", "password": "secret"},  # server: SCRAM
], ids=["md5", "password", "trust", "scram"])
def test_backend_credentials(make_pgrelay, backend):
    relay = make_pgrelay({"backend": backend})
    with relay.connect() as conn:  # the client logs in to pgrelay as app/secret (SCRAM)
        assert conn.execute("SELECT current_user, session_user").fetchone() == (backend["user"],) * 2
    out = relay.psql("-Atc", "SELECT current_user")
    assert out.returncode == 0 and out.stdout.strip() == backend["user"], out.stderr


@pgrelay_only
def test_backend_credentials_wrong_password(make_pgrelay):
    # pgrelay's own backend login fails: the client gets an error (not a hang), pgrelay survives.
    relay = make_pgrelay({"backend": {"user": "md5user", "password": "wrong"}}, wait_ready=False)
    with pytest.raises(psycopg.OperationalError) as info:
        relay.connect()
    assert "md5user" in str(info.value) or "authentication" in str(info.value), info.value
    relay.check_alive()


# ---- Repeated failures are slowed down -------------------------------------------------------


@pgrelay_only
def test_repeated_failures_are_slowed_down(make_pgrelay):
    """Consecutive wrong passwords from one address are answered later and later (50 ms,
    doubling, at most 2 s); other clients are not held up; a good login clears the count."""
    import threading
    import time

    relay = make_pgrelay()

    def failed_login() -> float:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            relay.connect(user="app", password="guess")
        return time.monotonic() - started

    delays = [failed_login() for _ in range(6)]  # answered after 50, 100, ..., 1600 ms
    assert delays[-1] >= 1.5, delays
    assert delays[-1] > delays[0] + 1.0, delays
    # While a failing login waits (2 s now), a good login is served at once.
    slow = threading.Thread(target=failed_login)
    slow.start()
    time.sleep(0.2)
    started = time.monotonic()
    with relay.connect() as conn:
        conn.execute("SELECT 1")
    assert time.monotonic() - started < 1.0
    slow.join()
    # The good login cleared the count: the next failure is quick again.
    assert failed_login() < 1.0
    log = relay.log_tail()
    assert "failure 7 in a row from 127.0.0.1, answered after 2000 ms" in log, log[-2000:]
    relay.assert_healthy()
