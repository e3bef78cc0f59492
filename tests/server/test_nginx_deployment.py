"""The documented deployment, run for real: Debian's nginx in front of two `edgekit serve` processes on one
PostgreSQL, with the configuration `edgekit deploy nginx-config` writes.

Devices reach everything through nginx only: real device runtimes (TUF updater, telemetry uploader) and a
synthetic fleet that gives the gates enough devices. A rollout starts; one server process is killed with
SIGKILL while telemetry is in flight; the fleet keeps polling and reporting; the gates keep being evaluated
by the surviving process (one evaluator at a time through PostgreSQL's advisory lock) until the rollout
completes. Then nothing may be missing or doubled in the database, and with both servers down nginx still
serves the repository to devices.

Time: the gates need device-hours of exposure, so the two server processes run `edgekit serve` (the CLI
itself, unchanged) with `time.time` accelerated before edgekit is imported, as the fleet demo does
(`edgekit serve` has no clock option on purpose); the synthetic devices stamp their events with the same
clock. The real devices keep the real clock: the server rebases a skewed device's batch (ingest). Bounded
by counts, not durations; everything on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.rollout.plan import RolloutPlan, arm
from tests.server.conftest import Http, empty_database
from tests.server.nginx import NginxProcess, find_nginx
from tests.server.test_serve_cli import TOKEN, free_port, operator  # noqa: F401 - the fixture

SPEEDUP = 1800.0  # simulated seconds per real second: an hour of exposure in two seconds
SYNTHETIC = 120  # devices that report like the fleet in tests/server/fleet.py
ROUNDS = 80  # at most this many report rounds before the rollout must have completed
GATES = {
    "min_devices_per_arm": 3,
    "min_device_hours_per_arm": 1.0,
    "min_expected_events": 1.0,
    "stage_min_hours": [[25, 0.0], [100, 0.0]],
    "default_stage_min_hours": 0.0,
    "stage_deadline_hours": 2000.0,
    "negligible_crash_rate_per_device_hour": 0.2,
    "negligible_error_rate": 0.05,
    "min_latency_samples": 10,
    "max_crash_rate_per_device_hour": 0.3,
    "max_install_failure_share": 0.2,
}
# `edgekit serve` with the accelerated clock: time.time is replaced before anything of edgekit loads.
_LAUNCH = (
    "import sys, time\n"
    "t0, speedup, real = float(sys.argv[1]), float(sys.argv[2]), time.time\n"
    "time.time = lambda: t0 + (real() - t0) * speedup\n"
    "from edgekit.cli import main\n"
    "main(sys.argv[3:])\n"
)


class Clock:
    """The accelerated clock every process of the test shares."""

    def __init__(self) -> None:
        self.t0 = time.time()

    def __call__(self) -> float:
        return self.t0 + (time.time() - self.t0) * SPEEDUP


class Serve:
    """One `edgekit serve` process (single process, background gate evaluator every second)."""

    def __init__(self, data_dir: Path, db_url: str, gates: Path, clock: Clock, log: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-c", _LAUNCH, repr(clock.t0), repr(SPEEDUP), "serve"]
        command += ["--data", str(data_dir), "--db", db_url, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--gates", str(gates), "--evaluate-every", "1"]
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, "EDGEKIT_ADMIN_TOKEN": TOKEN},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log
        self.http = Http(f"http://127.0.0.1:{self.port}")

    def wait_ready(self) -> None:
        for _ in range(600):
            try:
                if self.http.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"edgekit serve did not start:\n{self.log.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # no shutdown hooks, no flush
        self.process.wait(timeout=10)


@dataclass
class Ledger:
    """Every batch a device sent through nginx: id -> (device, event ids), and every answer it got."""

    batches: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, device_id: str, body: bytes, status: int) -> None:
        document = json.loads(body)
        with self.lock:
            self.batches[f"{device_id}:{document['batch_id']}"] = (
                device_id,
                tuple(e["id"] for e in document["events"]),
            )
            self.answers.append(status)


class RecordingTransport:
    """The uploader's real urllib transport, noting each batch and answer in the ledger."""

    def __init__(self, ledger: Ledger, device_id: str) -> None:
        from device_runtime.uploader import UrllibTransport

        self.inner, self.ledger, self.device_id = UrllibTransport(), ledger, device_id

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        status, answer = self.inner(url, body, headers, timeout_s)
        self.ledger.sent(self.device_id, body, status)
        return status, answer


