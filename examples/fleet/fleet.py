#!/usr/bin/env python3
"""The fleet demo's moving parts: an accelerated-clock server, real device runtimes, a watcher, a summary.

    fleet.py serve    --data DIR --port P --gates demo_gates.json --t0 T0 --speedup S
    fleet.py bad-model IN.onnx OUT.onnx --swap 3:8 --swap 4:9      (the regression shipped as 1.2.0)
    fleet.py factory  --bundle digits-1.0.0.ekb --key release.pub --out DIR   (the factory image)
    fleet.py devices  --server URL --first N --count M ...           (one process, M real devices)
    fleet.py watch    --server URL --rollout ID --until complete     (progress lines until a decision)
    fleet.py summary  --server URL --build BUILD --data DIR ...       (what was shipped and decided)

`rollout_demo.sh` drives them; see README.md next to this file.

Time. A rollout needs device-hours of evidence, which a demo of a few minutes cannot wait for, so every
process of the demo reads the same accelerated clock, ``t0 + (time.time() - t0) * speedup``: the server
(gates, decision times, TUF expiries), and every device (telemetry times, trial windows, TUF expiry
checks). The server runs in-process here, through the public ``create_app(ServerConfig(clock=...))``,
because `edgekit serve` deliberately has no clock option. Nothing else is faked: devices are
``device_runtime.Runtime`` instances that verify and self-test every bundle they install, fetch plans and
bundles through TUF (``device_runtime.updater``), run onnxruntime on real images and upload telemetry
over HTTP (``device_runtime.uploader``); the server's gates decide from that telemetry alone.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "digits"
CHANNEL = "stable"
HARDWARE_ID = "demo-board"


# ---- shared helpers ------------------------------------------------------------------------------------
def accelerated(t0: float, speedup: float) -> Callable[[], float]:
    """The demo's clock: real time since `t0`, `speedup` times faster (seconds since the epoch)."""

    def clock() -> float:
        return t0 + (time.time() - t0) * speedup

    return clock


