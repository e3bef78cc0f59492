"""The one parity contract: float reference vs candidate, per output and per output role, with a gate.

Definitions, per output tensor, reference x vs candidate y over the evaluation set:
top-1 agreement (share of samples with the same argmax, classification outputs only); task accuracy and
its drop in percentage points when labels are given; SQNR dB = 20·log10(‖x‖ / ‖x − y‖), 100 when
identical; cosine similarity; max |x − y| / max |x|. Every output also has a role (declared, or inferred
from its shape: :mod:`converters.roles`) judged by its own metrics and default thresholds
(:mod:`converters.role_metrics`: detection recall/precision after NMS, segmentation mIoU, embedding
cosine and neighbours, sequence agreement and exact decodes, regression relative error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters._files import sha256_file
from converters._quiet import load_engine
from converters.data import Dataset
from converters.errors import DataError
from converters.progress import Progress
from converters.role_metrics import ROLE_THRESHOLDS, role_failures, role_metrics, role_objective
from converters.roles import resolve_roles
from converters.runner import run_model
from converters.signature import with_hints
from converters.targets import HOST, Target
from device_runtime.engines import Engine
from device_runtime.golden import GoldenTolerance, sqnr_db  # one SQNR for host and device: the same numbers
from device_runtime.preprocess import OutputSpec

__all__ = [
    "EXPORT_GATE",
    "FP16_GATE",
    "INT8_GATE",
    "Gate",
    "OutputMetrics",
    "compare_outputs",
    "evaluate_gate",
    "paired_scores",
    "parity_report",
    "run_model",
    "sqnr_db",
    "summary_metrics",
]

IDENTICAL_SQNR_DB = 100.0
HISTOGRAM_BINS = 30


@dataclass(frozen=True)
class Gate:
    """Thresholds a candidate must meet; None disables a check.

    ``min_agreement``/``max_drop_pp`` judge classification outputs; ``min_sqnr_db``/``min_cosine`` are a
    floor on the whole tensor of every output. ``role_thresholds`` overrides the per-role defaults of
    :data:`converters.role_metrics.ROLE_THRESHOLDS` (e.g. ``{"detection": {"min_recall": 0.95}}``).
    """

    min_agreement: float | None = 0.99
    max_drop_pp: float | None = 1.0
    min_sqnr_db: float | None = 20.0
    min_cosine: float | None = None
    role_thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.max_drop_pp is not None and self.max_drop_pp < 0:
            raise ValueError(f"max_drop_pp must be >= 0, got {self.max_drop_pp}")
        for kind, overrides in self.role_thresholds.items():
            unknown = set(overrides) - set(ROLE_THRESHOLDS.get(kind, {}))
            if kind not in ROLE_THRESHOLDS or unknown:
                raise ValueError(
                    f"role_thresholds[{kind!r}]: unknown role or threshold {sorted(unknown)}; "
                    f"known: {ROLE_THRESHOLDS}"
                )

    def thresholds_for(self, kind: str) -> dict[str, float]:
        """The role checks of an output of this kind: the defaults with this gate's overrides."""
        return {**ROLE_THRESHOLDS.get(kind, {}), **self.role_thresholds.get(kind, {})}


INT8_GATE = Gate()
# Export proves fidelity on synthetic inputs by whole-tensor SQNR: a detector there may see no object.
_SYNTHETIC = {"detection": {"min_reference_detections": 0.0}}
EXPORT_GATE = Gate(min_agreement=1.0, max_drop_pp=0.0, min_sqnr_db=80.0, role_thresholds=_SYNTHETIC)
# float16 rounds every weight to 11 significant bits: ~60-70 dB is normal, so 80 dB cannot apply.
FP16_GATE = Gate(min_agreement=0.99, max_drop_pp=0.5, min_sqnr_db=40.0, role_thresholds=_SYNTHETIC)


