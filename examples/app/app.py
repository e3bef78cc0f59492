"""A small app that embeds the edgekit device runtime: install a signed bundle, classify a folder of images.

    python examples/app/app.py --store /tmp/app-store --key build/keys/release.pub \
        --bundle build/digits-1.0.0.ekb --images build/images/eval --labels-from-names

It installs the bundle unless that exact bundle is already active (verify, golden self-test on this
machine's engine, atomic activation), classifies every image in the folder with the bundle's own
preprocessing, prints ``file -> label (score)`` per image and a summary. With ``--labels-from-names`` the
true class index is read from each file name (``0001_digit7.png`` is class 7), the accuracy is printed and
every prediction's outcome goes to the runtime as feedback (accuracy telemetry). Last, the trial and
telemetry figures of ``Runtime.status()``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from device_runtime import DeviceRuntimeError, Runtime, RuntimeConfig
from device_runtime.preprocess import list_images
from signing.errors import SigningError

# "0001_digit7.png", "cat-label3.jpg", "x_class_12.png": the number after digit / label / class.
TRUE_LABEL = re.compile(r"(?:digit|label|class)[_-]?(\d+)", re.IGNORECASE)


def true_index(path: Path) -> int | None:
    """The class index a file name encodes (the last one if several), or None."""
    found = TRUE_LABEL.findall(path.stem)
    return int(found[-1]) if found else None


def top1_index(result: Any) -> int | None:
    """The top-1 class index: the label itself when the bundle has no labels, else the argmax of the
    first (batch, classes) output."""
    if result.top_k and isinstance(result.top_k[0][0], int):
        return int(result.top_k[0][0])
    for value in result.outputs.values():
        if getattr(value, "ndim", 0) == 2 and value.shape[1] > 1:
            return int(value[0].argmax())
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, type=Path, help="the runtime's store folder")
    parser.add_argument("--key", required=True, action="append", type=Path, help="pinned release public key")
    parser.add_argument("--bundle", required=True, type=Path, help="the signed .ekb to run")
    parser.add_argument("--images", required=True, type=Path, help="folder of images to classify")
    parser.add_argument(
        "--labels-from-names", action="store_true", help="read the true class from each file name"
    )
    parser.add_argument("--device-id", default="example-device")
    parser.add_argument("--hardware-id", default="example-hardware")
    args = parser.parse_args(argv)

    config = RuntimeConfig(
        store_dir=args.store, trusted_keys=args.key, device_id=args.device_id, hardware_id=args.hardware_id
    )
    try:
        runtime = Runtime(config)
    except (DeviceRuntimeError, SigningError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        return run(runtime, args)
    except (DeviceRuntimeError, SigningError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        runtime.close()


def run(runtime: Runtime, args: argparse.Namespace) -> int:
    installed = runtime.install(args.bundle)  # verifies every time; a no-op when already active
    if installed.already_active:
        print(f"model: {installed.name} {installed.version} (already installed, slot {installed.slot})")
    else:
        print(f"model: {installed.name} {installed.version} installed into slot {installed.slot}")

    images = list_images(args.images)
    correct = known = 0
    latency_ms = 0.0
    for path in images:
        result = runtime.predict(path)
        latency_ms += result.latency_ms
        label, score = result.top_k[0] if result.top_k else ("?", float("nan"))
        line = f"{path.relative_to(args.images)} -> {label} ({score:.3f})"
        truth = true_index(path) if args.labels_from_names else None
        predicted = top1_index(result)
        if truth is not None and predicted is not None:
            known += 1
            hit = predicted == truth
            correct += hit
            # The runtime compares the truth with its own top-1 label; this app knows class indices only,
            # so it passes the top-1 label for a hit and the (different) true index for a miss.
            runtime.feedback(result.prediction_id, label if hit else truth)
            line += "" if hit else f"  WRONG (true class {truth})"
        print(line)

    print(f"\n{len(images)} images, {latency_ms / len(images):.2f} ms per image on average")
    if known:
        print(f"accuracy: {correct}/{known} = {100.0 * correct / known:.1f}%")
    runtime.telemetry.flush()  # write the pending inference aggregate so the figures below include it
    status = runtime.status()
    trial = status["trial"]
    if trial is None:
        print("trial: committed (not on trial)")
    else:
        needs = trial["needs"]
        elapsed = max(0.0, time.time() - trial["started"])
        print(
            f"trial: {trial['successes']} successful inferences (commit needs {needs['inferences']}), "
            f"{elapsed:.0f} of {needs['seconds']:g} s, {trial['strikes']} strikes"
        )
    telemetry = status["telemetry"]
    print(
        f"telemetry: {telemetry['queued']} events queued, {telemetry['dropped']} dropped, "
        f"{telemetry['failures']} write failures"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