def api(server: str, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    """One admin-API call (JSON in, JSON out)."""
    token = token or os.environ.get("EDGEKIT_ADMIN_TOKEN", "")
    request = urllib.request.Request(
        server.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def write_json(path: Path, data: Any) -> None:
    """Atomic write (readers never see half a file)."""
    from signing.atomic import atomic_write

    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


def sim_label(seconds: float) -> str:
    """Simulated time since a rollout started, labelled: `sim 04:21 h` (`sim 1 d 02:30 h` past a day)."""
    minutes = int(max(0.0, seconds) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    return "sim " + (f"{days} d " if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d} h"


def sim_span(seconds: float) -> str:
    """A simulated duration in words: `4 h 21 min`."""
    minutes = int(max(0.0, seconds) // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


# ---- serve ---------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """`edgekit serve` (same app, SQLite in the data dir) with the demo's accelerated clock."""
    import uvicorn

    from edgekit.commands.serve import admin_token, load_gates
    from edgekit.server.app import ServerConfig, create_app
    from edgekit.server.storage import open_database

    data = Path(args.data)
    clock = accelerated(args.t0, args.speedup)
    token, where = admin_token(data, "EDGEKIT_ADMIN_TOKEN")
    app = create_app(
        ServerConfig(
            data_dir=data,
            database=open_database(None, data),
            admin_token=token,
            evaluate_every_s=args.evaluate_every,  # real seconds between gate evaluations
            refresh_metadata_every_s=args.refresh_every,  # real seconds between timestamp re-signs
            gates=load_gates(Path(args.gates)),
            clock=clock,
        )
    )
    print(
        f"edgekit server on http://127.0.0.1:{args.port} (SQLite in {data}, admin token from {where}, "
        f"clock x{args.speedup:g}, gates {args.gates})",
        flush=True,
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


# ---- bad-model -----------------------------------------------------------------------------------------
def cmd_bad_model(args: argparse.Namespace) -> int:
    """Copy an ONNX classifier with some output classes swapped: a label-order bug.

    The graph's output is renamed and fed through a Gather over the class axis, so the model still loads,
    still passes its own golden self-test (golden vectors are made from the model being bundled) and
    still agrees with itself after quantization; only ground truth can tell. This is the kind of
    regression a parity gate cannot catch and a rollout's accuracy gate must.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(args.input)
    graph = model.graph
    output = graph.output[0]
    classes = output.type.tensor_type.shape.dim[-1].dim_value
    permutation = list(range(classes))
    for pair in args.swap:
        a, b = (int(x) for x in pair.split(":"))
        permutation[a], permutation[b] = permutation[b], permutation[a]
    raw = f"{output.name}_before_label_bug"
    for node in graph.node:
        node.output[:] = [raw if name == output.name else name for name in node.output]
        node.input[:] = [raw if name == output.name else name for name in node.input]
    graph.initializer.append(
        numpy_helper.from_array(np.asarray(permutation, dtype=np.int64), name="label_bug_permutation")
    )
    graph.node.append(
        helper.make_node(
            "Gather", [raw, "label_bug_permutation"], [output.name], axis=1, name="label_bug_gather"
        )
    )
    onnx.checker.check_model(model)
    onnx.save(model, args.output)
    print(f"wrote {args.output}: {args.input} with classes swapped {', '.join(args.swap)}")
    return 0


# ---- factory image -------------------------------------------------------------------------------------
def cmd_factory(args: argparse.Namespace) -> int:
    """Install the first release into a template store: the image every device is flashed with."""
    from device_runtime import Runtime, RuntimeConfig

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    runtime = Runtime(
        RuntimeConfig(
            store_dir=out,
            trusted_keys=[Path(args.key)],
            device_id="factory",
            hardware_id=HARDWARE_ID,
            trial_inferences=0,
            trial_seconds=0,
        )
    )
    result = runtime.install(args.bundle)
    runtime.predict(Path(args.image).read_bytes())  # ends the factory trial: the image ships committed
    runtime.close()
    (out / "telemetry.db").unlink()  # each device starts its own queue
    for leftover in out.glob("telemetry.db-*"):
        leftover.unlink()
    print(f"factory image {out}: {result.name} {result.version}, verified and self-tested")
    return 0


# ---- devices -------------------------------------------------------------------------------------------
# What the fleet's cameras see, per digit class. Real fleets never see a uniform mix: digits on meters,
# house numbers and forms follow their own frequencies (a leading 1 is far more common than a 9), and each
# device sees its own place's mix around the fleet's. Both matter to the label-free gates: a label-order bug
# that swaps two classes is invisible in the predicted-class histogram when the two are equally common, and
# visible when they are not (here 3 and 4 are frequent, 8 and 9 rare); and the gates must not mistake
# device-to-device differences in mix for a shift (the arms hold different devices), which they can only
# show on a fleet whose devices differ.
FLEET_MIX = (0.06, 0.14, 0.09, 0.20, 0.20, 0.08, 0.07, 0.10, 0.03, 0.03)


def class_mix(device_id: str, classes: list[int], heterogeneity: float) -> dict[int, float]:
    """This device's share of each class: a Dirichlet draw around `FLEET_MIX` whose spread grows with
    `heterogeneity` (concentration 1 / heterogeneity), seeded by the device id (the same every run)."""
    import hashlib

    import numpy as np

    weights = np.array([FLEET_MIX[c % len(FLEET_MIX)] for c in classes], np.float64)
    weights /= weights.sum()
    if heterogeneity <= 0:
        return dict(zip(classes, weights.tolist(), strict=True))
    seed = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    drawn = np.random.default_rng(seed).dirichlet(weights / heterogeneity)
    return dict(zip(classes, np.maximum(drawn, 1e-6).tolist(), strict=True))


class Device:
    """One simulated device: its own store, runtime, TUF updater, telemetry uploader and token."""

    def __init__(self, device_id: str, folder: Path, token: str, shared: dict[str, Any]) -> None:
        from device_runtime import Runtime, RuntimeConfig
        from device_runtime.updater import Updater, UpdaterConfig
        from device_runtime.uploader import Uploader, UploaderConfig

        self.device_id = device_id
        clock = shared["clock"]
        self.runtime = Runtime(
            RuntimeConfig(
                store_dir=folder / "model",
                trusted_keys=[shared["key"]],
                device_id=device_id,
                hardware_id=HARDWARE_ID,
                trial_inferences=shared["trial_inferences"],
                trial_seconds=shared["trial_seconds"],
                engine_threads=1,
                clock=clock,
            )
        )
        server = shared["server"]
        self.updater = Updater(
            UpdaterConfig(
                metadata_url=f"{server}/repo/metadata/",
                targets_url=f"{server}/repo/targets/",
                metadata_dir=folder / "tuf",
                download_dir=folder / "downloads",
                model=MODEL,
                channel=CHANNEL,
                device_id=device_id,
                bootstrap_root=shared["root"],
                clock=clock,
            ),
            fetcher=shared["fetcher"],  # one connection pool per process, not per simulated device
        )
        self.uploader = Uploader(
            self.runtime.telemetry,
            UploaderConfig(endpoint=f"{server}/v1/telemetry", device_id=device_id, token=token, timeout_s=60),
            clock=clock,
        )
        self.version = self._version()
        self.mix = class_mix(device_id, shared["classes"], shared["heterogeneity"])

    def _version(self) -> str:
        active = self.runtime.status()["active"]
        return "none" if active is None else str(active["version"])

    def update(self, stats: Counter[str]) -> None:
        """One TUF update check; install what the signed plan says this device should run."""
        outcome = self.updater.update(self.runtime)
        stats[
            f"update {outcome.status}" + ("" if outcome.status != "refused" else f" ({outcome.reason})")
        ] += 1
        if outcome.shadow:
            stats[f"shadow {outcome.shadow}"] += 1
        decision = outcome.decision
        if (
            outcome.status == "refused"
            and outcome.reason == "install-rollback"
            and decision is not None
            and decision.state in ("halted", "rolled_back")
        ):
            # The plan sends this device back to the baseline, but it already committed the target, so its
            # release floor refuses the (older) baseline bundle. Its previous slot still holds the baseline:
            # go back to it locally. The demo's trial window is long enough that this should not happen;
            # the summary reports how often it did (see README: product gap).
            previous = self.runtime.status()["previous"]
            if previous and decision.wanted and previous["version"] == decision.wanted.version:
                self.runtime.revert(f"rollout {decision.state}: back to {previous['version']}")
                stats["local revert after a server rollback"] += 1
        self.version = self._version()

    def use(
        self,
        images: dict[int, list[bytes]],
        count: int,
        rng: random.Random,
        stats: Counter[str],
        *,
        feedback: bool = True,
    ) -> None:
        """Classify `count` images drawn from this device's class mix; with `feedback`, report the true
        class of each (the app's ground truth; a fleet without it sends no label at all)."""
        from device_runtime.errors import DeviceRuntimeError

        classes = sorted(images)
        for label in rng.choices(classes, weights=[self.mix[c] for c in classes], k=count):
            image = images[label][rng.randrange(len(images[label]))]
            try:
                result = self.runtime.predict(image)
            except DeviceRuntimeError as e:
                stats[f"predict error {type(e).__name__}"] += 1
                continue
            self._gap_between_frames()
            if feedback:
                self.runtime.feedback(result.prediction_id, label)
                stats["feedback"] += 1
            stats["predictions"] += 1
        self.version = self._version()

    def _gap_between_frames(self) -> None:
        """A camera's frames come with gaps, and a shadow trial runs in them: wait (at most a second) until
        the shadow has taken every input offered. Back-to-back predictions, as a simulated wake-up makes them,
        would instead fill the shadow's small queue (inputs dropped) and leave it no idle time (runs skipped
        by its CPU budget): a 1% stage would compare a handful of inputs per device, and take a day to judge.
        """
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            running = self.runtime.shadow_status()["running"]
            if running is None or running["pending"] == 0:
                return
            time.sleep(0.001)

    def upload(self, stats: Counter[str]) -> None:
        """Flush the inference aggregate and the health sketches of this wake-up; drain the queue."""
        self.runtime.flush_health()  # one `health` event per wake-up: the label-free gates' evidence
        self.runtime.flush_shadow()  # and one `shadow` event when it runs a shadow trial
        self.runtime.telemetry.flush()
        for _ in range(10):
            result = self.uploader.upload_once()
            if result.sent == 0:
                return
            if result.failed:
                stats["upload failures"] += 1
                return
            stats["events uploaded"] += result.acknowledged

    def close(self) -> None:
        self.runtime.close()


def _register(server: str, device_id: str, folder: Path) -> str:
    """The device's telemetry token, registered through the admin API once (kept in its store, 0600)."""
    path = folder / "token"
    if path.exists():
        return path.read_text().strip()
    answer = api(server, "POST", "/v1/admin/devices", {"device_id": device_id, "hardware_id": HARDWARE_ID})
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(answer["token"])
    return str(answer["token"])


def _flash(factory: Path, store: Path) -> None:
    """Copy the factory image's verified slots and state (not its telemetry) into a new device's store."""
    if (store / "state.json").exists():
        return
    store.mkdir(parents=True, exist_ok=True)
    shutil.copytree(factory / "slots", store / "slots")
    shutil.copy2(factory / "state.json", store / "state.json")


def cmd_devices(args: argparse.Namespace) -> int:
    """Run devices first..first+count-1 of the fleet in this process until SIGTERM."""
    from device_runtime.updater import BoundedFetcher

    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("device_runtime").setLevel(logging.ERROR)  # outcomes are counted in the status file
    clock = accelerated(args.t0, args.speedup)
    shared = {
        "clock": clock,
        "key": Path(args.key).read_bytes(),
        "root": Path(args.root).read_bytes(),
        "server": args.server.rstrip("/"),
        "fetcher": BoundedFetcher(timeout_s=120, min_speed_bytes_per_s=1024, grace_s=30),
        "trial_inferences": args.trial_inferences,
        "trial_seconds": args.trial_hours * 3600,
    }
    images: dict[int, list[bytes]] = {}
    for path in sorted(Path(args.images).glob("*_digit*.png")):
        images.setdefault(int(path.stem.rsplit("digit", 1)[1]), []).append(path.read_bytes())
    shared["classes"] = sorted(images)
    shared["heterogeneity"] = args.heterogeneity
    if not images:
        print(f"no *_digitN.png images in {args.images}", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    stores = Path(args.stores)
    devices: list[Device] = []
    for index in range(args.first, args.first + args.count):
        if stop:
            return 0
        device_id = f"{args.prefix}-{index:05d}"
        folder = stores / device_id
        token = _register(shared["server"], device_id, folder)
        _flash(Path(args.factory), folder / "model")
        devices.append(Device(device_id, folder, token, shared))
    status_path = Path(args.status)
    stats: Counter[str] = Counter()
    period = args.period_minutes * 60.0  # simulated seconds between a device's wake-ups
    start = clock()
    queue = [(start + rng.uniform(0, period), i) for i in range(len(devices))]
    heapq.heapify(queue)
    last_status = 0.0
    lag = 0.0
    while not stop:
        due, index = queue[0]
        now = clock()
        if due > now:
            time.sleep(min(0.1, (due - now) / args.speedup))
        else:
            heapq.heapreplace(queue, (due + period, index))
            device = devices[index]
            lag = now - due
            device.update(stats)  # TUF: the signed plan says which release this device runs
            device.use(images, args.predictions, rng, stats, feedback=not args.no_feedback)
            device.upload(stats)  # telemetry: inferences, latency, feedback, installs, trials
            stats["wake-ups"] += 1
        if time.monotonic() - last_status > 1.0:
            last_status = time.monotonic()
            write_json(
                status_path,
                {
                    "devices": len(devices),
                    "versions": dict(Counter(d.version for d in devices)),
                    "stats": dict(stats),
                    "lag_seconds": lag,  # simulated seconds this process runs behind its schedule
                    "time": clock(),
                },
            )
    for device in devices:
        device.close()
    return 0


# ---- watch ---------------------------------------------------------------------------------------------
def fleet_status(folder: Path) -> dict[str, Any]:
    """Versions, stats and the worst lag over every device process's status file."""
    versions: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    lag = 0.0
    for path in sorted(folder.glob("fleet-*.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            versions.update(data["versions"])
            stats.update(data["stats"])
            lag = max(lag, data["lag_seconds"])
    return {"versions": dict(sorted(versions.items())), "stats": dict(stats), "lag": lag}


def _versions(status: dict[str, Any]) -> str:
    """`311 on 1.1.0, 89 on 1.0.0` (the most common version first)."""
    ranked = sorted(status["versions"].items(), key=lambda item: -item[1])
    return ", ".join(f"{n} on {v}" for v, n in ranked) or "no device yet"


# The gates, in plain words (the summary names the gate that decided).
GATE_WORDS = {
    "class_shift": "the class-shift gate (the release predicts another mix of classes than the control "
    "group does; no labels needed)",
    "confidence_shift": "the confidence gate (the release is less sure of its answers than the baseline; "
    "no labels needed)",
    "input_drift": "the input-drift gate (the release's inputs no longer look like its reference data; "
    "no labels needed)",
    "shadow_agreement": "the shadow gate (run side by side on the same inputs, the release disagrees with "
    "the baseline more than the baseline disagrees with itself; no labels needed)",
    "shadow_failures": "the shadow-failure gate (the release crashed or hung in shadow runs)",
    "accuracy": "the accuracy gate (from feedback labels)",
    "crash_rate": "the crash-rate gate",
    "error_rate": "the error-rate gate",
    "latency_p95": "the latency gate",
    "install_failures": "the install-failure gate",
}


LABEL_FREE = ("class_shift", "confidence_shift", "input_drift", "shadow_agreement", "shadow_failures")


def cmd_watch(args: argparse.Namespace) -> int:
    """Print each evaluation in words until the rollout reaches `--until` (exit 0), another final state or
    the timeout. Holds that say the same as the last line are printed at most every `--every` seconds."""
    from edgekit.commands._rollout_words import decision_lines, evaluation_line

    started = time.monotonic()
    seen = 0
    last_print = 0.0
    last_line = ""
    last_fleet = ""
    fleet_dir = Path(args.fleet)
    begin = None
    while True:
        # the list endpoint carries each rollout's 5 latest decisions: enough for a poll every second
        entry = next(
            e
            for e in api(args.server, "GET", "/v1/admin/rollouts")
            if e["plan"]["rollout_id"] == args.rollout
        )
        plan = entry["plan"]
        fresh = [d for d in entry["decisions"] if d["seq"] > seen and d["outcome"] != "start"]
        if entry["decisions"]:
            begin = begin or plan["stage_started_at"]
            seen = max(d["seq"] for d in entry["decisions"])
        fleet = _versions(fleet_status(fleet_dir))
        for decision in fresh:
            line = evaluation_line(decision, plan["stages"])
            # The figures of a hold change every evaluation; what it waits on less often.
            waiting = tuple(r["metric"] for r in decision["records"] if r["outcome"] == "hold")
            kind = line if decision["outcome"] != "hold" else f"{decision['stage_index']} {waiting}"
            if kind != last_line or time.monotonic() - last_print > args.every:
                when = sim_label(decision["time"] - (begin or decision["time"]))
                print(
                    f"  [{when}] {line}" + (f"  (fleet: {fleet})" if fleet != last_fleet else ""), flush=True
                )
                if decision["outcome"] != "hold":
                    for words in decision_lines(decision, skipped_line=False):
                        if not words.endswith("-> roll back"):  # the line above says it already
                            print(f"        {words}", flush=True)
                last_print, last_line, last_fleet = time.monotonic(), kind, fleet
        state = plan["state"]
        if state == args.until:
            return 0
        if state in ("complete", "rolled_back", "halted"):
            print(f"  rollout {plan['rollout_id']} ended {state}, expected {args.until}", file=sys.stderr)
            return 1
        real = time.monotonic() - started
        if real > args.timeout:
            print(f"  timed out after {real:.0f} s waiting for {args.until}", file=sys.stderr)
            return 1
        time.sleep(1.0)


def cmd_wait_fleet(args: argparse.Namespace) -> int:
    """Wait until `--devices` devices report and (optionally) all run `--version`."""
    started = time.monotonic()
    while True:
        status = fleet_status(Path(args.fleet))
        total = sum(status["versions"].values())
        if total >= args.devices and (not args.version or status["versions"].get(args.version) == total):
            print(f"  fleet: {_versions(status)}")
            return 0
        if time.monotonic() - started > args.timeout:
            print(
                f"  fleet not ready after {args.timeout:g} s: {total} devices ({_versions(status)})",
                file=sys.stderr,
            )
            return 1
        time.sleep(1.0)


# ---- summary -------------------------------------------------------------------------------------------
def fleet_words(stats: dict[str, int]) -> list[str]:
    """What the devices did, in words (the counters of `Device.update`, `use` and `upload`)."""
    checks = []
    for key, count in sorted(stats.items(), key=lambda item: -item[1]):
        if key == "update up-to-date":
            checks.append(f"{count} found nothing new")
        elif key == "update installed":
            checks.append(f"{count} installed a release")
        elif key == "update refused (no-plan)":
            checks.append(f"{count} found no rollout yet (before the first one started: nothing to do)")
        elif key.startswith("update refused"):
            checks.append(f"{count} refused an update ({key.removeprefix('update refused ').strip('()')})")
    lines = [f"update checks: {', '.join(checks)}"] if checks else []
    reverts = stats.get("local revert after a server rollback", 0)
    if reverts:
        lines.append(f"{reverts} devices went back to their previous release locally after a rollback")
    errors = sum(v for k, v in stats.items() if k.startswith("predict error"))
    lines.append(
        f"{stats.get('predictions', 0)} predictions ({errors} failed), {stats.get('feedback', 0)} feedback "
        f"labels sent, {stats.get('events uploaded', 0)} telemetry events uploaded"
    )
    return lines


def _rollout_summary(server: str, rollout_id: str) -> None:
    """One rollout: its outcome, then each promotion or rollback with every judged check in words."""
    from edgekit.commands._rollout_words import NAMES, not_judged, record_words

    entry = api(server, "GET", f"/v1/admin/rollouts/{rollout_id}")
    plan = entry["plan"]
    decisions = entry["decisions"]
    begin = decisions[0]["time"]
    stages = plan["stages"]
    holds = Counter(stages[d["stage_index"]] for d in decisions if d["outcome"] == "hold")
    state = {"complete": "complete: every device runs it", "rolled_back": "rolled back"}.get(
        plan["state"], plan["state"].replace("_", " ")
    )
    print(f"rollout {plan['target']['version']} over {plan['baseline']['version']} ({rollout_id}): {state}")
    skipped: dict[str, str] = {}
    judged: set[str] = set()
    for decision in decisions:
        if decision["outcome"] in ("start", "hold"):
            continue
        stage = stages[decision["stage_index"]]
        verb = "rolled back at" if decision["outcome"] == "rollback" else "promoted from"
        if decision["outcome"] == "promote" and decision["stage_index"] == len(stages) - 1:
            verb = "completed at"
        print(
            f"  {sim_span(decision['time'] - begin)} of simulated time: {verb} stage {stage}% "
            f"(after {holds.get(stage, 0)} evaluations that held)"
        )
        # A rollback with every check; a promotion with what it rests on here: exposure and the label-free
        # checks that had data (the watch lines above have every check of every evaluation).
        exposure = next(r for r in decision["records"] if r["metric"] == "exposure")
        for record in decision["records"]:
            why = not_judged(record)
            if why is not None:
                skipped.setdefault(record["metric"], why)
                continue
            judged.add(record["metric"])
            shown = record["metric"] in ("exposure", *LABEL_FREE) or decision["outcome"] == "rollback"
            if shown and record["metric"] not in ("telemetry", "deadline"):
                print(f"      {record_words(record, exposure)}")
        if decision["outcome"] == "rollback":
            for record in decision["records"]:
                if record["outcome"] == "rollback":
                    print(f"  rolled back by {GATE_WORDS.get(record['metric'], record['metric'])}")
    never = {NAMES.get(metric, metric): why for metric, why in skipped.items() if metric not in judged}
    if never:
        listed = ", ".join(f"{name} ({why})" for name, why in never.items())
        print(f"  not judged (no data of that kind): {listed}")


def cmd_summary(args: argparse.Namespace) -> int:
    """What was shipped (bundles, parity), what the gates decided and why, where the fleet is now."""
    from edgekit.server.tuf_repo import TufRepository

    build = Path(args.build)
    print("\n\033[1m== summary\033[0m")
    print("shipped (published through TUF, signed bundles):")
    for target in TufRepository(Path(args.data)).status()["targets"]:
        custom = target.get("custom") or {}
        if target["path"].startswith("bundles/"):
            print(
                f"  {custom['name']} {custom['version']:<6} release {custom['release_counter']}  "
                f"{target['length']:>7,} bytes  bundle {custom['bundle_id'][:16]}  "
                f"{args.notes.get(custom['version'], '')}"
            )
    parity = json.loads((build / "digits.int8.parity.json").read_text())
    output = parity["outputs"][0]
    latency = parity["latency"]
    print(
        f"parity gate (int8 against float, {parity['samples']} held-out images): "
        f"{'passed' if parity['passed'] else 'FAILED'}; the two agree on {100 * output['agreement']:.1f}% of "
        f"images, accuracy {100 * output['accuracy_reference']:.1f}% -> "
        f"{100 * output['accuracy_candidate']:.1f}%, "
        f"SQNR {output['sqnr_db']:.0f} dB, {latency['ratio']['1']:.1f}x faster at batch 1"
    )
    for rollout_id in args.rollouts:
        _rollout_summary(args.server, rollout_id)
    status = fleet_status(Path(args.fleet))
    print(f"fleet: {sum(status['versions'].values())} devices, {_versions(status)}")
    for line in fleet_words(status["stats"]):
        print(f"  {line}")
    return 0


# ---- command line --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def clock_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--t0", type=float, required=True, help="Epoch seconds where simulated time starts.")
        p.add_argument("--speedup", type=float, required=True, help="Simulated seconds per real second.")

    p = sub.add_parser("serve")
    p.add_argument("--data", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gates", required=True)
    p.add_argument("--evaluate-every", type=float, default=2.0, help="Real seconds between gate runs.")
    p.add_argument("--refresh-every", type=float, default=10.0, help="Real seconds between re-signs.")
    clock_options(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("bad-model")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--swap", action="append", required=True, help="A:B, two classes to swap (repeatable).")
    p.set_defaults(run=cmd_bad_model)

    p = sub.add_parser("factory")
    p.add_argument("--bundle", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--image", required=True, help="One input image for the factory's test run.")
    p.set_defaults(run=cmd_factory)

    p = sub.add_parser("devices")
    p.add_argument("--server", required=True)
    p.add_argument("--root", required=True, help="The bootstrap root.json the app ships.")
    p.add_argument("--key", required=True, help="The pinned release public key.")
    p.add_argument("--factory", required=True, help="Factory image (see `factory`).")
    p.add_argument("--images", required=True, help="Folder of NNNN_digitL.png images.")
    p.add_argument("--stores", required=True)
    p.add_argument("--status", required=True, help="Status file to write every second.")
    p.add_argument("--prefix", default="dev")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--period-minutes", type=float, default=60.0, help="Simulated minutes between wake-ups.")
    p.add_argument("--predictions", type=int, default=16, help="Predictions per wake-up.")
    p.add_argument(
        "--no-feedback",
        action="store_true",
        help="Send no feedback labels at all (real devices rarely learn the truth): only label-free gates "
        "can judge a release's predictions.",
    )
    p.add_argument(
        "--heterogeneity",
        type=float,
        default=0.02,
        help="Spread of each device's class mix around the fleet's (1 / Dirichlet concentration; 0: every "
        "device sees the fleet's mix).",
    )
    p.add_argument("--trial-inferences", type=int, default=20)
    p.add_argument("--trial-hours", type=float, default=12.0, help="Simulated hours a new model is on trial.")
    p.add_argument("--seed", type=int, default=0)
    clock_options(p)
    p.set_defaults(run=cmd_devices)

    p = sub.add_parser("watch")
    p.add_argument("--server", required=True)
    p.add_argument("--rollout", required=True)
    p.add_argument("--until", required=True, choices=["complete", "rolled_back", "halted"])
    p.add_argument("--fleet", required=True, help="Folder of the device processes' status files.")
    p.add_argument("--timeout", type=float, default=300.0, help="Real seconds.")
    p.add_argument("--every", type=float, default=6.0, help="Real seconds between repeated hold lines.")
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("wait-fleet")
    p.add_argument("--fleet", required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--version", default="")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(run=cmd_wait_fleet)

    p = sub.add_parser("summary")
    p.add_argument("--server", required=True)
    p.add_argument("--build", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--rollouts", nargs="*", default=[])
    p.add_argument("--note", action="append", default=[], help="VERSION=text shown next to a bundle.")
    p.set_defaults(run=cmd_summary)

    args = parser.parse_args(argv)
    if args.command == "summary":
        args.notes = dict(n.split("=", 1) for n in args.note)
    try:
        return int(args.run(args))
    except urllib.error.URLError as e:
        print(f"fleet.py {args.command}: cannot reach the server: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