class Device:
    """A real device: Runtime, TUF updater and telemetry uploader, all through nginx."""

    def __init__(self, base: str, deployment: Any, root: bytes, folder: Path, device_id: str, token: str,
                 ledger: Ledger) -> None:  # fmt: skip
        from device_runtime import Runtime
        from device_runtime.updater import Updater, UpdaterConfig
        from device_runtime.uploader import Uploader, UploaderConfig
        from tests.device_runtime.runtime_fixtures import config

        self.runtime = Runtime(
            replace(config(folder / "store", deployment.releases, trial_inferences=1), device_id=device_id)
        )
        self.runtime.install(deployment.releases.bundles["1.0.0"])  # the factory image
        self.updater = Updater(
            UpdaterConfig(
                metadata_url=f"{base}/repo/metadata/",
                targets_url=f"{base}/repo/targets/",
                metadata_dir=folder / "tuf",
                download_dir=folder / "downloads",
                model="tiny",
                channel="stable",
                device_id=device_id,
                bootstrap_root=root,
            )
        )
        self.uploader = Uploader(
            self.runtime.telemetry,
            UploaderConfig(endpoint=f"{base}/v1/telemetry", device_id=device_id, token=token),
            transport=RecordingTransport(ledger, device_id),
        )

    def step(self) -> str:
        """Poll TUF (install what the plan says), run one inference, upload everything queued."""
        from tests.device_runtime.runtime_fixtures import sample

        outcome = self.updater.update(self.runtime)
        assert outcome.status in ("installed", "up-to-date"), outcome
        self.runtime.predict(sample())
        self.upload()
        return str(self.runtime.status()["active"]["version"])

    def upload(self) -> None:
        for _ in range(50):  # bounded: a queue of a few events drains in one or two batches
            result = self.uploader.upload_once()
            assert not result.failed, result
            if result.sent == 0:
                return
        raise AssertionError("the telemetry queue did not drain")


def report(http: Http, ledger: Ledger, device_id: str, token: str, events: list[dict[str, Any]]) -> None:
    """One batch from a synthetic device; resent with the same batch id until acknowledged (bounded)."""
    body = json.dumps(
        {
            "schema": "edgekit.telemetry/v1",
            "batch_id": uuid.uuid4().hex,
            "device_id": device_id,
            "sent_at": events[-1]["time"],
            "events": events,
        }
    ).encode()
    for _ in range(5):
        status, answer = http.request("POST", "/v1/telemetry", raw=body, token=token)
        ledger.sent(device_id, body, status)
        if status in (200, 409):
            return
    raise AssertionError(f"batch from {device_id} never acknowledged: {status} {answer}")


