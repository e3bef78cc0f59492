"""Hints never contradict the run that printed them: no mode that just failed, no "0 kept" beside "4 kept"."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from converters.quantize import _alternatives
from converters.repair import search_exclusions
from edgekit.commands.quantize import _print_extras, quantize
from tests.edgekit.hints import command_options, mentioned_options

# The modes one --mode value runs: on TFLite output, auto and static are the same full int8.
SAME = {("auto", True): {"auto", "static"}, ("static", True): {"auto", "static"}}


@pytest.mark.parametrize("tflite", [False, True], ids=["onnx", "tflite"])
@pytest.mark.parametrize("mode", ["auto", "static", "dynamic", "fp16"])
def test_alternatives_name_only_modes_not_just_tried_and_options_quantize_has(
    mode: str, tflite: bool
) -> None:
    text = _alternatives(mode, tflite=tflite)
    suggested = set(re.findall(r"--mode (\w+)", re.sub(r"`[^`]*`", "", text)))
    assert not suggested & SAME.get((mode, tflite), {mode}), text
    assert mentioned_options(text) <= command_options(quantize), text
    if mode in ("dynamic", "fp16"):
        assert "--calibration" not in text, "these modes use no calibration data"


def test_a_repair_that_found_nothing_does_not_say_zero_nodes_were_kept() -> None:
    outcome = search_exclusions(
        [["a"], ["b"], ["c", "d"], ["e"]], lambda e: {"passed": False}, max_excluded=3, max_evaluations=10
    )
    assert outcome.excluded is None
    assert (
        "the 2 most damaging node(s)" in outcome.stopped_because and "limit of 3" in outcome.stopped_because
    )
    report = {
        "repair": {
            "excluded_nodes": [],
            "quantizable_nodes": 11,
            "evaluations": len(outcome.candidates),
            "stopped_because": outcome.stopped_because,
            "before": {"sqnr_db": 12.0},
        }
    }
    with CliRunner().isolation() as (out, _, _):
        _print_extras(report)
        printed = out.getvalue().decode()
    assert "0 of" not in printed and "no set of nodes kept in float passed, of 11 quantized nodes" in printed
