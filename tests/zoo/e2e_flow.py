"""One zoo model through the CLI as a user drives it: convert, quantize, parity, bundle, install, predict.

:class:`Flow` runs each step with click's ``CliRunner`` in a scratch folder and keeps what the next step
needs. A step the product should do but cannot today is recorded in ``Flow.gaps`` (with the CLI's own
words) and the flow goes on the way a user would (``--mode fp16`` after an int8 refusal, the float model
when a format cannot be quantized), so every later check still runs; a test ends with
``assert not flow.gaps`` and is marked ``xfail(strict=True)`` naming the gap while it exists.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner, Result

from device_runtime.config import RuntimeConfig
from device_runtime.engines import load_engine
from device_runtime.runtime import PredictionResult, Runtime
from edgekit.cli import cli
from zoo import cache_dir, get
from zoo.inputs import ModelInputs

__all__ = ["Flow", "nudenet_labels", "raw_outputs"]

INT8_MODES = ("static", "dynamic", "int8")


def run_cli(args: list[object]) -> Result:
    """``edgekit ARGS`` in-process; never a traceback at the CLI."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def nudenet_labels() -> list[str]:
    """nudenet's 18 class names, read from the same pinned wheel's nudenet.py (``__labels``)."""
    wheel = cache_dir() / "wheels" / get("yolov8n-nudenet").wheel
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("nudenet/nudenet.py").decode()
    match = re.search(r"__labels = (\[.*?\])", source, re.S)
    assert match, "nudenet.py has no __labels list"
    return list(ast.literal_eval(match.group(1)))


