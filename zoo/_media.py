"""Raw realistic media made in code, deterministic: photos, rendered text, speech-like audio, real files.

No download: photos are scikit-image's bundled samples, fonts are matplotlib's bundled DejaVu family,
audio is synthesised, byte files are read from the running Python's standard library. Every function
takes a seed (or needs none) and returns the same data on every call.
"""

from __future__ import annotations

import functools
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "PHOTO_NAMES",
    "SAMPLE_RATE",
    "Speech",
    "face_box",
    "font",
    "photo",
    "photo_variants",
    "render_line",
    "render_page",
    "speech",
    "stdlib_files",
]

# scikit-image samples that ship inside the wheel (no pooch download), colour first.
PHOTO_NAMES = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel",
    "logo", "camera", "coins", "clock", "moon", "page", "text", "brick", "grass", "gravel", "cell",
)
# Eileen Collins' face in skimage.data.astronaut() (512x512): rows, columns; found with the MediaPipe
# face detector and checked by eye.
ASTRONAUT_FACE = (20, 210, 150, 300)  # top, bottom, left, right (pixels)
SAMPLE_RATE = 16000  # Hz


@functools.cache
def photo(name: str) -> np.ndarray:
    """A bundled scikit-image sample as HxWx3 uint8 RGB (gray and RGBA samples converted)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:  # composite RGBA on white
        alpha = image[:, :, 3:4].astype(np.float32) / 255
        image = (image[:, :, :3] * alpha + 255 * (1 - alpha)).round()
    return np.ascontiguousarray(image.astype(np.uint8))


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWxC uint8 image with Pillow."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def photo_variants(count: int, *, seed: int = 0, names: tuple[str, ...] = PHOTO_NAMES) -> list[np.ndarray]:
    """``count`` photos: each sample whole, then random crops (40-100% of a side) and mirror images."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    i = 0
    while len(out) < count:
        image = photo(names[i % len(names)])
        if i >= len(names):  # first pass: the whole photo; later passes: crops, some mirrored
            h, w = image.shape[:2]
            scale = rng.uniform(0.4, 1.0)
            ch, cw = max(16, int(h * scale)), max(16, int(w * scale))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image = image[top : top + ch, left : left + cw]
            if rng.random() < 0.5:
                image = image[:, ::-1]
        out.append(np.ascontiguousarray(image))
        i += 1
    return out


def face_box() -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the face in the astronaut photo."""
    return ASTRONAUT_FACE


def face_crops(count: int, *, seed: int = 0, scale: tuple[float, float] = (1.1, 1.6)) -> list[np.ndarray]:
    """``count`` square crops around the astronaut's face, jittered in position and in size (``scale``
    times the face box; the first crop is centred at the middle of ``scale``), every other one mirrored
    (RGB)."""
    rng = np.random.default_rng(seed)
    image = photo("astronaut")
    top, bottom, left, right = ASTRONAUT_FACE
    cy, cx, side = (top + bottom) / 2, (left + right) / 2, max(bottom - top, right - left)
    crops = []
    for k in range(count):
        s = side * ((scale[0] + scale[1]) / 2 if k == 0 else rng.uniform(*scale))
        y = cy + (0 if k == 0 else rng.uniform(-0.08, 0.08) * side)
        x = cx + (0 if k == 0 else rng.uniform(-0.08, 0.08) * side)
        top, left = int(max(0, y - s / 2)), int(max(0, x - s / 2))
        bottom, right = int(min(image.shape[0], y + s / 2)), int(min(image.shape[1], x + s / 2))
        crop = image[top:bottom, left:right]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if k % 2 else crop))
    return crops


# ---- text ------------------------------------------------------------------------------------------

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")


@functools.cache
def font(name: str, size: int):  # type: ignore[no-untyped-def]
    """A matplotlib-bundled TrueType font as a PIL ImageFont."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def render_line(text: str, *, height: int = 48, font_name: str = "DejaVuSans.ttf", ink: int = 20,
                paper: int = 245, margin: int = 6) -> np.ndarray:
    """One text line, dark on light, ``height`` pixels tall, as wide as the text needs (HxWx3 uint8)."""
    from PIL import Image, ImageDraw

    face = font(font_name, int(height * 0.62))
    left, top, right, bottom = face.getbbox(text)
    width = right - left + 2 * margin
    image = Image.new("RGB", (max(width, height), height), (paper,) * 3)
    ImageDraw.Draw(image).text((margin - left, (height - (bottom - top)) // 2 - top), text, font=face,
                               fill=(ink,) * 3)
    return np.asarray(image)


def render_page(lines: list[str], *, size: tuple[int, int] = (640, 640), seed: int = 0
                ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A page with several text lines at random positions and sizes; returns it and each line's box
    (top, bottom, left, right)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    height, width = size
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(225, 255, 3)))
    draw = ImageDraw.Draw(image)
    boxes = []
    y = int(rng.integers(16, 40))
    for text in lines:
        face = font(FONT_FILES[int(rng.integers(len(FONT_FILES)))], int(rng.integers(20, 34)))
        x = int(rng.integers(16, 80))
        left, top, right, bottom = (int(v) for v in draw.textbbox((x, y), text, font=face))
        if bottom > height - 8:
            break
        right = min(right, width - 4)
        draw.text((x, y), text, font=face, fill=tuple(int(v) for v in rng.integers(0, 60, 3)))
        boxes.append((top, bottom, left, right))
        y = bottom + int(rng.integers(14, 40))
    return np.asarray(image), boxes


