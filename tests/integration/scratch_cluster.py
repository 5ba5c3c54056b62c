"""A throwaway PostgreSQL cluster of our own for the tests that change the cluster for good
(failover, switchover, coordinated failover): a primary and two standbys (initdb,
pg_basebackup with replication slots, on free ports), plus the helpers those tests share: a
writer thread that records every acknowledged insert, a cuttable TCP forwarder, log and metric
probes."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from typing import Optional

import psycopg
import pytest

from conftest import free_port, wait_until
from replication import as_postgres


class Scratch:
    """A primary and two standbys (replication slots s1, s2; cluster_name s1, s2)."""

    def __init__(self, pg_bin: str):
        self.bin = pg_bin
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pgrelay-failover-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.names = ("p0", "s1", "s2")
        self.ports = tuple(free_port() for _ in self.names)
        self.dirs = tuple(self.dir / n for n in self.names)

    def run(self, program: str, *args: str) -> None:
        out = as_postgres(os.path.join(self.bin, program), *args)
        assert out.returncode == 0, f"{program} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"

    def start(self, i: int) -> None:
        self.run("pg_ctl", "-D", str(self.dirs[i]), "-l", str(self.dir / f"{self.names[i]}.log"), "-w",
                 "-t", "60", "-o", f"-p {self.ports[i]} -k {self.dir} -c listen_addresses=127.0.0.1 "
                 f"-c fsync=off -c cluster_name={self.names[i]} -c wal_receiver_timeout=2s", "start")

    def stop(self, i: int) -> None:
        self.run("pg_ctl", "-D", str(self.dirs[i]), "-m", "immediate", "-w", "stop")

    def create(self, sync: bool) -> None:
        self.run("initdb", "-D", str(self.dirs[0]), "-U", "postgres", "-A", "trust", "--no-sync",
                 "--no-instructions")
        if sync:
            with open(self.dirs[0] / "postgresql.conf", "a") as conf:
                conf.write("synchronous_standby_names = 'ANY 1 (*)'\nsynchronous_commit = on\n")
        self.start(0)
        for i in (1, 2):
            self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]), "-U", "postgres",
                     "-D", str(self.dirs[i]), "-R", "-X", "stream", "-C", "-S", self.names[i], "-c", "fast",
                 "--no-sync")
            self.start(i)

    def rejoin(self, i: int, primary: int) -> None:
        """Makes node i a standby of `primary` again, as an operator would: a fresh base backup."""
        if (self.dirs[i] / "postmaster.pid").exists():
            self.stop(i)
        shutil.rmtree(self.dirs[i])
        with self.connect(primary) as c:
            c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                      "WHERE slot_name = %s AND NOT active", (self.names[i],))
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[primary]), "-U", "postgres",
                 "-D", str(self.dirs[i]), "-R", "-X", "stream", "-C", "-S", self.names[i], "-c", "fast",
                 "--no-sync")
        self.start(i)

    def streams_from(self, i: int, primary: int) -> bool:
        try:
            with self.connect(i) as c:
                row = c.execute("SELECT status, sender_port FROM pg_stat_wal_receiver").fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] == "streaming" and row[1] == self.ports[primary]

    def pids(self, i: int) -> list[int]:
        """The postmaster of node i and all its children."""
        postmaster = int((self.dirs[i] / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def connect(self, i: int) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.ports[i], user="postgres", dbname="postgres",
                               connect_timeout=5, autocommit=True)

    def destroy(self) -> None:
        for d in self.dirs:
            if (d / "postmaster.pid").exists():
                as_postgres(os.path.join(self.bin, "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def nodes(self, ports: Optional[tuple] = None) -> list[dict]:
        return [{"name": n, "host": "127.0.0.1", "port": p}
                for n, p in zip(self.names, ports or self.ports)]


@pytest.fixture
def scratch(cluster):
    s = Scratch(cluster.pg_bin)
    yield s
    s.destroy()


def log_has(relay, pattern: str) -> Optional[str]:
    for line in relay.log_tail().splitlines():
        if re.search(pattern, line):
            return line
    return None


def wait_log(relay, pattern: str, timeout: float) -> str:
    def find():
        relay.check_alive()
        return log_has(relay, pattern)
    try:
        return wait_until(find, timeout, interval=0.05, what=f"log /{pattern}/")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlog tail:\n{relay.log_tail()[-6000:]}") from None


def metric(relay, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.admin_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def in_recovery(scratch: Scratch, i: int) -> bool:
    with scratch.connect(i) as c:
        return c.execute("SELECT pg_is_in_recovery()").fetchone()[0]


class Writer(threading.Thread):
    """Inserts through pgrelay as fast as it can; records every acknowledged id with its time."""

    def __init__(self, relay):
        super().__init__(daemon=True)
        self.relay = relay
        self.acked: list[tuple[int, float]] = []
        self.errors: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self.relay.connect(dbname="postgres", autocommit=True, connect_timeout=5)
                row = conn.execute("INSERT INTO fo(v) VALUES (1) RETURNING id").fetchone()
                self.acked.append((row[0], time.time()))
            except psycopg.Error as e:
                self.errors.append((time.time(), str(e).strip()))
                time.sleep(0.05)
                if conn is not None and conn.closed:
                    conn = None
        if conn is not None:
            conn.close()


class Forwarder:
    """A TCP forwarder 127.0.0.1:port -> target that can be cut (listener and connections)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_off(self) -> None:
        self.cut = True
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.cut_off()
        self.listener.close()
