"""Stored telemetry -> each device's contribution to a rollout's current stage window.

A device's arm comes from the plan's salt and its id (the same function the device uses), so the server
keeps no assignment rows. Treatment devices count what they reported for the target bundle (and their
install attempts), control devices what they reported for the baseline bundle, both only since the stage
started and only what the server had received by the evaluation time, so a stored decision can be
recomputed later from the same rows (late arrivals with old timestamps do not change history).

Every row is parsed with the telemetry contract (`device_runtime.telemetry_contract.parse_payload`, the
one definition ingest checks too) before it counts; a row that cannot be aggregated (a payload stored
before ingest validated it, a non-finite time) is skipped and counted, never raised: one device cannot
stop the evaluation of any rollout. The per-device bounds and the decision itself live in
`edgekit.rollout._replay.decide`.

Two readers of the same rows, equal by construction:

- `window_devices` recomputes from the raw events (replay, and tests).
- `current_devices` keeps per-device rollups (table `rollup_devices`, one row per rollout, stage start
  and device) advanced from a watermark on the events' `seq` (table `rollup_marks`), and adds the few
  events past the watermark. Its cost grows with new events and with the stage's devices, not with the
  events stored.

An evaluation at time T counts the events received by T - `SETTLE_S`: an ingest request commits within
`FOLD_LAG_S` of its receipt, so every such event is visible to the evaluation and to any later replay
alike (counting events received up to T itself would let one still in flight at T appear in the replay
only). The gates decide over hours; four minutes of delay cost nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from device_runtime.errors import ContractError
from device_runtime.telemetry_contract import (
    FeedbackPayload,
    InferencesPayload,
    InstallPayload,
    parse_payload,
)
from edgekit.rollout._replay import DeviceTelemetry
from edgekit.rollout.gates import HISTOGRAM_SIZE
from edgekit.rollout.plan import RolloutPlan, arm
from edgekit.server.storage import Database, dumps

__all__ = ["FOLD_LAG_S", "SETTLE_S", "Window", "current_devices", "window_devices"]

FOLD_LAG_S = 120.0  # seconds an ingest request may take from receipt to commit
SETTLE_S = 2 * FOLD_LAG_S  # seconds: an evaluation at T counts the events received by T - SETTLE_S
_COLUMNS = "device_id, kind, time, bundle_id, payload"


@dataclass
class Window:
    """Per-device telemetry of one stage window and the rows that could not be aggregated."""

    devices: dict[str, DeviceTelemetry] = field(default_factory=dict)
    skipped: int = 0
    first_problem: str | None = None

    def merge(self, other: Window) -> None:
        for device_id, telemetry in other.devices.items():
            mine = self.devices.get(device_id)
            self.devices[device_id] = telemetry if mine is None else mine.plus(telemetry)
        self.skipped += other.skipped
        self.first_problem = self.first_problem or other.first_problem


class _BadRow(ValueError):
    """A stored row that cannot be aggregated."""


def _parse(kind: str, payload_text: str) -> Any:
    """The stored payload, typed by the telemetry contract; raises _BadRow for anything it refuses."""
    try:
        payload = json.loads(payload_text)
    except (ValueError, RecursionError) as e:
        raise _BadRow("payload is not JSON") from e
    try:
        return parse_payload(kind, payload)
    except ContractError as e:
        raise _BadRow(f"{e.reason}: {str(e)[:160]}") from e


class _Device:
    """Mutable per-device sums while rows are folded."""

    __slots__ = ("counts", "first", "histogram", "last", "reported")

    def __init__(self) -> None:
        self.reported = False
        self.first, self.last = math.inf, -math.inf
        self.counts = dict.fromkeys(
            (
                "crashes",
                "inferences",
                "inference_errors",
                "installs",
                "install_failures",
                "feedback_total",
                "feedback_correct",
            ),
            0,
        )
        self.histogram = [0] * HISTOGRAM_SIZE


def _fold(rows: Iterable[Sequence[Any]], plan: RolloutPlan) -> Window:
    """Rows (device_id, kind, time, bundle_id, payload) of the window -> per-device telemetry."""
    sides: dict[str, str] = {}
    found: dict[str, _Device] = {}
    window = Window()
    target, baseline = plan.target.bundle_id, plan.baseline.bundle_id
    # In a shadow stage the treatment serves the baseline and runs the target next to it, in shadow: what
    # it serves (inferences, crashes, latency, with the shadow's load on them) is the baseline's, compared
    # with a control that carries the same load (its self-shadow); the shadow runs' own evidence is the
    # `shadow` events (edgekit.server.label_free_window).
    # The target's install attempts there are its stagings: the device downloads it (a `download` event),
    # verifies and self-tests it like any install but never activates it, so a success records no `install`
    # event; a failure does. So a shadow stage counts one attempt per download of the target and one
    # failure per failed `install` event (every count stays a sum over events: the rollups and a replay
    # from the raw events agree however the rows are split).
    shadowing = plan.is_shadow_stage
    served = baseline if shadowing else target
    for device_id, kind, time, bundle_id, payload_text in rows:
        side = sides.get(device_id)
        if side is None:
            side = sides[device_id] = arm(plan, device_id)
        if side not in ("treatment", "control"):
            continue
        wanted = served if side == "treatment" else baseline
        is_install = kind == "install" and side == "treatment" and bundle_id in (target, None)
        is_staging = shadowing and kind == "download" and side == "treatment" and bundle_id == target
        if bundle_id != wanted and not is_install and not is_staging:
            continue
        try:
            if not isinstance(time, int | float) or not math.isfinite(time):
                raise _BadRow(f"event time {time!r} is not finite")
            parsed = _parse(kind, payload_text)
        except _BadRow as e:
            window.skipped += 1
            window.first_problem = window.first_problem or f"{device_id} {kind}: {e}"
            continue
        device = found.get(device_id)
        if device is None:
            device = found[device_id] = _Device()
        counts = device.counts
        if isinstance(parsed, InstallPayload):
            if is_install:
                counts["installs"] += 0 if shadowing else 1  # a shadow stage counts its downloads
                counts["install_failures"] += 0 if parsed.outcome == "activated" else 1
            if bundle_id != wanted:
                continue
        if is_staging:
            counts["installs"] += 1
            continue
        device.reported = True
        device.first, device.last = min(device.first, time), max(device.last, time)
        if kind == "crash":
            counts["crashes"] += 1
        elif isinstance(parsed, InferencesPayload):
            counts["inferences"] += parsed.inferences
            counts["inference_errors"] += parsed.errors
            for i, c in enumerate(parsed.latency_ms_buckets):
                device.histogram[i] += c
        elif isinstance(parsed, FeedbackPayload):
            counts["feedback_total"] += 1
            counts["feedback_correct"] += 1 if parsed.correct else 0
    for device_id, d in found.items():
        window.devices[device_id] = DeviceTelemetry(
            device_id=device_id,
            arm=sides[device_id],  # type: ignore[arg-type]
            reported=d.reported,
            first=d.first,
            last=d.last,
            latency_histogram=tuple(d.histogram),
            **d.counts,
        )
    return window


_RELEVANT = "(bundle_id IN (?, ?) OR (bundle_id IS NULL AND kind = 'install'))"
_CHUNK = 20_000  # rows read at a time: a backlog of millions is folded without holding it in memory


def _rows(
    db: Database, where: str, params: Sequence[Any], after: int = -1, *, by_seq: bool = False
) -> Iterator[Sequence[Any]]:
    """Rows (device_id, kind, time, bundle_id, payload) matching `where`, in seq order, in chunks.

    `by_seq`: the rows lie in a short seq range past `after`; walk that range rather than let SQLite's
    planner pick the bundle index, which would visit every stored event of the bundles (measured: the
    evaluation then grows with the stored events).
    """
    seq = db.event_seq
    table = "events NOT INDEXED" if by_seq and db.kind == "sqlite" else "events"
    while True:
        chunk = db.execute(
            f"SELECT {seq}, {_COLUMNS} FROM {table} WHERE {seq} > ? AND {where} "
            f"ORDER BY {seq} LIMIT {_CHUNK}",
            (after, *params),
        )
        for row in chunk:
            yield row[1:]
        if len(chunk) < _CHUNK:
            return
        after = int(chunk[-1][0])


def window_devices(db: Database, plan: RolloutPlan, until: float) -> Window:
    """Per-device telemetry of the plan's current stage from the raw events, as evaluated at `until`."""
    rows = _rows(
        db,
        f"time >= ? AND received_at <= ? AND {_RELEVANT}",
        (plan.stage_started_at, until - SETTLE_S, plan.target.bundle_id, plan.baseline.bundle_id),
    )
    return _fold(rows, plan)


