"""Honest fleets and hostile devices for the gate tests: per-device telemetry, pure and over HTTP.

`honest_devices` draws a fleet's per-device telemetry of one stage window from a seeded generator;
`hostile` is a hypothesis strategy for what up to three devices can send within the telemetry schema
(any kinds, any arms, extreme counts, any histograms). `insert_events` writes rows straight into the
server's `events` table, the way ingest stores them (for rows stored before ingest validated them, and
for fast honest fleets); `send_batch` goes through `POST /v1/telemetry` like a device.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from device_runtime.telemetry_contract import LATENCY_BUCKETS_MS, MAX_INFERENCES_PER_S, MAX_WINDOW_S
from edgekit.rollout.gates import HISTOGRAM_SIZE, DeviceTelemetry, decide
from tests.server.fleet import GATES

HOUR = 3600.0
START = 1_700_000_000.0
ROBUST = replace(GATES, robust_devices=3)
PLAIN = replace(GATES, robust_devices=0)  # the gates on the honest devices' data, as they stand
FAST = (0, 0, 50, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # per 60 inferences: 2-5 ms, some 5-10 ms
SLOW = (0, 0, 0, 0, 0, 0, 0, 50, 10, 0, 0, 0, 0)  # 48x slower: 100-200 ms, some 200-500 ms
MAX_COUNT = 10**15


def shifted(shape: tuple[int, ...], by: int) -> tuple[int, ...]:
    """The latency shape moved `by` buckets up (the overflow bucket keeps what falls off)."""
    out = [0] * HISTOGRAM_SIZE
    for i, c in enumerate(shape):
        out[min(HISTOGRAM_SIZE - 1, max(0, i + by))] += c
    return tuple(out)


def honest_devices(
    seed: int,
    *,
    devices: tuple[int, int],
    hours: float,
    crash_hazard: tuple[float, float],
    error_rate: tuple[float, float],
    slow_buckets: int,
    feedback: bool,
    accuracy: tuple[float, float],
) -> list[DeviceTelemetry]:
    """Per-device telemetry of a window `hours` long from `START`: (treatment, control) parameters."""
    rng = np.random.default_rng(seed)
    found = []
    for index, side in enumerate(("treatment", "control")):
        shape = np.array(shifted(FAST, slow_buckets if side == "treatment" else 0), dtype=float)
        for d in range(devices[index]):
            ran = hours * float(rng.uniform(0.6, 1.0))
            inferences = int(rng.poisson(60 * ran)) + 1
            histogram = tuple(int(c) for c in rng.multinomial(inferences, shape / shape.sum()))
            total = int(rng.poisson(5 * ran)) if feedback else 0
            found.append(
                DeviceTelemetry(
                    f"{side}-{d}",
                    side,  # type: ignore[arg-type]
                    reported=True,
                    first=START + 0.05 * HOUR,
                    last=START + 0.05 * HOUR + ran * HOUR,
                    crashes=int(rng.poisson(crash_hazard[index] * ran)),
                    inferences=inferences,
                    inference_errors=int(rng.binomial(inferences, error_rate[index])),
                    installs=1 if side == "treatment" else 0,
                    feedback_total=total,
                    feedback_correct=int(rng.binomial(total, accuracy[index])),
                    latency_histogram=histogram,
                )
            )
    return found


_COUNT = st.one_of(
    st.sampled_from([0, 1, 2, 60, 10**3, 10**6, 10**9, 10**12, MAX_COUNT]),
    st.integers(0, MAX_COUNT),
)


@st.composite
def hostile_device(draw: st.DrawFn, index: int, hours: float) -> tuple[DeviceTelemetry, str | None]:
    """One hostile device's window within the schema, and the honest device it replaces (or None)."""
    side = draw(st.sampled_from(["treatment", "control"]))
    inferences = draw(_COUNT)
    errors = draw(st.one_of(st.just(0), st.just(inferences), st.integers(0, inferences)))
    bucket = draw(st.integers(0, HISTOGRAM_SIZE - 1))
    split = draw(st.booleans())
    histogram = [0] * HISTOGRAM_SIZE
    if split and inferences:
        low = draw(st.integers(0, inferences))
        histogram[0], histogram[bucket] = low, histogram[bucket] + inferences - low
    else:
        histogram[bucket] = inferences
    feedback = draw(_COUNT)
    installs = draw(_COUNT)
    first = START + draw(st.floats(0, hours * HOUR))
    device = DeviceTelemetry(
        f"hostile-{index}",
        side,  # type: ignore[arg-type]
        reported=draw(st.booleans()) or inferences > 0,
        first=first,
        last=first + draw(st.floats(0, 48 * HOUR)),
        crashes=draw(_COUNT),
        inferences=inferences,
        inference_errors=errors,
        installs=installs if side == "treatment" else 0,
        install_failures=draw(st.integers(0, installs)) if side == "treatment" else 0,
        feedback_total=feedback,
        feedback_correct=draw(st.one_of(st.just(0), st.just(feedback), st.integers(0, feedback))),
        latency_histogram=tuple(histogram),
    )
    replaces = draw(st.one_of(st.none(), st.integers(0, 10).map(lambda d: f"{side}-{d}")))
    return device, replaces


