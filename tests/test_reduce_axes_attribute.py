"""ReduceMax/Min/Prod with `axes` an attribute (before opset 18): onnx2torch's reduced one axis at a
time and shifted a negative axis as if it were positive, so [0, -1] with keepdims=0 reduced the
wrong axes (found by the batch walk's random graphs). Oracle: onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceProd"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0, -1], [2, 0], [-3, 3], [-1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_axes_attribute_as_onnxruntime_reads_it(op, opset, axes, keepdims):
    reduced = {a % 4 for a in axes}
    out = [1 if i in reduced else d for i, d in enumerate([2, 3, 4, 5]) if keepdims or i not in reduced]
    model = make_model([helper.make_node(op, ["x"], ["y"], axes=axes, keepdims=keepdims)],
                       [("x", FLOAT, [2, 3, 4, 5])], [("y", FLOAT, out)], opset=opset)
    x = np.random.default_rng(3).uniform(-1.5, 1.5, (2, 3, 4, 5)).astype(np.float32)  # products stay finite
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnx_attr.load(model, strip_final_activation=False).run({"x": x})[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("axes,noop,keepdims", [([], 0, 0), ([], 0, 1), ([], 1, 0), ([-1, 1], 0, 0), (None, 0, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_reduce_sum_13_axes_input_as_onnxruntime_reads_it(axes, noop, keepdims, dtype):
    """ReduceSum-13 takes its axes as an input: an empty one sums over every axis unless
    noop_with_empty_axes (onnx2torch's raised AttributeError there); int32 stays int32 (torch sums
    into int64)."""
    from onnx import TensorProto

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT32
    inputs = ["x"] if axes is None else ["x", "axes"]
    inits = {} if axes is None else {"axes": np.array(axes, np.int64)}
    model = make_model([helper.make_node("ReduceSum", inputs, ["y"], keepdims=keepdims, noop_with_empty_axes=noop)],
                       [("x", elem, [2, 3, 4])], [("y", elem, None)], initializers=inits, opset=13)
    x = (np.random.default_rng(5).standard_normal((2, 3, 4)) * 30).astype(dtype)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    model = make_model(model.graph.node, [("x", elem, [2, 3, 4])], [("y", elem, list(expected.shape))],
                       initializers=inits, opset=13)
    got = onnx_attr.load(model, strip_final_activation=False).run({"x": x})[0].numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_reduce_mean_of_integers_as_onnxruntime(opset):
    """onnxruntime divides the integer sum by the count, truncating; torch's mean refuses integers."""
    from onnx import TensorProto

    x = np.array([[1, 2, 4], [-3, -3, -4]], np.int32)
    inputs = ["x"] if opset < 18 else ["x", "axes"]
    attrs = {"axes": [1]} if opset < 18 else {}
    model = make_model([helper.make_node("ReduceMean", inputs, ["y"], keepdims=0, **attrs)],
                       [("x", TensorProto.INT32, [2, 3])], [("y", TensorProto.INT32, [2])],
                       initializers={} if opset < 18 else {"axes": np.array([1], np.int64)}, opset=opset)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnx_attr.load(model, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
