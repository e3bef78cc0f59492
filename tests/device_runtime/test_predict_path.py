"""`predict`'s hot path gives exactly what the general path gives: feeds, errors, top-k and engine outputs.

`device_runtime._predict_path.PredictPath` decides at load what can be decided once; these tests run the
same requests and outputs through it and through the general functions it stands in for
(`prepare_inputs`, `interpret_outputs`, onnxruntime's public `InferenceSession.run`) on a real onnxruntime
model, and compare the results bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_runtime._predict_path import PredictPath, interpret_outputs
from device_runtime.engines import _prepare_feeds, feed_checks, feeds_fit, load_engine
from device_runtime.errors import InputError
from device_runtime.preprocess import SCHEMA, parse_spec, prepare_inputs
from tests.device_runtime.runtime_fixtures import LABELS, write_model

TENSOR = {"name": "x", "kind": "tensor", "dtype": "float32", "shape": [None, 8]}

OUTPUTS = {
    "no-role": [],
    "tensor-only": [{"name": "logits", "kind": "tensor"}],
    "softmax-top3": [{"name": "logits", "kind": "classification", "activation": "softmax", "top_k": 3}],
    "sigmoid-threshold": [
        {"name": "logits", "kind": "classification", "activation": "sigmoid", "score_threshold": 0.6}
    ],
    "threshold-drops-all": [{"name": "logits", "kind": "classification", "score_threshold": 1.0}],
    "labels": [{"name": "logits", "kind": "classification", "labels": "labels.txt", "top_k": 4}],
    "first-absent": [
        {"name": "other", "kind": "classification"},
        {"name": "logits", "kind": "classification", "activation": "softmax"},
    ],
    "regression": [{"name": "logits", "kind": "regression"}],
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_engine(write_model(tmp_path_factory.mktemp("model") / "tiny.onnx", "1.0.0"), threads=1)


def make_spec(outputs: list[dict[str, Any]], inputs: list[dict[str, Any]] | None = None) -> Any:
    return parse_spec({"schema": SCHEMA, "inputs": inputs or [TENSOR], "outputs": outputs})


def requests() -> list[tuple[str, Any]]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    return [
        ("ready", {"x": x}),
        ("batch", {"x": rng.standard_normal((3, 8)).astype(np.float32)}),
        ("bare-array", x),
        ("not-c-order", {"x": np.asfortranarray(rng.standard_normal((3, 8)).astype(np.float32))}),
        ("strided", {"x": rng.standard_normal((2, 16)).astype(np.float32)[:, ::2]}),
        ("float64", {"x": x.astype(np.float64)}),
        ("wrong-width", {"x": np.zeros((1, 7), np.float32)}),
        ("wrong-rank", {"x": np.zeros((8,), np.float32)}),
        ("missing", {}),
        ("extra", {"x": x, "y": x}),
        ("list", {"x": x.tolist()}),
        ("big-endian", {"x": x.astype(">f4")}),
    ]


@pytest.mark.parametrize("name,request_", requests(), ids=[n for n, _ in requests()])
def test_a_request_gives_the_feeds_and_errors_of_prepare_inputs(
    engine: Any, name: str, request_: Any
) -> None:
    spec = make_spec(OUTPUTS["softmax-top3"])
    path = PredictPath(spec, engine, None)
    try:
        expected = prepare_inputs(spec, request_)
    except InputError as e:
        with pytest.raises(InputError) as caught:
            path.prepare(request_)
        assert str(caught.value) == str(e)
        return
    feeds = path.prepare(request_)
    assert list(feeds) == list(expected)
    for key, array in expected.items():
        assert feeds[key] is array or np.array_equal(feeds[key], array)
        assert feeds[key].dtype == array.dtype
    np.testing.assert_array_equal(engine.run(feeds)["logits"], engine.run(expected)["logits"])


def test_feeds_fit_exactly_when_the_engine_would_pass_them_through(engine: Any) -> None:
    checks = feed_checks(engine.inputs)
    assert checks is not None
    for _, request_ in requests():
        if not isinstance(request_, dict):
            continue
        try:
            untouched = _prepare_feeds(engine.inputs, request_) is request_
        except InputError:
            untouched = False
        assert feeds_fit(checks, request_) == untouched


def test_the_compiled_session_call_gives_the_public_calls_outputs(engine: Any) -> None:
    x = np.random.default_rng(3).standard_normal((5, 8)).astype(np.float32)
    public = engine._session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(engine.run({"x": x})["logits"], public)


@pytest.mark.parametrize("outputs", list(OUTPUTS.values()), ids=list(OUTPUTS))
@pytest.mark.parametrize("rows", [1, 3])
def test_outputs_read_as_interpret_outputs_reads_them(
    engine: Any, outputs: list[dict[str, Any]], rows: int
) -> None:
    spec = make_spec(outputs)
    rng = np.random.default_rng(rows)
    for labels in (None, list(LABELS)):
        if outputs and outputs[-1].get("labels") and labels is None:
            continue
        path = PredictPath(spec, engine, labels)
        for _ in range(20):
            result = engine.run({"x": rng.standard_normal((rows, 8)).astype(np.float32)})
            fast, general = path.interpret(result), interpret_outputs(spec, labels, result)
            assert fast == general
            # The same Python types too (an int index, a float score, not numpy scalars).
            assert [tuple(map(type, t)) for t in fast[0]] == [tuple(map(type, t)) for t in general[0]]
            assert type(fast[1]) is type(general[1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in the softmax, on both paths alike
def test_ties_and_non_finite_scores_rank_as_postprocess_ranks_them(engine: Any) -> None:
    spec = make_spec(OUTPUTS["softmax-top3"])
    path = PredictPath(spec, engine, None)
    for row in ([1.0, 1.0, 0.5, 1.0], [np.nan, 0.0, 1.0, 2.0], [np.inf, 1.0, -np.inf, 0.0], [0.0] * 4):
        logits = {"logits": np.array([row], np.float32)}
        fast, general = path.interpret(logits), interpret_outputs(spec, None, logits)
        assert repr(fast) == repr(general)  # repr: NaN scores compare equal too


def test_an_image_input_goes_through_prepare_inputs(engine: Any, tmp_path: Path) -> None:
    image_spec = make_spec([], [{"name": "x", "kind": "image", "size": [2, 4], "color": "GRAY"}])
    path = PredictPath(image_spec, engine, None)
    pixels = np.random.default_rng(0).integers(0, 255, (6, 9), dtype=np.uint8)
    np.testing.assert_array_equal(path.prepare(pixels)["x"], prepare_inputs(image_spec, pixels)["x"])