def fleet_round(
    http: Http,
    ledger: Ledger,
    plan: RolloutPlan,
    tokens: dict[str, str],
    clock: Callable[[], float],
    installed: set[tuple[str, int]],
) -> list[threading.Thread]:
    """Every device in an arm reports once (four threads posting, so requests are in flight)."""
    work = []
    for device_id, token in tokens.items():
        side = arm(plan, device_id)
        if side not in ("treatment", "control"):
            continue
        bundle = plan.target.bundle_id if side == "treatment" else plan.baseline.bundle_id
        now = clock()
        events: list[dict[str, Any]] = []
        if side == "treatment" and (device_id, plan.stage_index) not in installed:
            installed.add((device_id, plan.stage_index))
            events.append(
                {"id": uuid.uuid4().hex, "kind": "install", "time": now - 1,
                 "payload": {"outcome": "activated", "bundle_id": bundle}}
            )  # fmt: skip
        payload = {
            "bundle_id": bundle,
            "inferences": 60,
            "errors": 0,
            "latency_ms_buckets": [0, 0, 50, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "latency_ms_sum": 240.0,
            "window_s": 600.0,
        }
        events.append({"id": uuid.uuid4().hex, "kind": "inferences", "time": now, "payload": payload})
        work.append((device_id, token, events))
    threads = [
        threading.Thread(target=lambda part=work[i::4]: [report(http, ledger, *w) for w in part])
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    return threads


def current_plan(http: Http, rollout_id: str) -> tuple[RolloutPlan, list[dict[str, Any]]]:
    status, body = http.request("GET", f"/v1/admin/rollouts/{rollout_id}", token=TOKEN)
    assert status == 200, body
    return RolloutPlan.from_dict(body["plan"]), body["decisions"]


def test_nginx_in_front_of_two_servers_loses_nothing_when_one_is_killed_mid_rollout(
    operator: tuple[Path, Path],  # noqa: F811 - the imported fixture
    postgres_url: str,
    deployment: Any,
    tmp_path: Path,
) -> None:
    find_nginx()  # skip (or fail under CI) before starting anything
    data_dir, _ = operator
    gates = tmp_path / "gates.json"
    gates.write_text(json.dumps(GATES))
    db_url = empty_database(postgres_url, tmp_path)
    clock = Clock()
    servers = [Serve(data_dir, db_url, gates, clock, tmp_path / f"serve-{i}.log") for i in range(2)]
    nginx: NginxProcess | None = None
    try:
        for server in servers:
            server.wait_ready()
        port = free_port()
        site = tmp_path / "edgekit.conf"
        upstreams = [f"--upstream=127.0.0.1:{s.port}" for s in servers]
        written = CliRunner().invoke(
            cli,
            ["deploy", "nginx-config", "--data", str(data_dir), *upstreams, "--listen", f"127.0.0.1:{port}",
             "-o", str(site), "--json"],
        )  # fmt: skip
        assert written.exit_code == 0, written.output
        assert json.loads(written.stdout)["path"] == str(site)
        nginx = NginxProcess(site, tmp_path / "nginx", port)
        nginx.wait_ready("/healthz")
        http = Http(f"http://127.0.0.1:{port}")

        # Devices register and start the rollout through nginx, as an operator's tools would.
        tokens = {}
        for index in range(SYNTHETIC + 3):
            device_id = f"sim-{index:04d}" if index < SYNTHETIC else f"real-{index - SYNTHETIC}"
            status, body = http.request(
                "POST", "/v1/admin/devices", {"device_id": device_id, "hardware_id": "rpi4"}, token=TOKEN
            )
            assert status == 200, body
            tokens[device_id] = body["token"]
        ledger = Ledger()
        root = (data_dir / "repo" / "metadata" / "1.root.json").read_bytes()
        devices = [
            Device(http.base, deployment, root, tmp_path / name, name, tokens.pop(name), ledger)
            for name in [f"real-{i}" for i in range(3)]
        ]
        status, body = http.request(
            "POST",
            "/v1/admin/rollouts",
            {"model": "tiny", "target_version": "1.1.0", "baseline_version": "1.0.0", "stages": [25, 100],
             "deadline_hours": 2000},
            token=TOKEN,
        )  # fmt: skip
        assert status == 200, body
        rollout_id = body["plan"]["rollout_id"]

        installed: set[tuple[str, int]] = set()
        killed_after: int | None = None  # decisions stored before the kill
        plan, decisions = current_plan(http, rollout_id)
        for round_index in range(ROUNDS):
            if plan.state != "running":
                break
            threads = fleet_round(http, ledger, plan, tokens, clock, installed)
            if round_index == 1:  # the fleet has reported once; its second round is in flight
                killed_after = len(decisions)
                servers[0].kill()
            for thread in threads:
                thread.join(timeout=120)
            for device in devices:
                device.step()
            time.sleep(0.2)  # a little simulated time between rounds (6 minutes)
            plan, decisions = current_plan(http, rollout_id)
        assert killed_after is not None, "the rollout ended before a server could be killed"
        assert servers[0].process.poll() is not None and servers[1].process.poll() is None

        # The surviving process went on evaluating to the end: decisions after the kill, up to completion.
        outcomes = [d["outcome"] for d in sorted(decisions, key=lambda d: d["seq"])]
        assert plan.state == "complete", (plan.state, outcomes[-3:], decisions[0])
        assert outcomes.count("promote") == 2, outcomes  # 25% -> 100% -> complete
        assert outcomes[killed_after:].count("promote") >= 1, (killed_after, outcomes)

        # Every device follows the finished rollout (TUF through nginx) and drains its queue.
        assert {device.step() for device in devices} == {"1.1.0"}

        # Nothing lost, nothing doubled: every batch sent is stored once with each of its events once. No
        # device saw the dead server: nginx sent what it refused (or dropped mid-request) to the other.
        assert set(ledger.answers) <= {200, 409}, sorted(set(ledger.answers))
        log = (tmp_path / "nginx" / "error.log").read_text(errors="replace")
        assert f'upstream: "http://127.0.0.1:{servers[0].port}/' in log, "no request met the dead server"
        from edgekit.server.storage import open_database

        database = open_database(db_url, tmp_path)
        try:
            stored_batches = dict(database.execute("SELECT batch_id, events FROM batches"))
            per_batch = dict(database.execute("SELECT batch_id, COUNT(*) FROM events GROUP BY batch_id"))
            quarantined = dict(
                database.execute("SELECT batch_id, COUNT(*) FROM quarantine GROUP BY batch_id")
            )
            event_ids = [row[0] for row in database.execute("SELECT event_id FROM events")]
            refused = {row[0] for row in database.execute("SELECT event_id FROM quarantine")}
        finally:
            database.close()
        assert set(ledger.batches) <= set(stored_batches), set(ledger.batches) - set(stored_batches)
        for key, (_, ids) in ledger.batches.items():
            assert per_batch.get(key, 0) + quarantined.get(key, 0) == len(ids), key
            assert stored_batches[key] == per_batch.get(key, 0), key
        # Event ids are stored per device (`device:id`); quarantine keeps the id the device sent.
        sent_ids = [(device, i) for device, ids in ledger.batches.values() for i in ids]
        expected = sorted(f"{device}:{i}" for device, i in set(sent_ids) if i not in refused)
        assert len(sent_ids) == len(set(sent_ids)) and sorted(event_ids) == expected
        assert not any(k.startswith("sim-") for k in quarantined), "the fleet's events are all valid"

        # Both servers down: the API is gone, the repository is still served and devices still update.
        servers[1].kill()
        assert http.request("GET", "/healthz")[0] == 502
        status, timestamp = http.request("GET", "/repo/metadata/timestamp.json")
        assert status == 200 and timestamp["signed"]["_type"] == "timestamp"
        for device in devices:
            outcome = device.updater.update(device.runtime)
            assert outcome.status == "up-to-date", outcome
    finally:
        if nginx is not None:
            nginx.stop()
        for server in servers:
            server.kill()


def test_nginx_config_refuses_a_data_dir_without_a_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["deploy", "nginx-config", "--data", str(tmp_path / "empty"), "--json"])
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and document["error"]["code"] == "NoRepository"
    assert "edgekit repo init" in document["error"]["hint"]


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(["--upstream", "localhost"], id="upstream-without-port"),
        pytest.param(["--upstream", "10.0.0.1:70000"], id="upstream-port-out-of-range"),
        pytest.param(["--listen", "0.0.0.0:"], id="listen-without-port"),
        pytest.param(["--metrics-allow", "everyone"], id="metrics-allow-not-an-address"),
        pytest.param(["--server-name", "a b"], id="server-name-with-a-space"),
    ],
)
def test_nginx_config_refuses_malformed_options(deployment: Any, option: list[str]) -> None:
    result = CliRunner().invoke(cli, ["deploy", "nginx-config", "--data", str(deployment.data_dir), *option])
    assert result.exit_code == 1 and option[0] in result.output and "Traceback" not in result.output


