"""The quantization ladder: configurations tried in order, before and up to keeping nodes in float.

Real exports break the one-size preset in different ways. Paddle exports (opset 11/12, every weight in
a Constant node) gave `INVALID_GRAPH ... ConvAddFusion_Add_B_Reshape@0_DequantizeLinear`: the reason at
the end of that message is `Unrecognized attribute: axis for operator DequantizeLinear`, i.e. per-channel
QDQ needs opset 13, and without initializers the weights were calibrated like activations. So every
pre-processed model has its Constant weights lifted into initializers and an opset below 13 converted
(the gate compares with the original model, so a conversion that changed the maths would be caught).
LayerNorm, Softmax and GELU in a Keras/JAX classifier (magika) collapse under int8 while its MatMuls do
not. Each rung fixes one such cause:

1. ``preset``            the backend preset, onnxruntime's full pre-processing, every op it quantizes;
2. ``no-fusion``         pre-processing without onnxruntime's graph fusions (BatchNorm and Add kept
                         apart; tried when 1 fails);
3. ``compute-only``      only Conv / MatMul / Gemm in int8; normalisation, softmax, activations and
                         elementwise ops stay float;
4. ``percentile`` / ``entropy``  other calibration methods, when activations have outliers;
5. ``per-tensor`` / ``per-channel``  the other weight granularity;
6. ``dynamic``           dynamic int8 of the MatMuls, for MatMul-heavy models (``--mode dynamic``
                         tries every op first, as ``dynamic-all``);
7. ``exclusion``         the sensitive nodes kept in float (`converters.localize` + `converters.repair`).

Rungs 3-7 start from the best candidate so far (the "incumbent"), so fixes combine. A candidate that
onnxruntime refuses to load, or whose quantizer raises, is a failed rung with its error, never the answer.

Choice: the first passing rung wins and the ladder stops there. The rungs are ordered by the expected
speed and size of what they produce: 1-2 quantize everything onnxruntime can; 3 drops only ops that have
no int8 kernel on onnxruntime's CPU provider anyway (they run as DequantizeLinear -> float -> Quantize);
4-5 change scales, not coverage; 6 is slower than static on convolutions; 7 costs speed per excluded node.
So the first pass is the fastest, smallest candidate known to pass, and stopping there spends no more of
the evaluation budget. Every rung tried is reported with its figures and why the chosen one won.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from converters.data import Dataset
from converters.errors import ConverterError, explain
from converters.parity import summary_metrics
from converters.progress import Progress
from converters.quantize_onnx import StaticConfig

__all__ = ["COMPUTE_OPS", "Attempt", "LadderOutcome", "LadderSettings", "Strategy", "run_ladder"]

COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
_MATMUL_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Strategy:
    """One rung: how to build a candidate."""

    name: str
    kind: str  # static | dynamic | fp16
    why: str
    optimize: bool = True  # onnxruntime graph fusions in pre-processing (static)
    op_types: tuple[str, ...] | None = None  # None: every op the quantizer handles
    config: StaticConfig | None = None  # static only
    exclude: tuple[str, ...] = ()


@dataclass
class Attempt:
    """A rung that was tried: its candidate, parity report or error, and figures."""

    strategy: Strategy
    path: Path | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    size_bytes: int | None = None
    nodes_quantized: int | None = None
    float_model: Path | None = None  # the pre-processed model it was quantized from (static)
    config_used: StaticConfig | None = None

    @property
    def passed(self) -> bool:
        return bool(self.report and self.report["passed"])

    def row(self) -> dict[str, Any]:
        """The report's line for this rung."""
        s = self.strategy
        return {
            "name": s.name,
            "kind": s.kind,
            "why": s.why,
            "pre_processing": ("full" if s.optimize else "no-fusion") if s.kind == "static" else None,
            "op_types": list(s.op_types) if s.op_types else "all",
            "calibration": self.config_used.calibration if self.config_used else None,
            "per_channel": self.config_used.per_channel if self.config_used else None,
            "excluded_nodes": len(s.exclude),
            "passed": self.passed,
            "metrics": summary_metrics(self.report) if self.report else None,
            "failures": self.report["failures"] if self.report else None,
            "size_bytes": self.size_bytes,
            "nodes_quantized": self.nodes_quantized,
            "error": self.error,
        }


