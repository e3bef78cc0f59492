"""A real detector in shadow: the zoo's NudeNet (YOLOv8n) bundle on scikit-image photos, real onnxruntime.

The same model re-released agrees on every photo (same detections, boxes matched at IoU >= 0.5); a release
whose signed spec raises the score threshold decodes fewer detections from the same head and disagrees.
Either way the served detections are the base release's own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from device_runtime.runtime import Runtime
from device_runtime.telemetry_contract import ShadowPayload, parse_payload
from tests.converters.zoo import zoo_file
from tests.device_runtime.test_typed_predict import LABELS
from tests.host_tools import needs_host

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")


def build(folder: Path, model: Path, key: Path, version: str, counter: int, threshold: float | None) -> Path:
    from edgekit.bundle_build import BundleRequest, build_bundle

    spec = folder / f"preprocess-{version}.json"
    output: dict[str, Any] = {"name": "output0", "kind": "detection", "labels": "labels.txt"}
    if threshold is not None:
        output["score_threshold"] = threshold
    image = {"name": "images", "kind": "image", "size": [320, 320], "layout": "NCHW", "resize": "letterbox"}
    spec.write_text(json.dumps({"schema": "edgekit.preprocess/v1", "inputs": [image], "outputs": [output]}))
    bundle = folder / f"nudenet-{version}.ekb"
    build_bundle(
        BundleRequest(
            model=model,
            output=bundle,
            name="nudenet",
            version=version,
            keys=[key],
            preprocess=spec,
            labels=folder / "labels.txt",
            golden=folder / "photos",
            release_counter=counter,
            created="2026-11-23T00:00:00Z",
        )
    )
    return bundle


def wait_idle(rt: Runtime) -> None:
    deadline = time.monotonic() + 120
    while rt.status()["shadow"]["running"]["pending"]:
        assert time.monotonic() < deadline, "the shadow worker never drained its queue"
        time.sleep(0.01)


@pytest.mark.slow
@needs_host("skimage", why="the zoo's NudeNet detector on scikit-image photos")
def test_a_real_detector_in_shadow_agrees_with_its_re_release_and_not_with_a_stricter_spec(
    tmp_path: Path,
) -> None:
    from PIL import Image

    from device_runtime.config import RuntimeConfig
    from signing.keys import generate_keypair

    skimage_data = pytest.importorskip("skimage.data")
    model = zoo_file("yolov8n-nudenet")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (tmp_path / "photos").mkdir()
    photos = []
    for name in PHOTOS:
        image = getattr(skimage_data, name)()
        photo = tmp_path / "photos" / f"{name}.png"
        Image.fromarray(image if image.ndim == 3 else image[..., None].repeat(3, -1)).convert("RGB").save(
            photo
        )
        photos.append(photo)
    key, pub = generate_keypair(tmp_path / "keys", name="release")
    base = build(tmp_path, model, key, "3.4.2", 1, None)
    same = build(tmp_path, model, key, "3.4.3", 2, None)
    strict = build(tmp_path, model, key, "3.4.4", 3, 0.9)
    make: Callable[[str], Runtime] = lambda name: Runtime(  # noqa: E731
        RuntimeConfig(
            store_dir=tmp_path / name, trusted_keys=[pub], device_id="d1", hardware_id="any", engine_threads=1
        )
    )
    plain, rt = make("plain"), make("shadowed")
    try:
        for runtime in (plain, rt):
            runtime.install(base)
        outcomes: dict[str, tuple[int, int]] = {}
        for name, release in (("same", same), ("strict", strict)):
            rt.stage_shadow(release, sample=1.0, max_cpu=1.0)
            for _ in range(3):  # the budget admits about every other run (the job costs a little more)
                for photo in photos:
                    shown = rt.predict(photo).decoded["output0"]["detections"]
                    assert shown == plain.predict(photo).decoded["output0"]["detections"]
                    wait_idle(rt)
            totals = rt.status()["shadow"]["running"]
            outcomes[name] = (totals["compared"], totals["agreed"])
            rt.flush_shadow()
        assert outcomes["same"][0] > 0 and outcomes["same"][1] == outcomes["same"][0], outcomes
        assert outcomes["strict"][0] > 0 and outcomes["strict"][1] < outcomes["strict"][0], outcomes
        events = [e.payload for e in rt.telemetry.pending(10_000) if e.kind == "shadow"]
        parsed = [parse_payload("shadow", p) for p in events]
        assert all(isinstance(p, ShadowPayload) for p in parsed) and len(parsed) == 2
        assert {o.role for p in parsed for o in p.outputs} == {"detection"}  # type: ignore[union-attr]
    finally:
        plain.close()
        rt.close()
