"""ONNX's own model data (shipped in the onnx wheel): each case imports and matches its shipped
outputs to 1e-4, or ends in one of our clear errors, never a raw traceback.

`light/` holds the Caffe2 zoo graphs (opset 9, IR 3, weights as ConstantOfShape); their expected
outputs were produced from the inputs ONNX's runner feeds them: arange(n)/n in the input's shape.
The three largest are marked slow (tens of seconds each on 2 cores).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnx_attr

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
SLOW = {"light_vgg19", "light_bvlc_alexnet", "light_zfnet512"}
#: Cases whose ops carry no tensors to attribute (sequences, strings, training-only Gradient): a
#: clear UnsupportedOpError is the expected outcome, and anything else among them is a change to look at.
EXPECTED_UNSUPPORTED = {"test_gradient_of_add", "test_gradient_of_add_and_mul",
                        *(f"test_strnorm_model_{s}" for s in ("monday_casesensintive_lower", "monday_casesensintive_nochangecase",
                          "monday_casesensintive_upper", "monday_empty_output", "monday_insensintive_upper_twodim",
                          "nostopwords_nochangecase"))}


def _read(path: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    with open(path, "rb") as handle:
        tensor.ParseFromString(handle.read())
    return numpy_helper.to_array(tensor)


def _cases():
    for folder in ("pytorch-converted", "pytorch-operator", "simple"):
        for case in sorted(glob.glob(os.path.join(DATA, folder, "*"))):
            name = os.path.basename(case)
            data = os.path.join(case, "test_data_set_0")
            yield pytest.param(os.path.join(case, "model.onnx"), sorted(glob.glob(os.path.join(data, "input_*.pb"))),
                               sorted(glob.glob(os.path.join(data, "output_*.pb"))), name, id=f"{folder}/{name}")
    for path in sorted(glob.glob(os.path.join(DATA, "light", "*.onnx"))):
        name = os.path.basename(path)[:-5]
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(path, None, [path[:-5] + "_output_0.pb"], name, id=f"light/{name}", marks=marks)


@pytest.mark.parametrize("path,inputs,outputs,name", list(_cases()))
def test_backend_model_imports_and_matches_or_fails_clearly(path, inputs, outputs, name):
    try:
        model = onnx_attr.load(path, strip_final_activation=False)
    except onnx_attr.UnsupportedOpError as err:
        assert name in EXPECTED_UNSUPPORTED, f"newly unsupported: {err}"
        assert err.op_type and err.node_name and str(err.opset) in str(err)
        return
    assert name not in EXPECTED_UNSUPPORTED, "now imports: move it out of EXPECTED_UNSUPPORTED"
    if inputs is None:  # the light models: ONNX's runner feeds arange(n)/n
        shape = model.inputs[0].shape
        feeds = [(np.arange(int(np.prod(shape))).reshape(shape) / np.prod(shape)).astype(np.float32)]
    else:
        feeds = [_read(p) for p in inputs]
    got = model.run(feeds)
    for out, expected_path in zip(got, outputs):
        expected = _read(expected_path)
        ours = out.numpy().astype(np.float64)
        assert ours.shape == expected.shape
        assert np.array_equal(np.isnan(ours), np.isnan(expected)), "NaNs in different places"
        finite = ~np.isnan(expected)
        if finite.any():
            assert np.abs(ours[finite] - expected[finite]).max() <= 1e-4
