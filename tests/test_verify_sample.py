"""`verify` without inputs on a model with a free height or width: the random sample grows its free
non-batch dims until both runtimes can run it (a text recogniser [N, 3, 48, W] cannot at W = 2)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.errors import ForwardError, ReferenceRuntimeError


def _recogniser(width="W"):
    """[N, 1, 8, W] -> Conv 3x5 (no padding) -> Relu -> MaxPool 2x4 -> [N, 4, 3, (W - 4) / 4]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 4], strides=[2, 4])]
    graph = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, "Wo"])],
                              [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 5)).astype(np.float32), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_free_width_too_small_at_two_is_sampled_larger():
    model = onnx_attr.load(_recogniser(), strip_final_activation=False)
    with pytest.raises((ForwardError, ReferenceRuntimeError)):  # what the sample of old met: W = 2
        model.verify(np.random.default_rng(0).standard_normal((2, 1, 8, 2)).astype(np.float32))
    report = model.verify()
    assert report.passed and "free non-batch dims 32" in report.inputs
    assert report.outputs[0].shape == [2, 4, 3, 7]  # the batch stays at 2, W = 32


def test_a_model_with_fixed_dims_keeps_its_error():
    """Nothing to grow: the error is the model's and comes back at once."""
    model = onnx_attr.load(_recogniser(width=2), strip_final_activation=False)
    with pytest.raises((ForwardError, ReferenceRuntimeError)):
        model.verify()


def test_a_batch_symbol_that_runs_only_at_one_is_sampled_at_one():
    """speechmos's AECMOS declares [batch_size, 3, frames, 160] but its GRU state h0 [4, 1, 96]
    fixes the batch at 1; here a Reshape to [1, 3] does the same. Batch 2 runs in neither runtime,
    so the sample is retried at batch 1 (and says so); a model that runs at 2 still gets 2."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Reshape", ["x", "one_row"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.array([1, 3], np.int64), "one_row"),
                               numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w")])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                           strip_final_activation=False)
    report = model.verify()
    assert report.passed and "batch 1" in report.inputs and report.outputs[0].shape == [1, 2]
    assert "batch 1" not in onnx_attr.load(_recogniser(), strip_final_activation=False).verify().inputs
