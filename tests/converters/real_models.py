"""Real published models from the zoo wheels, and realistic inputs for them made in code.

OCR inputs are text lines rendered with PIL in matplotlib's DejaVu fonts and normalised as rapidocr does
((x / 255 - 0.5) / 0.5, CHW). Magika inputs are real stdlib files' bytes turned into features as the
magika package does (first and last `beg_size` / `end_size` bytes of at most `block_size`, whitespace
stripped, padded with `padding_token`), with its config.min.json. Tests skip when a wheel is absent.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

WHEELS = Path.home() / ".cache" / "edgekit" / "zoo" / "wheels"
OCR_MODELS = {
    "det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
MAGIKA_DIR = "magika/models/standard_v3_3/"
_TEXT = (
    "invoice total amount due date shipping address edge model quantize parity gate device rollout "
    "signed bundle release north south 2024 42.50 EUR order #1187 receipt thank you station platform"
)
WORDS = _TEXT.split()


def extract(wheel_glob: str, member: str, folder: Path) -> Path:
    """Extract one member of the first matching wheel into `folder` (skip the test when absent)."""
    wheels = sorted(WHEELS.glob(wheel_glob))
    if not wheels:
        pytest.skip(f"zoo wheel {wheel_glob} is not downloaded in {WHEELS}")
    target = folder / Path(member).name
    if not target.exists():
        with zipfile.ZipFile(wheels[0]) as archive:
            target.write_bytes(archive.read(member))
    return target


def ocr_model(kind: str, folder: Path) -> Path:
    return extract("rapidocr_onnxruntime-*.whl", OCR_MODELS[kind], folder)


def magika_model(folder: Path) -> tuple[Path, dict[str, object]]:
    model = extract("magika-*.whl", MAGIKA_DIR + "model.onnx", folder)
    config = extract("magika-*.whl", MAGIKA_DIR + "config.min.json", folder)
    return model, json.loads(config.read_text())


def _fonts() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [folder / name for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")]


def text_lines(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """`count` text-line images (CHW float32 in [-1, 1]) of `height` x `width`, as rapidocr feeds them."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    images = np.zeros((count, 3, height, width), dtype=np.float32)
    for index in range(count):
        background = int(rng.integers(200, 256))
        image = Image.new("RGB", (width, height), (background,) * 3)
        draw = ImageDraw.Draw(image)
        size = int(rng.integers(height // 2, int(height * 0.8)))
        font = ImageFont.truetype(str(fonts[index % len(fonts)]), size)
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
        ink = int(rng.integers(0, 90))
        draw.text((int(rng.integers(0, 12)), (height - size) // 2 - 2), words, font=font, fill=(ink,) * 3)
        if rng.random() < 0.25:  # some upside-down lines, the orientation classifier's other class
            image = image.rotate(180)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        images[index] = ((pixels - 0.5) / 0.5).transpose(2, 0, 1)
    return images


def text_pages(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Pages with a few text lines each, for the detector (CHW float32 in [-1, 1])."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = _fonts()
    pages = np.zeros((count, 3, height, width), dtype=np.float32)
    for index in range(count):
        image = Image.new("RGB", (width, height), (int(rng.integers(210, 256)),) * 3)
        draw = ImageDraw.Draw(image)
        y = int(rng.integers(2, 12))
        while y < height - 16:
            size = int(rng.integers(12, 26))
            font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
            draw.text((int(rng.integers(0, 30)), y), words, font=font, fill=(int(rng.integers(0, 80)),) * 3)
            y += size + int(rng.integers(6, 20))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pages[index] = ((pixels - 0.5) / 0.5).transpose(2, 0, 1)
    return pages


def magika_features(config: dict[str, object], count: int, seed: int = 0) -> np.ndarray:
    """Features of `count` real files of the Python standard library (varied types), int32 [N, beg+end]."""
    beg_size, end_size = int(config["beg_size"]), int(config["end_size"])  # type: ignore[call-overload]
    block, pad = int(config["block_size"]), int(config["padding_token"])  # type: ignore[call-overload]
    root = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix
        in {
            ".py",
            ".txt",
            ".json",
            ".xml",
            ".gz",
            ".pyc",
            ".so",
            ".cfg",
            ".html",
            ".wav",
            ".csv",
            ".zip",
            ".tar",
            ".png",
            ".bat",
        }
    )
    rng = np.random.default_rng(seed)
    # Spread the picks over the file types so that the classifier sees more than Python source.
    by_type: dict[str, list[Path]] = {}
    for path in candidates:
        by_type.setdefault(path.suffix, []).append(path)
    picks: list[Path] = []
    while len(picks) < count:
        for paths in by_type.values():
            if len(picks) < count:
                picks.append(paths[int(rng.integers(len(paths)))])
    features = np.full((count, beg_size + end_size), pad, dtype=np.int32)
    for index, path in enumerate(picks):
        data = path.read_bytes()
        small = len(data) <= block
        beg = data[:block].strip() if small else data[:block].lstrip()
        end = data[-block:].strip() if small else data[-block:].rstrip()
        beg_ints = list(beg[:beg_size])
        end_ints = list(end[-end_size:]) if end_size else []
        features[index, : len(beg_ints)] = beg_ints
        if end_ints:
            features[index, beg_size + end_size - len(end_ints) :] = end_ints
    return features
