"""Shadow trials: run a second model next to the served one on a sampled share of live inputs, compare.

A rollout plan can ask a device to run a candidate "in shadow" (`device_runtime.rollout_plan`, key
``shadow``): the candidate is verified and self-tested like any install and placed in the inactive slot, never
activated (`Runtime.stage_shadow`); the control arm runs its own active model again (self-shadow), which
measures the engine's own disagreement and puts the same load on both arms. `ShadowRunner` does the running:

- `Runtime.predict` hands it every served prediction once (`offer`), after the served result is final. A
  deterministic share of them (`sampled`: inference k is taken when ``floor(k * sample)`` steps) is copied
  (the preprocessed feeds and the served outputs: the app may keep or change its result) into a bounded
  queue; a full queue drops the input (counted ``dropped``). `predict` never waits for the shadow and its
  result is never changed by it.
- The CPU budget: a sampled input is skipped (counted ``skipped_cpu``) when the shadow's cumulative run time
  plus the expected cost of this run and of the runs already queued would exceed ``max_cpu`` x the served
  model's cumulative engine time. A shadow run's time is its whole job on the worker (marker, engine run,
  comparison); the latency it reports is its engine run alone, comparable with the served latency.
- One background worker thread runs the shadow engine (one intra-op thread) and compares per output role:
  classification = same top-1 class; detection = as many detections and each served box matched one to one
  by a shadow box of the same class with IoU >= 0.5 (both decoded by the device's own decoder, each bundle
  with its own spec); any other role = the shadow output within the shadow bundle's golden SQNR tolerance
  of the served one.
- A run that raises is a ``failure``; a run still going after ``deadline_s`` is a ``timeout``: its worker
  is abandoned (it cannot be interrupted inside the engine; its late result is discarded) and a new one
  takes the queue. Both are strikes against the shadow bundle; at ``max_strikes`` the runner stops and
  reports ``stopped``. While a run is in flight a marker file names the shadow bundle, so that a process
  killed during it (a native crash in the engine) is charged to the shadow bundle after the restart
  (`device_runtime._recovery.died_in_shadow_run`), never to the served model.
- Telemetry: one ``shadow`` event per reporting window (`due` / `drain`, like the health sketches).

The comparison per role is `device_runtime._shadow_compare`; staging, persistence (``shadow.json``) and the
runtime's side are `device_runtime._shadow_control`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime._recovery import SHADOW_MARKER_PREFIX as MARKER_PREFIX
from device_runtime._shadow_compare import compare_outputs
from device_runtime.telemetry_contract import LATENCY_BUCKETS_MS, MAX_WINDOW_S

__all__ = [
    "MARKER_PREFIX",
    "ShadowRunner",
    "ShadowSettings",
    "compare_outputs",
    "sampled",
]

QUEUE_SIZE = 4  # sampled inputs waiting for the shadow worker, at most
_BUCKETS = len(LATENCY_BUCKETS_MS) + 1
_IDLE_CHECK_S = 0.5  # seconds an idle worker waits before checking whether it is still wanted


@dataclass(frozen=True)
class ShadowSettings:
    """How much to shadow: ``sample`` share of inferences, ``max_cpu`` share of the served model's time."""

    sample: float
    max_cpu: float

    def __post_init__(self) -> None:
        for name in ("sample", "max_cpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"ShadowSettings.{name} must be a number in (0, 1], got {value!r}")


def sampled(counter: int, share: float) -> bool:
    """Whether inference number `counter` (1, 2, ...) is in the sampled `share`: exactly
    ``floor(n * share)`` of the first n inferences are, spread evenly, with no random state."""
    return math.floor(counter * share) > math.floor((counter - 1) * share)


# ---- the runner -----------------------------------------------------------------------------------------
@dataclass
class _Window:
    started: float  # seconds since the epoch (the runtime's clock)
    offered: int = 0
    compared: dict[str, list[Any]] = field(default_factory=dict)  # name -> [role, compared, agreed]
    primary: str | None = None
    failures: int = 0
    timeouts: int = 0
    skipped_cpu: int = 0
    dropped: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    stopped: bool = False

    def busy(self) -> bool:
        return bool(self.compared or self.failures or self.timeouts or self.skipped_cpu or self.dropped)


@dataclass
class _Job:
    feeds: dict[str, np.ndarray]
    served: dict[str, np.ndarray]
    served_spec: Any


_IDLE = _Job({}, {}, None)  # what an idle worker's wait yields: check, then wait again


class ShadowRunner:
    """Runs `engine` in shadow of the served bundle `served_bundle_id` (see the module docstring).

    Args:
        engine: the shadow model's engine (``run(feeds) -> outputs``), used by the worker thread only.
        spec: the shadow bundle's preprocessing spec (its output roles decode the shadow's outputs).
        bundle_id, version: the shadow bundle.
        served_bundle_id: the served bundle it runs next to; predictions of any other are ignored.
        settings: sample and CPU share.
        min_sqnr_db: the shadow bundle's golden tolerance (roles compared by value).
        deadline_s: a run longer than this is a timeout.
        max_strikes: failures and timeouts (plus `strikes` already counted) before the runner stops.
        strikes: strikes already counted against this bundle on this device (persisted).
        marker_dir: where the in-flight markers are written (the store); None: no markers.
        on_strike: called with the new strike count after each strike (the runtime persists it).
        clock: seconds since the epoch (reporting windows).
    """

    def __init__(
        self,
        engine: Any,
        spec: Any,
        *,
        bundle_id: str,
        version: str | None,
        served_bundle_id: str,
        settings: ShadowSettings,
        min_sqnr_db: float,
        deadline_s: float,
        max_strikes: int,
        strikes: int = 0,
        marker_dir: Path | None = None,
        on_strike: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.engine = engine
        self.spec = spec
        self.bundle_id = bundle_id
        self.version = version
        self.served_bundle_id = served_bundle_id
        self.settings = settings
        self._min_sqnr_db = min_sqnr_db
        self._deadline_s = deadline_s
        self._max_strikes = max_strikes
        self._on_strike = on_strike
        self._marker_dir = marker_dir
        self._clock = clock
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self.strikes = strikes
        self.stopped = strikes >= max_strikes
        self._counter = 0  # served predictions offered
        self._active_ms = 0.0  # cumulative served engine time
        self._shadow_ms = 0.0  # cumulative shadow run time (timeouts count their deadline)
        self._runs = 0  # shadow runs that finished (compared or failed)
        self._pending = 0  # queued or running jobs
        self._running_since: float | None = None  # time.monotonic() of the run in flight
        self._window = _Window(clock())
        self.totals = {
            "compared": 0,
            "agreed": 0,
            "failures": 0,
            "timeouts": 0,
            "skipped_cpu": 0,
            "dropped": 0,
        }
        self._generation = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue(queue_size)
        self._closed = False
        if not self.stopped:
            self._start_worker()

    # -- the predict thread ------------------------------------------------------------------------------
    def offer(
        self, feeds: Mapping[str, Any], outputs: Mapping[str, Any], served_spec: Any, latency_ms: float
    ) -> None:
        """One served prediction (its preprocessed feeds, raw outputs and engine time). Never blocks on the
        shadow: a sampled input is copied and queued, or counted as skipped or dropped.

        Called from one thread at a time (`Runtime.predict` holds the runtime's lock), which alone adds to
        the queue and owns the offer counters: an input that is not sampled takes no lock at all.
        """
        if self._running_since is not None:
            self._check_deadline()
        if self.stopped or self._closed:
            return
        self._counter += 1
        self._active_ms += latency_ms
        self._window.offered += 1
        if not sampled(self._counter, self.settings.sample):
            return
        with self._lock:
            estimate = self._shadow_ms / self._runs if self._runs else latency_ms
            if self._shadow_ms + (self._pending + 1) * estimate > self.settings.max_cpu * self._active_ms:
                self._count("skipped_cpu")
                return
            if self._queue.full():  # only this thread adds: still full when we would put
                self._count("dropped")
                return
            self._pending += 1
            jobs = self._queue
        # Copied outside the lock: the worker never waits for the hand-off.
        job = _Job(
            {k: np.array(v, copy=True) for k, v in feeds.items()},
            {k: np.array(v, copy=True) for k, v in outputs.items()},
            served_spec,
        )
        try:
            jobs.put_nowait(job)
        except queue.Full:  # the queue was replaced (a timeout) by a full one: not possible, but never raise
            with self._lock:
                self._pending = max(0, self._pending - 1)
                self._count("dropped")

    def due(self, now: float, every: int, seconds: float) -> bool:
        """The reporting window is full (`every` offered predictions) or old (`seconds`), or the runner
        stopped."""
        window = self._window
        return window.stopped or (
            window.busy() and (window.offered >= every or now - window.started >= seconds)
        )

    def drain(self, now: float) -> dict[str, Any] | None:
        """Close the reporting window: the ``shadow`` telemetry payload, or None when nothing happened."""
        self._check_deadline()
        with self._lock:
            window, self._window = self._window, _Window(now)
        if not window.busy() and not window.stopped:
            return None
        primary = window.compared.get(window.primary or "", [None, 0, 0])
        return {
            "bundle_id": self.bundle_id,
            **({"version": self.version} if self.version else {}),
            "served_bundle_id": self.served_bundle_id,
            "compared": primary[1],
            "agreed": primary[2],
            "outputs": {
                name: {"role": role, "compared": c, "agreed": a}
                for name, (role, c, a) in window.compared.items()
            },
            "failures": window.failures,
            "timeouts": window.timeouts,
            "skipped_cpu": window.skipped_cpu,
            "dropped": window.dropped,
            "latency_histogram": list(window.histogram),
            "window_s": max(0.0, min(now - window.started, MAX_WINDOW_S)),
            **({"stopped": True} if window.stopped else {}),
        }

    def status(self) -> dict[str, Any]:
        """Totals since the runner started, strikes and whether it stopped."""
        with self._lock:
            return {
                "bundle_id": self.bundle_id,
                "version": self.version,
                "served_bundle_id": self.served_bundle_id,
                "sample": self.settings.sample,
                "max_cpu": self.settings.max_cpu,
                "strikes": self.strikes,
                "stopped": self.stopped,
                "pending": self._pending,
                "cpu_share": self._shadow_ms / self._active_ms if self._active_ms else 0.0,
                **self.totals,
            }

    def close(self) -> None:
        """Stop the worker (a run in flight finishes on its own; its result is discarded) and remove the
        in-flight markers: a clean shutdown is not a crash."""
        with self._lock:
            self._closed = True
            self._generation += 1
            self._running_since = None
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._marker_dir is not None:
            for marker in self._marker_dir.glob(f"{MARKER_PREFIX}-*"):
                with contextlib.suppress(OSError):
                    marker.unlink()

    # -- bookkeeping (under self._lock) ------------------------------------------------------------------
    def _count(self, name: str, amount: int = 1) -> None:
        setattr(self._window, name, getattr(self._window, name) + amount)
        self.totals[name] += amount

    def _strike(self) -> int:
        self.strikes += 1
        if self.strikes >= self._max_strikes and not self.stopped:
            self.stopped = True
            self._window.stopped = True
            self._generation += 1  # the worker exits; queued jobs are dropped with it
            self._pending = 0
        return self.strikes

    def _check_deadline(self) -> None:
        """A run in flight past the deadline is a timeout: abandon its worker, start a fresh one."""
        strikes = None
        with self._lock:
            since = self._running_since
            if since is None or time.monotonic() - since <= self._deadline_s or self._closed:
                return
            self._running_since = None
            self._count("timeouts")
            self._shadow_ms += 1000.0 * self._deadline_s
            self._runs += 1
            self._pending = 0
            self._generation += 1  # the hung worker's result, if it ever comes, is discarded
            strikes = self._strike()
            old = self._queue
            self._queue = queue.Queue(self._queue_size)
            if not self.stopped:
                self._start_worker()
        with contextlib.suppress(queue.Full):
            old.put_nowait(None)
        if self._on_strike is not None:
            self._on_strike(strikes)

    # -- the worker thread -------------------------------------------------------------------------------
    def _start_worker(self) -> None:
        generation, jobs = self._generation, self._queue
        marker = None if self._marker_dir is None else self._marker_dir / f"{MARKER_PREFIX}-{generation}"
        threading.Thread(
            target=self._work, args=(generation, jobs, marker), name=f"shadow-{generation}", daemon=True
        ).start()

    def _work(self, generation: int, jobs: queue.Queue[_Job | None], marker: Path | None) -> None:
        while True:
            try:
                # A timeout so that a worker whose runner stopped or moved on notices it while idle.
                job = jobs.get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                job = _IDLE
            with self._lock:
                if job is None or generation != self._generation:
                    return
                if job is _IDLE:
                    continue
                self._running_since = time.monotonic()
            job_started = time.perf_counter()
            self._mark(marker)
            started = time.perf_counter()
            error: BaseException | None = None
            produced: dict[str, Any] = {}
            try:
                # One run at a time on the engine, even after a timeout: an abandoned worker may still be
                # inside it, and not every engine (LiteRT's interpreter) may be entered twice. A worker
                # waiting here is still "running": if the engine never returns, it times out too.
                with self._engine_lock:
                    produced = dict(self.engine.run(job.feeds))
            except Exception as e:  # the shadow's failure, never the app's
                error = e
            elapsed_ms = 1000.0 * (time.perf_counter() - started)
            with self._lock:
                if generation != self._generation:  # timed out meanwhile (or closed): not counted again
                    return
                self._running_since = None
            self._unmark(marker)
            compared: list[tuple[str, str, bool]] = []
            if error is None:
                try:
                    compared = compare_outputs(
                        job.served_spec, self.spec, job.served, produced, min_sqnr_db=self._min_sqnr_db
                    )
                except Exception as e:  # outputs the shadow's own decoder cannot read: its failure
                    error = e
            # The CPU budget is charged the whole job (marker, run, comparison), not just the engine run:
            # for a small model the bookkeeping costs as much as the model, and the bound must hold.
            cost_ms = 1000.0 * (time.perf_counter() - job_started)
            self._record(generation, elapsed_ms, cost_ms, error, compared)

    def _record(
        self,
        generation: int,
        elapsed_ms: float,
        cost_ms: float,
        error: BaseException | None,
        compared: list[tuple[str, str, bool]],
    ) -> None:
        strikes = None
        with self._lock:
            if generation != self._generation:
                return
            self._pending = max(0, self._pending - 1)
            self._shadow_ms += cost_ms
            self._runs += 1
            window = self._window
            if error is not None or not compared:
                self._count("failures")
                strikes = self._strike()
            else:
                for name, role, agreed in compared:
                    entry = window.compared.setdefault(name, [role, 0, 0])
                    entry[1] += 1
                    entry[2] += int(agreed)
                if window.primary is None:
                    window.primary = compared[0][0]
                self.totals["compared"] += 1
                self.totals["agreed"] += int(compared[0][2])
                window.histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, elapsed_ms)] += 1
        if strikes is not None and self._on_strike is not None:
            self._on_strike(strikes)

    def _mark(self, marker: Path | None) -> None:
        # A plain write, no fsync: it only has to survive the death of this process (the page cache keeps
        # it), not a power loss, and it costs the worker no disk flush per run.
        if marker is None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(
                    fd, json.dumps({"bundle_id": self.bundle_id, "served": self.served_bundle_id}).encode()
                )
            finally:
                os.close(fd)

    @staticmethod
    def _unmark(marker: Path | None) -> None:
        if marker is not None:
            with contextlib.suppress(OSError):
                os.unlink(marker)
