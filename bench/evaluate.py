"""Gate evaluation cost vs stored events: per-device rollups against a recount of every stored event.

    python -m bench.evaluate [--quick] [--json OUT] [--db postgresql://...] [--devices D] [--new M]

For each size N (100,000 and 1,000,000 stored events; 10,000 and 100,000 with --quick) in a fresh
database (a temporary SQLite file, or the PostgreSQL at --db, whose events and rollups are emptied first):
one running rollout at 10% with control over D devices (5,000: about 500 per arm), N `inferences` events of
those devices stored in the stage's window, one evaluation to bring the rollups up to date, then three
rounds of M new events (10,000) followed by a timed `RolloutService.evaluate()` (rollups plus the newest
events). The same-run baseline (once, after the last round, and checked equal record for record) times
the recount every evaluation did before the rollups: the raw
events of the window summed per device (`window_devices`) and decided (`decide`), what replay still
does. The figure is the ratio of the median evaluate time at the larger N to that at the smaller (target
<= 2x: cost grows with new events, not with stored ones). Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.rollout.gates import GateConfig
from edgekit.rollout.plan import Release, RolloutPlan, arm
from edgekit.server.aggregate import SETTLE_S, window_devices
from edgekit.server.rollouts import RolloutService
from edgekit.server.storage import Database, open_database

T0 = 1_700_000_000.0
HOUR = 3600.0
BUCKETS = [0, 0, 0, 10, 40, 8, 2, 0, 0, 0, 0, 0, 0]
# Never promotes (the stage's minimum duration is far away), so every round evaluates the same stage.
GATES = GateConfig(stage_min_hours=((10, 1e6),), default_stage_min_hours=1e6, stage_deadline_hours=1e6)


def _plan(devices: list[str]) -> tuple[RolloutPlan, dict[str, str]]:
    target = Release("2.0.0", 2, "bundles/bench/bench-2.0.0.ekb", "2" * 64)
    baseline = Release("1.0.0", 1, "bundles/bench/bench-1.0.0.ekb", "1" * 64)
    plan = RolloutPlan(
        "bench",
        "stable",
        f"bench-{uuid.uuid4().hex[:8]}",
        uuid.uuid4().hex,
        target,
        baseline,
        stages=(10, 100),
        stage_started_at=T0,
    )
    bundles = {}
    for device in devices:
        side = arm(plan, device)
        if side in ("treatment", "control"):
            bundles[device] = target.bundle_id if side == "treatment" else baseline.bundle_id
    return plan, bundles


def _insert(db: Database, bundles: dict[str, str], count: int, first: float, last: float) -> None:
    """`count` inferences events spread over the arms' devices, received between `first` and `last`."""
    devices = list(bundles)
    chunk = 20_000
    for start in range(0, count, chunk):
        rows = []
        for i in range(start, min(count, start + chunk)):
            device = devices[i % len(devices)]
            at = first + (last - first) * i / max(1, count - 1)
            payload = {
                "bundle_id": bundles[device],
                "inferences": 60,
                "errors": 0,
                "latency_ms_buckets": BUCKETS,
                "latency_ms_sum": 900.0,
                "window_s": 600.0,
            }
            rows.append(
                (
                    f"{device}:{uuid.uuid4().hex}",
                    device,
                    "bench",
                    "inferences",
                    at,
                    at,
                    bundles[device],
                    json.dumps(payload, separators=(",", ":")),
                )
            )
        with db.transaction():
            db.executemany(
                "INSERT INTO events (event_id, device_id, batch_id, kind, time, received_at, bundle_id, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )


def measure(db: Database, stored: int, devices: int, new: int, rounds: int = 3) -> dict[str, Any]:
    names = [f"dev-{i:06d}" for i in range(devices)]
    plan, bundles = _plan(names)
    clock = [T0]
    service = RolloutService(db, None, GATES, lambda: clock[0])  # type: ignore[arg-type]  # never publishes
    db.execute(
        "INSERT INTO rollouts (rollout_id, model, channel, plan, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (plan.rollout_id, plan.model, plan.channel, plan.to_json(), T0, T0),
    )
    service.evaluate()  # the stage's first evaluation: an empty rollup
    began = time.perf_counter()
    _insert(db, bundles, stored, T0 + 60, T0 + 40 * HOUR)
    insert_s = time.perf_counter() - began
    clock[0] = T0 + 40 * HOUR + 2 * SETTLE_S
    began = time.perf_counter()
    service.evaluate()  # folds the stored events into the rollups
    catch_up_s = time.perf_counter() - began
    live, recount = [], []
    for r in range(rounds):
        now = clock[0]
        _insert(db, bundles, new, now + 1, now + 600)
        clock[0] = now + 600 + 2 * SETTLE_S
        began = time.perf_counter()
        (result,) = service.evaluate()
        live.append(time.perf_counter() - began)
        if r < rounds - 1:
            continue
        # The baseline, once (it is the slow one): and it must agree with the rollups, record for record.
        began = time.perf_counter()
        window = window_devices(db, plan, clock[0])
        # The same decision path as the live evaluation (label-free evidence included), on the raw events.
        again = service._decide(plan, window, clock[0])
        recount.append(time.perf_counter() - began)
        if again.records != result[1].records or again.skipped_rows:
            raise SystemExit("bench.evaluate: the rollups and the recount disagree, or rows were skipped")
    arms = sum(1 for _ in bundles)
    evaluate_ms, recount_ms = statistics.median(live) * 1000, statistics.median(recount) * 1000
    print(
        f"[bench.evaluate] {stored:,} stored events: insert {insert_s:.1f} s, catch-up {catch_up_s:.2f} s, "
        f"evaluate {evaluate_ms:.1f} ms, recount {recount_ms:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return {
        "stored_events": stored,
        "new_events_per_round": new,
        "devices_in_arms": arms,
        "evaluate_ms": [round(x * 1000, 2) for x in live],
        "recount_ms": [round(x * 1000, 2) for x in recount],
        "evaluate_median_ms": statistics.median(live) * 1000,
        "recount_median_ms": statistics.median(recount) * 1000,
        "catch_up_s": catch_up_s,
        "insert_s": insert_s,
    }


def _database(url: str | None, folder: Path, name: str) -> Database:
    if url is None:
        return open_database(f"sqlite:///{folder / name}", folder)
    db = open_database(url, folder)
    for table in ("events", "rollup_devices", "rollup_marks", "decisions", "rollouts"):
        db.execute(f"DELETE FROM {table}")
    return db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="10k and 100k stored events instead of 100k and 1M"
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--db", help="postgresql://... (its events and rollouts are deleted first)")
    parser.add_argument("--devices", type=int, default=5_000, help="devices in the fleet (10%% per arm)")
    parser.add_argument("--new", type=int, default=10_000, help="new events before each timed evaluation")
    args = parser.parse_args(argv)
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as folder:
        for size in sizes:
            db = _database(args.db, Path(folder), f"events-{size}.db")
            try:
                results.append(measure(db, size, args.devices, args.new))
            finally:
                db.close()
    small, large = results
    ratio = large["evaluate_median_ms"] / small["evaluate_median_ms"]
    baseline = large["recount_median_ms"] / small["recount_median_ms"]
    document = {
        "backend": "postgresql" if args.db else "sqlite",
        "sizes": results,
        "ratio": ratio,
        "recount_ratio": baseline,
        "target": 2.0,
        "met": ratio <= 2.0,
    }
    backend = document["backend"]
    print(f"backend: {backend}; {args.devices:,} devices (about {small['devices_in_arms']:,} in the arms)")
    print(f"{'stored events':>14} {'evaluate ms':>12} {'recount ms':>11} {'catch-up s':>11}")
    for row in results:
        print(
            f"{row['stored_events']:>14,} {row['evaluate_median_ms']:>12.1f} "
            f"{row['recount_median_ms']:>11.1f} {row['catch_up_s']:>11.2f}"
        )
    print(
        f"evaluate at {large['stored_events']:,} / at {small['stored_events']:,} stored events: {ratio:.2f}x "
        f"(target <= 2x: {'PASS' if ratio <= 2 else 'MISS'}); the recount: {baseline:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
