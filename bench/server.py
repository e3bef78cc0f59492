"""`edgekit serve` under load on 127.0.0.1: metadata polls and batched telemetry, vs a plain static server.

    python -m bench.server [--quick] [--json OUT] [--workers N] [--db postgresql://...] [--profile]
                           [--duration S] [--connections C] [--devices K] [--batch-events E]
                           [--loadgen auto|wrk|python] [--baseline auto|nginx|python]

In a temporary folder it initialises a TUF repository (`TufRepository.init`, a fresh release key from
`signing.keys.generate_keypair`) and publishes one small signed bundle (so telemetry names a known bundle
id), starts `python -m edgekit serve --data D --port P --evaluate-every 0 [--workers N]` as a subprocess
(EDGEKIT_ADMIN_TOKEN set) and waits for /healthz. The poll baseline is a plain static file server on the
same repository folder, measured in the same run: nginx (a minimal config in the temp folder) when
installed, else Python's `http.server` (ThreadingHTTPServer, HTTP/1.1).

  (1) polls      GET /repo/metadata/timestamp.json (what every device polls) over C keep-alive
                 connections for S seconds: requests/s, p50/p99 latency; edgekit serve, then the baseline.
  (2) telemetry  F devices (a fleet: each device stays inside its per-device rate limit) registered in the
                 database; K keep-alive connections each post batches of E contract-valid `inferences`
                 events for a known bundle, cycling through their share of the devices, for S seconds:
                 events/s acknowledged (every event validated and stored), p50/p99 per batch. SQLite (the
                 default), and PostgreSQL with --db. Afterwards the stored events and batches are counted
                 in the database and compared with what the server acknowledged (none may be quarantined).
                 Baseline, same run: the same rows written straight into the same database by the ingest
                 module's own insert (one client, no HTTP, no parsing, no checks): the storage ceiling.

Load generator: `wrk` (one thread, a Lua `done` hook prints exact percentiles) when installed, else a
Python asyncio client on raw sockets in this process; telemetry always uses the Python client (each batch
needs fresh ids). On a 2-core host the load generator competes with the server for CPU, the Python one
much more than wrk. Both are closed-loop (a connection sends its next request when the previous answer
arrives), so p99 is the latency under that concurrency, not under an open arrival rate.

Targets (informational, PASS/MISS, never asserted): >= 2,000 polls/s with p99 <= 50 ms (a million devices
polling every ten minutes is 1,667/s), >= 30,000 telemetry events/s. Figures go to stdout, progress to
stderr. `--profile` runs the (single-worker) server under cProfile and prints its top functions; the
figures of a profiled run are slowed by the profiler. Everything stays on 127.0.0.1 and is bounded: S
seconds per measurement (10, or 3 with --quick), a fixed number of connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POLL_PATH = "/repo/metadata/timestamp.json"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
TARGETS = {"polls_per_s": 2000.0, "poll_p99_ms": 50.0, "events_per_s": 30000.0}

STATIC_SERVER = """
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as devices and the other servers use
    def log_message(self, *args):
        pass
