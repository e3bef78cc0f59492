"""Delta updates: bytes on the wire and device rebuild time, against the full bundle and `zstd`, same run.

    python -m bench.delta [--quick] [--json OUT.json] [--cache DIR]

Scenarios (bench/_delta_scenarios.py): the digits CNN re-released, its head retrained, the whole model
fine-tuned two more epochs (fp32, and int8 re-quantized), and retrained from scratch; each a signed bundle
built by `edgekit.bundle_build`. For each (old release -> new release):

- full: the new `.ekb` (what a device downloads without deltas);
- `zstd -19` of the new `.ekb`, and `zstd -19 --patch-from=OLD` (the generic baseline), by the zstd CLI;
  when the CLI is absent the report says so and those columns are empty;
- bsdiff4 (`bsdiff4.diff`, bzip2 inside), when the package is installed;
- edgekit's encodings: structured (tensor-aware: per ONNX initializer, XOR or subtraction of the words in
  byte planes then zstd, or zstd with the old tensor as dictionary, smallest per chunk) and generic (zstd
  with the old archive as dictionary), and the one `edgekit publish` ships (the smaller);
- device time: rebuild the `.ekb` from the old release's slot plus the delta, then verify it as an install
  does (`verify_ekb` extracting into a fresh folder with fsync), against verifying the full download
  alone; interleaved repetitions, the ratio of the medians (the fastest runs are reported too).

Targets from the issue, printed PASS/MISS for information (benchmarks assert nothing): never more bytes
than `--patch-from`, never more than the full bundle; re-release <= 2%; head-only <= 15%; whole fine-tune
fp32 <= 60%, int8 <= 25% (of the full bundle); rebuild + verify <= 2x a full verify.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench._delta_scenarios import PAIRS, prepare
from bench._host import cpu

SHARE_TARGETS = {  # scenario -> highest delta size as a share of the full bundle
    "re-release": 0.02,
    "head-only retrained": 0.15,
    "fine-tune +2 epochs, fp32": 0.60,
    "fine-tune +2 epochs, int8 re-quantized": 0.25,
}
TIME_TARGET = 2.0  # rebuild + verify, as a multiple of a full verify


def _zstd_cli(arguments: list[str]) -> int | None:
    if shutil.which("zstd") is None:
        return None
    result = subprocess.run(["zstd", "-q", "-c", *arguments], capture_output=True, check=True)
    return len(result.stdout)


def _bsdiff(old: bytes, new: bytes) -> int | None:
    try:
        import bsdiff4
    except ImportError:
        return None
    return len(bsdiff4.diff(old, new))


def _seconds(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _device_times(old: Path, new: Path, delta: bytes, keys: list[Any], repeats: int) -> dict[str, float]:
    """Seconds: verify the full download as `Runtime.install` does (extract into a fresh folder, fsync);
    rebuild from the slot + delta into a file (fsync), then verify that the same way.

    The two are interleaved, one of each per repetition, so a busy moment of the shared host hits both;
    the ratio is taken on the medians (fsync latency varies run to run: a minimum would pick one lucky
    fsync), the fastest runs are reported too. The full path's own write of the download (the updater
    stores it with fsync too) is not counted: the comparison favours the full download.
    """
    from device_runtime.delta import SlotArchive, rebuild
    from signing.archive import member_order
    from signing.manifest import SIGNATURE_FILE
    from signing.verify import VerifyPolicy, verify_ekb

    policy = VerifyPolicy(fsync=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-delta-") as scratch:
        folder = Path(scratch)
        slot = folder / "slot"
        verified = verify_ekb(old, keys, destination=slot)
        members = [(SIGNATURE_FILE, (slot / SIGNATURE_FILE).stat().st_size)]
        members += [(n, verified.manifest.files[n].size) for n in member_order(verified.manifest)[1:]]
        (folder / "delta.ekd").write_bytes(delta)
        length = new.stat().st_size
        counter = iter(range(1 << 30))

        def verify(path: Path) -> None:
            verify_ekb(path, keys, destination=folder / f"x{next(counter)}", policy=policy)

        def rebuild_and_verify() -> None:
            output = folder / f"r{next(counter)}.ekb"
            with SlotArchive(slot, members) as archive:
                rebuild(folder / "delta.ekd", archive, output, target_length=length, limits=None)
            verify(output)

        verify_times, rebuild_times = [], []
        for _ in range(repeats):
            verify_times.append(_seconds(lambda: verify(new)))
            rebuild_times.append(_seconds(rebuild_and_verify))
    return {
        "verify_s": statistics.median(verify_times),
        "rebuild_verify_s": statistics.median(rebuild_times),
        "ratio": statistics.median(rebuild_times) / statistics.median(verify_times),
        "verify_min_s": min(verify_times),
        "rebuild_verify_min_s": min(rebuild_times),
    }


def measure(bundles: dict[str, Path], repeats: int) -> dict[str, Any]:
    """Every scenario's sizes and times (see the module docstring); `bundles` as `prepare` returns them,
    with the release public key in `keys/*.pub` beside them."""
    from edgekit.delta import canonical_archive, encode_delta
    from signing.keys import load_public_key

    keys = [load_public_key(next(bundles["v1"].parent.glob("keys/*.pub")))]
    rows = []
    for label, old_name, new_name in PAIRS:
        old, new = bundles[old_name], bundles[new_name]
        base, target = canonical_archive(old), new.read_bytes()
        started = time.perf_counter()
        delta, stats = encode_delta(base, target)
        encode_s = time.perf_counter() - started
        full = len(target)
        row: dict[str, Any] = {
            "scenario": label,
            "full": full,
            "zstd19": _zstd_cli(["-19", str(new)]),
            "patch_from": _zstd_cli(["-19", f"--patch-from={old}", str(new)]),
            "bsdiff4": _bsdiff(base, target),
            "structured": stats.structured_bytes,
            "generic": stats.generic_bytes,
            "delta": len(delta),
            "chosen": stats.chosen,
            "encode_s": encode_s,
            **_device_times(old, new, delta, keys, repeats),
        }
        row["share"] = len(delta) / full
        row["targets"] = _targets(row)
        rows.append(row)
        print(f"[delta] {label}: {100 * row['share']:.1f}% of the full bundle", file=sys.stderr, flush=True)
    return {"rows": rows}


def _targets(row: dict[str, Any]) -> list[dict[str, Any]]:
    targets = [{"name": "<= full bundle", "met": row["delta"] <= row["full"]}]
    if row["patch_from"] is not None:
        targets.append({"name": "<= zstd --patch-from", "met": row["delta"] <= row["patch_from"]})
    else:
        targets.append({"name": "<= zstd --patch-from", "met": None, "note": "zstd CLI absent"})
    limit = SHARE_TARGETS.get(row["scenario"])
    if limit is not None:
        targets.append({"name": f"<= {100 * limit:.0f}% of the full bundle", "met": row["share"] <= limit})
    targets.append(
        {"name": f"rebuild + verify <= {TIME_TARGET:g}x verify", "met": row["ratio"] <= TIME_TARGET}
    )
    return targets


def _percent(value: int | None, full: int) -> str:
    return "absent" if value is None else f"{value:,} ({100 * value / full:.1f}%)"


def table(document: dict[str, Any]) -> str:
    """The Markdown table of a `measure` result."""
    lines = [
        "| scenario | full .ekb | zstd -19 | zstd -19 --patch-from | bsdiff4 | structured | generic | "
        "shipped delta | rebuild+verify vs verify | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        full = r["full"]
        verdicts = "; ".join(
            f"{t['name']} {'n/a' if t['met'] is None else 'PASS' if t['met'] else 'MISS'}"
            for t in r["targets"]
        )
        lines.append(
            f"| {r['scenario']} | {full:,} | {_percent(r['zstd19'], full)} | "
            f"{_percent(r['patch_from'], full)} | "
            f"{_percent(r['bsdiff4'], full)} | {_percent(r['structured'], full)} | "
            f"{_percent(r['generic'], full)} | **{100 * r['share']:.1f}%** ({r['chosen']}) | "
            f"{1000 * r['rebuild_verify_s']:.1f} / {1000 * r['verify_s']:.1f} ms = {r['ratio']:.2f}x "
            f"(fastest {1000 * r['rebuild_verify_min_s']:.0f} / {1000 * r['verify_min_s']:.0f} ms) | "
            f"{verdicts} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 training epochs and fewer timing repeats")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "edgekit" / "bench" / "delta",
        help="folder for the trained scenario bundles (reused)",
    )
    args = parser.parse_args(argv)
    model, flags, cores = cpu()
    bundles = prepare(args.cache, epochs=3 if args.quick else 10)
    document = measure(bundles, 5 if args.quick else 31)
    document["host"] = {
        "cpu": model,
        "cores": cores,
        "avx512_vnni": "avx512_vnni" in flags,
        "python": platform.python_version(),
        "zstd_cli": _zstd_version(),
    }
    if document["host"]["zstd_cli"] is None:
        print("[delta] the zstd CLI is absent: the zstd columns are not measured (apt-get install zstd)")
    print(table(document))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    return 0


def _zstd_version() -> str | None:
    if shutil.which("zstd") is None:
        return None
    result = subprocess.run(["zstd", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
