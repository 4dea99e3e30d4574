"""Sequence ops (opset 11+) and Optional (15+), as scripted PyTorch exports and tf2onnx TensorArrays
write them: onnxruntime is the oracle; DeepLift goes through a list of tensors as through a concat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

INT64 = TensorProto.INT64
rng = np.random.default_rng(0)
A, B2 = rng.standard_normal((2, 3)).astype(np.float32) * 40, rng.standard_normal((2, 2)).astype(np.float32)

CASES = {
    "construct-concat": ([helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
                          helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=1)], {}),
    "construct-stack": ([helper.make_node("SequenceConstruct", ["a", "a"], ["s"]),
                         helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=-1, new_axis=1)], {}),
    "split-at-last": ([helper.make_node("SplitToSequence", ["a"], ["s"], axis=1, keepdims=0),
                       helper.make_node("SequenceAt", ["s", "minus_one"], ["y"])], {}),
    "split-by-2-length": ([helper.make_node("SplitToSequence", ["a", "two"], ["s"], axis=1),
                           helper.make_node("SequenceLength", ["s"], ["y"])], {}),
    "split-lengths-at": ([helper.make_node("SplitToSequence", ["a", "lengths"], ["s"], axis=1),
                          helper.make_node("SequenceAt", ["s", "zero"], ["y"])], {}),
    "insert-erase": ([helper.make_node("SequenceEmpty", [], ["e"], dtype=TensorProto.FLOAT),
                      helper.make_node("SequenceInsert", ["e", "a"], ["s1"]),
                      helper.make_node("SequenceInsert", ["s1", "a", "zero"], ["s2"]),
                      helper.make_node("SequenceInsert", ["s2", "a", "minus_one"], ["s3"]),
                      helper.make_node("SequenceErase", ["s3", "zero"], ["s4"]),
                      helper.make_node("ConcatFromSequence", ["s4"], ["y"], axis=0)], {}),
    "optional": ([helper.make_node("Optional", ["a"], ["o"]), helper.make_node("OptionalGetElement", ["o"], ["y"])], {}),
}
CONSTANTS = {"minus_one": np.array(-1, np.int64), "zero": np.array(0, np.int64), "two": np.array(2, np.int64),
             "lengths": np.array([1, 2], np.int64)}


def _model(nodes, opset=18):
    used = {i for n in nodes for i in n.input}
    inits = {k: v for k, v in CONSTANTS.items() if k in used}
    inputs = [("a", FLOAT, [2, 3])] + ([("b", FLOAT, [2, 2])] if "b" in used else [])
    feeds = {"a": A, **({"b": B2} if "b" in used else {})}
    probe = make_model(nodes, inputs, [("y", TensorProto.UNDEFINED, None)], initializers=inits, opset=opset)
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    if nodes[-1].op_type == "SequenceLength":
        probe.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", INT64, None))
    expected = ort_run(probe, feeds)[0]
    elem = INT64 if nodes[-1].op_type == "SequenceLength" else TensorProto.FLOAT
    proto = make_model(nodes, inputs, [("y", elem, list(expected.shape))], initializers=inits, opset=opset)
    return proto, feeds, expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_sequence_ops_as_onnxruntime(name):
    proto, feeds, expected = _model(CASES[name][0])
    got = onnx_attr.load(proto, strip_final_activation=False).run(feeds)[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_position_outside_the_sequence_is_a_clear_error():
    nodes = [helper.make_node("SplitToSequence", ["a"], ["s"], axis=1, keepdims=0),
             helper.make_node("SequenceAt", ["s", "five"], ["y"])]
    proto = make_model(nodes, [("a", FLOAT, [2, 3])], [("y", FLOAT, [2])], initializers={"five": np.array(5, np.int64)},
                       opset=18)
    with pytest.raises(onnx_attr.ForwardError, match="outside a sequence of 3"):
        onnx_attr.load(proto, strip_final_activation=False).run({"a": A})


def test_loop_building_a_sequence_and_deeplift_through_it():
    """A Loop whose state is a sequence (a TensorArray written step by step), then concatenated;
    completeness at inputs in the tens, a reference far away."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["t", "fi"], ["scaled"]),
         helper.make_node("Tanh", ["scaled"], ["step"]),
         helper.make_node("SequenceInsert", ["seq", "step"], ["seq2"]),
         helper.make_node("Identity", ["cond"], ["cond2"])],
        "body", [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond2", TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("seq2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Mul", ["a", "small"], ["t"]),
             helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("Loop", ["trips", "", "empty"], ["built"], body=body),
             helper.make_node("ConcatFromSequence", ["built"], ["cat"], axis=1),
             helper.make_node("MatMul", ["cat", "head"], ["y"])]
    inits = {"small": np.array(0.05, np.float32), "trips": np.array(3, np.int64),
             "head": rng.standard_normal((9, 4)).astype(np.float32)}
    proto = make_model(nodes, [("a", FLOAT, [2, 3])], [("y", FLOAT, [2, 4])], initializers=inits, opset=18)
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run({"a": A})[0].numpy(), ort_run(proto, {"a": A})[0], rtol=1e-5, atol=1e-5)
    x, x0 = torch.from_numpy(A), torch.from_numpy(-A[::-1].copy())
    _, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=2, return_convergence_delta=True)
    change = (model(x)[:, 2] - model(x0)[:, 2]).abs().max()
    assert float(delta.abs().max()) <= 1e-5 * max(1.0, float(change))
