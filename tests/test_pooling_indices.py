"""MaxPool's Indices output and MaxUnpool, against onnxruntime: flat indices over the unpadded
input (batch and channel included), in row- or column-major order."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run
from onnx_attr.errors import UnsupportedOpError

RNG = np.random.default_rng(23)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "strides": [2, 1]},
    {"kernel_shape": [2, 2], "dilations": [2, 1], "ceil_mode": 1, "strides": [2, 2]},
    {"kernel_shape": [2, 3], "storage_order": 1, "pads": [0, 1, 1, 0]},
    {"kernel_shape": [3], "pads": [1, 1], "strides": [2]},
], ids=["pads-strides", "dilated-ceil", "column-major", "1d"])
def test_maxpool_indices_match_onnxruntime(attrs):
    shape = [2, 3, 7] if len(attrs["kernel_shape"]) == 1 else [2, 3, 7, 6]
    proto = make_model([helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], [("x", FLOAT, shape)],
                       [("y", FLOAT, ["a", "b", "c", "d"][:len(shape)]), ("i", INT64, ["a", "b", "c", "d"][:len(shape)])], opset=12)
    x = RNG.standard_normal(shape).astype(np.float32)
    y_ort, i_ort = ort_run(proto, {"x": x})
    y, i = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})
    np.testing.assert_array_equal(y.numpy(), y_ort)
    np.testing.assert_array_equal(i.numpy(), i_ort)


def test_maxunpool_matches_onnxruntime_and_deeplift_is_exact():
    pooled = make_model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2])],
                        [("x", FLOAT, [1, 2, 5, 4])], [("y", FLOAT, [1, 2, 2, 2]), ("i", INT64, [1, 2, 2, 2])])
    _, indices = ort_run(pooled, {"x": RNG.standard_normal((1, 2, 5, 4)).astype(np.float32)})
    proto = make_model([helper.make_node("MaxUnpool", ["v", "i", "shape"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                       [("v", FLOAT, [1, 2, 2, 2])], [("y", FLOAT, [1, 2, 5, 4])],
                       initializers={"i": indices, "shape": np.array([1, 2, 5, 4], np.int64)}, opset=11)
    v = RNG.standard_normal((1, 2, 2, 2)).astype(np.float32)
    (expected,) = ort_run(proto, {"v": v})
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_array_equal(model.run({"v": v})[0].numpy(), expected)
    _, delta = onnx_attr.DeepLift(model).attribute(v, target=(1, 2, 2), return_convergence_delta=True)
    assert np.abs(delta).max() < 1e-6


def test_deeplift_refuses_maxpool_indices_by_name():
    proto = make_model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2], name="pool")],
                       [("x", FLOAT, [1, 1, 4])], [("y", FLOAT, [1, 1, 3]), ("i", INT64, [1, 1, 3])])
    model = onnx_attr.load(proto, strip_final_activation=False)
    with pytest.raises(UnsupportedOpError, match="(?s)pool.*Indices"):
        onnx_attr.DeepLift(model).attribute(np.ones((1, 1, 4), np.float32), target=(0, 1))
