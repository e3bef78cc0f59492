"""Stored ``health`` events -> per-arm merged sketches of a rollout's current stage window, and the reference.

The same window as the gates' telemetry (`edgekit.server.aggregate`): events timed since the stage started
and received by ``until - SETTLE_S``; treatment devices count their sketches of the target bundle, control
devices those of the baseline, each device's arm from the plan (`edgekit.rollout.plan.arm`). Every row is
parsed with the telemetry contract before it counts; a row it refuses is skipped and counted, never raised.
Per-device bounds and the merge are `edgekit.rollout.health_sketches`.

`arm_health` is the API a label-free gate calls; `health_view` is its JSON for the rollout status and the
dashboard, with population stability per input channel against the target bundle's signed reference profile
(``health.json``, read from the published bundle in the TUF repository).
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

from device_runtime.errors import ContractError, DeviceRuntimeError
from device_runtime.health import HEALTH_FILE, HealthProfile, HealthSketch, parse_profile
from device_runtime.telemetry_contract import parse_payload
from edgekit.rollout.health_sketches import ArmHealth, DeviceHealth, merge_arms
from edgekit.rollout.plan import RolloutPlan, arm
from edgekit.server.aggregate import SETTLE_S
from edgekit.server.storage import Database
from signing.errors import FormatError
from signing.strict_json import parse_strict

__all__ = ["arm_health", "health_devices", "health_view", "reference_profile"]

_PROFILES: OrderedDict[str, HealthProfile | None] = OrderedDict()  # bundle id -> profile (None: none)
_PROFILE_CACHE = 32  # bundles whose reference profile is kept in memory
MAX_PROFILE_BYTES = 1 << 20  # bytes of a health.json read from a published bundle


def health_devices(db: Database, plan: RolloutPlan, until: float) -> tuple[list[DeviceHealth], int]:
    """Each device's summed sketches of its arm's release in the current stage window; and the rows
    skipped (refused by the contract on reading back)."""
    target, baseline = plan.target.bundle_id, plan.baseline.bundle_id
    rows = db.execute(
        "SELECT device_id, time, bundle_id, payload FROM events WHERE bundle_id IN (?, ?) "
        "AND kind = 'health' AND time >= ? AND received_at <= ?",
        (target, baseline, plan.stage_started_at, until - SETTLE_S),
    )
    devices: dict[str, DeviceHealth] = {}
    skipped = 0
    for device_id, time, bundle_id, text in rows:
        side = arm(plan, device_id)
        if side not in ("treatment", "control") or bundle_id != (target if side == "treatment" else baseline):
            continue
        try:
            if not isinstance(time, int | float) or not math.isfinite(time):
                raise ValueError("time")
            payload = json.loads(text)
            parse_payload("health", payload)
            sketch = HealthSketch.from_payload(payload)
            device = devices.setdefault(device_id, DeviceHealth(device_id, side))
            device.add(float(time), sketch)
        except (ValueError, ContractError, RecursionError):
            skipped += 1
    return list(devices.values()), skipped


def arm_health(db: Database, plan: RolloutPlan, until: float) -> dict[str, ArmHealth]:
    """The device-bounded merge of each arm's health sketches in the plan's current stage window."""
    devices, _ = health_devices(db, plan, until)
    return merge_arms(devices, plan.stage_started_at, until)


def reference_profile(repo: Any, bundle_id: str) -> HealthProfile | None:
    """The reference profile signed into a published bundle (None: no repository, no such bundle or no
    profile)."""
    if repo is None:
        return None
    if bundle_id in _PROFILES:
        _PROFILES.move_to_end(bundle_id)
        return _PROFILES[bundle_id]
    profile = None
    try:
        for target in repo.status()["targets"]:
            if (target.get("custom") or {}).get("bundle_id") == bundle_id and target.get("sha256"):
                path = PurePosixPath(target["path"])
                profile = _read_profile(repo.targets_dir / path.parent / f"{target['sha256']}.{path.name}")
                break
    except (OSError, KeyError, TypeError, ValueError, tarfile.TarError, DeviceRuntimeError, FormatError):
        profile = None
    _PROFILES[bundle_id] = profile
    while len(_PROFILES) > _PROFILE_CACHE:
        _PROFILES.popitem(last=False)
    return profile


def _read_profile(bundle: Path) -> HealthProfile | None:
    with tarfile.open(bundle, "r:") as archive:
        try:
            member = archive.getmember(HEALTH_FILE)
        except KeyError:
            return None
        if not member.isfile() or member.size > MAX_PROFILE_BYTES:
            return None
        handle = archive.extractfile(member)
        if handle is None:
            return None
        return parse_profile(parse_strict(handle.read(), what=HEALTH_FILE, max_bytes=MAX_PROFILE_BYTES))


def health_view(db: Database, plan: RolloutPlan, until: float, repo: Any = None) -> dict[str, Any]:
    """JSON for the rollout status: each arm's merged sketches, PSI against the target's reference."""
    devices, skipped = health_devices(db, plan, until)
    arms = merge_arms(devices, plan.stage_started_at, until)
    reference = reference_profile(repo, plan.target.bundle_id) if repo is not None else None
    view: dict[str, Any] = {name: merged.to_dict(reference) for name, merged in arms.items()}
    view["skipped_rows"] = skipped
    view["reference"] = None if reference is None else reference.to_dict()
    return view
