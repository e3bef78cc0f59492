"""Helpers for the server-front findings: a real `edgekit serve` subprocess and a slowloris attacker."""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.server.conftest import Http

ADMIN = "front-admin-token-0123456789"
VIEWER = "front-dashboard-token-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`python -m edgekit serve` on loopback over a copy of the deployment's data directory.

    `nofile` sets RLIMIT_NOFILE (soft and hard) for the child: the default 1,024 of most systems, without the
    headroom of a hard limit the server could raise to.
    """

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        *,
        nofile: int | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = log
        environment = {
            **os.environ,
            "EDGEKIT_ADMIN_TOKEN": ADMIN,
            "EDGEKIT_DASHBOARD_TOKEN": VIEWER,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {}),
        }

        def limits() -> None:  # in the child, before exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        command = [sys.executable, "-m", "edgekit", "serve", "--data", str(data_dir)]
        command += ["--port", str(self.port)]
        self._log = open(log, "wb")  # noqa: SIM115 - the child writes here for its whole life
        self.process = subprocess.Popen(
            [*command, "--evaluate-every", "0", *args],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=limits,
        )
        self.http = Http(f"http://127.0.0.1:{self.port}")
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.http.request("GET", "/healthz")[0] in (200, 503):
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"edgekit serve did not start: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def copy_data(deployment: Any, target: Path) -> Path:
    """A fresh copy of the published repository (each server gets its own database)."""
    shutil.copytree(deployment.data_dir, target, symlinks=True)
    for stale in target.glob("edgekit.db*"):
        stale.unlink()
    return target


class Slowloris:
    """Holds `count` connections that never finish a request, re-opening any the server closes.

    `headers` of them trickle a request line and headers one byte per round, never ending them; the rest
    send complete headers of a POST with a large Content-Length and trickle its body. Runs in a thread.
    """

    HEAD = b"GET /repo/metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"
    POST = (
        b"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer slow\r\nContent-Length: 200000\r\n\r\n{"
    )

    def __init__(self, port: int, count: int, *, bodies: int, round_s: float = 0.5) -> None:
        self.address = ("127.0.0.1", port)
        self.count = count
        self.bodies = bodies
        self.round_s = round_s
        self.sockets: list[socket.socket | None] = [None] * count
        self.opened = 0
        self.reopened = 0
        self.connect_failures = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _open(self, index: int) -> None:
        sock = socket.socket()
        sock.settimeout(1.0)
        try:
            sock.connect(self.address)
            sock.sendall(self.POST if index < self.bodies else self.HEAD)
        except OSError:
            sock.close()
            self.connect_failures += 1
            return
        sock.setblocking(False)
        self.sockets[index] = sock
        self.opened += 1

    def start(self) -> Slowloris:
        for index in range(self.count):
            self._open(index)
        self._thread.start()
        return self

    def held(self) -> int:
        return sum(sock is not None for sock in self.sockets)

    def _run(self) -> None:
        filler = b"X-Slow-Loris-Header: " + b"a" * 64
        while not self._stop.wait(self.round_s):
            self.rounds += 1
            for index, sock in enumerate(self.sockets):
                if self._stop.is_set():
                    return
                if sock is not None:
                    closed = False
                    try:
                        closed = not sock.recv(4096)  # EOF: the server closed it (an answer also ends it)
                    except BlockingIOError:
                        pass  # nothing from the server: still open
                    except OSError:
                        closed = True
                    if not closed:
                        try:
                            byte = filler[self.rounds % len(filler) : self.rounds % len(filler) + 1]
                            sock.send(byte if index >= self.bodies else b"1")
                        except BlockingIOError:
                            pass
                        except OSError:
                            closed = True
                    if not closed:
                        continue
                    sock.close()
                    self.sockets[index] = None
                    self.reopened += 1
                self._open(index)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def poll(port: int, path: str = "/repo/metadata/timestamp.json", timeout_s: float = 30.0) -> int | str:
    """One device-style poll on a new connection: the status, or what went wrong."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        connection.close()
