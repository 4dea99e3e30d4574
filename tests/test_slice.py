"""Slice is ours: ONNX's clamping at both ends, negative steps, axes given or not, constants or values
fed at run time, checked against onnxruntime; and no torch deprecation warning reaches the user
(onnx2torch indexed with a list)."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr

BIG = 2**63 - 1
CASES = [  # starts, ends, axes, steps on a [4, 5, 6] tensor
    ([1], [3], [0], None),
    ([0, 1], [BIG, -1], [1, 2], None),
    ([-1], [-BIG], [2], [-1]),  # the whole axis reversed, the way exporters write flip
    ([5], [1], [2], [-2]),
    ([-100], [-BIG], [1], [-1]),  # a start before the first element, stepping backward: element 0
    ([100], [0], [1], [-1]),  # a start past the end, stepping backward: from the last element
    ([2], [2], [0], [1]),  # empty
    ([-3, 0], [BIG, 4], [-1, -3], [2, 3]),
    ([1, 0, 4], [3, 5, 0], None, [1, 2, -1]),  # no axes: 0, 1, 2
]


def _graph(starts, ends, axes, steps, constant: bool):
    names = ["starts", "ends"] + (["axes"] if axes is not None else ([""] if steps is not None else []))
    names += ["steps"] if steps is not None else []
    values = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    arrays = {n: np.array(values[n], np.int64) for n in names if n}
    fed = [] if constant else [helper.make_tensor_value_info(n, TensorProto.INT64, [len(a)]) for n, a in arrays.items()]
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()] if constant else []
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x"] + names, ["y"], name="cut")], "slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5, 6])] + fed,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, ({} if constant else arrays)


@pytest.mark.parametrize("constant", [True, False], ids=["constants", "fed"])
@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_slice_matches_onnxruntime(case, constant):
    model, extra = _graph(*case, constant)
    x = (np.arange(120, dtype=np.float32).reshape(4, 5, 6) - 60) * 37.5
    feeds = {"x": x, **extra}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's list-index deprecation would fail here
        got = onnx_attr.load(model).run(feeds)[0]
    assert got.shape == want.shape and np.array_equal(got, want)


def test_slice_1_attributes_match_onnxruntime():
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x"], ["y"], starts=[-2, 1], ends=[BIG, 4], axes=[2, 0])], "slice1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 7
    x = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32) * 300
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(onnx_attr.load(model).run({"x": x})[0], want)


def test_a_reversing_slice_keeps_deeplift_complete():
    """A flip (negative step) between two nonlinearities: attributions land on the right elements."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Slice", ["r", "s", "e", "a", "st"], ["f"]),
             helper.make_node("Mul", ["f", "w"], ["m"]),
             helper.make_node("ReduceSum", ["m"], ["y"], keepdims=0, axes=[1])]
    w = np.arange(1, 9, dtype=np.float32).reshape(1, 8)
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("s", [-1]), ("e", [-BIG]), ("a", [1]), ("st", [-1]))] + [numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "flip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    x = np.array([[300.0, -2.0, 5.0, 40.0, -80.0, 1.0, 7.0, 250.0]], np.float32)
    imported = onnx_attr.load(model, strip_final_activation=False)
    attr, delta = onnx_attr.DeepLift(imported).attribute(x, target=None, return_convergence_delta=True)
    # y = sum_j relu(x)[7 - j] * w[j]: input i carries weight w[7 - i], by hand
    assert np.allclose(np.asarray(attr)[0], np.maximum(x[0], 0) * w[0, ::-1], rtol=1e-6)
    assert abs(float(np.asarray(delta).max())) < 1e-3
