"""The reference health profile `edgekit bundle` signs into a bundle (``health.json``).

Computed from the same data as the golden vectors (``--golden``: calibration or golden inputs, or a folder
of images run through the device's own preprocessing), up to `PROFILE_SAMPLES` samples, each run alone on
the engine and read by the device's own output interpretation (`device_runtime.runtime.interpret_outputs`),
so the reference and the device's sketches (`device_runtime.health`) measure the same things the same way.
Without data there is no reference: random inputs say nothing about the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from device_runtime.engines import Engine
from device_runtime.health import HEALTH_FILE, build_profile

__all__ = ["HEALTH_FILE", "PROFILE_SAMPLES", "make_health_profile"]

PROFILE_SAMPLES = 64  # samples of the data the reference is computed from, at most


def make_health_profile(
    data: Path, engine: Engine, spec: Any, labels: list[str] | None, *, samples: int = PROFILE_SAMPLES
) -> tuple[bytes, dict[str, Any]]:
    """``health.json`` bytes (canonical JSON) and figures for the build report.

    Raises:
        GoldenDataError: the data cannot be read for this model (as for golden vectors).
    """
    from device_runtime.runtime import interpret_outputs
    from edgekit._golden_pack import _candidates

    feeds, _, runs = _candidates(data, engine, spec, samples)
    count = int(next(iter(feeds.values())).shape[0])
    inputs, results = [], []
    for index in range(count):
        one = {
            k: np.require(v[index] if runs else v[index : index + 1], requirements="C")
            for k, v in feeds.items()
        }
        outputs = engine.run(one)
        top, top_index, decoded = interpret_outputs(spec, labels, dict(outputs))
        inputs.append(one)
        results.append(SimpleNamespace(top_k=top, top_index=top_index, decoded=decoded))
    profile = build_profile(inputs, results)
    document = json.dumps(profile.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    figures = {"samples": count, "inputs": sorted(profile.inputs), "outputs": sorted(profile.outputs)}
    return document.encode() + b"\n", figures