handler = functools.partial(Handler, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"""

NGINX_CONF = """daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %.0f, "p90_us": %.0f, ' ..
    '"p99_us": %.0f, "max_us": %.0f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- host


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    from bench._host import cpu

    return {
        "cpu": cpu()[0],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "starlette": _version("starlette"),
        # what uvicorn picks with its defaults (http="auto", loop="auto")
        "http_impl": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "orjson": _version("orjson"),
        "wrk": shutil.which("wrk"),
        "nginx": shutil.which("nginx"),
    }


# ------------------------------------------------------------------------------------------ setup


def make_repository(workdir: Path) -> tuple[Path, str]:
    """An initialised TUF repository in workdir/data with one published bundle; (data dir, bundle id)."""
    from bench.verify import build_bundle
    from edgekit.server.tuf_repo import TufRepository

    ekb, _, _ = build_bundle(workdir / "bundle", 4096)  # a 4 KiB "model": only its id matters here
    release_pub = workdir / "bundle" / "keys" / "bench.pub"
    data_dir = workdir / "data"
    repo = TufRepository.init(data_dir, offline_keys_dir=workdir / "offline-keys", release_keys=[release_pub])
    published = repo.add_bundle(ekb, offline_keys_dir=workdir / "offline-keys")
    if not (data_dir / "repo" / POLL_PATH.removeprefix("/repo/")).is_file():
        raise RuntimeError(f"TufRepository.init wrote no {POLL_PATH}")
    return data_dir, str(published.custom["bundle_id"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server subprocess on 127.0.0.1."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _spawn(name: str, command: list[str], port: int, log_path: Path, env: dict[str, str]) -> Server:
    handle = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    try:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        handle.close()
    return Server(name, process, port, log_path)


def wait_ready(server: Server, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{server.port}{path}"
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode}):\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{server.name} not ready on {url} after {timeout:.0f}s:\n{server.log_tail()}")
        time.sleep(0.1)


def start_edgekit(
    data_dir: Path, workdir: Path, *, workers: int, db_url: str | None, profile_out: Path | None, tag: str
) -> Server:
    port = free_port()
    env = {**os.environ, "EDGEKIT_ADMIN_TOKEN": ADMIN_TOKEN}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    profiler = ["-m", "cProfile", "-o", str(profile_out)] if profile_out else []
    command = [sys.executable, *profiler, "-m", "edgekit", "serve", "--data", str(data_dir)]
    command += ["--host", HOST, "--port", str(port), "--evaluate-every", "0", "--workers", str(workers)]
    if db_url:
        command += ["--db", db_url]
    name = "edgekit serve (1 process)" if workers == 1 else f"edgekit serve --workers {workers}"
    server = _spawn(name, command, port, workdir / f"edgekit-{tag}.log", env)
    wait_ready(server, "/healthz")
    return server


def start_baseline(static_root: Path, workdir: Path, *, kind: str, workers: int) -> Server:
    port = free_port()
    nginx = shutil.which("nginx")
    if kind == "nginx" or (kind == "auto" and nginx):
        if not nginx:
            raise RuntimeError("--baseline nginx: nginx is not installed (apt-get install -y nginx-light)")
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr.strip()
        version = version.split("/", 1)[-1] if "/" in version else "?"
        tmp = workdir / "nginx"
        tmp.mkdir()
        user = ""
        if os.geteuid() == 0:  # workers would switch to nobody, who cannot read a 0700 temp folder
            user = "user root;"
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(workers=workers, tmp=tmp, user=user, host=HOST, port=port, root=static_root)
        )
        command = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
        name = f"nginx {version} ({workers} worker{'s' if workers > 1 else ''}, sendfile)"
    else:
        command = [sys.executable, "-c", STATIC_SERVER, str(port), str(static_root)]
        name = "python http.server (ThreadingHTTPServer, HTTP/1.1)"
    server = _spawn(name, command, port, workdir / "baseline.log", dict(os.environ))
    wait_ready(server, POLL_PATH)
    return server


def database_server_pid(data_dir: Path, db_url: str) -> int | None:
    """The postmaster of the PostgreSQL at `db_url` when it runs on this host (its CPU is measured), else
    None: the parent of this connection's backend process."""
    from edgekit.server.storage import open_database

    database = open_database(db_url, data_dir)
    try:
        backend = int(database.execute("SELECT pg_backend_pid()")[0][0])
    finally:
        database.close()
    try:
        with open(f"/proc/{backend}/stat", encoding="latin-1") as handle:
            head, tail = handle.read().rsplit(")", 1)
    except OSError:
        return None
    return int(tail.split()[1]) if head.endswith("(postgres") else None


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants (threads included), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="latin-1") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(child for child, parent in parents.items() if parent == current)
    return total


def fetch(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as response:
        return bytes(response.read())


# ---------------------------------------------------------------------------------- load: Python


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams (reconnects if the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


@dataclass
class LoadResult:
    """What one measurement produced; latencies in seconds."""

    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> LoadResult:
        if self.latencies:
            ordered = sorted(self.latencies)
            self.p50_ms = percentile(ordered, 0.50) * 1e3
            self.p90_ms = percentile(ordered, 0.90) * 1e3
            self.p99_ms = percentile(ordered, 0.99) * 1e3
            self.max_ms = ordered[-1] * 1e3
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "elapsed_s": self.elapsed_s,
            "requests_per_s": self.requests / self.elapsed_s if self.elapsed_s else 0.0,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            **self.extra,
        }


async def _python_polls(port: int, connections: int, duration: float, warmup: float) -> LoadResult:
    raw = f"GET {POLL_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: edgekit-bench\r\n\r\n".encode()
    result = LoadResult()
    measuring = False

    async def worker(deadline: float) -> None:
        connection = Connection(port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, _ = await connection.request(raw)
                if measuring:
                    result.latencies.append(time.perf_counter() - started)
                    result.requests += 1
                    result.errors += status != 200
        finally:
            await connection.close()

    if warmup > 0:
        await asyncio.gather(*(worker(time.perf_counter() + warmup) for _ in range(connections)))
    measuring = True
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + duration) for _ in range(connections)))
    result.elapsed_s = time.perf_counter() - started
    return result.finish()


