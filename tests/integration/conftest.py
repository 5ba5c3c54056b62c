"""Shared fixtures and helpers for pgrelay's integration tests.

Each test_*.py file is one CTest test (tests/CMakeLists.txt), run with /usr/bin/python3 -m pytest.
Environment:
  PGRELAY_BIN          the pgrelay binary under test (set by CTest)
  PGRELAY_CLUSTER_ENV  cluster.env written by scripts/cluster.sh (set by scripts/test.sh)
  PGRELAY_TEST_DIRECT  =1 points every test at the cluster's primary instead of pgrelay, to check
                       the tests' own expectations against real PostgreSQL. Tests that need a
                       pgrelay-only setting are skipped then. Never set it in CI.

Fixtures:
  cluster            the parsed cluster.env (session)
  pgrelay            a pgrelay with the default config, shared by a module
  make_pgrelay       callable(extra_config) -> a new pgrelay for one test
  module_pgrelay     callable(extra_config) -> a new pgrelay for the rest of the module
Every pgrelay is stopped with SIGTERM at teardown and must exit by itself with status 0 within
5 s (ASan/LSan reports make the exit status non-zero); its log is printed otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import pathlib
import random
import re
import resource
import secrets
import shlex
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from typing import Any, Callable, Optional

import psycopg
import pytest

DIRECT = os.environ.get("PGRELAY_TEST_DIRECT") == "1"
pgrelay_only = pytest.mark.skipif(DIRECT, reason="needs a pgrelay-specific setting (PGRELAY_TEST_DIRECT=1)")

START_TIMEOUT = 10.0  # seconds until pgrelay's port accepts
STOP_TIMEOUT = 5.0  # seconds pgrelay gets to exit after SIGTERM
LOG_TAIL = 30000  # characters of pgrelay's log shown on failure
DEFAULT_TEST_TIMEOUT = 120  # seconds per test body; @pytest.mark.timeout(N) changes it


# ---------------------------------------------------------------------------------------------
# Per-test time limit: a hang fails the test (with a traceback showing where) instead of
# running into CTest's timeout; fixtures still tear down and stop pgrelay.
# ---------------------------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): time limit for the test body")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("timeout")
    seconds = int(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {seconds} s time limit (hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------------------------


def load_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Parses shell KEY=VALUE lines (optionally quoted, optionally `export KEY=...`)."""
    env: dict[str, str] = {}
    for raw in pathlib.Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        key, sep, value = line.partition("=")
        if not sep:
            continue
        parts = shlex.split(value)
        env[key.strip()] = parts[0] if parts else ""
    return env


@dataclasses.dataclass(frozen=True)
class Cluster:
    dir: str
    pg_bin: str
    host: str
    primary_port: int
    replica_ports: tuple[int, int]
    superuser: str
    database: str
    app_user: str
    app_password: str

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Cluster":
        return cls(
            dir=env.get("PGRELAY_CLUSTER_DIR", ""),
            pg_bin=env.get("PGRELAY_PG_BIN", "/usr/lib/postgresql/15/bin"),
            host=env["PGRELAY_PG_HOST"],
            primary_port=int(env["PGRELAY_PG_PRIMARY_PORT"]),
            replica_ports=(int(env["PGRELAY_PG_REPLICA1_PORT"]), int(env["PGRELAY_PG_REPLICA2_PORT"])),
            superuser=env.get("PGRELAY_PG_SUPERUSER", "postgres"),
            database=env.get("PGRELAY_PG_DATABASE", "app"),
            app_user=env.get("PGRELAY_PG_APP_USER", "app"),
            app_password=env.get("PGRELAY_PG_APP_PASSWORD", "secret"),
        )

    def nodes(self) -> list[dict[str, Any]]:
        ports = (self.primary_port, *self.replica_ports)
        return [{"name": f"pg{i + 1}", "host": self.host, "port": p} for i, p in enumerate(ports)]

    def superuser_connect(self, dbname: Optional[str] = None, **kw) -> psycopg.Connection:
        """A direct superuser connection to the primary (for setup and checks, not via pgrelay)."""
        return psycopg.connect(host=self.host, port=self.primary_port, user=self.superuser,
                               dbname=dbname or self.database, connect_timeout=10, autocommit=True, **kw)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    path = os.environ.get("PGRELAY_CLUSTER_ENV")
    if not path:
        pytest.fail("PGRELAY_CLUSTER_ENV is not set: run through scripts/test.sh, or start a cluster "
                    "(scripts/cluster.sh start) and export PGRELAY_CLUSTER_ENV=<dir>/cluster.env")
    if not os.path.isfile(path):
        pytest.fail(f"PGRELAY_CLUSTER_ENV={path} does not exist (is the cluster started?)")
    return Cluster.from_env(load_env_file(path))