@dataclass(frozen=True)
class LadderSettings:
    """What the user fixed (None / False leaves it to the ladder) and the budget."""

    mode: str  # auto | static | dynamic | fp16
    base: StaticConfig  # the resolved preset
    calibration_forced: bool = False
    per_channel_forced: bool = False
    repair: bool = True
    max_evaluations: int = 20  # candidate evaluations, rungs and repair together
    max_excluded_fraction: float = 0.5


@dataclass
class LadderOutcome:
    """Every attempt in order, the chosen one (None if none passed) and why."""

    attempts: list[Attempt] = field(default_factory=list)
    chosen: Attempt | None = None
    reason: str = ""
    repair: dict[str, Any] | None = None
    ranking: list[Any] | None = None  # localize() of the last static candidate examined

    def best(self) -> Attempt | None:
        """The best loadable attempt by the gate's figures (the chosen one if any passed)."""
        if self.chosen is not None:
            return self.chosen
        loadable = [a for a in self.attempts if a.report is not None]
        return max(loadable, key=_score) if loadable else None


def _score(attempt: Attempt) -> tuple[float, float, float]:
    """Fewer gate failures, then higher agreement, then higher SQNR (the worst output's figures)."""
    assert attempt.report is not None
    metrics = summary_metrics(attempt.report)
    agreement = metrics["agreement"] if metrics["agreement"] is not None else 1.0
    return (-len(attempt.report["failures"]), agreement, metrics["sqnr_db"])


