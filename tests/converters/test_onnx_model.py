"""`load_onnx` classifies a rejected model from its graph, not from the checker's words."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

from converters.errors import ModelInputError, UnsupportedModelError
from converters.onnx_model import load_onnx

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])


def _model(nodes: list[object], inputs: list[object] | None = None, opset: int = 17) -> object:
    graph = helper.make_graph(nodes, "g", inputs or [X], [Y])  # type: ignore[arg-type]
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _then_foo() -> object:
    branch = helper.make_graph([helper.make_node("FooBaz", ["x"], ["y"])], "branch", [], [Y])
    condition = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    return _model([node], [condition, X])


@pytest.mark.parametrize(
    ("model", "error", "fragment"),
    [
        pytest.param(
            _model([helper.make_node("FooBar", ["x"], ["y"])]),
            UnsupportedModelError,
            "operator FooBar is not defined in ONNX opset 17",
            id="unknown-operator",
        ),
        pytest.param(
            _model([helper.make_node("Gelu", ["x"], ["y"])]),
            UnsupportedModelError,
            "operator Gelu is not defined in ONNX opset 17",
            id="operator-newer-than-the-opset",
        ),
        pytest.param(
            _then_foo(), UnsupportedModelError, "operator FooBaz", id="unknown-operator-in-a-subgraph"
        ),
        pytest.param(
            _model([helper.make_node("Relu", ["z"], ["y"])]),
            ModelInputError,
            "the ONNX checker rejects the model",
            id="dangling-input",
        ),
    ],
)
def test_a_rejected_model_is_unsupported_only_for_an_undefined_operator(
    tmp_path: Path, model: object, error: type[Exception], fragment: str
) -> None:
    path = tmp_path / "model.onnx"
    save(model, str(path))  # type: ignore[arg-type]
    with pytest.raises(error, match=fragment) as caught:
        load_onnx(path)
    assert type(caught.value) is error