def attacked(
    honest: list[DeviceTelemetry], hostile: list[tuple[DeviceTelemetry, str | None]]
) -> tuple[list[DeviceTelemetry], list[DeviceTelemetry]]:
    """(what the server sees, the honest devices' own data): replaced devices send only the lies."""
    replaced = {r for _, r in hostile if r is not None}
    truthful = [d for d in honest if d.device_id not in replaced]
    seen = truthful + [replace(d, device_id=r) if r is not None else d for d, r in hostile]
    return seen, truthful


# -- the server ----------------------------------------------------------------------------------------


def insert_events(database: Any, rows: list[tuple[str, str, float, float, str | None, Any]]) -> None:
    """Store rows (device_id, kind, time, received_at, bundle_id, payload) as ingest stores them; a
    payload that is a str is stored verbatim (what an old ingest may have stored)."""
    batch = f"direct:{uuid.uuid4().hex}"
    database.executemany(
        "INSERT INTO events (event_id, device_id, batch_id, kind, time, received_at, bundle_id, payload) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                f"{device}:{uuid.uuid4().hex}",
                device,
                batch,
                kind,
                t,
                received,
                bundle,
                payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True),
            )
            for device, kind, t, received, bundle, payload in rows
        ],
    )


def send_batch(
    server: Any, device_id: str, token: str, events: list[tuple[str, float, dict[str, Any]]]
) -> int:
    """POST one batch like a device; returns the HTTP status (the server may refuse a lie outright)."""
    body = {
        "schema": "edgekit.telemetry/v1",
        "batch_id": uuid.uuid4().hex,
        "device_id": device_id,
        "sent_at": time.time(),
        "events": [{"id": uuid.uuid4().hex, "kind": k, "time": t, "payload": p} for k, t, p in events],
    }
    status, _ = server.http.request("POST", "/v1/telemetry", body, token=token)
    return int(status)


def fleet_rows(
    plan: Any,
    devices: list[str],
    start: float,
    *,
    treatment_shape: tuple[int, ...] = FAST,
    treatment_errors: int = 0,
    crash_every: int = 0,
) -> list[tuple[str, str, float, float, str | None, Any]]:
    """Three hours of honest reports (three `inferences` events of 60) from each device in an arm, as
    rows for `insert_events`, received when sent; every `crash_every`-th treatment device crashes once."""
    from edgekit.rollout.plan import arm

    rows: list[tuple[str, str, float, float, str | None, Any]] = []
    for index, device in enumerate(devices):
        side = arm(plan, device)
        if side not in ("treatment", "control"):
            continue
        treated = side == "treatment"
        bundle = plan.target.bundle_id if treated else plan.baseline.bundle_id
        shape = treatment_shape if treated else FAST
        for h in (0.1, 1.0, 2.0):
            payload = {
                "bundle_id": bundle,
                "version": plan.target.version if treated else plan.baseline.version,
                "inferences": 60,
                "errors": treatment_errors if treated else 0,
                "latency_ms_buckets": list(shape),
                "latency_ms_sum": latency_sum(shape),
                "window_s": 600.0,
            }
            rows.append((device, "inferences", start + h * HOUR, start + h * HOUR, bundle, payload))
        if treated:
            install = {"outcome": "activated", "bundle_id": bundle, "version": plan.target.version}
            rows.append((device, "install", start + 0.05 * HOUR, start + 0.05 * HOUR, bundle, install))
            if crash_every and index % crash_every == 0:
                crash = {"bundle_id": bundle, "version": plan.target.version, "during": "inference"}
                rows.append((device, "crash", start + 1.5 * HOUR, start + 1.5 * HOUR, bundle, crash))
    return rows