class _Ladder:
    def __init__(
        self,
        model: Path,
        workdir: Path,
        calib: Dataset,
        evaluate: Callable[[Path], dict[str, Any]],
        settings: LadderSettings,
        progress: Progress,
    ) -> None:
        self.model, self.workdir, self.calib = model, workdir, calib
        self.evaluate, self.settings, self.progress = evaluate, settings, progress
        self.outcome = LadderOutcome()
        self._preprocessed: dict[bool, Path] = {}

    @property
    def budget_left(self) -> int:
        return self.settings.max_evaluations - len(self.outcome.attempts)

    def preprocessed(self, optimize: bool) -> Path:
        from converters.localize import ensure_node_names
        from converters.quantize_onnx import (
            PER_CHANNEL_MIN_OPSET,
            lift_constants,
            preprocess_for_quantization,
            upgrade_opset,
        )

        if optimize not in self._preprocessed:
            destination = self.workdir / f"preprocessed-{'full' if optimize else 'no-fusion'}.onnx"
            made = preprocess_for_quantization(
                self.model, destination, self.progress, optimize=optimize, workdir=self.workdir
            )
            if made != destination:
                shutil.copyfile(made, destination)
            lift_constants(destination)
            old = upgrade_opset(destination)
            if old is not None:
                self.progress.note(f"opset {old} -> {PER_CHANNEL_MIN_OPSET}: per-channel weights need it")
            ensure_node_names(destination)
            self._preprocessed[optimize] = destination
        return self._preprocessed[optimize]

    def lifted(self) -> Path:
        """The model as given with Constant weights made initializers (what dynamic int8 needs)."""
        from converters.quantize_onnx import lift_constants

        destination = self.workdir / "lifted.onnx"
        if not destination.exists():
            shutil.copyfile(self.model, destination)
            lift_constants(destination)
        return destination

    def build(self, strategy: Strategy, output: Path) -> Attempt:
        from converters.quantize_onnx import (
            quantize_dynamic_onnx,
            quantize_fp16_onnx,
            quantize_static_onnx,
        )

        attempt = Attempt(strategy)
        if strategy.kind == "static":
            assert strategy.config is not None
            attempt.float_model = self.preprocessed(strategy.optimize)
            attempt.config_used = quantize_static_onnx(
                attempt.float_model,
                output,
                self.calib,
                strategy.config,
                exclude=strategy.exclude,
                op_types=strategy.op_types,
                progress=self.progress,
            )
        elif strategy.kind == "dynamic":
            quantize_dynamic_onnx(self.lifted(), output, op_types=strategy.op_types)
        else:
            quantize_fp16_onnx(self.model, output, self.progress)
        return attempt

    def attempt(self, strategy: Strategy) -> Attempt:
        """Build, load-check and evaluate one rung; errors make a failed attempt, not an exception."""
        from converters.localize import int8_node_count

        output = self.workdir / "candidates" / f"{len(self.outcome.attempts):02d}-{strategy.name}.onnx"
        output.parent.mkdir(exist_ok=True)
        self.progress.note(f"strategy {strategy.name}: {strategy.why}")
        try:
            attempt = self.build(strategy, output)
            _load_check(output)
            attempt.path = output
            attempt.size_bytes = output.stat().st_size
            attempt.nodes_quantized = int8_node_count(output)
            if attempt.nodes_quantized == 0 and strategy.kind != "fp16":
                # onnxruntime leaves control-flow bodies (silero's If branches) alone: say so, and let the
                # gate judge the result rather than hide it.
                self.progress.note(
                    f"warning: strategy {strategy.name} quantized no node (the candidate is still float"
                    f"{_float_only_words(self.model)})"
                )
            attempt.report = self.evaluate(output)
        except ConverterError as e:
            attempt = Attempt(strategy, error=self._short(str(e)))
        except Exception as e:  # onnxruntime refuses the graph, or its quantizer raises
            attempt = Attempt(strategy, error=self._short(f"{type(e).__name__}: {explain(e)}"))
        self.outcome.attempts.append(attempt)
        if attempt.passed and self.outcome.chosen is None:
            self.outcome.chosen = attempt
        return attempt

    def _short(self, text: str) -> str:
        # The temporary directory's path says nothing and would push the node names out of the summary.
        return text.replace(f"Load model from {self.workdir}/", "Load model ").replace(f"{self.workdir}/", "")

    def done(self) -> bool:
        return self.outcome.chosen is not None or self.budget_left <= 0

    def incumbent(self) -> Attempt | None:
        static = [a for a in self.outcome.attempts if a.report is not None and a.strategy.kind == "static"]
        return max(static, key=_score) if static else None


def run_ladder(
    model: Path,
    workdir: Path,
    calib: Dataset,
    evaluate: Callable[[Path], dict[str, Any]],
    settings: LadderSettings,
    progress: Progress,
    *,
    localize_data: Dataset | None = None,
) -> LadderOutcome:
    """Try the rungs the mode allows, in order, until one passes or the budget is spent.

    Args:
        model: the float ONNX model as given.
        calib: calibration data; `localize_data` (default: calib) feeds outlier and damage analysis.
        evaluate: runs the parity contract on a candidate path and returns the parity report.
        settings: the mode and what the user fixed; forced choices are never varied.
    """
    ladder = _Ladder(model, workdir, calib, evaluate, settings, progress)
    probe = localize_data or calib
    mode = settings.mode
    if mode == "fp16":
        ladder.attempt(Strategy("fp16", "fp16", "float16 weights and activations, as the mode asks"))
    if mode in ("auto", "static"):
        _static_rungs(ladder, probe)
    if mode == "dynamic":
        ladder.attempt(Strategy("dynamic-all", "dynamic", "dynamic int8 of every op, as the mode asks"))
    if mode in ("auto", "dynamic") and not ladder.done() and _matmul_heavy(model):
        ladder.attempt(Strategy("dynamic", "dynamic", _DYNAMIC_WHY[mode], op_types=_MATMUL_OPS))
    if mode in ("auto", "static") and settings.repair and not ladder.done():
        _exclusion_rung(ladder, probe)
    outcome = ladder.outcome
    if outcome.chosen is not None:
        outcome.reason = _why_chosen(outcome)
    elif ladder.budget_left <= 0:
        outcome.reason = f"no strategy passed within the evaluation budget ({settings.max_evaluations})"
    else:
        outcome.reason = "no strategy passed"
    return outcome


