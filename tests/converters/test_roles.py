"""Declared output roles: the --role option, the --preprocess spec's outputs, and how they combine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from converters.errors import DataError
from converters.parity import Gate, compare_outputs, evaluate_gate
from converters.roles import load_roles, parse_role_option, resolve_roles


def test_role_option_sets_the_spec_fields() -> None:
    role = parse_role_option("output0=detection,score=0.3,iou=0.5,max=50,format=yolo_transposed")
    assert (role.name, role.kind, role.format) == ("output0", "detection", "yolo_transposed")
    assert (role.score_threshold, role.iou_threshold, role.max_detections) == (0.3, 0.5, 50)
    assert parse_role_option("text=sequence,blank=6624").blank == 6624


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("output0", "expected OUTPUT=ROLE", id="no-role"),
        pytest.param("output0=detection,nms=0.5", "keys: score, iou", id="unknown-key"),
        pytest.param("output0=detection,iou", "not key=value", id="no-value"),
        pytest.param("output0=detection,iou=2", "iou_threshold must be <= 1", id="out-of-bounds"),
        pytest.param("output0=detection,max=0", "max_detections must be an integer from 1", id="max-0"),
        pytest.param("output0=keypoints", "allowed:", id="unknown-role"),
        pytest.param("y=classification,iou=0.5", "for detection outputs only", id="key-of-another-role"),
    ],
)
def test_bad_role_option_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(DataError, match=says) as info:
        parse_role_option(text)
    assert "--role" in str(info.value)


def test_spec_outputs_are_roles_and_the_option_overrides_them(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "schema": "edgekit.preprocess/v1",
                "inputs": [{"name": "x", "kind": "tensor", "dtype": "float32", "shape": [None, 8]}],
                "outputs": [
                    {"name": "a", "kind": "embedding"},
                    {"name": "b", "kind": "detection", "score_threshold": 0.2},
                ],
            }
        )
    )
    roles = load_roles(["b=detection,score=0.5"], spec)
    assert roles["a"].kind == "embedding"
    assert roles["b"].score_threshold == 0.5
    with pytest.raises(DataError, match="given twice"):
        load_roles(["b=tensor", "b=detection"])


def test_a_role_for_an_output_the_model_lacks_is_refused() -> None:
    with pytest.raises(DataError, match="outputs are \\['logits'\\]"):
        resolve_roles({"logits": (8, 4)}, {"output0": parse_role_option("output0=detection")})
    with pytest.raises(DataError, match="scores output 's'"):
        resolve_roles({"b": (1, 10, 4)}, {"b": parse_role_option("b=detection,format=boxes,scores=s")})


def test_declaring_an_output_tensor_turns_classification_checks_off() -> None:
    x = np.eye(4, dtype=np.float32)
    y = x[::-1].copy()
    inferred = compare_outputs({"y": x}, {"y": y})
    assert inferred[0].role == "classification" and inferred[0].agreement == 0.0
    gate = Gate(min_sqnr_db=None)
    assert evaluate_gate(inferred, gate)
    declared = compare_outputs({"y": x}, {"y": y}, roles={"y": parse_role_option("y=tensor")})
    assert declared[0].agreement is None and not evaluate_gate(declared, gate)


def test_gate_role_thresholds_override_the_defaults_and_unknown_ones_are_refused() -> None:
    gate = Gate(role_thresholds={"detection": {"min_recall": 0.5}})
    assert gate.thresholds_for("detection")["min_recall"] == 0.5
    assert gate.thresholds_for("detection")["min_precision"] == 0.9
    with pytest.raises(ValueError, match="min_iou"):
        Gate(role_thresholds={"segmentation": {"min_iou": 0.5}})


def test_quantize_cli_takes_role_and_refuses_a_bad_one_in_one_line(tmp_path: Path) -> None:
    from edgekit.cli import cli

    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 8), np.float32))
    result = CliRunner().invoke(
        cli,
        ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calibration", str(data),
         "--role", "logits=detection,iou=7"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "iou_threshold must be <= 1" in result.output and "Traceback" not in result.output
    assert "--role OUTPUT=ROLE" in CliRunner().invoke(cli, ["quantize", "--help"]).output


@pytest.mark.parametrize(
    ("shape", "kind"),
    [
        pytest.param((64, 10), "classification", id="batch-first-logits"),
        pytest.param((2, 64), "tensor", id="state-with-batch-on-axis-1"),
        pytest.param((2, 64, 128), "tensor", id="recurrent-state"),
        pytest.param((64, 22, 2100), "detection", id="yolo-head"),
    ],
)
def test_with_a_known_sample_count_only_batch_first_outputs_are_inferred(
    shape: tuple[int, ...], kind: str
) -> None:
    from converters.roles import infer_role

    assert infer_role("y", shape, samples=64).kind == kind
