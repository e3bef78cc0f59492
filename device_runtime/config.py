"""RuntimeConfig: everything the device runtime is told, frozen, with bounded defaults and units."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Configuration of one `Runtime` (one model slot pair on one device).

    Attributes:
        store_dir: where slots, state and telemetry live (the app chooses; must be writable).
        trusted_keys: pinned release public keys (PEM paths or PEM bytes) shipped with the app.
        device_id: stable id of this device (cohorts, telemetry).
        hardware_id: this device's hardware id; bundles naming other hardware are refused.
        threshold: distinct pinned keys that must have signed a bundle.
        trial_inferences: successful inferences before a new model is committed.
        trial_seconds: seconds a new model must run before it is committed.
        max_strikes: crashes, hangs or inference errors in trial before a local revert.
        hang_seconds: an inference slower than this in trial counts as a hang (a strike).
        max_bundle_bytes: bundles declaring more are refused before extraction.
        telemetry_max_events: bound of the on-device telemetry queue (oldest dropped, counted).
        engine_threads: intra-op threads for the engine (None: engine default).
        clock: seconds since the epoch (injected for tests).
        health: keep label-free health sketches of predictions (`device_runtime.health`), reported as
            ``health`` telemetry events.
        health_every: inferences after which a bundle's health window is reported.
        health_seconds: seconds after which a bundle's health window is reported (at its next inference);
            shadow trials report on the same windows.
        shadow_deadline_seconds: a shadow run (`device_runtime.shadow`) longer than this is a timeout.
        max_shadow_strikes: shadow failures, timeouts and crashes before the device stops shadowing a bundle.
    """

    store_dir: Path
    trusted_keys: Sequence[Path | bytes]
    device_id: str
    hardware_id: str
    threshold: int = 1
    trial_inferences: int = 20
    trial_seconds: float = 60.0  # seconds
    max_strikes: int = 3
    hang_seconds: float = 10.0  # seconds
    max_bundle_bytes: int = 2 << 30  # bytes
    telemetry_max_events: int = 10_000
    engine_threads: int | None = None
    clock: Callable[[], float] = field(default=time.time, compare=False)
    health: bool = True
    health_every: int = 1000  # inferences per health report
    health_seconds: float = 600.0  # seconds per health report, at most
    shadow_deadline_seconds: float = 10.0  # seconds
    max_shadow_strikes: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_dir", Path(self.store_dir))
        if not self.trusted_keys:
            raise ValueError("RuntimeConfig.trusted_keys: at least one pinned release key is required")
        if not self.device_id or not self.hardware_id:
            raise ValueError("RuntimeConfig: device_id and hardware_id are required")
        if not 1 <= self.max_strikes <= 100 or self.trial_inferences < 0 or self.trial_seconds < 0:
            raise ValueError("RuntimeConfig: max_strikes in 1..100, trial counts and seconds >= 0")
        if self.health_every < 1 or not 0 < self.health_seconds <= 3600:
            raise ValueError("RuntimeConfig: health_every >= 1 and health_seconds in (0, 3600]")
        if not 0 < self.shadow_deadline_seconds <= 3600 or not 1 <= self.max_shadow_strikes <= 100:
            raise ValueError(
                "RuntimeConfig: shadow_deadline_seconds in (0, 3600] and max_shadow_strikes in 1..100"
            )
        if not 1 <= self.threshold <= len(self.trusted_keys):
            raise ValueError(f"RuntimeConfig.threshold must be in 1..{len(self.trusted_keys)}")