_DYNAMIC_WHY = {
    "auto": "MatMul/Gemm hold most weights: dynamic int8 of the MatMuls, activations scaled per call",
    "dynamic": "dynamic int8 of the MatMuls only (MatMul/Gemm hold most weights)",
}


def _static_rungs(ladder: _Ladder, probe: Dataset) -> None:
    settings = ladder.settings
    base = settings.base
    preset = ladder.attempt(
        Strategy("preset", "static", f"the {base.name} preset with full pre-processing", config=base)
    )
    if ladder.done():
        return
    ladder.attempt(
        Strategy(
            "no-fusion",
            "static",
            "pre-processing without onnxruntime's graph fusions (fused Conv+Add/BN biases can be invalid)"
            if preset.report is None
            else "pre-processing without onnxruntime's graph fusions (BatchNorm and Add stay separate)",
            optimize=False,
            config=base,
        )
    )
    if ladder.done() or ladder.incumbent() is None:
        return
    current = ladder.incumbent()
    assert current is not None
    ladder.attempt(
        replace(
            current.strategy,
            name="compute-only",
            why="only Conv/MatMul/Gemm in int8; normalisation, softmax, activations, elementwise in float",
            op_types=COMPUTE_OPS,
        )
    )
    if not settings.calibration_forced and not ladder.done():
        from converters.localize import activation_outliers

        current = ladder.incumbent()
        assert current is not None and current.float_model is not None
        outliers = activation_outliers(current.float_model, probe, ladder.workdir)
        if outliers:
            worst = ", ".join(f"{name} ({ratio:.0f}x)" for name, ratio in outliers[:3])
            for method in ("percentile", "entropy"):
                if ladder.done():
                    return
                current = ladder.incumbent()
                assert current is not None and current.config_used is not None
                ladder.attempt(
                    replace(
                        current.strategy,
                        name=method,
                        why=f"{method} calibration: activations have outliers (max/p99.9: {worst})",
                        config=replace(current.config_used, calibration=method),
                    )
                )
    if not settings.per_channel_forced and not ladder.done():
        current = ladder.incumbent()
        assert current is not None and current.config_used is not None and current.strategy.config is not None
        if current.config_used.per_channel != current.strategy.config.per_channel:
            return  # per-channel already crashed the quantizer and fell back to per-tensor
        flipped = not current.config_used.per_channel
        name = "per-channel" if flipped else "per-tensor"
        ladder.attempt(
            replace(
                current.strategy,
                name=name,
                why=f"{name} weight scales instead of the incumbent's",
                config=replace(current.config_used, per_channel=flipped),
            )
        )