@dataclass(frozen=True)
class OutputMetrics:
    """Parity of one output tensor."""

    name: str
    classification: bool
    agreement: float | None
    sqnr_db: float
    cosine: float
    max_abs_error_norm: float
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    accuracy_drop_pp: float | None = None
    error_histogram: dict[str, list[float]] = field(default_factory=dict)
    role: str = "tensor"
    role_config: dict[str, Any] = field(default_factory=dict)  # the output entry of the spec
    role_metrics: dict[str, Any] = field(default_factory=dict)
    # The detection output whose role judges this one (its scores output, formats "boxes" and "ssd"): the
    # figures above are shown, not gated; the detection's recall, precision and score SQNR are.
    judged_with: str | None = None


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    a = x.astype(np.float64).ravel()
    b = y.astype(np.float64).ravel()
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denominator == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / denominator)


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    roles: Mapping[str, OutputSpec] | None = None,
    *,
    samples: int | None = None,
) -> list[OutputMetrics]:
    """Compute the parity metrics of every output the reference has, generic and per role.

    ``roles``: declared output roles by name; the others are inferred from their shapes. ``samples``:
    the evaluated sample count, when known: only outputs with the batch on axis 0 are then inferred to
    be classification or detection (a role's metrics read samples on axis 0).

    Raises:
        DataError: the candidate lacks an output or its shape differs, or a role does not fit its output.
    """
    for name, x in reference.items():
        if name not in candidate:
            raise DataError(f"candidate has no output {name!r}; its outputs are {sorted(candidate)}")
        if x.shape != candidate[name].shape:
            raise DataError(
                f"output {name!r}: reference shape {x.shape} but candidate shape {candidate[name].shape}"
            )
    resolved = resolve_roles({name: x.shape for name, x in reference.items()}, roles, samples=samples)
    judged_with = paired_scores(resolved)
    metrics = []
    for name, x in reference.items():
        y = candidate[name]
        role = resolved[name]
        classification = role.kind == "classification"
        agreement = None
        acc_ref = acc_cand = drop = None
        if classification:
            ref_top = x.reshape(x.shape[0], -1).argmax(axis=1)
            cand_top = y.reshape(y.shape[0], -1).argmax(axis=1)
            agreement = float(np.mean(ref_top == cand_top))
            if labels is not None:
                if labels.shape[0] != x.shape[0]:
                    raise DataError(f"{labels.shape[0]} labels for {x.shape[0]} evaluated samples")
                acc_ref = float(np.mean(ref_top == labels))
                acc_cand = float(np.mean(cand_top == labels))
                drop = 100.0 * (acc_ref - acc_cand)
        scale = float(np.max(np.abs(x))) if x.size else 0.0
        abs_error = np.abs(x.astype(np.float64) - y.astype(np.float64))
        max_error = float(abs_error.max()) if abs_error.size else 0.0
        normalized = max_error / scale if scale > 0 else (0.0 if max_error == 0 else math.inf)
        finite_error = abs_error[np.isfinite(abs_error)]
        histogram: dict[str, list[float]] = {"bin_edges": [], "counts": []}
        if finite_error.size:
            counts, edges = np.histogram(finite_error, bins=HISTOGRAM_BINS)
            histogram = {"bin_edges": [float(e) for e in edges], "counts": [float(c) for c in counts]}
        metrics.append(
            OutputMetrics(
                name=name,
                classification=classification,
                agreement=agreement,
                sqnr_db=sqnr_db(x, y),
                cosine=_cosine(x, y),
                max_abs_error_norm=normalized,
                accuracy_reference=acc_ref,
                accuracy_candidate=acc_cand,
                accuracy_drop_pp=drop,
                error_histogram=histogram,
                role=role.kind,
                role_config=_role_config(role),
                role_metrics=_role_metrics(role, x, y, reference, candidate),
                judged_with=judged_with.get(name),
            )
        )
    return metrics


def paired_scores(roles: Mapping[str, OutputSpec]) -> dict[str, str]:
    """Scores output name -> the detection output that reads it (formats "boxes" and "ssd"), for scores
    outputs without a role of their own: the detection role judges them, with their boxes."""
    return {
        role.scores: role.name
        for role in roles.values()
        if role.kind == "detection"
        and role.scores is not None
        and getattr(roles.get(role.scores), "kind", None) == "tensor"
    }


def _role_config(role: OutputSpec) -> dict[str, Any]:
    return {k: v for k, v in asdict(role).items() if v is not None}


