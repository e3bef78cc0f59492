"""Finding 6: 1,100 half-sent requests with the default file limit left 0 of 99 metadata polls answered.

A real `edgekit serve` subprocess on loopback, with RLIMIT_NOFILE 1,024 (soft and hard, so the server
cannot raise it), holds 1,100 slow connections for 20 s: most trickle request headers one byte at a time
and never finish them, the others send complete headers and trickle a body. Whenever the server closes
one, the attacker opens another. Meanwhile a device-style poller fetches timestamp.json on new
connections: every poll must be answered. The only time bound is the poll's own client timeout.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial._front import ServeProcess, Slowloris, copy_data, poll

SLOW_CONNECTIONS = 1_100  # as in the finding: more than the file limit
SLOW_BODIES = 200
HOLD_S = 20.0
POLLS = 40  # at most; the poller stops at HOLD_S


@pytest.mark.slow
def test_metadata_polls_are_answered_while_a_thousand_slow_clients_hold_connections(
    deployment: Any, tmp_path: Path
) -> None:
    data_dir = copy_data(deployment, tmp_path / "data")
    server = ServeProcess(data_dir, tmp_path / "serve.log", nofile=1024)
    attacker = None
    try:
        assert poll(server.port) == 200
        attacker = Slowloris(server.port, SLOW_CONNECTIONS, bodies=SLOW_BODIES).start()
        time.sleep(1.0)  # let the server take the flood in before the first poll
        results: list[int | str] = []
        started = time.monotonic()
        while len(results) < POLLS and time.monotonic() - started < HOLD_S:
            results.append(poll(server.port, timeout_s=30.0))
            time.sleep(0.25)
        held = attacker.held()
        answered = sum(result == 200 for result in results)
        assert results and answered == len(results), (
            f"{answered} of {len(results)} polls answered while {held} slow connections were held "
            f"(opened {attacker.opened}, re-opened {attacker.reopened}): {results[:10]}\n"
            f"{server.output()[-2000:]}"
        )
        assert attacker.opened >= SLOW_CONNECTIONS  # the flood was really there
        assert server.process.poll() is None
        status, metrics = server.http.request("GET", "/metrics")
        evicted = re.search(r"^edgekit_front_evicted_total (\d+)", metrics, re.M)
        assert status == 200 and evicted is not None and int(evicted.group(1)) > 0, metrics[-1500:]
    finally:
        if attacker is not None:
            attacker.stop()
        server.stop()


@pytest.mark.parametrize(
    "start",
    [b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /v1/telemetry HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"],
    ids=["headers", "body"],
)
def test_a_client_that_never_finishes_its_request_is_closed(
    deployment: Any, tmp_path: Path, start: bytes
) -> None:
    data_dir = copy_data(deployment, tmp_path / "data")
    server = ServeProcess(
        data_dir, tmp_path / "serve.log", args=["--header-timeout", "1", "--body-timeout", "1"]
    )
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(start)
            received = b""
            try:
                while True:  # keep trickling; the server must end it (EOF), the 30 s timeout bounds the wait
                    sock.sendall(b"a")
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    received += chunk
            except (ConnectionResetError, BrokenPipeError):
                pass
        assert not received.startswith(b"HTTP/1.1 200"), received[:200]
        assert poll(server.port) == 200  # and the server goes on serving
    finally:
        server.stop()


def test_a_client_that_stops_reading_its_answer_is_closed(deployment: Any, tmp_path: Path) -> None:
    data_dir = copy_data(deployment, tmp_path / "data")
    size = 256 << 20  # far more than the socket buffers between the two ends hold
    with open(data_dir / "repo" / "targets" / "large.bin", "wb") as handle:
        handle.truncate(size)  # sparse: costs no disk
    server = ServeProcess(data_dir, tmp_path / "serve.log", args=["--body-timeout", "1"])
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /repo/targets/large.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            timed_out = 0
            for _ in range(120):  # not reading; wait (bounded) until the server gives up on us
                _status, metrics = server.http.request("GET", "/metrics")
                found = re.search(r"^edgekit_front_timed_out_total (\d+)", metrics, re.M)
                timed_out = int(found.group(1)) if found else 0
                if timed_out:
                    break
                time.sleep(0.5)
            assert timed_out >= 1, metrics[-1500:]
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert 0 < received < size  # the answer was cut, not sent whole
        assert poll(server.port) == 200
    finally:
        server.stop()