def _settled(db: Database, after: int, cutoff: float) -> int:
    """The newest seq above `after` received by `cutoff`, lowered below any event received later."""
    seq = db.event_seq
    rows = db.execute(
        f"SELECT {seq} FROM events WHERE {seq} > ? AND received_at <= ? ORDER BY {seq} DESC LIMIT 1",
        (after, cutoff),
    )
    if not rows:
        return after
    mark = int(rows[0][0])
    # Never pass an event received after the cutoff (a replica whose clock runs behind ours).
    later = db.execute(
        f"SELECT {seq} FROM events WHERE {seq} > ? AND {seq} <= ? AND received_at > ? ORDER BY {seq} LIMIT 1",
        (after, mark, cutoff),
    )
    return int(later[0][0]) - 1 if later else mark


def current_devices(db: Database, plan: RolloutPlan, until: float) -> Window:
    """Per-device telemetry of the plan's current stage as evaluated at `until`: rollups + newest events.

    Advances the rollups first (only the evaluator calls this). Equal to `window_devices(db, plan,
    until)` as long as ingest requests commit within `FOLD_LAG_S` of their receipt and evaluation times
    do not go backwards.
    """
    key = (plan.rollout_id, plan.stage_started_at)
    seq, cutoff = db.event_seq, until - SETTLE_S
    relevant = (plan.stage_started_at, plan.target.bundle_id, plan.baseline.bundle_id)
    marks = db.execute(
        "SELECT seq, skipped, problem FROM rollup_marks WHERE rollout_id = ? AND stage_started_at = ?", key
    )
    window = Window()
    for device_id, text in db.execute(
        "SELECT device_id, telemetry FROM rollup_devices WHERE rollout_id = ? AND stage_started_at = ?", key
    ):
        window.devices[device_id] = DeviceTelemetry.from_dict(json.loads(text))
    if marks:
        after = int(marks[0][0])
        window.skipped, window.first_problem = int(marks[0][1]), marks[0][2]
        mark = _settled(db, after, cutoff)
        rows = _rows(db, f"{seq} <= ? AND time >= ? AND {_RELEVANT}", (mark, *relevant), after, by_seq=True)
    else:  # a new stage: its events so far, through the time index (few: the stage has just begun)
        after, mark = -1, _settled(db, 0, cutoff)
        rows = iter(
            db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE time >= ? AND {_RELEVANT} AND {seq} <= ? "
                f"AND received_at <= ? ORDER BY {seq}",
                (*relevant, mark, cutoff),
            )
        )
    if mark != after:
        folded = _fold(rows, plan)
        window.merge(folded)
        with db.transaction():
            if folded.devices:
                db.executemany(
                    "INSERT INTO rollup_devices (rollout_id, stage_started_at, device_id, telemetry) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (rollout_id, stage_started_at, device_id) "
                    "DO UPDATE SET telemetry = excluded.telemetry",
                    [(*key, d, dumps(window.devices[d].to_dict())) for d in folded.devices],
                )
            db.execute(
                "INSERT INTO rollup_marks (rollout_id, stage_started_at, seq, skipped, problem) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout_id, stage_started_at) "
                "DO UPDATE SET seq = excluded.seq, skipped = excluded.skipped, problem = excluded.problem",
                (*key, mark, window.skipped, window.first_problem),
            )
    tail = _rows(
        db, f"received_at <= ? AND time >= ? AND {_RELEVANT}", (cutoff, *relevant), mark, by_seq=True
    )
    window.merge(_fold(tail, plan))
    return window