def _role_metrics(
    role: OutputSpec,
    x: np.ndarray,
    y: np.ndarray,
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    paired = role.kind == "detection" and role.scores is not None  # formats "boxes" and "ssd"
    try:
        return role_metrics(
            role,
            x,
            y,
            reference_scores=reference[role.scores] if paired and role.scores else None,
            candidate_scores=candidate[role.scores] if paired and role.scores else None,
        )
    except (ValueError, IndexError, np.exceptions.AxisError) as e:
        raise with_hints(
            DataError(
                f"output {role.name!r} of shape {list(x.shape)} cannot be read as a {role.kind} output ({e})"
            ),
            {"--role": "declare its role with --role OUTPUT=ROLE (or in the --preprocess spec's outputs)"},
        ) from e


def evaluate_gate(metrics: list[OutputMetrics], gate: Gate) -> list[str]:
    """Return the gate failures (empty when the candidate passes); NaN never passes.

    A scores output paired with a detection output (``judged_with``) is judged by that detection's role
    alone: its whole-tensor SQNR and cosine are reported, not held to the floor (noise on background
    logits that changes no detection is not a defect), and a failure of that detection names it.
    """
    scores_of = {m.judged_with: m.name for m in metrics if m.judged_with is not None}
    failures = []
    for m in metrics:
        if m.judged_with is not None:
            continue
        if (
            gate.min_agreement is not None
            and m.agreement is not None
            and not m.agreement >= gate.min_agreement
        ):
            failures.append(
                f"{m.name}: top-1 agreement {100 * m.agreement:.2f}% < {100 * gate.min_agreement:.2f}%"
            )
        if (
            gate.max_drop_pp is not None
            and m.accuracy_drop_pp is not None
            and not m.accuracy_drop_pp <= gate.max_drop_pp
        ):
            failures.append(
                f"{m.name}: accuracy drop {m.accuracy_drop_pp:.2f} pp > {gate.max_drop_pp:.2f} pp"
            )
        if gate.min_sqnr_db is not None and not m.sqnr_db >= gate.min_sqnr_db:
            failures.append(f"{m.name}: SQNR {m.sqnr_db:.2f} dB < {gate.min_sqnr_db:.2f} dB")
        if gate.min_cosine is not None and not m.cosine >= gate.min_cosine:
            failures.append(f"{m.name}: cosine {m.cosine:.5f} < {gate.min_cosine:.5f}")
        role = role_failures(m.name, m.role, m.role_metrics, gate.thresholds_for(m.role))
        if m.name in scores_of:
            role = [f"{f} (boxes from {m.name!r}, scores from {scores_of[m.name]!r})" for f in role]
        failures += role
    return failures


def _model_entry(path: str | Path, engine: Engine) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "engine": engine.kind}


def parity_report(
    reference_path: str | Path,
    candidate_path: str | Path,
    data: Dataset,
    *,
    gate: Gate = INT8_GATE,
    labels: np.ndarray | None = None,
    reference_outputs: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
    roles: Mapping[str, OutputSpec] | None = None,
    target: Target = HOST,
) -> dict[str, Any]:
    """Run both models on `data` (through the device's engines) and return the parity report dict.

    `reference_outputs` skips re-running the reference when the caller has them already; `roles` are the
    declared output roles (:func:`converters.roles.load_roles`), the others are inferred from shapes.
    `target` is where the candidate runs (:mod:`converters.targets`; the reference always runs on this
    host: the float model as the build host computes it is the contract every device is held to).
    The report holds every output's role, role metrics, the thresholds it was judged by and the target.
    """
    reference_engine = load_engine(reference_path)
    candidate_engine = load_engine(candidate_path)
    if reference_outputs is None:
        reference_outputs = run_model(reference_engine, data, progress=progress, label="reference")
    candidate_outputs = run_model(
        candidate_engine,
        data,
        progress=progress,
        label="candidate" if target is HOST else f"candidate on {target.name}",
        executor=target.executor(candidate_path),
    )
    metrics = compare_outputs(reference_outputs, candidate_outputs, labels, roles, samples=data.size)
    failures = evaluate_gate(metrics, gate)
    consistency = None
    if target is not HOST:
        here = run_model(candidate_engine, data, progress=progress, label="candidate on this host")
        consistency = target_consistency(here, candidate_outputs)
        failures += consistency_failures(consistency, target.name)
    return {
        "schema": "edgekit.parity/v1",
        "reference": _model_entry(reference_path, reference_engine),
        "candidate": _model_entry(candidate_path, candidate_engine),
        "target": {"reference": HOST.describe(), "candidate": target.describe()},
        "samples": data.size,
        "gate": asdict(gate),
        "role_thresholds": {kind: gate.thresholds_for(kind) for kind in ROLE_THRESHOLDS},
        "passed": not failures,
        "failures": failures,
        "outputs": [{**asdict(m), "thresholds": _thresholds(m, gate)} for m in metrics],
        **({"target_consistency": consistency} if consistency is not None else {}),
    }