# ------------------------------------------------------------------------------------- load: wrk


def _wrk_polls(port: int, connections: int, duration: float, warmup: float, workdir: Path) -> LoadResult:
    wrk = shutil.which("wrk")
    assert wrk is not None
    script = workdir / "report.lua"
    script.write_text(WRK_SCRIPT)
    url = f"http://{HOST}:{port}{POLL_PATH}"

    def run(seconds: float) -> dict[str, Any]:
        command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
        completed = subprocess.run(
            [*command, "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 30
        )
        match = re.search(r"^WRKJSON (\{.*\})$", completed.stdout, re.MULTILINE)
        if completed.returncode != 0 or not match:
            raise RuntimeError(
                f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
            )
        return dict(json.loads(match.group(1)))

    if warmup > 0:
        run(warmup)
    figures = run(duration)
    errors = sum(
        figures[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        requests=figures["requests"],
        errors=errors,
        elapsed_s=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1e3,
        p90_ms=figures["p90_us"] / 1e3,
        p99_ms=figures["p99_us"] / 1e3,
        max_ms=figures["max_us"] / 1e3,
        extra={"wrk": figures},
    )


def _server_cpu(result: LoadResult, seconds: float) -> None:
    result.extra["server_cpu_s"] = seconds
    result.extra["server_cpu_percent"] = 100 * seconds / result.elapsed_s if result.elapsed_s else 0.0


def measure_polls(
    server: Server, *, loadgen: str, connections: int, duration: float, warmup: float, workdir: Path
) -> LoadResult:
    log(f"polls: {server.name}, {connections} keep-alive connections, {duration:.0f}s ({loadgen})")
    if loadgen == "wrk":
        _wrk_polls(server.port, connections, warmup, 0, workdir)
        cpu = tree_cpu_seconds(server.process.pid)
        result = _wrk_polls(server.port, connections, duration, 0, workdir)
    else:
        asyncio.run(_python_polls(server.port, connections, warmup, 0))
        cpu = tree_cpu_seconds(server.process.pid)
        result = asyncio.run(_python_polls(server.port, connections, duration, 0))
    _server_cpu(result, tree_cpu_seconds(server.process.pid) - cpu)
    log(
        f"  {result.requests / result.elapsed_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms, {result.errors} errors"
    )
    return result


# -------------------------------------------------------------------------------------- telemetry

# A contract-valid inference aggregate: 100 inferences in a minute, histogram bounds respected.
EVENT = (
    '{{"id":"{batch}-{index}","kind":"inferences","time":{time:.3f},"payload":{{"bundle_id":"{bundle}",'
    '"errors":0,"inferences":100,"latency_ms_buckets":[0,3,40,50,7,0,0,0,0,0,0,0,0],'
    '"latency_ms_sum":{total:.1f},"version":"1.0.0","window_s":60.0}}}}'
)


def batch_body(device_id: str, batch_id: str, events: int, now: float, bundle: str) -> bytes:
    """One `edgekit.telemetry/v1` batch with `events` inference aggregates (ids unique per batch)."""
    items = ",".join(
        EVENT.format(batch=batch_id, index=i, time=now - events + i, total=600.5 + i % 7, bundle=bundle)
        for i in range(events)
    )
    return (
        f'{{"schema":"edgekit.telemetry/v1","batch_id":"{batch_id}","device_id":"{device_id}",'
        f'"sent_at":{now:.3f},"events":[{items}]}}'
    ).encode()


def register_devices(data_dir: Path, db_url: str | None, prefix: str, count: int) -> dict[str, str]:
    """Register `count` devices straight in the database (what POST /v1/admin/devices does)."""
    from edgekit.server.ingest import register_device
    from edgekit.server.storage import open_database

    database = open_database(db_url, data_dir)
    try:
        return {
            f"{prefix}-{i}": register_device(database, f"{prefix}-{i}", "bench-hw", time.time())
            for i in range(count)
        }
    finally:
        database.close()


async def _python_telemetry(
    port: int,
    shares: list[list[tuple[str, str]]],
    events: int,
    duration: float,
    bundle: str,
    sequence: dict[str, int],
) -> LoadResult:
    """Batches on every connection until `duration` has passed, each from the next device of its share;
    `sequence` numbers the batch ids per device."""
    result = LoadResult(
        extra={"acknowledged_events": 0, "acknowledged_batches": 0, "quarantined": 0, "statuses": {}}
    )

    async def connection_loop(share: list[tuple[str, str]], deadline: float) -> None:
        connection = Connection(port)
        turn = 0
        try:
            while time.perf_counter() < deadline:
                device_id, token = share[turn % len(share)]
                turn += 1
                sequence[device_id] = sequence.get(device_id, 0) + 1
                body = batch_body(device_id, f"b{sequence[device_id]}", events, time.time(), bundle)
                raw = (
                    f"POST /v1/telemetry HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                started = time.perf_counter()
                status, answer = await connection.request(raw)
                latency = time.perf_counter() - started
                statuses = result.extra["statuses"]
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                document = json.loads(answer) if status == 200 else {}
                result.extra["acknowledged_events"] += document.get("stored", 0)
                result.extra["quarantined"] += document.get("quarantined", 0)
                result.extra["acknowledged_batches"] += status == 200
                result.latencies.append(latency)
                result.requests += 1
                result.errors += status != 200
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection_loop(share, started + duration) for share in shares))
    result.elapsed_s = time.perf_counter() - started
    result.extra["events"] = result.extra["acknowledged_events"]
    result.extra["events_per_s"] = result.extra["acknowledged_events"] / result.elapsed_s
    result.extra["bytes_per_batch"] = len(batch_body("x" * 12, "b1", events, time.time(), bundle))
    return result.finish()


def stored_counts(data_dir: Path, db_url: str | None, prefix: str) -> tuple[int, int, int, int]:
    """Events, batches, events the batches declare, and quarantined events, for this run's devices."""
    from edgekit.server.storage import open_database

    database = open_database(db_url, data_dir)
    try:
        pattern = (f"{prefix}-%",)
        events = database.execute("SELECT COUNT(*) FROM events WHERE device_id LIKE ?", pattern)[0][0]
        batches, declared = database.execute(
            "SELECT COUNT(*), COALESCE(SUM(events), 0) FROM batches WHERE device_id LIKE ?", pattern
        )[0]
        held = database.execute("SELECT COUNT(*) FROM quarantine WHERE device_id LIKE ?", pattern)[0][0]
        return int(events), int(batches), int(declared), int(held)
    finally:
        database.close()


def measure_telemetry(
    server: Server,
    data_dir: Path,
    db_url: str | None,
    *,
    connections: int,
    fleet: int,
    events: int,
    duration: float,
    warmup: float,
    label: str,
    bundle: str,
) -> LoadResult:
    prefix = f"bench{os.getpid()}{label}"
    tokens = list(register_devices(data_dir, db_url, prefix, fleet).items())
    shares = [tokens[i::connections] for i in range(connections)]
    log(
        f"telemetry ({label}): {connections} connections, {fleet} devices, {events}-event batches, "
        f"{duration:.0f}s ({server.name})"
    )
    sequence: dict[str, int] = {}
    warm = asyncio.run(_python_telemetry(server.port, shares, events, warmup, bundle, sequence))
    postmaster = database_server_pid(data_dir, db_url) if db_url else None
    cpu = tree_cpu_seconds(server.process.pid)
    database_cpu = tree_cpu_seconds(postmaster) if postmaster else 0.0
    result = asyncio.run(_python_telemetry(server.port, shares, events, duration, bundle, sequence))
    _server_cpu(result, tree_cpu_seconds(server.process.pid) - cpu)
    measured = max(1, result.extra["acknowledged_events"])
    result.extra["server_cpu_us_per_event"] = 1e6 * result.extra["server_cpu_s"] / measured
    if postmaster:  # this PostgreSQL cluster's processes (it runs on this host)
        result.extra["database_cpu_us_per_event"] = (
            1e6 * (tree_cpu_seconds(postmaster) - database_cpu) / measured
        )
    events_stored, batches_stored, declared, held = stored_counts(data_dir, db_url, prefix)
    acked_events = result.extra["acknowledged_events"] + warm.extra["acknowledged_events"]
    acked_batches = result.extra["acknowledged_batches"] + warm.extra["acknowledged_batches"]
    result.extra["stored"] = {
        "events": events_stored,
        "batches": batches_stored,
        "batch_declared_events": declared,
        "acknowledged_events": acked_events,
        "acknowledged_batches": acked_batches,
        "quarantined": held,
        "match": events_stored == acked_events == declared and batches_stored == acked_batches and held == 0,
    }
    log(
        f"  {result.extra['events_per_s']:,.0f} events/s "
        f"({result.requests / result.elapsed_s:.1f} batches/s), "
        f"p99 {result.p99_ms:.1f} ms per batch; stored {events_stored} events in {batches_stored} batches, "
        f"acknowledged {acked_events} in {acked_batches}, quarantined {held}"
    )
    return result


def measure_insert_baseline(
    data_dir: Path, db_url: str | None, *, events: int, duration: float, bundle: str, label: str
) -> LoadResult:
    """The same rows written straight into the same database by ingest's own insert, one client: no HTTP,
    no parsing, no checks (the storage ceiling the server's figure compares with)."""
    from edgekit.server import ingest
    from edgekit.server.storage import open_database

    database = open_database(db_url, data_dir)
    prefix = f"benchbase{os.getpid()}{label}"
    payload = json.loads(batch_body(prefix, "b0", 1, time.time(), bundle))["events"][0]["payload"]
    text = ingest._inferences_json(payload)
    result = LoadResult()
    log(f"baseline ({label}): direct inserts of {events}-row batches, {duration:.0f}s")
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < duration:
            batch = f"{prefix}:b{result.requests}"
            now = time.time()
            rows = [
                (f"{batch}-{i}", prefix, batch, "inferences", now - i, now, bundle, text)
                for i in range(events)
            ]
            t0 = time.perf_counter()
            with database.transaction():
                ingest._insert_events(database, rows)
            result.latencies.append(time.perf_counter() - t0)
            result.requests += 1
        result.elapsed_s = time.perf_counter() - started
    finally:
        database.close()
    result.extra["events"] = result.requests * events
    result.extra["events_per_s"] = result.extra["events"] / result.elapsed_s
    log(f"  {result.extra['events_per_s']:,.0f} rows/s")
    return result.finish()


# ------------------------------------------------------------------------------------------ profile


def profile_report(path: Path, top: int = 25) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


# ------------------------------------------------------------------------------------------ output


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def format_table(rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    width = max(32, *(len(r["server"]) + 2 for r in rows))
    lines = [
        f"{'measurement':<30}{'server':<{width}}{'req/s':>9}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'srv CPU':>9}",
        "-" * (30 + width + 54),
    ]
    for row in rows:
        cpu = _fmt(row.get("server_cpu_percent", float("nan"))) + "%"
        lines.append(
            f"{row['measurement']:<30}{row['server']:<{width}}{_fmt(row['requests_per_s']):>9}"
            f"{_fmt(row.get('events_per_s', float('nan'))):>10}{_fmt(row['p50_ms'], 2):>9}"
            f"{_fmt(row['p99_ms'], 2):>9}{row['errors']:>8}{cpu:>9}"
        )
    lines += ["", f"{'target':<40}{'value':>12}{'target':>14}{'':>8}", "-" * 74]
    for target in targets:
        lines.append(f"{target['name']:<40}{target['value']:>12}{target['target']:>14}{target['verdict']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 3 s per measurement (smoke run)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--workers", type=int, default=1, help="server processes (default 1: edgekit serve)")
    parser.add_argument("--db", help="also measure telemetry on this PostgreSQL URL (postgresql://...)")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10, --quick 3)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections for polls")
    parser.add_argument("--devices", type=int, help="concurrent telemetry connections (default 8, --quick 4)")
    parser.add_argument(
        "--fleet", type=int, help="telemetry devices the connections take turns as (default 400, --quick 100)"
    )
    parser.add_argument("--batch-events", type=int, default=500, help="events per telemetry batch")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--baseline", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--profile", action="store_true", help="run the server under cProfile (1 worker)")
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    warmup = 0.5 if args.quick else 1.0
    devices = args.devices if args.devices is not None else (4 if args.quick else 8)
    fleet = args.fleet if args.fleet is not None else (100 if args.quick else 400)
    if duration <= 0 or args.connections < 1 or devices < 1 or args.workers < 1 or fleet < devices:
        parser.error("--duration, --connections, --devices, --workers positive; --fleet >= --devices")
    if not 1 <= args.batch_events <= 5000:
        parser.error("--batch-events must be in 1..5000 (the server's MAX_EVENTS)")
    if args.profile and args.workers != 1:
        parser.error("--profile needs --workers 1")
    if args.db and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error("--db: a postgresql:// URL (SQLite is always measured)")
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    loadgen = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "python")
    host = host_info()

    print(
        f"host: {host['cpu']} ({host['cores']} cores), Python {host['python']}, uvicorn {host['uvicorn']} "
        f"(http {host['http_impl']}, loop {host['event_loop']}), fastapi {host['fastapi']}, "
        f"starlette {host['starlette']}, orjson {host['orjson'] or 'not installed'}"
    )
    sys.stdout.flush()
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "host": host}
    servers: list[Server] = []
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-server-") as tmp:
        workdir = Path(tmp)
        try:
            data_dir, bundle = make_repository(workdir)
            static_root = workdir / "static"
            static_root.mkdir()
            (static_root / "repo").symlink_to(data_dir / "repo", target_is_directory=True)
            profile_out = workdir / "server.prof" if args.profile else None
            edgekit = start_edgekit(
                data_dir, workdir, workers=args.workers, db_url=None, profile_out=profile_out, tag="sqlite"
            )
            servers.append(edgekit)
            baseline = start_baseline(static_root, workdir, kind=args.baseline, workers=args.workers)
            servers.append(baseline)
            expected = (data_dir / "repo" / "metadata" / "timestamp.json").read_bytes()
            for server in (edgekit, baseline):
                if fetch(server.port, POLL_PATH) != expected:
                    raise RuntimeError(f"{server.name} served a different {POLL_PATH}")
            log(
                f"servers up: {edgekit.name} on :{edgekit.port}, baseline {baseline.name} on :{baseline.port}"
            )
            results["baseline"] = baseline.name
            results["edgekit_server"] = edgekit.name
            results["loadgen"] = "wrk 1 thread" if loadgen == "wrk" else "python asyncio (in-process)"
            results["config"] = {
                "duration_s": duration,
                "warmup_s": warmup,
                "connections": args.connections,
                "devices": devices,
                "batch_events": args.batch_events,
                "workers": args.workers,
                "poll_path": POLL_PATH,
                "poll_bytes": len(expected),
            }
            measured: dict[str, LoadResult] = {}
            for key, server in (("polls_edgekit", edgekit), ("polls_baseline", baseline)):
                measured[key] = measure_polls(
                    server,
                    loadgen=loadgen,
                    connections=args.connections,
                    duration=duration,
                    warmup=warmup,
                    workdir=workdir,
                )
                rows.append(
                    {
                        "measurement": "poll timestamp.json",
                        "server": server.name + (" (baseline)" if server is baseline else ""),
                        **measured[key].to_dict(),
                    }
                )
            telemetry_runs = [("sqlite", None, edgekit)]
            if args.db:
                log("starting a second edgekit server on the PostgreSQL database")
                pg_server = start_edgekit(
                    data_dir, workdir, workers=args.workers, db_url=args.db, profile_out=None, tag="pg"
                )
                servers.append(pg_server)
                telemetry_runs.append(("postgresql", args.db, pg_server))
            for label, db_url, server in telemetry_runs:
                key = f"telemetry_{label}"
                measured[key] = measure_telemetry(
                    server,
                    data_dir,
                    db_url,
                    connections=devices,
                    fleet=fleet,
                    events=args.batch_events,
                    duration=duration,
                    warmup=warmup,
                    label=label,
                    bundle=bundle,
                )
                database = "SQLite" if label == "sqlite" else "PostgreSQL"
                rows.append(
                    {
                        "measurement": f"telemetry {args.batch_events}-event batch",
                        "server": f"{server.name}, {database}",
                        **measured[key].to_dict(),
                    }
                )
                measured[f"insert_baseline_{label}"] = measure_insert_baseline(
                    data_dir, db_url, events=args.batch_events, duration=duration, bundle=bundle, label=label
                )
                rows.append(
                    {
                        "measurement": f"insert {args.batch_events} rows",
                        "server": f"direct, no HTTP or checks, {database} (baseline)",
                        **measured[f"insert_baseline_{label}"].to_dict(),
                    }
                )
        finally:
            for server in reversed(servers):
                server.stop()
        if args.profile and profile_out is not None and profile_out.is_file():
            profile_text = profile_report(profile_out)
            log(f"cProfile of the server process (figures above are slowed by it):\n{profile_text}")

    polls = measured["polls_edgekit"].to_dict()
    base = measured["polls_baseline"].to_dict()
    targets = [
        {
            "name": "edgekit polls/s",
            "value": f"{polls['requests_per_s']:,.0f}",
            "target": f">= {TARGETS['polls_per_s']:,.0f}",
            "met": polls["requests_per_s"] >= TARGETS["polls_per_s"],
        },
        {
            "name": "edgekit poll p99 ms",
            "value": f"{polls['p99_ms']:.1f}",
            "target": f"<= {TARGETS['poll_p99_ms']:.0f}",
            "met": polls["p99_ms"] <= TARGETS["poll_p99_ms"],
        },
    ]
    for label in ("sqlite", "postgresql"):
        if f"telemetry_{label}" in measured:
            figure = measured[f"telemetry_{label}"].extra["events_per_s"]
            targets.append(
                {
                    "name": f"telemetry events/s ({'SQLite' if label == 'sqlite' else 'PostgreSQL'})",
                    "value": f"{figure:,.0f}",
                    "target": f">= {TARGETS['events_per_s']:,.0f}",
                    "met": figure >= TARGETS["events_per_s"],
                }
            )
            ceiling = measured[f"insert_baseline_{label}"].extra["events_per_s"]
            targets.append(
                {
                    "name": f"ingest / direct insert ({'SQLite' if label == 'sqlite' else 'PostgreSQL'})",
                    "value": f"{figure / ceiling:.3f}x" if ceiling else "-",
                    "target": "-",
                    "met": True,
                    "info": True,
                }
            )
    for target in targets:
        target["verdict"] = "info" if target.pop("info", False) else "PASS" if target["met"] else "MISS"
    ratio = polls["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else float("nan")
    targets.append(
        {"name": "edgekit / baseline polls/s", "value": f"{ratio:.3f}x", "target": "-", "verdict": "info"}
    )

    print(f"baseline: {results['baseline']} on the same repository folder, same run")
    print(
        f"load: {results['loadgen']}; polls: {args.connections} keep-alive connections, GET {POLL_PATH} "
        f"({len(expected)} bytes); telemetry: {devices} connections taking turns as {fleet} devices, "
        f"{args.batch_events}-event batches "
        f"({measured['telemetry_sqlite'].extra['bytes_per_batch'] / 1024:.0f} KiB, contract-valid); "
        f"{duration:.0f} s per measurement after {warmup:.1f} s warm-up, closed loop"
    )
    if loadgen == "python":
        print("note: the Python load generator shares this host's CPU with the server (wrk is not used)")
    print()
    print(format_table(rows, targets))
    print()
    print("targets are informational (PASS/MISS), not assertions; p99 per request (polls) or per batch")
    print(
        f"srv CPU = CPU time of the server's process tree / wall time ({100 * (os.cpu_count() or 1)}% = "
        "every core of this host)"
    )
    for label in ("sqlite", "postgresql"):
        if f"telemetry_{label}" in measured:
            extra = measured[f"telemetry_{label}"].extra
            line = f"{label}: CPU per acknowledged event: server {extra['server_cpu_us_per_event']:.1f} us"
            if "database_cpu_us_per_event" in extra:
                line += f", local PostgreSQL processes {extra['database_cpu_us_per_event']:.1f} us"
            print(line)
    all_match = True
    for label in ("sqlite", "postgresql"):
        if f"telemetry_{label}" in measured:
            stored = measured[f"telemetry_{label}"].extra["stored"]
            all_match &= stored["match"]
            print(
                f"{label}: stored {stored['events']} events in {stored['batches']} batches, acknowledged "
                f"{stored['acknowledged_events']} in {stored['acknowledged_batches']}, quarantined "
                f"{stored['quarantined']}: "
                f"{'match' if stored['match'] else 'MISMATCH'}"
            )
    results.update(
        {
            "rows": rows,
            "measurements": {key: value.to_dict() for key, value in measured.items()},
            "targets": targets,
            "stored_matches_acknowledged": all_match,
        }
    )
    if profile_text:
        results["profile"] = profile_text
    results["elapsed_s"] = time.perf_counter() - _START
    print(f"elapsed: {results['elapsed_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