# ---- audio -----------------------------------------------------------------------------------------

# (F1, F2, F3) in Hz for a few vowels, from the classic Peterson-Barney averages.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240))


@dataclass(frozen=True)
class Speech:
    """Synthetic speech-like audio and where its voiced parts are."""

    wave: np.ndarray  # float32 in [-1, 1], SAMPLE_RATE Hz
    voiced: np.ndarray  # bool per sample: inside a voiced utterance


def _resonator(signal: np.ndarray, frequency: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonator (a formant), run sample by sample through scipy's lfilter."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * frequency / SAMPLE_RATE
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1 - r], a, signal)


@dataclass(frozen=True)
class _Speaker:
    pitch: float  # Hz, mean fundamental frequency
    tract: float  # formant scale: a shorter vocal tract has higher formants
    breath: float  # aspiration noise level relative to the glottal pulses


def _utterance(rng: np.random.Generator, seconds: float, speaker: _Speaker) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n)
    position = 0
    base = speaker.pitch * rng.uniform(0.93, 1.07)
    while position < n:
        length = min(n - position, int(rng.uniform(0.12, 0.3) * SAMPLE_RATE))  # one syllable
        if length < 400:  # a remainder too short for a syllable stays silent
            break
        t = np.arange(length) / SAMPLE_RATE
        f0 = base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t + rng.uniform(0, 6)))
        phase = np.cumsum(f0 / SAMPLE_RATE)
        # glottal source: one sharp pulse per period, softened (a derivative-of-Rosenberg-like shape)
        pulses = np.diff(np.floor(phase), prepend=0.0)
        source = np.convolve(pulses, np.hanning(24) * np.linspace(1, -0.5, 24), mode="same")
        source += speaker.breath * rng.standard_normal(length)
        formants = [f * speaker.tract for f in _VOWELS[int(rng.integers(len(_VOWELS)))]]
        voiced = sum(_resonator(source, f, 60 + 40 * k) for k, f in enumerate(formants))
        envelope = np.sin(np.pi * np.arange(length) / length) ** 0.6
        syllable = voiced * envelope
        if rng.random() < 0.3:  # a fricative onset ("s", "f"): high-passed noise
            burst = min(length, int(0.06 * SAMPLE_RATE))
            noise = np.diff(rng.standard_normal(burst + 1)) * 0.15
            syllable[:burst] = syllable[:burst] * 0.3 + noise
        out[position : position + length] = syllable
        position += length
    return out / (np.abs(out).max() + 1e-9)


