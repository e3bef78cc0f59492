"""Streaming `.ekb` verification (and verify+extract) vs plain SHA-256 (and hash+copy) of the same file.

    python -m bench.verify [--size-mb 200] [--rounds 7] [--quick] [--profile] [--json OUT.json]

Builds, in a temporary folder with a fresh ECDSA P-256 key, a signed bundle whose `model.onnx` is SIZE MiB
of random bytes (the verifier never parses the model) plus small files (preprocess.json, labels.txt, two
golden arrays), written as `.ekb` with `signing.archive.write_ekb` in `member_order`. Then, interleaved over
several rounds (the figure is the median over rounds):

  (a) hash          baseline: `hashlib.sha256` over the whole .ekb file, read in 1 MiB chunks
  (b) verify        `signing.verify.verify_ekb(path, keys)`, no destination (verify only)
  (c) hash+copy     baseline: read 1 MiB chunks, hash them, write them to a new file in the same filesystem
  (d) verify+extract `verify_ekb(path, keys, destination=fresh dir)`; the dir is removed after each round
  (e) verify-stream  `verify_ekb` over the same file behind a read-only, non-seekable wrapper: the path a
                     download takes (tarfile's stream mode); informational, no target

The .ekb is read once before timing, so every measurement reads it from the page cache (warm). Written
files are removed after each round, outside the timed region; nothing is fsynced. Targets (verify/hash
<= 1.15x, verify+extract / hash+copy <= 1.5x) are printed with PASS/MISS: informational, not assertions.
Figures go to stdout, progress to stderr. `--profile` adds a cProfile of (b) and (d) on stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signing.archive import member_order, write_ekb
from signing.envelope import sign_manifest
from signing.keys import PublicKey, generate_keypair, load_private_key, load_public_key
from signing.manifest import SIGNATURE_FILE, BundleManifest, FileEntry, Runtime
from signing.verify import verify_ekb

MIB = 1 << 20
CHUNK = MIB  # bytes, for the baselines
BASELINE = "baselines: hashlib.sha256 over the .ekb in 1 MiB chunks (a), and the same plus a copy (c)"
TARGETS = {"verify/hash": 1.15, "verify+extract/(hash+copy)": 1.5}
MEASUREMENTS = ("hash", "verify", "hash+copy", "verify+extract", "verify-stream")

_START = time.perf_counter()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since start."""
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- host


def host_info(workdir: Path) -> dict[str, Any]:
    """CPU model, SHA extensions, core count, Python/OpenSSL versions and the temp filesystem."""
    from bench._host import cpu

    model_name, flags, _ = cpu()
    return {
        "cpu": model_name,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "sha_ni": "sha_ni" in flags,
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "filesystem": _filesystem(workdir),
    }


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1]
                inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


# ------------------------------------------------------------------------------------------- bundle


def _write_random(path: Path, size: int, seed: int) -> str:
    """Write `size` pseudo-random bytes (seeded, fast) and return their SHA-256."""
    import random

    rng = random.Random(seed)
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        remaining = size
        while remaining > 0:
            chunk = rng.randbytes(min(8 * MIB, remaining))
            hasher.update(chunk)
            handle.write(chunk)
            remaining -= len(chunk)
    return hasher.hexdigest()


def build_bundle(workdir: Path, size: int) -> tuple[Path, list[PublicKey], BundleManifest]:
    """A signed bundle directory with a `size`-byte random model.onnx, written as bundle.ekb."""
    private_path, public_path = generate_keypair(workdir / "keys", name="bench")
    private = load_private_key(private_path)
    public = load_public_key(public_path)
    bundle = workdir / "bench-1.0.0"
    (bundle / "golden").mkdir(parents=True)
    small = {
        "preprocess.json": json.dumps(
            {"schema": "edgekit.preprocess/v1", "inputs": [{"name": "x", "mean": [0.5], "std": [0.25]}]},
            sort_keys=True,
        ).encode(),
        "labels.txt": "".join(f"class_{i}\n" for i in range(1000)).encode(),
        "golden/input_0.npy": b"\x93NUMPY" + os.urandom(64 * 1024),
        "golden/output_0.npy": b"\x93NUMPY" + os.urandom(4 * 1024),
    }
    roles = {"preprocess.json": "preprocess", "labels.txt": "labels"}
    entries: dict[str, FileEntry] = {}
    for name, data in small.items():
        (bundle / name).write_bytes(data)
        entries[name] = FileEntry(
            name, len(data), hashlib.sha256(data).hexdigest(), roles.get(name, "golden")
        )
    log(f"writing model.onnx: {size / MIB:.0f} MiB of random bytes")
    digest = _write_random(bundle / "model.onnx", size, seed=0)
    entries["model.onnx"] = FileEntry("model.onnx", size, digest, "model")
    manifest = BundleManifest(
        bundle_name=bundle.name,
        name="bench",
        version="1.0.0",
        release_counter=1,
        hardware_ids=(),
        runtime=Runtime("onnxruntime", "1.17.0", 17),
        entrypoint="model.onnx",
        files=entries,
        created="2025-01-01T00:00:00Z",
    )
    (bundle / SIGNATURE_FILE).write_bytes(sign_manifest(manifest, [private]))
    ekb = workdir / "bundle.ekb"
    write_ekb(bundle, member_order(manifest), ekb)
    return ekb, [public], manifest