def test_nginx_config_caps_bodies_as_the_server_does_and_restricts_metrics(deployment: Any) -> None:
    from edgekit.server.app import MAX_ADMIN_BODY
    from edgekit.server.ingest import MAX_BATCH_BYTES

    result = CliRunner().invoke(
        cli,
        ["deploy", "nginx-config", "--data", str(deployment.data_dir), "--metrics-allow", "10.0.0.0/8",
         "--header-timeout", "5", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    text = document["config"]
    assert document["upstreams"] == ["127.0.0.1:8080"] and document["path"] is None
    assert f"client_max_body_size {MAX_ADMIN_BODY};" in text
    assert f"client_max_body_size {MAX_BATCH_BYTES};" in text
    assert "client_header_timeout 5s;" in text and "client_body_timeout 60s;" in text
    metrics = text.split("location = /metrics {")[1].split("}")[0]
    assert "allow 127.0.0.1;" in metrics and "allow 10.0.0.0/8;" in metrics and "deny all;" in metrics
    assert f'root "{deployment.data_dir.resolve()}";' in text


def test_nginx_config_refuses_a_data_path_nginx_cannot_quote(deployment: Any, tmp_path: Path) -> None:
    odd = tmp_path / "data$home"
    shutil.copytree(deployment.data_dir / "repo", odd / "repo", symlinks=True)
    result = CliRunner().invoke(cli, ["deploy", "nginx-config", "--data", str(odd), "--json"])
    document = json.loads(result.stdout)
    assert result.exit_code == 1 and "--data" in document["error"]["message"], document


def test_nginx_serves_the_repository_alone_with_each_files_cache_lifetime(
    deployment: Any, tmp_path: Path
) -> None:
    """No server process at all: nginx answers every repository file, with the lifetime its name allows."""
    find_nginx()
    data_dir = tmp_path / "data"
    shutil.copytree(deployment.data_dir / "repo", data_dir / "repo", symlinks=True)
    port, site, nowhere = free_port(), tmp_path / "edgekit.conf", f"127.0.0.1:{free_port()}"
    written = CliRunner().invoke(
        cli,
        ["deploy", "nginx-config", "--data", str(data_dir), "--upstream", nowhere, "--listen",
         f"127.0.0.1:{port}", "-o", str(site)],
    )  # fmt: skip
    assert written.exit_code == 0, written.output
    repo = data_dir / "repo"
    bundle = next((repo / "targets" / "bundles").rglob("*.ekb"))
    (repo / "metadata" / ".timestamp.json.0123.tmp").write_bytes(b"{}")  # an atomic write's temporary
    nginx = NginxProcess(site, tmp_path / "nginx", port)
    try:
        nginx.wait_ready("/repo/metadata/timestamp.json")

        def get(path: str) -> tuple[int, str | None, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                    return answer.status, answer.headers["Cache-Control"], answer.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Cache-Control"], b""

        immutable = "public, max-age=31536000, immutable"
        assert get("/repo/metadata/timestamp.json")[:2] == (200, "no-cache")
        assert get("/repo/metadata/root.json")[:2] == (200, "no-cache")
        assert get("/repo/metadata/1.root.json")[:2] == (200, immutable)
        assert get("/repo/metadata/1.snapshot.json")[:2] == (200, immutable)
        status, cache, body = get("/repo/" + bundle.relative_to(repo).as_posix())
        assert (status, cache, body) == (200, immutable, bundle.read_bytes())
        assert get("/repo/metadata/99.root.json")[:2] == (404, "no-store"), (
            "the next root's 404 is not cached"
        )
        assert get("/repo/metadata/.timestamp.json.0123.tmp")[0] == 404
        assert get("/healthz")[0] == 502  # the API needs a server; the repository does not
    finally:
        nginx.stop()