def latency_sum(histogram: Any) -> float:
    """A latency sum (ms) the histogram's bucket bounds allow: each inference at its bucket's lower bound,
    or 1 ms above it for the first bucket."""
    lower = (0.0, *(float(b) for b in LATENCY_BUCKETS_MS))
    return float(sum(c * (lower[i] + (1.0 if i == 0 else 0.0)) for i, c in enumerate(histogram)))


def within_schema(inferences: int, errors: int, histogram: tuple[int, ...]) -> tuple[int, int, list[int]]:
    """The same claim shrunk to what one event may carry (at most MAX_INFERENCES_PER_S for an hour)."""
    limit = int(MAX_INFERENCES_PER_S * MAX_WINDOW_S)
    if inferences <= limit:
        return inferences, errors, list(histogram)
    scaled = [c * limit // inferences for c in histogram]
    scaled[max(range(len(scaled)), key=lambda i: histogram[i])] += limit - sum(scaled)
    return limit, errors * limit // inferences, scaled


def hostile_events(
    device: DeviceTelemetry, plan: Any, start: float
) -> list[tuple[str, float, dict[str, Any]]]:
    """A hostile device's window as the events it would send (bounded in number: one request)."""
    treated = device.arm == "treatment"
    bundle = plan.target.bundle_id if treated else plan.baseline.bundle_id
    version = plan.target.version if treated else plan.baseline.version
    at = max(start, min(device.first, start + 2.5 * HOUR))
    events: list[tuple[str, float, dict[str, Any]]] = []
    if device.inferences:
        inferences, errors, histogram = within_schema(
            device.inferences, device.inference_errors, device.latency_histogram
        )
        events.append(
            (
                "inferences",
                at,
                {
                    "bundle_id": bundle,
                    "version": version,
                    "inferences": inferences,
                    "errors": errors,
                    "latency_ms_buckets": histogram,
                    "latency_ms_sum": latency_sum(histogram),
                    "window_s": MAX_WINDOW_S,
                },
            )
        )
    crash = {"bundle_id": bundle, "version": version, "during": "inference"}
    events += [("crash", at, crash) for _ in range(min(device.crashes, 500))]
    correct = min(device.feedback_correct, 200)
    events += [
        ("feedback", at, {"bundle_id": bundle, "correct": i < correct})
        for i in range(min(device.feedback_total, 200))
    ]
    if treated:
        failed = min(device.install_failures, 50)
        for i in range(min(device.installs, 50)):
            outcome = "failed" if i < failed else "activated"
            events.append(("install", at, {"outcome": outcome, "bundle_id": bundle, "version": version}))
    return events or [("crash", at, crash)]


def truthful_decision(server: Any, plan: Any, now: float, liars: set[str]) -> Any:
    """The gates' decision on the data the honest devices stored (the liars' rows left out)."""
    from edgekit.server.aggregate import window_devices

    service = server.app.state.service
    window = window_devices(server.app.state.database, plan, now)
    devices = [d for name, d in window.devices.items() if name not in liars]
    return decide(
        plan.stage_percent, devices, replace(service.gates, robust_devices=0), now, plan.stage_started_at
    )