def speech(seconds: float = 12.0, *, seed: int = 0) -> Speech:
    """Speech-like audio of one speaker: voiced utterances (varying pitch, formants, syllables) between
    silences with a little background noise; ``voiced`` marks the utterances."""
    rng = np.random.default_rng(seed)
    speaker = _Speaker(pitch=rng.uniform(90, 230), tract=rng.uniform(0.85, 1.2),
                       breath=rng.uniform(0.005, 0.05))
    n = int(seconds * SAMPLE_RATE)
    wave = np.zeros(n)
    voiced = np.zeros(n, dtype=bool)
    position = int(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
    while position < n:
        length = min(n - position, int(rng.uniform(0.8, 2.0) * SAMPLE_RATE))
        loudness = rng.uniform(0.3, 0.8)
        wave[position : position + length] = loudness * _utterance(rng, length / SAMPLE_RATE, speaker)
        voiced[position : position + length] = True
        position += length + int(rng.uniform(0.6, 1.4) * SAMPLE_RATE)
    wave += 10 ** (-55 / 20) * rng.standard_normal(n)  # -55 dBFS room noise
    return Speech(np.clip(wave, -1, 1).astype(np.float32), voiced)


# ---- byte files ------------------------------------------------------------------------------------

# file suffix -> label in magika's label space; .py and .pyc only from a few packages (there are thousands)
_STDLIB_SUFFIXES = {
    ".json": "json", ".html": "html", ".htm": "html", ".xml": "xml", ".csv": "csv", ".png": "png",
    ".gif": "gif", ".zip": "zip", ".whl": "zip", ".sh": "shell", ".txt": "txt", ".cfg": "ini",
    ".ini": "ini", ".wav": "wav",
}
_CODE_PACKAGES = ("json", "email", "http", "asyncio")


def stdlib_files(per_kind: int = 8) -> list[tuple[str, bytes]]:
    """Real files from this Python's standard library, labelled with magika's names for their type,
    plus files written by the standard library's own writers (csv, tar, gzip, sqlite, a small PDF).

    Up to ``per_kind`` files of each kind, sorted by path (so deterministic for one Python install);
    kinds the install lacks are skipped.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    by_label: dict[str, list[Path]] = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d != "site-packages"]
        for name in names:
            label = _STDLIB_SUFFIXES.get(os.path.splitext(name)[1])
            if label is not None:
                by_label.setdefault(label, []).append(Path(folder) / name)
    for package in _CODE_PACKAGES:
        by_label.setdefault("python", []).extend((root / package).glob("*.py"))
        by_label.setdefault("pythonbytecode", []).extend((root / package / "__pycache__").glob("*.pyc"))
    found: list[tuple[str, bytes]] = []
    for label in sorted(by_label):
        files = sorted(p for p in by_label[label] if p.is_file() and p.stat().st_size >= 64)
        found.extend((label, p.read_bytes()) for p in files[:per_kind])
    return found + _written_files(root, per_kind)


def _written_files(root: Path, count: int) -> list[tuple[str, bytes]]:
    """Files in formats the stdlib writes but does not ship, with real content from the stdlib."""
    import csv
    import gzip
    import io
    import sqlite3
    import tarfile
    import tempfile

    sources = sorted((root / "json").glob("*.py"))
    out: list[tuple[str, bytes]] = []
    for k in range(count):
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["module", "line", "length", "words", "first"])
        for source in sources:
            for number, line in enumerate(source.read_text().splitlines()[k * 7 : k * 7 + 12]):
                words = line.split()
                writer.writerow([source.stem, number, len(line), len(words), words[0] if words else ""])
        out.append(("csv", rows.getvalue().encode()))
        text = sources[k % len(sources)].read_bytes()
        out.append(("gzip", gzip.compress(text, mtime=0)))
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for source in sources[: 2 + k % 3]:
                info = tarfile.TarInfo(source.name)
                info.size, info.mtime = source.stat().st_size, 0
                tar.addfile(info, io.BytesIO(source.read_bytes()))
        out.append(("tar", archive.getvalue()))
        out.append(("pdf", _pdf(text.decode(errors="replace").splitlines()[k * 5 : k * 5 + 30])))
        with tempfile.TemporaryDirectory() as scratch:
            db = Path(scratch) / "t.sqlite"
            with sqlite3.connect(db) as connection:
                connection.execute("create table line (n integer, text text)")
                connection.executemany("insert into line values (?, ?)",
                                       list(enumerate(text.decode(errors="replace").splitlines())))
            connection.close()
            out.append(("sqlite", db.read_bytes()))
    return out


def _pdf(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF 1.4 showing ``lines`` (uncompressed content stream, xref table)."""
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    stream = "BT /F1 10 Tf 40 800 Td 12 TL " + " ".join(f"({line}) '" for line in escaped) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream.encode('latin-1', 'replace'))} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    body = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{number} 0 obj\n{obj}\nendobj\n".encode("latin-1", "replace")
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return body
