"""LISTEN/NOTIFY and query cancellation (CancelRequest) through pgrelay."""

import secrets
import threading
import time

import psycopg
import pytest
from psycopg import errors

from conftest import cancel_request, wait_until


def _collect_notifies(conn):
    got = []
    conn.add_notify_handler(got.append)
    return got


def _poll_notifies(conn, got, count, timeout=5.0):
    """Notifications arrive with the next server message; poll with tiny queries."""
    def arrived():
        if len(got) < count:
            conn.execute("SELECT 1")
        return len(got) >= count
    wait_until(arrived, timeout, what=f"{count} notification(s)")


def test_listen_notify_between_two_sessions(pgrelay):
    with pgrelay.connect(autocommit=True) as listener, pgrelay.connect(autocommit=True) as notifier:
        got = _collect_notifies(listener)
        listener.execute("LISTEN pgrelay_chan")
        notifier.execute("NOTIFY pgrelay_chan, 'hello through pgrelay'")
        notifier.execute("SELECT pg_notify('pgrelay_chan', %s)", ("second ✓ payload",))
        _poll_notifies(listener, got, 2)
        assert [(n.channel, n.payload) for n in got] == [
            ("pgrelay_chan", "hello through pgrelay"),
            ("pgrelay_chan", "second ✓ payload"),
        ]
        assert got[0].pid > 0


def test_notify_delivered_while_listener_idle(pgrelay):
    # The listener sits idle (no query in flight); the NotificationResponse must be relayed as soon
    # as the backend sends it, not only with the next query's results.
    with pgrelay.connect(autocommit=True) as listener, pgrelay.connect(autocommit=True) as notifier:
        listener.execute("LISTEN pgrelay_idle")
        received = []

        def consume():
            for note in listener.notifies():
                received.append(note)
                break

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.2)
        sent_at = time.monotonic()
        notifier.execute("NOTIFY pgrelay_idle, 'idle-delivery'")
        thread.join(timeout=5)
        assert not thread.is_alive(), "notification not delivered to an idle listener within 5 s"
        assert received[0].payload == "idle-delivery"
        assert time.monotonic() - sent_at < 5


def test_notify_in_transaction_arrives_on_commit(pgrelay):
    with pgrelay.connect(autocommit=True) as listener, pgrelay.connect() as notifier:
        got = _collect_notifies(listener)
        listener.execute("LISTEN pgrelay_txn")
        notifier.execute("NOTIFY pgrelay_txn, 'after-commit'")
        time.sleep(0.3)
        listener.execute("SELECT 1")
        assert got == [], "NOTIFY must not be delivered before its transaction commits"
        notifier.commit()
        _poll_notifies(listener, got, 1)
        assert got[0].payload == "after-commit"


def test_cancel_long_query(pgrelay):
    with pgrelay.connect(autocommit=True) as conn:
        cancelled_at = []

        def cancel_soon():
            time.sleep(0.5)
            cancelled_at.append(time.monotonic())
            conn.cancel()

        thread = threading.Thread(target=cancel_soon)
        thread.start()
        started = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(30)")
        returned = time.monotonic()
        thread.join()
        assert info.value.sqlstate == "57014"
        assert "canceling statement due to user request" in str(info.value)
        assert returned - cancelled_at[0] < 1.0, f"query returned {returned - cancelled_at[0]:.2f} s after cancel"
        assert returned - started < 5
        # The session is still usable and still the same session.
        assert conn.execute("SELECT 'still alive'").fetchone() == ("still alive",)


def test_cancel_inside_transaction_then_rollback(pgrelay):
    with pgrelay.connect() as conn:
        conn.execute("CREATE TEMP TABLE c(x int)")
        conn.execute("INSERT INTO c VALUES (1)")
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_with_wrong_key_does_nothing(pgrelay):
    # A CancelRequest that names no session (wrong key) must not cancel anyone's query.
    with pgrelay.connect(autocommit=True) as conn:
        pid = conn.info.backend_pid
        result = []

        def run():
            result.append(conn.execute("SELECT pg_sleep(1.5), 'finished'").fetchone()[1])

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.3)
        cancel_request(pgrelay.host, pgrelay.port, pid, secrets.randbits(32))
        cancel_request(pgrelay.host, pgrelay.port, pid + 1, 12345)
        thread.join(timeout=10)
        assert result == ["finished"]
    pgrelay.assert_healthy()
