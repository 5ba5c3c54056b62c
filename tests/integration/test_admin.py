"""The admin HTTP endpoint of a running pgrelay: /metrics (checked by promtool and scraped by a real
Prometheus), /healthz, /readyz, /cluster, and the bearer token on the mutating endpoints.

Needs `curl` and `promtool`/`prometheus` (Debian packages curl, prometheus; scripts/install-deps.sh).
Every test that talks to the admin endpoint first checks that pgrelay serves it at all and fails
with a clear message if not (AdminServer not started in proxy/main.cc).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

import psycopg
import pytest

from conftest import DIRECT, free_port, to_yaml, wait_until

pytestmark = pytest.mark.skipif(DIRECT, reason="tests pgrelay's admin endpoint (PGRELAY_TEST_DIRECT=1)")

TOKEN = "test-admin-token-0123456789"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CURL = shutil.which("curl") or "/usr/bin/curl"

NOT_COUNTING = ("the workers do not count into admin::ProxyMetrics (WorkerShard(i)) yet: see the "
                "wiring notes in proxy/admin/proxy_metrics.h")

REQUIRED_FAMILIES = {
    "pgrelay_client_connections": "gauge",
    "pgrelay_client_connections_total": "counter",
    "pgrelay_client_connections_rejected_total": "counter",
    "pgrelay_backend_connections": "gauge",
    "pgrelay_pool_idle_connections": "gauge",
    "pgrelay_pool_reused_total": "counter",
    "pgrelay_statements_total": "counter",
    "pgrelay_statement_duration_seconds": "histogram",
    "pgrelay_client_bytes_received_total": "counter",
    "pgrelay_client_bytes_sent_total": "counter",
    "pgrelay_node_up": "gauge",
    "pgrelay_node_role": "gauge",
    "pgrelay_node_replay_lag_bytes": "gauge",
    "pgrelay_node_replay_lag_seconds": "gauge",
    "pgrelay_health_probe_failures_total": "counter",
    "pgrelay_classifier_cache_hits_total": "counter",
    "pgrelay_classifier_cache_misses_total": "counter",
    "pgrelay_sessions_pinned_total": "counter",
    "pgrelay_reads_fallback_primary_total": "counter",
}


# ---------------------------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------------------------


def admin_url(relay, path: str) -> str:
    return f"http://127.0.0.1:{relay.admin_port}{path}"


def http(relay, method: str, path: str, token: Optional[str] = None,
         timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    """(status, headers with lower-case names, body) of one request; HTTP errors are returned."""
    req = urllib.request.Request(admin_url(relay, path), method=method,
                                 data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read().decode()


def require_admin(relay) -> None:
    """Fails the test clearly if pgrelay does not serve the admin endpoint on admin.listen."""
    try:
        status, _, body = http(relay, "GET", "/healthz", timeout=2)
    except OSError as exc:
        pytest.fail(f"pgrelay does not serve the admin endpoint on 127.0.0.1:{relay.admin_port} "
                    f"({exc}). Start admin::AdminServer on config admin.listen in proxy/main.cc "
                    f"(see proxy/admin/admin_server.h).\nlog:\n{relay.log_tail()[-3000:]}",
                    pytrace=False)
    if status != 200 or body != "ok\n":
        pytest.fail(f"GET /healthz answered {status} {body!r}, expected 200 'ok' (is the admin "
                    f"server wired up?)", pytrace=False)


def scrape(relay) -> str:
    status, headers, body = http(relay, "GET", "/metrics")
    assert status == 200, body
    assert headers.get("content-type", "").startswith("text/plain; version=0.0.4"), headers
    return body


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparsable sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def total(text: str, name: str, **match: str) -> float:
    return sum(v for n, labels, v in samples(text)
               if n == name and all(labels.get(k) == want for k, want in match.items()))


# ---------------------------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------------------------


def test_metrics_pass_promtool(pgrelay):
    require_admin(pgrelay)
    with pgrelay.connect(autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT 1")
    result = subprocess.run(f"{CURL} -sSf {admin_url(pgrelay, '/metrics')} | {PROMTOOL} check metrics",
                            shell=True, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"promtool check metrics failed:\n{result.stdout}\n{result.stderr}"
    text = scrape(pgrelay)
    for name, kind in REQUIRED_FAMILIES.items():
        assert f"# TYPE {name} {kind}\n" in text, f"{name} ({kind}) missing from /metrics"
    nodes = {n["name"] for n in pgrelay.config["nodes"]}
    assert {labels["node"] for n, labels, _ in samples(text) if n == "pgrelay_node_up"} == nodes
    assert total(text, "pgrelay_node_role", node="pg1", role="primary") == 1
    assert total(text, "pgrelay_client_connections_total") >= 1, NOT_COUNTING
    assert total(text, "pgrelay_statements_total") >= 3, NOT_COUNTING


def test_healthz_and_readyz(pgrelay):
    require_admin(pgrelay)
    status, headers, body = http(pgrelay, "GET", "/healthz")
    assert (status, body) == (200, "ok\n")
    status, _, body = http(pgrelay, "GET", "/readyz")
    assert status == 200, body
    assert body.startswith("ready: primary pg1"), body


def test_readyz_is_503_without_a_reachable_primary(make_pgrelay, cluster):
    """Only unreachable nodes configured: no primary, so not ready, with the reason."""
    dead = [{"name": "dead1", "host": "127.0.0.1", "port": free_port()}]
    relay = make_pgrelay({"nodes": dead, "health": {"interval": "100ms", "timeout": "500ms"}},
                         wait_ready=False)
    require_admin(relay)
    status, _, body = http(relay, "GET", "/readyz")
    assert status == 503, body
    assert body.startswith("not ready: no primary is known (dead1: down"), body


def test_cluster_json_shape(pgrelay):
    require_admin(pgrelay)
    status, headers, body = http(pgrelay, "GET", "/cluster")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert isinstance(doc["version"], int) and doc["version"] >= 1
    assert isinstance(doc["epoch"], int)
    assert doc["primary"] == "pg1"
    assert doc["primary_conflict"] is False
    names = [n["name"] for n in doc["nodes"]]
    assert names == [n["name"] for n in pgrelay.config["nodes"]]
    lsn = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")
    for node in doc["nodes"]:
        for key in ("name", "host", "port", "state", "role", "up", "current_lsn", "receive_lsn",
                    "replay_lsn", "timeline", "replay_lag_bytes", "replay_lag_seconds"):
            assert key in node, f"{key} missing from {node}"
        assert node["state"] == "up", node
        assert node["timeline"] >= 1, node
    primary, replicas = doc["nodes"][0], doc["nodes"][1:]
    assert primary["role"] == "primary" and lsn.match(primary["current_lsn"]), primary
    assert primary["replay_lag_bytes"] == 0
    for r in replicas:
        assert r["role"] == "replica", r
        assert lsn.match(r["replay_lsn"]), r
        assert r["replay_lag_bytes"] is not None and r["replay_lag_bytes"] >= 0, r


def test_bad_requests_do_not_hurt(pgrelay):
    require_admin(pgrelay)
    assert http(pgrelay, "GET", "/nope")[0] == 404
    assert http(pgrelay, "POST", "/metrics")[0] == 405
    assert http(pgrelay, "GET", "/reload")[0] == 405
    result = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                             "X-Big: " + "a" * 20000, admin_url(pgrelay, "/healthz")],
                            capture_output=True, text=True, timeout=10)
    assert result.stdout == "431", result
    assert http(pgrelay, "GET", "/healthz")[0] == 200
    pgrelay.assert_healthy()


# ---------------------------------------------------------------------------------------------
# Token
# ---------------------------------------------------------------------------------------------


def test_mutating_endpoints_need_the_token(make_pgrelay):
    relay = make_pgrelay({"admin": {"token": TOKEN}})
    require_admin(relay)
    for path in ("/pause", "/resume", "/reload", "/switchover?to=pg2"):
        status, headers, body = http(relay, "POST", path)
        assert status == 401, (path, body)
        assert headers.get("www-authenticate", "").startswith("Bearer"), headers
        assert http(relay, "POST", path, token="wrong-token")[0] == 401, path
        status, _, body = http(relay, "POST", path, token=TOKEN)
        assert status != 401, (path, body)
    # Reading needs no token.
    assert http(relay, "GET", "/cluster")[0] == 200
    relay.assert_healthy()


def test_public_admin_listen_without_token_is_refused(pgrelay_bin, cluster, tmp_path):
    """Validation, so --check-config and start-up both refuse it with the reason."""
    if not pgrelay_bin:
        pytest.fail("PGRELAY_BIN is not set", pytrace=False)
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "nodes": cluster.nodes(),
        "users": [{"name": cluster.app_user, "password": cluster.app_password}],
        "admin": {"listen": f"0.0.0.0:{free_port()}"},
    }
    path = tmp_path / "public.yaml"
    path.write_text(to_yaml(config) + "\n")
    for flag in ("--check-config", "--config"):
        result = subprocess.run([pgrelay_bin, flag, str(path)], capture_output=True, text=True,
                                timeout=20)
        assert result.returncode == 1, (flag, result)
        assert "admin.listen" in result.stderr and "not a loopback address" in result.stderr, result.stderr
        assert "admin.token" in result.stderr
    config["admin"]["token"] = TOKEN
    path.write_text(to_yaml(config) + "\n")
    result = subprocess.run([pgrelay_bin, "--check-config", str(path)], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Metric values and a real Prometheus
# ---------------------------------------------------------------------------------------------


def test_follower_reads_are_counted_per_node(make_pgrelay):
    """After N reads under `follower`, the per-node read counters grew by exactly N."""
    n = 40
    relay = make_pgrelay({"routing": {"strategy": "follower"}})
    require_admin(relay)
    before = scrape(relay)
    with relay.connect(autocommit=True) as conn:
        for i in range(n):
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
    after = scrape(relay)
    by_node = {}
    for node in ("pg1", "pg2", "pg3"):
        by_node[node] = (total(after, "pgrelay_statements_total", node=node, **{"class": "read"},
                               strategy="follower")
                         - total(before, "pgrelay_statements_total", node=node, **{"class": "read"},
                                 strategy="follower"))
    assert sum(by_node.values()) == n, f"{by_node}; {NOT_COUNTING}"
    assert by_node["pg2"] + by_node["pg3"] > 0, f"no read went to a replica: {by_node}"
    count = (total(after, "pgrelay_statement_duration_seconds_count")
             - total(before, "pgrelay_statement_duration_seconds_count"))
    assert count >= n


@pytest.mark.timeout(90)
def test_prometheus_scrapes_pgrelay(make_pgrelay, tmp_path):
    """A real Prometheus scrapes /metrics; PromQL returns the routed-statements counter per node."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: apt-get install prometheus (scripts/install-deps.sh)",
                    pytrace=False)
    relay = make_pgrelay({"routing": {"strategy": "follower"}})
    require_admin(relay)
    with relay.connect(autocommit=True) as conn:
        for _ in range(10):
            conn.execute("SELECT 1")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: pgrelay\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{relay.admin_port}']}}]\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"

    def query(promql: str) -> list:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                doc = json.loads(resp.read())
        except OSError:
            return []
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    try:
        wait_until(lambda: query("up{job='pgrelay'} == 1"), timeout=60, interval=0.5,
                   what="Prometheus to scrape pgrelay (up == 1)")
        result = wait_until(lambda: query('sum by (node) (pgrelay_statements_total{class="read"})'),
                            timeout=30, interval=0.5, what="pgrelay_statements_total in Prometheus")
        nodes = {r["metric"]["node"]: float(r["value"][1]) for r in result}
        assert set(nodes) == {"pg1", "pg2", "pg3"}, result
        assert sum(nodes.values()) >= 10, f"{nodes}; {NOT_COUNTING}"
    except AssertionError:
        log.flush()
        print((tmp_path / "prometheus.log").read_text()[-5000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_connection_byte_backend_classifier_and_rejection_counters(make_pgrelay, cluster):
    relay = make_pgrelay({"routing": {"strategy": "follower"}})
    require_admin(relay)
    with relay.connect(autocommit=True) as conn:
        for _ in range(5):  # parsed once, then answered from the classifier's cache
            conn.execute("SELECT count(*) FROM pg_class WHERE relname = lower('X')").fetchone()
        text = scrape(relay)
        # One session: its primary connection and one per replica it read from.
        assert total(text, "pgrelay_backend_connections") >= 2
        assert total(text, "pgrelay_client_bytes_received_total") > 0
        assert total(text, "pgrelay_client_bytes_sent_total") > 0
        assert total(text, "pgrelay_classifier_cache_hits_total") >= 4  # the same text 5 times
        assert total(text, "pgrelay_classifier_cache_misses_total") >= 1
    with pytest.raises(psycopg.OperationalError):
        relay.connect(password="wrong-password")
    def counted():
        t = scrape(relay)
        return (total(t, "pgrelay_client_connections_rejected_total", reason="auth_failed") == 1
                and total(t, "pgrelay_backend_connections") == 0)
    wait_until(counted, 5, what="the rejection counted and the backend connections closed")
    assert total(scrape(relay), "pgrelay_health_probe_failures_total", node="pg1") == 0


def test_pause_holds_statements_at_transaction_boundaries_until_resume(make_pgrelay):
    relay = make_pgrelay({"admin": {"token": TOKEN}})
    require_admin(relay)
    with relay.connect(autocommit=True) as idle, relay.connect(autocommit=True) as in_tx:
        in_tx.execute("BEGIN")
        in_tx.execute("SELECT 1")
        status, _, body = http(relay, "POST", "/pause?timeout=20", token=TOKEN)
        assert status == 200 and "paused" in body, body
        # A session inside a transaction finishes it; its next transaction waits.
        assert in_tx.execute("SELECT 2").fetchone() == (2,)
        in_tx.execute("COMMIT")
        done = []
        t = threading.Thread(target=lambda: done.append(idle.execute("SELECT 3").fetchone()))
        started = time.time()
        t.start()
        time.sleep(1.0)
        assert not done, "a statement ran while pgrelay was paused"
        assert http(relay, "POST", "/resume", token=TOKEN)[0] == 200
        t.join(10)
        assert done == [(3,)] and time.time() - started >= 1.0
    # A pause ends by itself after its timeout.
    assert http(relay, "POST", "/pause?timeout=1", token=TOKEN)[0] == 200
    started = time.time()
    with relay.connect(autocommit=True) as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)
    assert 0.5 <= time.time() - started <= 5
    assert http(relay, "POST", "/pause?timeout=soon", token=TOKEN)[0] == 400


def test_no_secret_in_logs_metrics_or_cluster(make_pgrelay, cluster, tmp_path):
    """Passwords and the admin token never show up in the log (debug level), /metrics or /cluster,
    whatever clients do: log in, fail to, run statements, hit errors."""
    client_pw, failover_pw, token = "Zx9-leak-probe-pw", "Qq7-failover-pw", "Tt5-admin-token-0123456789"
    relay = make_pgrelay({
        "users": [{"name": "leaky", "password": client_pw},
                  {"name": cluster.app_user, "password": cluster.app_password}],
        "backend": {"user": cluster.app_user, "password": cluster.app_password},
        "failover": {"mode": "manual", "user": "postgres", "password": failover_pw,
                     "state_file": str(tmp_path / "state")},
        "admin": {"token": token},
        "routing": {"strategy": "read-your-writes"},
        "log": {"level": "debug"}})
    require_admin(relay)
    with relay.connect(user="leaky", password=client_pw, autocommit=True) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.Error):
            conn.execute(f"SELECT '{client_pw}'::int")  # the server echoes it; pgrelay must not log it
    for bad in ("wrong", client_pw + "x"):
        with pytest.raises(psycopg.OperationalError):
            relay.connect(user="leaky", password=bad)
    assert http(relay, "POST", "/pause?timeout=1", token="not-" + token)[0] == 401
    texts = {"/metrics": scrape(relay), "/cluster": http(relay, "GET", "/cluster")[2],
             "log": relay.log_path.read_text(errors="replace")}
    for where, text in texts.items():
        for secret in (client_pw, failover_pw, token):
            assert secret not in text, f"{secret!r} appears in {where}"
