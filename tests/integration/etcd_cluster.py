"""A real etcd cluster on loopback for the coordination tests (Debian etcd-server 3.4), and a
small client for its v3 HTTP/JSON gateway (keys and values base64, as etcd wants them)."""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from typing import Optional

from conftest import free_port

ETCD = "/usr/bin/etcd"


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


class EtcdCluster:
    """`size` etcd members on 127.0.0.1 with data under `workdir`; stop() kills them by PID."""

    def __init__(self, workdir: pathlib.Path, size: int = 3):
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError(f"{ETCD} is missing: install Debian's etcd-server (scripts/install-deps.sh)")
        self.workdir = workdir
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def _cluster_arg(self) -> str:
        return ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports))

    def start_member(self, i: int, new: bool = True) -> None:
        data = self.workdir / self.names[i]
        data.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.names[i]}.log", "ab")
        cmd = [ETCD, "--name", self.names[i], "--data-dir", str(data),
               "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
               "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
               "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
               "--initial-cluster", self._cluster_arg(),
               "--initial-cluster-state", "new" if new else "existing",
               "--initial-cluster-token", "pgrelay-test",
               "--heartbeat-interval", "50", "--election-timeout", "500"]
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def start(self, timeout: float = 30.0) -> "EtcdCluster":
        for i in range(len(self.names)):
            self.start_member(i)
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i in range(len(self.names))):
            for i, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"etcd {self.names[i]} exited with {p.returncode}:\n{self.log(i)}")
            if time.monotonic() > deadline:
                raise RuntimeError("etcd cluster not healthy in time:\n" +
                                   "\n".join(self.log(i) for i in range(len(self.names))))
            time.sleep(0.1)
        return self

    def log(self, i: int) -> str:
        path = self.workdir / f"{self.names[i]}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client_ports[i]}/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop_member(self, i: int) -> None:
        p = self.procs.pop(i, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        for i in list(self.procs):
            self.stop_member(i)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the v3 gateway ------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        last: Optional[Exception] = None
        for port in self.client_ports:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v3/{path}",
                                             data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return json.loads(r.read())
            except (OSError, urllib.error.HTTPError) as exc:
                last = exc
        raise RuntimeError(f"etcd {path} failed on every member: {last}")

    def get(self, key: str) -> Optional[dict]:
        """The key's kv (value decoded, revisions as ints) or None."""
        kvs = self._post("kv/range", {"key": _b64(key)}).get("kvs", [])
        if not kvs:
            return None
        kv = kvs[0]
        return {"value": base64.b64decode(kv.get("value", "")).decode(),
                "version": int(kv.get("version", 0)),
                "mod_revision": int(kv.get("mod_revision", 0))}

    def put(self, key: str, value: str) -> None:
        self._post("kv/put", {"key": _b64(key), "value": _b64(value)})