def raw_outputs(model: Path, feeds: dict[str, np.ndarray], *, whole: bool = False) -> dict[str, np.ndarray]:
    """The model's raw outputs on ``feeds``, one sample at a time (fixed-batch models), stacked on axis 0;
    ``whole``: one call with the feeds as they are (models that batch elsewhere, e.g. silero's state)."""
    engine = load_engine(model)
    if whole:
        return {k: np.asarray(v) for k, v in engine.run(feeds).items()}
    count = next(len(v) for v in feeds.values() if np.ndim(v) > 0)
    runs = [engine.run({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(count)]
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


@dataclass
class Flow:
    """The state of one model's trip through the CLI (scratch folder ``work``)."""

    key: str
    work: Path
    inputs: ModelInputs
    roles: list[str]  # --role options, OUTPUT=ROLE[,key=value]
    signature: list[str] = field(default_factory=list)  # --state / --batch-axis options
    preprocess: Path | None = None  # --preprocess: a spec whose outputs declare roles --role cannot (ssd)
    gaps: list[str] = field(default_factory=list)
    quantize_report: dict[str, Any] | None = None
    refusal: str | None = None  # the int8 refusal, when the flow fell back to fp16

    def __post_init__(self) -> None:
        self.cal = self.work / "cal.npz"
        self.eval = self.work / "eval.npz"
        np.savez(self.cal, **self.inputs.calibration)  # type: ignore[arg-type]
        np.savez(self.eval, **self.inputs.evaluation)  # type: ignore[arg-type]

    # ---- steps ---------------------------------------------------------------------------------
    def convert(self, source: Path) -> Path:
        """``edgekit convert`` to ONNX (parity-checked) for ONNX, Keras and TFLite sources; a .tflite that
        cannot be converted is taken as is (a gap: it then cannot be quantized)."""
        target = self.work / "float.onnx"
        if source.suffix == ".tflite":
            result = run_cli(["convert", source, "-o", target, "--sample", self.eval, *self.signature])
            if result.exit_code != 0:
                self.gaps.append(f"a .tflite cannot be converted to .onnx: {_tail(result.output)}")
                return source
            return target
        result = run_cli(["convert", source, "-o", target, "--sample", self.eval, *self.signature])
        assert result.exit_code == 0, result.output
        assert "[PASS]" in result.output
        return target

    def quantize(self, model: Path) -> Path:
        """``edgekit quantize`` (int8 through the strategy ladder); on a refusal the reason must be in the
        report and the CLI's advice, then ``--mode fp16``. Returns the model to ship."""
        suffix = model.suffix
        target, report = self.work / f"int8{suffix}", self.work / "quantize-int8.json"
        common = ["--calibration", self.cal, "--eval", self.eval, "--skip-latency", *self.signature,
                  *[f"--role={r}" for r in self.roles], *self._spec_option()]
        result = run_cli(["quantize", model, "-o", target, *common, "--report", report])
        if result.exit_code == 0:
            self.quantize_report = json.loads(report.read_text())
            section = self.quantize_report["quantization"]
            if "strategy" not in section:
                self.gaps.append("quantize report names no chosen strategy (no strategy ladder)")
            assert self.quantize_report["passed"]
            return target
        self.refusal = result.output
        refused = json.loads(report.read_text()) if report.is_file() else {}
        stated = refused.get("quantization", {}).get("strategies")  # every rung tried, with its failures
        if not stated or not refused.get("failures") or "--mode fp16" not in result.output:
            self.gaps.append(f"int8 refused without the strategies tried: {_tail(result.output)}")
        fp16, report = self.work / f"fp16{suffix}", self.work / "quantize-fp16.json"
        result = run_cli(["quantize", model, "-o", fp16, *common, "--mode", "fp16", "--report", report])
        if result.exit_code != 0:
            self.gaps.append(f"fp16 refused too: {_tail(result.output)}")
            return model
        self.quantize_report = json.loads(report.read_text())
        assert self.quantize_report["passed"]
        return fp16

    def parity(self, reference: Path, candidate: Path) -> dict[str, Any]:
        """``edgekit parity`` with the roles declared; the gate must pass."""
        report = self.work / "parity.json"
        result = run_cli(["parity", reference, candidate, "--data", self.eval, *self.signature,
                          *[f"--role={r}" for r in self.roles], *self._spec_option(), "--report", report])
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(report.read_text())
        assert document["passed"]
        return document

    def _spec_option(self) -> list[object]:
        return ["--preprocess", self.preprocess] if self.preprocess is not None else []

    def bundle(self, model: Path, outputs: list[dict[str, Any]], labels: list[str] | None = None) -> Path:
        """keygen + ``edgekit bundle`` with a tensor spec carrying the output roles, labels, golden data and
        the parity report."""
        engine = load_engine(model)
        spec = {
            "schema": "edgekit.preprocess/v1",
            "inputs": [{"name": i.name, "kind": "tensor", "dtype": i.dtype, "shape": list(i.shape)}
                       for i in engine.inputs],
            "outputs": outputs,
        }
        (self.work / "spec.json").write_text(json.dumps(spec))
        if not (self.work / "keys").is_dir():
            assert run_cli(["keygen", "-o", self.work / "keys"]).exit_code == 0
        bundle = self.work / "model-1.0.0.ekb"
        args = ["bundle", model, "-o", bundle, "--name", self.key.replace("-", "")[:32], "--version", "1.0.0",
                "--key", self.work / "keys" / "release.key", "--preprocess", self.work / "spec.json",
                "--golden", self.eval, "--parity", self.work / "parity.json"]
        if labels is not None:
            (self.work / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
            args += ["--labels", self.work / "labels.txt"]
        result = run_cli(args)
        assert result.exit_code == 0, result.output
        return bundle

    def install(self, bundle: Path) -> Runtime:
        """A real device runtime in the scratch folder, the bundle installed (self-test on golden data)."""
        runtime = Runtime(RuntimeConfig(store_dir=self.work / "device", trusted_keys=[self.work / "keys" /
                                        "release.pub"], device_id="e2e", hardware_id="e2e"))
        installed = runtime.install(bundle)
        assert installed.version == "1.0.0" and not installed.already_active
        return runtime

    def predict(self, runtime: Runtime, index: int = 0) -> PredictionResult:
        """One evaluation sample through ``Runtime.predict`` (tensor request, as the spec declares)."""
        data = self.inputs.evaluation
        feeds = {k: (v if np.ndim(v) == 0 else v[index : index + 1]) for k, v in data.items()}
        if "state" in feeds and feeds["state"].ndim == 3:  # silero: batch on axis 1
            feeds["state"] = np.ascontiguousarray(self.inputs.evaluation["state"][:, index : index + 1])
        return runtime.predict(feeds)


def _tail(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[-limit:]


def output_entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The parity report's entry for one output."""
    return next(o for o in report["outputs"] if o["name"] == name)
