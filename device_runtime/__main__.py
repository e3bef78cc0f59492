"""`python -m device_runtime`: install, inspect, run, revert and upload on a device, without edgekit.

    python -m device_runtime --store DIR --key PUB [--key PUB ...] --device-id ID --hardware-id HW COMMAND
      install BUNDLE                     verify, self-test and activate a signed .ekb
      status [--json]                    active / previous model, trial, telemetry queue
      predict FILE [--json]              one prediction: .npy (or .npz by input name) for tensor inputs,
                                         an image file for image inputs
      revert [--json]                    go back to the previous model now
      upload --endpoint URL [--token-env VAR]   send queued telemetry until the queue is empty
      bench BUNDLE [BUNDLE ...] [--seconds S] [--input FILE] [--threads N] [--json]
                                         verify, load and time bundles here, interleaved; latency ratio
                                         against the first bundle with a 95% confidence interval
    python -m device_runtime run-model MODEL --inputs IN.npz --output OUT.npz [--steps N] [--state OUT=IN]
                                         run a model file (no store, keys or ids needed) on given feeds
                                         with this device's engines: one run keyed by input name, or
                                         runs keyed "i/name"; --state feeds an output back for N steps

Exit codes: 0 done, 1 refused or failed (one line on stderr, no traceback), 2 bad usage. Standard library
argparse only: the device side does not depend on click. This module is the only device code that prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

PROG = "python -m device_runtime"
MAX_UPLOAD_BATCHES = 10_000  # one `upload` command sends at most this many batches
MAX_OUTPUT_VALUES = 10_000  # outputs larger than this are shown by shape only
MAX_SHOWN_DETECTIONS = 20  # lines of detections (and mask classes) printed without --json


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block, like every other error of this CLI.
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The edgekit device runtime, from the command line.")
    # Required by every command but run-model (checked in _run: argparse cannot make them per-command).
    parser.add_argument("--store", type=Path, help="the runtime's store folder")
    parser.add_argument("--key", action="append", type=Path, help="pinned release public key (repeatable)")
    parser.add_argument("--device-id", help="this device's id")
    parser.add_argument("--hardware-id", help="this device's hardware id")
    parser.add_argument("--threshold", type=int, default=1, help="distinct pinned keys that must sign")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    install = commands.add_parser("install", help="verify, self-test and activate a signed bundle")
    install.add_argument("bundle", type=Path)
    install.add_argument("--json", action="store_true", help="print JSON")
    status = commands.add_parser("status", help="show the active and previous model, trial, telemetry")
    status.add_argument("--json", action="store_true", help="print JSON")
    predict = commands.add_parser("predict", help="run one prediction")
    predict.add_argument("file", type=Path, help=".npy / .npz for tensor inputs, an image for image inputs")
    predict.add_argument("--json", action="store_true", help="print JSON")
    revert = commands.add_parser("revert", help="go back to the previous model now")
    revert.add_argument("--json", action="store_true", help="print JSON")
    upload = commands.add_parser("upload", help="upload queued telemetry")
    upload.add_argument("--endpoint", required=True, help="the server's telemetry URL")
    upload.add_argument("--token-env", metavar="VAR", help="environment variable holding the device token")
    upload.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    upload.add_argument("--batch-size", type=int, default=500, help="events per batch (default 500)")
    upload.add_argument(
        "--unsafe-allow-http", action="store_true", help="allow plain http to a non-loopback host"
    )
    upload.add_argument("--json", action="store_true", help="print JSON")
    bench = commands.add_parser(
        "bench", help="time bundles on this device, interleaved (see device_runtime.bench)"
    )
    bench.add_argument(
        "bundles", type=Path, nargs="+", metavar="BUNDLE", help=".ekb files; the first is the reference"
    )
    bench.add_argument(
        "--seconds", type=float, default=10.0, help="time budget of the timed rounds (default 10)"
    )
    bench.add_argument("--input", type=Path, help="one input for every bundle (default: their golden inputs)")
    bench.add_argument("--threads", type=int, help="intra-op threads per engine (default: the engine's)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    run_model = commands.add_parser(
        "run-model", help="run a model file on given feeds with this device's engines (device_runtime.feeds)"
    )
    run_model.add_argument("model", type=Path, help="a .onnx or .tflite file")
    run_model.add_argument("--inputs", required=True, type=Path, help=".npz feeds: by input name, or i/name")
    run_model.add_argument("--output", required=True, type=Path, help=".npz to write the outputs to")
    run_model.add_argument("--steps", type=int, default=1, help="calls per sequence (default 1)")
    run_model.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="OUT=IN",
        help="output fed back to an input (repeatable)",
    )
    run_model.add_argument("--threads", type=int, help="intra-op threads (default: the engine's)")
    run_model.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _emit(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 refused or failed, 2 bad usage)."""
    from device_runtime.errors import DeviceRuntimeError
    from signing.errors import SigningError

    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args)
    except _UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (DeviceRuntimeError, SigningError, OSError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from device_runtime.config import RuntimeConfig
    from device_runtime.runtime import Runtime

    if args.command == "run-model":  # a diagnostic on a model file: no store, keys or device ids
        return _run_model(args)
    missing = [
        option
        for option, value in (
            ("--store", args.store),
            ("--key", args.key),
            ("--device-id", args.device_id),
            ("--hardware-id", args.hardware_id),
        )
        if value is None
    ]
    if missing:
        raise _UsageError(f"the following arguments are required for {args.command}: {', '.join(missing)}")
    if args.command == "bench":  # no store needed: bundles are verified into a private temporary folder
        return _bench(args)

    try:
        config = RuntimeConfig(
            store_dir=args.store,
            trusted_keys=list(args.key),
            device_id=args.device_id,
            hardware_id=args.hardware_id,
            threshold=args.threshold,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from e
    runtime = Runtime(config)
    try:
        command = {
            "install": _install,
            "status": _status,
            "predict": _predict,
            "revert": _revert,
            "upload": _upload,
        }[args.command]
        return command(runtime, args)
    finally:
        runtime.close()


def _install(runtime: Any, args: argparse.Namespace) -> int:
    result = runtime.install(args.bundle)
    if args.json:
        _emit(
            {
                "name": result.name,
                "version": result.version,
                "bundle_id": result.bundle_id,
                "slot": result.slot,
                "self_test_sqnr_db": result.self_test,
                "already_active": result.already_active,
            }
        )
    elif result.already_active:
        print(f"{result.name} {result.version} is already active (slot {result.slot})")
    else:
        quality = ", ".join(f"{k} {v:.1f} dB" for k, v in sorted(result.self_test.items()))
        print(
            f"installed {result.name} {result.version} into slot {result.slot}; self-test passed"
            + (f" (SQNR {quality})" if quality else "")
            + "; on trial until committed"
        )
    return 0


def _status(runtime: Any, args: argparse.Namespace) -> int:
    status = runtime.status()
    if args.json:
        _emit(status)
        return 0
    for role in ("active", "previous"):
        record = status[role]
        shown = "none" if record is None else f"{record['name']} {record['version']} (slot {record['slot']})"
        print(f"{role}: {shown}")
    trial = status["trial"]
    if trial is not None:
        needs = trial["needs"]
        print(
            f"trial: {trial['successes']}/{needs['inferences']} inferences, "
            f"{trial['strikes']} strikes, needs {needs['seconds']:g} s"
        )
    telemetry = status["telemetry"]
    print(
        f"telemetry: {telemetry['queued']} queued, {telemetry['dropped']} dropped, "
        f"{telemetry['failures']} write failures"
    )
    return 0


def _load_request(path: Path) -> Any:
    """.npy -> array, .npz -> {name: array}; anything else is an image file the spec decodes."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        return path
    import numpy as np

    from device_runtime.errors import InputError

    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: not a readable {suffix} file without pickles ({e})") from e
    if suffix == ".npz":
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


def _predict(runtime: Any, args: argparse.Namespace) -> int:
    request = _load_request(args.file)
    result = runtime.predict(request)  # an image file given to a tensor input is a clear InputError
    top = [[label, float(score)] for label, score in result.top_k]
    if args.json:
        outputs: dict[str, Any] = {}
        for name, value in result.outputs.items():
            entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
            if value.size <= MAX_OUTPUT_VALUES:
                entry["values"] = value.tolist()
            outputs[name] = entry
        _emit(
            {
                "prediction_id": result.prediction_id,
                "model": result.model,
                "version": result.version,
                "bundle_id": result.bundle_id,
                "latency_ms": result.latency_ms,
                "top_k": top,
                "decoded": result.decoded,
                "outputs": outputs,
            }
        )
        return 0
    print(f"{result.model} {result.version}: {result.latency_ms:.2f} ms")
    for label, score in top:
        print(f"  {label}: {score:.4f}")
    for name, summary in result.decoded.items():
        for line in _decoded_lines(name, summary):
            print(line)
    if not top and not result.decoded:
        for name, value in result.outputs.items():
            print(f"  {name}: shape {list(value.shape)} {value.dtype}")
    return 0


def _decoded_lines(name: str, d: dict[str, Any]) -> list[str]:
    """A decoded output (device_runtime.decode.decode_output) as indented text lines."""
    role = d.get("role")
    head = f"  {name} ({role})"
    if role == "detection":
        found = d["detections"]
        lines = [f"{head}: {len(found)} detection(s)"]
        for det in found[:MAX_SHOWN_DETECTIONS]:
            box = ", ".join(f"{v:.1f}" for v in det["box"])
            lines.append(f"    {det['label']}: {det['score']:.3f} at [{box}]")
        if len(found) > MAX_SHOWN_DETECTIONS:
            lines.append(f"    ... {len(found) - MAX_SHOWN_DETECTIONS} more (--json shows all)")
        return lines
    if role == "segmentation":
        shares = sorted(d["shares"].items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{label} {100 * share:.1f}%" for label, share in shares[:MAX_SHOWN_DETECTIONS])
        return [f"{head}: mask {'x'.join(str(n) for n in d['shape'])}: {text}"]
    if role == "sequence":
        shown = (
            json.dumps(d["text"], ensure_ascii=False) if d["text"] is not None else f"tokens {d['tokens']}"
        )
        return [f"{head}: {shown}"]
    if role == "embedding":
        return [f"{head}: vector of dim {d['dim']}, norm {d['norm']:.4f}"]
    if role == "regression":
        values = ", ".join(f"{k}={v:.4g}" for k, v in d["values"].items())
        more = f" (+{d['count'] - len(d['values'])} more)" if d["count"] > len(d["values"]) else ""
        return [f"{head}: {values}{more}"]
    return [f"{head}: {d}"]


def _revert(runtime: Any, args: argparse.Namespace) -> int:
    from device_runtime.errors import NoModelError

    if not runtime.revert("cli"):
        raise NoModelError("nothing to revert to: there is no previous model on this device")
    active = runtime.status()["active"]
    if args.json:
        _emit({"reverted": True, "active": active})
    else:
        print(f"reverted; active: {active['name']} {active['version']} (slot {active['slot']})")
    return 0


def _upload(runtime: Any, args: argparse.Namespace) -> int:
    from device_runtime.uploader import Uploader, UploaderConfig

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise _UsageError(f"--token-env {args.token_env}: that environment variable is empty or unset")
    try:
        config = UploaderConfig(
            endpoint=args.endpoint,
            device_id=args.device_id,
            token=token,
            batch_size=args.batch_size,
            timeout_s=args.timeout,
            unsafe_allow_http=args.unsafe_allow_http,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from e
    runtime.telemetry.flush()
    uploader = Uploader(runtime.telemetry, config)
    error = None
    for _ in range(MAX_UPLOAD_BATCHES):
        result = uploader.upload_once()
        if result.failed:
            error = result.error
            break
        if result.sent == 0 and result.dropped == 0:
            break
    summary = {
        "acknowledged": uploader.counters["acknowledged"],
        "batches": uploader.counters["batches"],
        "dropped": uploader.counters["oversize"] + uploader.counters["invalid"],
        "queued": runtime.telemetry.stats()["queued"],
        "error": error,
    }
    if args.json:
        _emit(summary)
    else:
        print(
            f"uploaded {summary['acknowledged']} events in {summary['batches']} batches; "
            f"{summary['dropped']} dropped; {summary['queued']} still queued"
        )
    if error is not None:
        print(f"{PROG}: error: {' '.join(error.split())}; the events stay queued", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    from device_runtime.bench import bench_bundles, format_report
    from signing.keys import load_public_key
    from signing.verify import VerifyPolicy

    if not 0 < args.seconds <= 3600:
        raise _UsageError("--seconds must be in (0, 3600]")
    if args.threads is not None and not 1 <= args.threads <= 256:
        raise _UsageError("--threads must be in 1..256")
    keys = [load_public_key(k) for k in args.key]
    policy = VerifyPolicy(threshold=args.threshold, hardware_id=args.hardware_id)
    request = None if args.input is None else _load_request(args.input)
    result = bench_bundles(
        args.bundles,
        keys,
        policy,
        seconds=args.seconds,
        request=request,
        request_name="golden" if args.input is None else args.input.name,
        threads=args.threads,
    )
    report = result.to_dict()
    if args.json:
        _emit(report)
    else:
        print("\n".join(format_report(report)))
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from device_runtime.engines import load_engine
    from device_runtime.feeds import load_runs, run_feeds, save_runs

    if args.threads is not None and not 1 <= args.threads <= 256:
        raise _UsageError("--threads must be in 1..256")
    if args.steps < 1:
        raise _UsageError("--steps must be at least 1")
    states = {}
    for pair in args.state:
        output, eq, target = pair.partition("=")
        if not eq or not output or not target:
            raise _UsageError(f"--state {pair!r}: expected OUTPUT=INPUT")
        states[output] = target
    runs, keyed = load_runs(args.inputs)
    engine = load_engine(args.model, threads=args.threads)
    results = run_feeds(engine, runs, steps=args.steps, states=states)
    save_runs(args.output, results, keyed=keyed)  # answer in the form asked
    summary = {
        "model": str(args.model),
        "engine": engine.kind,
        "runs": len(results),
        "output": str(args.output),
        "outputs": {o.name: list(o.shape) for o in engine.outputs},
    }
    if args.json:
        _emit(summary)
    else:
        print(f"ran {summary['runs']} run(s) of {args.model} on {engine.kind}; outputs in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