def _exclusion_rung(ladder: _Ladder, probe: Dataset) -> None:
    from converters.localize import exclusion_units, localize, quantized_nodes
    from converters.repair import search_exclusions

    current = ladder.incumbent()
    if current is None or ladder.budget_left <= 0:
        return
    assert current.path is not None and current.float_model is not None and current.report is not None
    ranking = localize(current.float_model, current.path, probe, ladder.workdir)
    ladder.outcome.ranking = ranking
    quantizable = quantized_nodes(current.path)
    before = summary_metrics(current.report)
    task = ladder.progress.task("repairing (bisection over ranked nodes)", ladder.budget_left)
    trials: dict[tuple[str, ...], Attempt] = {}

    def try_exclusions(exclude: list[str]) -> dict[str, Any]:
        strategy = replace(
            current.strategy,
            config=current.config_used,
            name="exclusion",
            why=f"{len(exclude)} most sensitive node(s) of {current.strategy.name} kept in float",
            exclude=tuple(exclude),
        )
        attempt = ladder.attempt(strategy)
        trials[tuple(exclude)] = attempt
        task.advance()
        if attempt.report is None:
            return {"passed": False, "error": attempt.error}
        return summary_metrics(attempt.report)

    max_excluded = max(1, int(ladder.settings.max_excluded_fraction * len(quantizable)))
    outcome = search_exclusions(
        exclusion_units(ranking),
        try_exclusions,
        max_excluded=max_excluded,
        max_evaluations=ladder.budget_left,
    )
    task.close()
    # The smallest passing set wins, not the first that passed while the bisection was growing k.
    ladder.outcome.chosen = trials[tuple(outcome.excluded)] if outcome.excluded is not None else None
    chosen = ladder.outcome.chosen
    ladder.outcome.repair = {
        "from_strategy": current.strategy.name,
        "quantizable_nodes": len(quantizable),
        "excluded_nodes": outcome.excluded or [],
        "kept_int8": len(quantizable) - len(outcome.excluded or []),
        "evaluations": len(outcome.candidates),
        "before": before,
        "candidates": [{"excluded": 0, **before}, *outcome.candidates],
        "stopped_because": outcome.stopped_because,
        "after": summary_metrics(chosen.report) if chosen and chosen.report else before,
    }


def _why_chosen(outcome: LadderOutcome) -> str:
    chosen = outcome.chosen
    assert chosen is not None
    failed = [a.strategy.name for a in outcome.attempts if a is not chosen and not a.passed]
    earlier = f" after {', '.join(dict.fromkeys(failed))} failed" if failed else ""
    if chosen.strategy.name == "exclusion":
        return (
            f"exclusion passed{earlier}: the smallest passing set of nodes kept in float "
            f"({len(chosen.strategy.exclude)}) found by bisection"
        )
    if len(outcome.attempts) == 1 and chosen.strategy.kind == "fp16":
        return "fp16 passed (--mode fp16 tries only float16)"
    return (
        f"{chosen.strategy.name} passed{earlier}; it is the first passing rung, ordered by the expected "
        "speed and size of the result, so later rungs (less int8, or slower kernels) were not needed"
    )


def _load_check(path: Path) -> None:
    """onnxruntime must load the candidate; its own error (with node names) explains why not."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _matmul_heavy(model_path: Path) -> bool:
    """True when MatMul/Gemm weights outnumber convolution weights (dynamic int8 then pays)."""
    import numpy as np
    import onnx

    model = onnx.load(str(model_path))
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    matmul = sum(sizes.get(n.input[1], 0) for n in model.graph.node if n.op_type in _MATMUL_OPS)
    conv = sum(sizes.get(n.input[1], 0) for n in model.graph.node if n.op_type == "Conv")
    return matmul > conv


def attempt_rows(outcome: LadderOutcome) -> list[dict[str, Any]]:
    """The report's `quantization.strategies`: every attempt with its figures, the chosen one marked."""
    return [{**a.row(), "chosen": a is outcome.chosen} for a in outcome.attempts]


def config_of(attempt: Attempt) -> dict[str, Any] | None:
    return asdict(attempt.config_used) if attempt.config_used else None


def _float_only_words(model: Path) -> str:
    """Name the operators of a model with nothing to quantize (a scikit-learn linear model, say)."""
    try:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # the words are a courtesy: the warning stands without them
        return ""
    ops = sorted({f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node})
    control = sorted(set(ops) & {"If", "Loop", "Scan"})
    if control:  # silero VAD: its layers sit in If branches
        bodies = "/".join(control)
        return f"; its layers are inside {bodies} bodies, which onnxruntime's quantizer does not enter"
    if not ops or len(ops) > 6:
        return ""
    return f"; its operators {', '.join(ops)} have no int8 form in onnxruntime"