# ---------------------------------------------------------------------------------------- measuring


def hash_file(path: Path) -> str:
    """(a) SHA-256 of the file in 1 MiB chunks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def hash_and_copy(path: Path, destination: Path) -> str:
    """(c) Read 1 MiB chunks, hash them and write them to a new file."""
    hasher = hashlib.sha256()
    with open(path, "rb") as source, open(destination, "xb") as target:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            target.write(chunk)
    return hasher.hexdigest()


class _Unseekable:
    """A file seen as a download: read() only, so verify_ekb takes its streaming (non-seekable) path."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        return self._handle.read(size)  # type: ignore[no-any-return]


def warm(path: Path) -> None:
    """Read the file once so that every timed read comes from the page cache."""
    with open(path, "rb") as handle:
        while handle.read(8 * MIB):
            pass


def run_rounds(
    ekb: Path, keys: list[PublicKey], manifest: BundleManifest, workdir: Path, rounds: int
) -> dict:
    """Interleave (a)-(d) for `rounds` rounds, rotating the order each round; seconds per measurement."""
    expected = hash_file(ekb)
    scratch = workdir / "scratch"
    scratch.mkdir()

    def run_hash(_: int) -> None:
        if hash_file(ekb) != expected:
            raise RuntimeError("hash baseline gave a different digest")

    def run_verify(_: int) -> None:
        result = verify_ekb(ekb, keys)
        if result.path is not None or result.manifest.files != manifest.files:
            raise RuntimeError("verify_ekb returned an unexpected result")

    def run_copy(index: int) -> Path:
        target = scratch / f"copy-{index}.bin"
        if hash_and_copy(ekb, target) != expected:
            raise RuntimeError("hash+copy baseline gave a different digest")
        return target

    def run_extract(index: int) -> Path:
        target = scratch / f"extract-{index}"
        result = verify_ekb(ekb, keys, destination=target)
        if result.path != target or not (target / "model.onnx").is_file():
            raise RuntimeError("verify_ekb did not extract the bundle")
        return target

    def run_stream(_: int) -> None:
        with open(ekb, "rb") as handle:
            result = verify_ekb(_Unseekable(handle), keys)  # type: ignore[arg-type]
        if result.manifest.files != manifest.files:
            raise RuntimeError("verify_ekb returned an unexpected result")

    steps: dict[str, Callable[[int], Any]] = {
        "hash": run_hash,
        "verify": run_verify,
        "hash+copy": run_copy,
        "verify+extract": run_extract,
        "verify-stream": run_stream,
    }
    times: dict[str, list[float]] = {name: [] for name in MEASUREMENTS}
    for index in range(rounds):
        shift = index % len(MEASUREMENTS)
        order = MEASUREMENTS[shift:] + MEASUREMENTS[:shift]
        for name in order:
            started = time.perf_counter()
            produced = steps[name](index)
            times[name].append(time.perf_counter() - started)
            if isinstance(produced, Path):  # outside the timed region
                if produced.is_dir():
                    shutil.rmtree(produced)
                else:
                    produced.unlink()
        log(
            f"round {index + 1}/{rounds}: "
            + ", ".join(f"{name} {times[name][-1]:.3f}s" for name in MEASUREMENTS)
        )
    return times


def check_extracted_copy(ekb: Path, keys: list[PublicKey], bundle_dir: Path, workdir: Path) -> bool:
    """Once, untimed: the extracted model.onnx is byte for byte the signed one."""
    target = workdir / "check"
    verify_ekb(ekb, keys, destination=target)
    try:
        return all(
            hash_file(target / name) == hash_file(bundle_dir / name)
            for name in ("model.onnx", "labels.txt", SIGNATURE_FILE)
        )
    finally:
        shutil.rmtree(target)


def profile(ekb: Path, keys: list[PublicKey], workdir: Path, top: int = 14) -> dict[str, str]:
    """cProfile of one verify and one verify+extract; the top functions by internal time."""
    reports = {}
    for label, destination in (("verify", None), ("verify+extract", workdir / "profiled")):
        profiler = cProfile.Profile()
        profiler.enable()
        verify_ekb(ekb, keys, destination=destination)
        profiler.disable()
        if destination is not None:
            shutil.rmtree(destination)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
        reports[label] = text.getvalue()
        log(f"cProfile of {label} (sorted by tottime):\n{text.getvalue()}")
    return reports


