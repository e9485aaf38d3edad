"""Servers the tests own: a private Redis per session (or per fault test), a TCP proxy to cut.

Tests never flush or break a server they did not start: each session starts its own
``redis-server`` on a free port, and a fault test breaks its own Redis, or the proxy between
its workers and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

#: Linux prctl option: the signal a child gets when the process that started it dies.
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: a test session killed before its teardown (a timeout,
    # SIGKILL) takes its servers with it instead of leaving them listening.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server``; ``durable`` (the default) keeps an append-only file, so a
    restart keeps the queue."""

    def __init__(
        self,
        workdir: Path,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        durable: bool = True,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise FileNotFoundError("redis-server is not installed")
        self.workdir = workdir
        self.password = password
        self.tls = tls  # (CA, certificate, key): TLS only, no plain port
        self.durable = durable
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        """The URL clients use (with the password, when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the server (on the same port and files as before) and wait until it answers."""
        args = ["redis-server", "--bind", "127.0.0.1"]
        if self.tls:
            ca, cert, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-ca-cert-file", str(ca), "--tls-cert-file", str(cert)]
            args += ["--tls-key-file", str(key)]
        else:
            args += ["--port", str(self.port)]
        args += ["--dir", str(self.workdir), "--save", "", "--logfile", "redis.log"]
        if self.durable:
            # Every write is on disk before it is acknowledged: a SIGKILL loses no message.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]  # a session's scratch server: speed over survival
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        client = self.client()
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.BusyLoadingError:
                pass  # still replaying the append-only file
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """Crash the server (SIGKILL): clients see their connections drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Crash the server, stay down ``down_s`` seconds, start it again."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def client(self) -> redis.Redis:
        """A client on database 0."""
        if self.tls:
            return redis.Redis.from_url(self.url(), ssl_ca_certs=str(self.tls[0]))
        return redis.Redis.from_url(self.url())


class TcpProxy:
    """Forwards a local port to a server; ``cut()`` drops every connection until ``mend()``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """The server becomes unreachable: open connections drop, new ones are closed at once."""
        self._up.clear()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._socks.clear()

    def mend(self) -> None:
        """The server is reachable again."""
        self._up.set()

    def close(self) -> None:
        """Stop listening and drop everything."""
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
