"""Unrolling a Loop for DeepLift renames each copy of its body in one pass (a body repeated k times
costs k passes, not k x names x nodes), all names at once: an outer name that is also one of the
body's own input names is not renamed twice. Oracle: onnxruntime on the original graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.importing.normalize import _prefixed_branch, rename_all

from conftest import FLOAT, INT64, make_model, ort_run


def swapping_loop():
    """Carried (a, b) <- (b + tanh(a), tanh(a)), started from outer tensors named `b` and `c`: the
    outer `b` feeds the body's `a`, while the body has its own input `b`."""
    body = helper.make_graph(
        [helper.make_node("Tanh", ["a"], ["ta"]), helper.make_node("Add", ["b", "ta"], ["s"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a", FLOAT, None), helper.make_tensor_value_info("b", FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("s", FLOAT, None),
         helper.make_tensor_value_info("ta", FLOAT, None)])
    nodes = [helper.make_node("Mul", ["x", "one"], ["b"]), helper.make_node("Mul", ["x", "half"], ["c"]),
             helper.make_node("Loop", ["steps", "go", "b", "c"], ["fa", "fb"], body=body, name="swap"),
             helper.make_node("Add", ["fa", "fb"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", 3]), ("steps", INT64, [])], [("y", FLOAT, ["n", 3])],
                      initializers={"one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32),
                                    "go": np.array(True)})


@pytest.mark.parametrize("steps", [1, 4])
def test_an_outer_name_equal_to_a_body_input_is_fed_once(steps):
    proto = swapping_loop()
    model = onnx_attr.load(proto, strip_final_activation=False)
    rng = np.random.default_rng(0)
    x = (2 * rng.standard_normal((2, 3))).astype(np.float32)
    feeds = {"x": x, "steps": np.array(steps, np.int64)}
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(x, target=1, additional_forward_args={"steps": feeds["steps"]},
                                       return_convergence_delta=True)
    unrolled = dl.engine.model
    assert not any(n.op_type == "Loop" for n in unrolled.onnx_model.graph.node)
    np.testing.assert_allclose(unrolled.run(feeds)[0].numpy(), ort_run(proto, feeds)[0], rtol=1e-6, atol=1e-6)
    change = ort_run(proto, feeds)[0][:, 1] - ort_run(proto, {**feeds, "x": 0 * x})[0][:, 1]
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-4, atol=1e-6)


def test_rename_all_renames_together():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g", [], [])
    graph.output.extend([helper.make_tensor_value_info("a", FLOAT, None)])
    rename_all(graph, {"a": "b", "b": "c"})
    assert list(graph.node[0].input) == ["b", "c"] and graph.output[0].name == "b"


def test_a_prefixed_copy_keeps_a_local_that_already_has_the_prefix_apart():
    body = helper.make_graph([helper.make_node("Neg", ["x"], ["p/y"]), helper.make_node("Abs", ["x"], ["y"]),
                              helper.make_node("Add", ["p/y", "y"], ["z"])], "body",
                             [helper.make_tensor_value_info("x", FLOAT, None)],
                             [helper.make_tensor_value_info("z", FLOAT, None)])
    copy = _prefixed_branch(body, "p/", set())
    assert [list(n.output) for n in copy.node] == [["p/p/y"], ["p/y"], ["p/z"]]
    assert list(copy.node[2].input) == ["p/p/y", "p/y"] and copy.output[0].name == "p/z"