# ------------------------------------------------------------------------------------------ output


def summarize(times: dict[str, list[float]], ekb_bytes: int) -> dict[str, Any]:
    """Median seconds, MiB/s and the two ratios with their targets."""
    median = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "verify/hash": median["verify"] / median["hash"],
        "verify+extract/(hash+copy)": median["verify+extract"] / median["hash+copy"],
    }
    stream_ratio = median["verify-stream"] / median["hash"]
    return {
        "median_s": median,
        "min_s": {name: min(values) for name, values in times.items()},
        "mib_per_s": {name: ekb_bytes / MIB / seconds for name, seconds in median.items()},
        "ratios": ratios,
        "targets": {
            name: {"target": TARGETS[name], "ratio": ratio, "met": ratio <= TARGETS[name]}
            for name, ratio in ratios.items()
        },
        "info_ratios": {"verify-stream/hash": stream_ratio},
    }


def format_table(summary: dict[str, Any]) -> str:
    labels = {
        "hash": "(a) hash (baseline)",
        "verify": "(b) verify_ekb",
        "hash+copy": "(c) hash+copy (baseline)",
        "verify+extract": "(d) verify_ekb + extract",
        "verify-stream": "(e) verify_ekb, stream",
    }
    lines = [f"{'measurement':<28}{'median s':>10}{'min s':>10}{'MiB/s':>10}", "-" * 58]
    for name in MEASUREMENTS:
        lines.append(
            f"{labels[name]:<28}{summary['median_s'][name]:>10.3f}{summary['min_s'][name]:>10.3f}"
            f"{summary['mib_per_s'][name]:>10.0f}"
        )
    lines.append("")
    lines.append(f"{'ratio':<28}{'value':>10}{'target':>10}{'':>10}")
    lines.append("-" * 58)
    for name, row in summary["targets"].items():
        verdict = "PASS" if row["met"] else "MISS"
        target = f"<= {row['target']:.2f}x"
        lines.append(f"{name:<28}{row['ratio']:>9.2f}x{target:>10}{verdict:>10}")
    for name, ratio in summary["info_ratios"].items():
        lines.append(f"{name:<28}{ratio:>9.2f}x{'-':>10}{'info':>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=None, help="model.onnx size in MiB (default 200)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="20 MiB and 3 rounds (smoke run)")
    parser.add_argument("--profile", action="store_true", help="cProfile one verify and one extract")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    size_mib = args.size_mb if args.size_mb is not None else (20 if args.quick else 200)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 7)
    if size_mib < 1 or rounds < 1:
        parser.error("--size-mb and --rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-verify-") as tmp:
        workdir = Path(tmp)
        host = host_info(workdir)
        print(
            f"host: {host['cpu']} ({host['machine']}, {host['cores']} cores, SHA extensions "
            f"{'yes' if host['sha_ni'] else 'no'}), Python {host['python']}, {host['openssl']}"
        )
        print(BASELINE)
        sys.stdout.flush()
        ekb, keys, manifest = build_bundle(workdir, size_mib * MIB)
        ekb_bytes = ekb.stat().st_size
        log(f"built {ekb.name}: {ekb_bytes} bytes, {len(manifest.files)} signed files + {SIGNATURE_FILE}")
        warm(ekb)
        log("read the .ekb once: timed reads come from the page cache")
        identical = check_extracted_copy(ekb, keys, workdir / manifest.bundle_name, workdir)
        times = run_rounds(ekb, keys, manifest, workdir, rounds)
        profiles = profile(ekb, keys, workdir) if args.profile else {}

    summary = summarize(times, ekb_bytes)
    print(
        f"bundle: model.onnx {size_mib} MiB random bytes + 4 small files, .ekb {ekb_bytes / MIB:.1f} MiB "
        f"({ekb_bytes} bytes); temp filesystem {host['filesystem']}"
    )
    print(
        f"timing: median of {rounds} interleaved rounds (order rotated each round); the .ekb is warm in the "
        "page cache; written files are removed after each round, untimed; no fsync"
    )
    print()
    print(format_table(summary))
    print()
    print("MiB/s = .ekb bytes / median seconds; targets are informational (PASS/MISS), not assertions")
    print(f"extracted copy identical to the signed files: {'yes' if identical else 'NO'}")
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "baseline": BASELINE,
        "host": host,
        "size_mib": size_mib,
        "ekb_bytes": ekb_bytes,
        "rounds": rounds,
        "page_cache": "warm",
        "times_s": times,
        "extracted_identical": identical,
        **summary,
    }
    if profiles:
        results["profiles"] = profiles
    results["elapsed_s"] = time.perf_counter() - _START
    print(f"elapsed: {results['elapsed_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