def target_consistency(
    host: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: the candidate's target outputs against its outputs on this host, judged as the device's
    golden self-test judges them: SQNR against the golden tolerance's floor (top-1 agreement is reported,
    not gated: over a whole evaluation set one near-tie would refuse what the golden samples accept)."""
    tolerance = GoldenTolerance()
    rows = {}
    for name, x in host.items():
        y = target[name]
        row = {"sqnr_db": sqnr_db(x, y), "min_sqnr_db": tolerance.min_sqnr_db}
        if x.ndim == 2 and x.shape[1] >= 2:
            row["agreement"] = float(np.mean(x.argmax(axis=1) == y.argmax(axis=1)))
        rows[name] = row
    return rows


def consistency_failures(consistency: Mapping[str, Mapping[str, float]], target: str) -> list[str]:
    """Outputs whose target figures the device's golden self-test would refuse (bundle goldens are recorded
    on the build host): the gate refuses those too, so `quantize` repairs them instead of shipping a bundle
    the device will not install."""
    failures = []
    for name, row in consistency.items():
        if not row["sqnr_db"] >= row["min_sqnr_db"]:
            failures.append(
                f"{name}: on {target} the candidate's outputs differ from this host's by SQNR "
                f"{row['sqnr_db']:.2f} dB < {row['min_sqnr_db']:.2f} dB: the device's golden self-test "
                "(goldens are recorded on this host) would refuse the bundle"
            )
    return failures


def _thresholds(m: OutputMetrics, gate: Gate) -> dict[str, float]:
    """Every threshold this output was judged by (None-valued checks left out; none for a paired scores
    output, which its detection output's thresholds judge)."""
    if m.judged_with is not None:
        return {}
    base: dict[str, float | None] = {"min_sqnr_db": gate.min_sqnr_db, "min_cosine": gate.min_cosine}
    if m.role == "classification":
        base.update(min_agreement=gate.min_agreement)
        if m.accuracy_drop_pp is not None:
            base.update(max_drop_pp=gate.max_drop_pp)
    return {**{k: v for k, v in base.items() if v is not None}, **gate.thresholds_for(m.role)}


def summary_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    """The worst figures over all outputs: what a one-line summary or a repair candidate shows.

    ``objective`` is the worst output's role objective (higher is better, in [0, 1]; see
    :func:`converters.role_metrics.role_objective`) and ``objective_metric`` says which it is: the one
    number a repair search should drive up (whole-tensor SQNR hides a broken detector). A scores output
    judged with its detection output (``judged_with``) is left out of every figure: the gate does not hold
    its raw tensor to a floor, so neither the ladder nor the repair should chase it.
    """
    outputs = [o for o in report["outputs"] if not o.get("judged_with")] or report["outputs"]
    agreements = [o["agreement"] for o in outputs if o["agreement"] is not None]
    drops = [o["accuracy_drop_pp"] for o in outputs if o["accuracy_drop_pp"] is not None]
    objectives = [(*role_objective(o.get("role", "tensor"), o), o["name"]) for o in outputs]
    what, worst, name = min(objectives, key=lambda t: t[1]) if objectives else ("none", 1.0, "")
    return {
        "passed": report["passed"],
        "agreement": min(agreements) if agreements else None,
        "sqnr_db": min(o["sqnr_db"] for o in outputs),
        "cosine": min(o["cosine"] for o in outputs),
        "accuracy_drop_pp": max(drops) if drops else None,
        "objective": worst,
        "objective_metric": f"{name}: {what}" if name else what,
    }
