"""Image decoding and geometry for ``edgekit.preprocess/v1`` (private; use :mod:`device_runtime.preprocess`).

Pillow is imported inside the functions that decode, never at module import, so that a device which only
feeds tensors never loads it. Every read is bounded (:data:`MAX_IMAGE_BYTES`, :data:`MAX_IMAGE_PIXELS`) and
every failure is an :class:`~device_runtime.errors.InputError` naming the image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device_runtime.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "list_images",
    "to_pixels",
]

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # bytes read from one encoded image
MAX_IMAGE_PIXELS = 8192 * 8192  # width * height of one decoded image
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")

_FORMATS = "a PNG, JPEG, BMP, GIF or WebP file"
_ACCEPTED = "a file path, image bytes, a PIL image or a uint8 numpy array of shape (H, W) or (H, W, 1|3|4)"


def to_pixels(
    image: object,
    *,
    color: str,
    size: tuple[int, int],
    resize: str,
    interpolation: str,
    out_size: tuple[int, int],
) -> np.ndarray:
    """Decode ``image`` and return uint8 pixels of shape ``(*out_size, C)`` (C = 1 for GRAY, else 3).

    Steps: decode, convert to RGB (or L for GRAY), resize per ``resize`` to ``size``, reorder to BGR when
    asked, center-crop to ``out_size``. Raises InputError when the image cannot be read or decoded, or is
    too large.
    """
    from PIL import Image

    pil, where = _decode(image, Image)
    try:
        pil = pil.convert("L" if color == "GRAY" else "RGB")
        resample = getattr(Image.Resampling, "BOX" if interpolation == "area" else interpolation.upper())
        pixels = _resize(pil, size=size, resize=resize, resample=resample)
    except Exception as e:  # Pillow's codecs raise many types on malformed input
        raise InputError(
            f"{where}: cannot convert the image ({type(e).__name__}: {e}); pass {_FORMATS}"
        ) from e
    if color == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(_center_crop(pixels, out_size))


def _decode(image: object, Image: Any) -> tuple[Image.Image, str]:
    """Return a loaded PIL image and a description of it for error messages."""
    if isinstance(image, Image.Image):
        where = "PIL image"
        pil: Image.Image = image
    elif isinstance(image, np.ndarray):
        where = f"array of shape {image.shape}"
        pil = _from_array(image, where, Image)
    else:
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            where = f"image bytes ({len(data)} bytes)"
        elif isinstance(image, (str, os.PathLike)):
            where = os.fsdecode(image)
            data = _read_capped(Path(where))
        else:
            raise InputError(f"cannot use a {type(image).__name__} as an image; pass {_ACCEPTED}")
        if len(data) > MAX_IMAGE_BYTES:
            raise InputError(f"{where}: larger than {MAX_IMAGE_BYTES} bytes; pass a smaller image")
        try:
            pil = Image.open(io.BytesIO(data))
            _check_pixels(pil.size, where)
            pil.load()
        except InputError:
            raise
        except Exception as e:  # Pillow's codecs raise many types on malformed input
            raise InputError(
                f"{where}: cannot decode the image ({type(e).__name__}: {e}); pass {_FORMATS}"
            ) from e
    _check_pixels(pil.size, where)
    return pil, where


def _read_capped(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read the image ({e.strerror or e}); check the path") from e


def _from_array(array: np.ndarray, where: str, Image: Any) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(
            f"{where}: dtype {array.dtype} is not allowed (expected uint8 pixels); pass {_ACCEPTED}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(f"{where}: shape is not allowed; pass {_ACCEPTED}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{where}: the image is empty; pass {_ACCEPTED}")
    return Image.fromarray(np.ascontiguousarray(array))  # channels are read as RGB(A)


def _check_pixels(size: tuple[int, int], where: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{where}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}; pass a smaller image"
        )


def _scaled(length: int, num: int, den: int) -> int:
    """``round(length * num / den)`` with halves rounded up, in exact integer arithmetic, at least 1."""
    return max(1, (2 * length * num + den) // (2 * den))


def _resize(pil: Image.Image, *, size: tuple[int, int], resize: str, resample: Any) -> np.ndarray:
    height, width = size
    w, h = pil.size
    if resize == "stretch":
        return _pixels(pil.resize((width, height), resample=resample))
    if resize == "shortest_edge":
        # The shortest edge becomes max(size); the other edge keeps the aspect ratio (and is >= max(size)).
        target = max(size)
        new_h, new_w = (target, _scaled(w, target, h)) if h <= w else (_scaled(h, target, w), target)
        return _pixels(pil.resize((new_w, new_h), resample=resample))
    # letterbox: fit inside (height, width) keeping the aspect ratio, centred on a zero canvas.
    if height * w <= width * h:
        new_h, new_w = height, min(width, _scaled(w, height, h))
    else:
        new_h, new_w = min(height, _scaled(h, width, w)), width
    inner = _pixels(pil.resize((new_w, new_h), resample=resample))
    canvas = np.zeros((height, width, inner.shape[2]), dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = inner
    return canvas


def _pixels(pil: Image.Image) -> np.ndarray:
    array = np.asarray(pil, dtype=np.uint8)
    return array[:, :, np.newaxis] if array.ndim == 2 else array


def _center_crop(pixels: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    height, width = out_size
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return pixels[top : top + height, left : left + width]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Return the image files under ``folder``, recursively, sorted by path components.

    Image files end in one of :data:`IMAGE_SUFFIXES` (case-insensitive). Only regular files count: symlinks
    (to files or folders) are skipped, as are hidden names (starting with ``.``, e.g. macOS ``._x.jpg``).
    Raises InputError when ``folder`` is missing, is not a folder or holds no image file.
    """
    root = Path(folder)
    suffixes = " ".join(IMAGE_SUFFIXES)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder; pass a folder that contains image files ({suffixes})")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: symlinked folders are not entered
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            path = Path(dirpath, filename)
            if filename.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.is_symlink() and path.is_file():
                found.append(path)
    if not found:
        raise InputError(f"{root}: the folder holds no image file; add files ending in {suffixes}")
    return sorted(found, key=lambda p: p.relative_to(root).parts)
