"""OneHot against onnxruntime: the node suite's cases and harder ones (negative and out-of-range
indices, float indices and depth, every axis, depth as a tensor computed in the graph)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.deeplift.opkinds import op_kind


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _suite_cases():
    from onnx.backend.test.case.node import collect_testcases

    return [c for c in collect_testcases() if c.name.startswith("test_onehot")]


@pytest.mark.parametrize("case", _suite_cases(), ids=lambda c: c.name)
def test_the_node_suite_cases_match_onnxruntime_and_the_expected_outputs(case):
    inputs, expected = case.data_sets[0]
    feeds = {i.name: np.asarray(a) for i, a in zip(case.model.graph.input, inputs)}
    if "bfloat16" in case.name:  # onnxruntime's Python API takes no bfloat16 arrays: the suite's output is the oracle
        reference = [np.asarray(e) for e in expected]
    else:
        reference = _ort(case.model, feeds)
        np.testing.assert_array_equal(reference[0], np.asarray(expected[0]))
    ours = onnx_attr.load(case.model, strip_final_activation=False).run(feeds)[0]
    np.testing.assert_array_equal(ours.float().numpy(), np.asarray(reference[0]).astype(np.float32))


def _one_hot_model(opset: int, axis: int, index_type: int, depth_type: int, depth_shape: list):
    graph = helper.make_graph(
        [helper.make_node("OneHot", ["i", "d", "v"], ["y"], axis=axis)], "g",
        [helper.make_tensor_value_info("i", index_type, [2, 3]), helper.make_tensor_value_info("d", depth_type, depth_shape),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("axis", [-3, -1, 0, 2])
@pytest.mark.parametrize("index_type,depth_type,depth_shape", [
    (TensorProto.INT64, TensorProto.INT64, []), (TensorProto.INT32, TensorProto.FLOAT, [1]),
    (TensorProto.FLOAT, TensorProto.FLOAT, []), (TensorProto.INT64, TensorProto.INT32, [1])])
def test_negative_out_of_range_and_float_indices_on_every_axis_match_onnxruntime(opset, axis, index_type, depth_type,
                                                                                  depth_shape):
    model = _one_hot_model(opset, axis, index_type, depth_type, depth_shape)
    numpy_type = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.FLOAT: np.float32}
    index_np, depth_np = numpy_type[index_type], numpy_type[depth_type]
    indices = np.array([[0, -1, 3], [4, -5, 2]]).astype(index_np)
    if index_type == TensorProto.FLOAT:
        indices = np.array([[0.9, -1.7, 3.2], [-0.5, -4.0, 2.99]], np.float32)  # truncated toward zero
    feeds = {"i": indices, "d": np.full(depth_shape, 4.7 if depth_type == TensorProto.FLOAT else 4, depth_np),
             "v": np.array([-250.0, 255.0], np.float32)}
    expected = _ort(model, feeds)[0]
    ours = onnx_attr.load(model).run(feeds)[0].numpy()
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)


def test_depth_computed_in_the_graph_and_the_budget():
    """depth = Size(x): a tensor known only at run time; the element budget still sees it first."""
    graph = helper.make_graph(
        [helper.make_node("Size", ["x"], ["d"]), helper.make_node("OneHot", ["i", "d", "v"], ["y"], axis=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]), helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor("v", TensorProto.FLOAT, [2], [0.0, 1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    feeds = {"x": np.ones(5, np.float32), "i": np.array([4, -1, 7])}
    np.testing.assert_array_equal(onnx_attr.load(model).run(feeds)[0].numpy(), _ort(model, feeds)[0])
    small = onnx_attr.load(model, budget=onnx_attr.Budget(max_elements=1000))
    with pytest.raises(onnx_attr.BudgetError, match="max_elements"):
        small.run({"x": np.ones(400, np.float32), "i": np.array([4, -1, 7])})


def test_a_non_positive_depth_is_a_clear_error():
    model = _one_hot_model(11, -1, TensorProto.INT64, TensorProto.INT64, [])
    with pytest.raises(onnx_attr.OnnxAttrError, match="depth must be positive"):
        onnx_attr.load(model).run({"i": np.zeros((2, 3), np.int64), "d": np.array(0), "v": np.array([0, 1], np.float32)})


def test_one_hot_kind_is_linear_in_its_values_and_structural_otherwise():
    assert op_kind("OneHot", [True, False, False]) == "structural"
    assert op_kind("OneHot", [False, False, True]) == "linear"