# ---------------------------------------------------------------------------------------------
# Ports, config
# ---------------------------------------------------------------------------------------------

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port below 32768 that nothing listens on now (Linux hands out ports >= 32768 for
    outgoing connections, GUIDE §4). Random start so parallel ctest runs rarely collide."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port found in 20000..31999")


def merge_config(base: dict, extra: Optional[dict]) -> dict:
    """Deep-merges extra into a copy of base. Dicts merge, anything else replaces; None deletes."""
    out = json.loads(json.dumps(base))
    for key, value in (extra or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


_PLAIN_SCALAR = re.compile(r"[A-Za-z0-9_./@:+-]+")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    looks_numeric = True
    try:
        float(text)
    except ValueError:
        looks_numeric = False
    if (_PLAIN_SCALAR.fullmatch(text) and text.lower() not in _RESERVED and not looks_numeric
            and not text.startswith(("-", ":", "@"))):
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts/lists/scalars (enough for pgrelay configs; no PyYAML needed)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 2))
            elif isinstance(value, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(value, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {_yaml_scalar(value)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 2).splitlines()
                lines.append(f"{pad}- {body[0].lstrip()}")
                lines.extend(body[1:])
            elif isinstance(item, (dict, list)):
                lines.append(f"{pad}- " + ("{}" if isinstance(item, dict) else "[]"))
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    else:
        lines.append(pad + _yaml_scalar(obj))
    return "\n".join(lines)


def default_config(cluster: Cluster, port: int, admin_port: int) -> dict:
    return {
        "listen": f"127.0.0.1:{port}",
        "workers": 2,
        "nodes": cluster.nodes(),
        "users": [{"name": cluster.app_user, "password": cluster.app_password}],
        "auth": "scram-sha-256",
        "routing": {"strategy": "leader"},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "log": {"level": "info"},
    }


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def client_env(password: Optional[str] = None) -> dict[str, str]:
    """Environment for psql/pgbench: none of the caller's PG* connection settings leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PGRELAY_")}
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


# ---------------------------------------------------------------------------------------------
# Targets: a running pgrelay (or, with PGRELAY_TEST_DIRECT=1, the primary itself)
# ---------------------------------------------------------------------------------------------


class Target:
    """Something a client connects to: host/port plus client helpers."""

    direct = False

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.host = "127.0.0.1"
        self.port = 0

    # -- clients -------------------------------------------------------------------------------
    def connect(self, user: Optional[str] = None, password: Optional[str] = None,
                dbname: Optional[str] = None, autocommit: bool = False, **kw) -> psycopg.Connection:
        """psycopg connection; no user and no password = the app user with its password; a user
        without a password sends none."""
        params: dict[str, Any] = dict(host=self.host, port=self.port,
                                      user=user or self.cluster.app_user,
                                      dbname=dbname or self.cluster.database,
                                      connect_timeout=10)
        pw = self.cluster.app_password if password is None and user is None else password
        if pw is not None:
            params["password"] = pw
        params.update(kw)
        return psycopg.connect(autocommit=autocommit, **params)

    def raw(self, timeout: float = 5.0) -> "RawConn":
        return RawConn(self.host, self.port, timeout=timeout)

    def raw_login(self, user: Optional[str] = None, password: Optional[str] = None,
                  database: Optional[str] = None, timeout: float = 5.0) -> "RawConn":
        conn = self.raw(timeout)
        conn.login(user or self.cluster.app_user,
                   self.cluster.app_password if password is None else password,
                   database or self.cluster.database)
        return conn

    def run_client(self, program: str, *args: str, user: Optional[str] = None,
                   password: Optional[str] = None, dbname: Optional[str] = None,
                   input: Optional[str] = None, timeout: float = 120,
                   with_db_arg: bool = True) -> subprocess.CompletedProcess:
        """Runs psql/pgbench/... from the cluster's bin dir against this target."""
        cmd = [os.path.join(self.cluster.pg_bin, program), "-h", self.host, "-p", str(self.port),
               "-U", user or self.cluster.app_user]
        if program == "psql":
            cmd.insert(1, "-X")
        cmd += list(args)
        if with_db_arg:
            cmd.append(dbname or self.cluster.database)
        pw = self.cluster.app_password if password is None else password
        return subprocess.run(cmd, input=input, capture_output=True, text=True,
                              env=client_env(pw), timeout=timeout)

    def psql(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run_client("psql", *args, **kw)

    # -- checks --------------------------------------------------------------------------------
    def check_alive(self) -> None:
        pass

    def assert_healthy(self) -> None:
        """A normal client still gets through and runs SELECT 1."""
        self.check_alive()
        with self.connect(autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        self.check_alive()

    def stop(self) -> None:
        pass

    def log_tail(self) -> str:
        return ""


class DirectTarget(Target):
    """The cluster's primary itself (PGRELAY_TEST_DIRECT=1)."""

    direct = True

    def __init__(self, cluster: Cluster):
        super().__init__(cluster)
        self.host = cluster.host
        self.port = cluster.primary_port

    def __repr__(self) -> str:
        return f"<primary {self.host}:{self.port}>"


class Pgrelay(Target):
    """One pgrelay process with a config written to its own directory."""

    def __init__(self, binary: str, cluster: Cluster, workdir: pathlib.Path, extra: Optional[dict],
                 wait_ready: bool = True, env: Optional[dict[str, str]] = None,
                 nofile: Optional[tuple[int, int]] = None):
        super().__init__(cluster)
        self.binary = binary
        self.env = env  # added to pgrelay's environment
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE pgrelay starts with
        self.wait_ready = wait_ready
        self.workdir = workdir
        self.extra = extra or {}
        self.proc: Optional[subprocess.Popen] = None
        self.admin_port = 0
        self.config: dict = {}
        self.config_path = workdir / "pgrelay.yaml"
        self.log_path = workdir / "pgrelay.log"

    def __repr__(self) -> str:
        return f"<pgrelay pid={self.proc.pid if self.proc else None} {self.host}:{self.port}>"

    def start(self) -> "Pgrelay":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port, self.admin_port = free_port(), free_port()
            self.config = merge_config(default_config(self.cluster, self.port, self.admin_port), self.extra)
            # The extra config may set its own listen address.
            host, _, port = str(self.config.get("listen", "")).rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
            self.config_path.write_text("# written by tests/integration/conftest.py\n" + to_yaml(self.config) + "\n")
            self.config_path.chmod(0o600)  # it holds passwords (pgrelay warns otherwise)
            with open(self.log_path, "ab") as log:
                log.write(f"==== start attempt {attempt + 1}: {self.binary} --config {self.config_path}\n".encode())
                log.flush()
                env = {**os.environ, **self.env} if self.env else None
                nofile = self.nofile
                preexec = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)) if nofile else None
                self.proc = subprocess.Popen([self.binary, "--config", str(self.config_path)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=env, preexec_fn=preexec)
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    text = self.log_tail()
                    if attempt < 2 and re.search(r"already in use", text[-2000:], re.I):
                        break  # a port was taken between our probe and pgrelay's bind: new ports
                    self.proc = None  # reported here; nothing left to stop
                    pytest.fail(f"pgrelay exited with status {rc} during start-up.\n"
                                f"config ({self.config_path}):\n{self.config_path.read_text()}\n"
                                f"log ({self.log_path}):\n{text}", pytrace=False)
                if port_accepts(self.host, self.port, timeout=0.5):
                    if self.wait_ready:
                        self._wait_admin_ready(deadline)
                    return self
                if time.monotonic() > deadline:
                    self._kill()
                    pytest.fail(f"pgrelay did not accept on {self.host}:{self.port} within "
                                f"{START_TIMEOUT:.0f} s.\nlog ({self.log_path}):\n{self.log_tail()}",
                                pytrace=False)
                time.sleep(0.05)
        self.proc = None
        pytest.fail(f"pgrelay could not bind a port in 3 attempts.\nlog:\n{self.log_tail()}", pytrace=False)

    def _admin_ready(self) -> Optional[bool]:
        """GET /readyz on the admin endpoint: True (200), False (other status), None (no answer
        or no such endpoint)."""
        host, _, port = str(self.config.get("admin", {}).get("listen", "")).rpartition(":")
        if not port.isdigit():
            return None
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1) as s:
                s.settimeout(2)
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = s.recv(4096)
        except OSError:
            return None
        match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        if not match or match.group(1) == b"404":
            return None
        return match.group(1) == b"200"

    def _wait_admin_ready(self, deadline: float) -> None:
        """Best effort: once the port accepts, wait (until the start deadline) for /readyz to say
        200, so a first client does not race the first health check. No endpoint: no wait."""
        while time.monotonic() < deadline:
            ready = self._admin_ready()
            if ready is None or ready:
                return
            time.sleep(0.1)

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            pytest.fail(f"pgrelay died (exit status {rc}).\nlog ({self.log_path}):\n{self.log_tail()}",
                        pytrace=False)

    def configured_secrets(self) -> set[str]:
        """Every password and token this pgrelay was configured with (at least 4 characters:
        shorter ones would match by chance)."""
        found: set[str] = set()

        def walk(value: Any, key: str = "") -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, k)
            elif isinstance(value, list):
                for v in value:
                    walk(v, key)
            elif key in ("password", "token") and isinstance(value, str) and len(value) >= 4 \
                    and not value.startswith("SCRAM-SHA-256$"):
                found.add(value)

        walk(self.config)
        return found

    def secret_leak(self) -> Optional[str]:
        """Where a configured password or token appears in the log, /metrics or /cluster (issue
        10), or None; checked for every pgrelay the suite stops."""
        outputs = {"log": self.log_path.read_text(errors="replace") if self.log_path.exists() else ""}
        for path in ("/metrics", "/cluster"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
                    outputs[path] = r.read().decode(errors="replace")
            except OSError:
                pass  # no admin endpoint (e.g. refused start-up): the log is still checked
        for secret in self.configured_secrets():
            for where, text in outputs.items():
                if secret in text:
                    line = next((l for l in text.splitlines() if secret in l), "")
                    return (f"a configured password or token appears in {where} of {self}: "
                            f"{line.replace(secret, '<SECRET>')[:300]}")
        return None

    def stop(self) -> None:
        """SIGTERM; pgrelay must exit by itself with status 0 within STOP_TIMEOUT."""
        proc = self.proc
        if proc is None:
            return
        leak = self.secret_leak() if proc.poll() is None else None
        self.proc = None
        rc = proc.poll()
        if rc is not None:
            pytest.fail(f"pgrelay exited (status {rc}) before it was asked to stop.\n"
                        f"log ({self.log_path}):\n{self.log_tail()}", pytrace=False)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"pgrelay did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM (killed).\n"
                        f"log ({self.log_path}):\n{self.log_tail()}", pytrace=False)
        if rc != 0:
            pytest.fail(f"pgrelay exited with status {rc} after SIGTERM (ASan/UBSan report?).\n"
                        f"log ({self.log_path}):\n{self.log_tail()}", pytrace=False)
        if leak:
            pytest.fail(leak, pytrace=False)


class PgrelayFactory:
    """Starts pgrelays on demand; stop_all() stops them and reports every unclean exit."""

    def __init__(self, cluster: Cluster, binary: Optional[str], basedir: pathlib.Path):
        self.cluster = cluster
        self.binary = binary
        self.basedir = basedir
        self.instances: list[Target] = []

    def __call__(self, extra: Optional[dict] = None, wait_ready: bool = True,
                 env: Optional[dict[str, str]] = None,
                 nofile: Optional[tuple[int, int]] = None) -> Target:
        """Starts a pgrelay with the default config deep-merged with `extra` (None values delete
        keys). wait_ready=False: do not wait for the admin /readyz (e.g. broken backend creds).
        env: added to pgrelay's environment. nofile: the (soft, hard) open files limit it starts
        with."""
        if DIRECT:
            return DirectTarget(self.cluster)
        if not self.binary:
            pytest.fail("PGRELAY_BIN is not set (ctest sets it to the built pgrelay binary)", pytrace=False)
        if not os.access(self.binary, os.X_OK):
            pytest.fail(f"PGRELAY_BIN={self.binary} is not an executable file", pytrace=False)
        relay = Pgrelay(self.binary, self.cluster, self.basedir / f"pgrelay{len(self.instances)}", extra,
                        wait_ready, env, nofile)
        self.instances.append(relay)
        return relay.start()

    def stop_all(self) -> None:
        problems = []
        while self.instances:
            relay = self.instances.pop()
            try:
                relay.stop()
            except pytest.fail.Exception as exc:  # keep stopping the others
                problems.append(str(exc))
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def pgrelay_bin() -> Optional[str]:
    return os.environ.get("PGRELAY_BIN")


@pytest.fixture(scope="module")
def module_pgrelay(cluster, pgrelay_bin, tmp_path_factory):
    factory = PgrelayFactory(cluster, pgrelay_bin, tmp_path_factory.mktemp("relay"))
    yield factory
    factory.stop_all()


@pytest.fixture
def make_pgrelay(cluster, pgrelay_bin, tmp_path_factory):
    factory = PgrelayFactory(cluster, pgrelay_bin, tmp_path_factory.mktemp("relay"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def pgrelay(module_pgrelay) -> Target:
    """A pgrelay with the default config, shared by the tests of a module."""
    return module_pgrelay()


# ---------------------------------------------------------------------------------------------
# Raw wire protocol (for tests that need exact bytes)
# ---------------------------------------------------------------------------------------------

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


class ConnectionClosed(Exception):
    """The server closed the connection (EOF or reset)."""


class ServerError(Exception):
    """An ErrorResponse from the server."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.severity = fields.get("V") or fields.get("S")
        super().__init__(f"{self.severity} {self.sqlstate}: {fields.get('M')}")


def startup_packet(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def request_packet(code: int, extra: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(extra), code) + extra


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def parse_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields: {'S': 'FATAL', 'C': '28P01', 'M': ...}."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


class RawConn:
    """A blocking socket speaking just enough of the protocol: startup, auth
    (trust/cleartext/md5/SCRAM-SHA-256), simple queries, raw bytes. Every read has a timeout, so
    a server that hangs fails the test instead of hanging it."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.auth_codes: list[int] = []
        self.parameters: dict[str, str] = {}
        self.backend_key: Optional[tuple[int, int]] = None
        self.negotiate: Optional[tuple[int, list[str]]] = None
        self.user = ""
        self._password = ""
        self._scram: dict[str, Any] = {}

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- bytes ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        except socket.timeout as exc:
            raise AssertionError(f"no data from the server within {self.timeout} s (hang)") from exc
        if not chunk:
            raise ConnectionClosed("EOF")
        self.buf += chunk

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_message(self) -> tuple[bytes, bytes]:
        header = self.recv_exact(5)
        kind, length = header[:1], struct.unpack("!I", header[1:])[0]
        assert 4 <= length <= (1 << 30), f"bad length {length} in server message {kind!r}"
        return kind, self.recv_exact(length - 4)

    def expect_error_or_close(self) -> Optional[ServerError]:
        """Reads until an ErrorResponse (returned) or the connection closes (None). Other
        messages are skipped. Fails on a timeout: the server must not leave us hanging."""
        try:
            while True:
                kind, payload = self.recv_message()
                if kind == b"E":
                    return ServerError(parse_fields(payload))
        except ConnectionClosed:
            return None

    def expect_closed(self) -> None:
        """The server closes the connection soon (after anything it still sends)."""
        try:
            while True:
                self.recv_message()
        except ConnectionClosed:
            return

    # -- startup and authentication --------------------------------------------------------------
    def startup(self, user: str, database: str, version: int = PROTOCOL_3_0, **options: str) -> None:
        self.user = user
        params = {"user": user, "database": database, **options}
        self.send(startup_packet(params, version))

    def authenticate(self, password: str) -> None:
        """Answers authentication requests until AuthenticationOk; ServerError on ErrorResponse."""
        self._password = password
        while True:
            kind, payload = self.recv_message()
            if kind == b"E":
                raise ServerError(parse_fields(payload))
            if kind == b"v":
                minor, count = struct.unpack("!II", payload[:8])
                names = [n.decode() for n in payload[8:].split(b"\0")[:count]]
                self.negotiate = (minor, names)
                continue
            if kind == b"N":
                continue
            assert kind == b"R", f"expected an authentication request, got {kind!r}"
            code = struct.unpack("!I", payload[:4])[0]
            self.auth_codes.append(code)
            if code == AUTH_OK:
                return
            if code == AUTH_CLEARTEXT:
                self.send(message(b"p", password.encode() + b"\0"))
            elif code == AUTH_MD5:
                salt = payload[4:8]
                inner = hashlib.md5(password.encode() + self.user.encode()).hexdigest()
                outer = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
                self.send(message(b"p", outer.encode() + b"\0"))
            elif code == AUTH_SASL:
                mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
                assert "SCRAM-SHA-256" in mechanisms, f"server offers {mechanisms}"
                self._scram_first()
            elif code == AUTH_SASL_CONTINUE:
                self._scram_continue(payload[4:].decode())
            elif code == AUTH_SASL_FINAL:
                self._scram_final(payload[4:].decode())
            else:
                raise AssertionError(f"unsupported authentication request {code}")

    def read_until_ready(self) -> str:
        """Reads ParameterStatus/BackendKeyData/notices until ReadyForQuery; returns its status."""
        while True:
            kind, payload = self.recv_message()
            if kind == b"E":
                raise ServerError(parse_fields(payload))
            if kind == b"S":
                name, value, _ = payload.split(b"\0", 2)
                self.parameters[name.decode()] = value.decode()
            elif kind == b"K":
                self.backend_key = struct.unpack("!II", payload[:8])
            elif kind == b"Z":
                return payload.decode()

    def login(self, user: str, password: str, database: str, version: int = PROTOCOL_3_0,
              **options: str) -> "RawConn":
        self.startup(user, database, version, **options)
        self.authenticate(password)
        self.read_until_ready()
        return self

    # SCRAM-SHA-256 client (RFC 5802/7677), as libpq does it: no channel binding, empty username.
    def _scram_first(self) -> None:
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        bare = f"n=,r={nonce}"
        self._scram = {"nonce": nonce, "bare": bare}
        first = ("n,," + bare).encode()
        payload = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
        self.send(message(b"p", payload))

    def _scram_continue(self, server_first: str) -> None:
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        assert nonce.startswith(self._scram["nonce"]), "server nonce does not extend ours"
        salted = hashlib.pbkdf2_hmac("sha256", self._password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._scram['bare']},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self._scram["server_signature"] = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        self._scram["server_first"] = server_first
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        self.send(message(b"p", final.encode()))

    def _scram_final(self, server_final: str) -> None:
        attrs = dict(item.split("=", 1) for item in server_final.split(","))
        assert "v" in attrs, f"SCRAM server-final without verifier: {server_final}"
        assert base64.b64decode(attrs["v"]) == self._scram["server_signature"], \
            "SCRAM server signature does not verify"

    # -- queries ---------------------------------------------------------------------------------
    def simple_query(self, sql: str) -> tuple[list[list[Optional[str]]], list[str], str]:
        """Sends a Query; returns (rows of the last result, command tags, final txn status).
        Raises ServerError on an ErrorResponse (after reading through ReadyForQuery)."""
        self.send(query_message(sql))
        rows: list[list[Optional[str]]] = []
        tags: list[str] = []
        error: Optional[ServerError] = None
        while True:
            kind, payload = self.recv_message()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                (count,) = struct.unpack("!H", payload[:2])
                pos, row = 2, []
                for _ in range(count):
                    (n,) = struct.unpack("!i", payload[pos:pos + 4])
                    pos += 4
                    if n < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + n].decode())
                        pos += n
                rows.append(row)
            elif kind == b"C":
                tags.append(payload.rstrip(b"\0").decode())
            elif kind == b"E":
                error = ServerError(parse_fields(payload))
            elif kind == b"Z":
                if error:
                    raise error
                return rows, tags, payload.decode()


def cancel_request(host: str, port: int, pid: int, key: int, timeout: float = 5.0) -> None:
    """Sends a CancelRequest on a new connection and waits for the server to close it."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request_packet(CANCEL_REQUEST_CODE, struct.pack("!II", pid, key)))
        try:
            assert s.recv(1) == b"", "a CancelRequest gets no reply"
        except ConnectionResetError:
            pass


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
