"""`prepare_inputs` with 0-d tensor inputs: arrays and Python scalars, next to batched inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_runtime.errors import InputError
from device_runtime.preprocess import parse_spec, prepare_inputs

SPEC = parse_spec(
    {
        "schema": "edgekit.preprocess/v1",
        "inputs": [
            {"name": "input", "kind": "tensor", "dtype": "float32", "shape": [None, 576]},
            {"name": "state", "kind": "tensor", "dtype": "float32", "shape": [2, None, 128]},
            {"name": "sr", "kind": "tensor", "dtype": "int64", "shape": []},
            {"name": "gain", "kind": "tensor", "dtype": "float16", "shape": []},
        ],
    }
)


def _request(sr: object, gain: object) -> dict[str, object]:
    return {
        "input": np.zeros((1, 576), np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": sr,
        "gain": gain,
    }


def test_0d_inputs_take_0d_arrays_and_python_scalars_in_the_input_dtype() -> None:
    arrays = prepare_inputs(SPEC, _request(np.array(16000, np.int64), np.float16(0.5)))
    assert arrays["sr"].shape == () and arrays["sr"].dtype == np.int64
    arrays = prepare_inputs(SPEC, _request(16000, 0.5))
    assert arrays["sr"].shape == () and arrays["sr"].dtype == np.int64 and int(arrays["sr"]) == 16000
    assert arrays["gain"].dtype == np.float16 and float(arrays["gain"]) == 0.5


@pytest.mark.parametrize(
    ("sr", "gain", "fragment"),
    [
        pytest.param(np.array([16000]), 0.5, "shape (1,) is not allowed", id="1-d-for-0-d"),
        pytest.param(16000.5, 0.5, "dtype float64 is not allowed", id="inexact-scalar"),
        pytest.param(16000, 0.1, "dtype float64 is not allowed", id="scalar-not-exact-in-float16"),
    ],
)
def test_0d_inputs_refuse_other_shapes_and_lossy_scalars(sr: object, gain: object, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        prepare_inputs(SPEC, _request(sr, gain))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Path("photos/cat.png"), id="path"),
        pytest.param("photos/cat.png", id="str"),
        pytest.param(b"photos/cat.png", id="bytes"),
    ],
)
def test_a_file_name_for_a_tensor_input_says_it_takes_a_tensor(value: object) -> None:
    # The device CLI passes any non-.npy file as a path; a tensor input must say so by itself (no caller
    # has to recognise the message of a dtype error).
    with pytest.raises(InputError, match=r"input 'input' takes a tensor, but got the file name 'cat.png'"):
        prepare_inputs(SPEC, {**_request(16000, 0.5), "input": value})
