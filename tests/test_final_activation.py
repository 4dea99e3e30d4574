"""The final Softmax/LogSoftmax/Sigmoid is found through pass-through ops and stripped to logits."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr

from conftest import FLOAT, make_model, ort_run

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)


def _head(activation: str, tail: list, extra_outputs=()):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm"),
             helper.make_node(activation, ["logits"], ["p0"], name="head", **({"axis": 1} if "Softmax" in activation else {}))]
    last = "p0"
    for i, op in enumerate(tail):
        kwargs = {"to": TensorProto.FLOAT} if op == "Cast" else {}
        inputs = [last, "shape"] if op == "Reshape" else [last]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"tail{i}", **kwargs))
        last = f"t{i}"
    outputs = [(last, FLOAT, [4, 3]), *extra_outputs]
    inits = {"w": np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32), "shape": np.array([4, 3])}
    return make_model(nodes, [("x", FLOAT, [4, 6])], outputs, inits)


@pytest.mark.parametrize("activation", ["Softmax", "LogSoftmax", "Sigmoid"])
@pytest.mark.parametrize("tail", [[], ["Identity"], ["Reshape", "Cast"], ["Flatten", "Dropout"]])
def test_activation_found_through_tail_and_stripped_to_logits(activation, tail):
    model = _head(activation, tail)
    imported = onnx_attr.load(model)
    final = imported.outputs[0].final_activation
    assert final is not None and final.op_type == activation and final.stripped and final.node_name == "head"
    assert len(final.through) == len(tail)
    logits = ort_run(model, {"x": X})  # oracle: the same graph's pre-activation tensor
    expected = X @ np.frombuffer(model.graph.initializer[0].raw_data, np.float32).reshape(6, 3)
    np.testing.assert_allclose(imported.run(X)[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert imported.verify(X).passed  # onnxruntime on the stripped graph agrees
    assert not np.allclose(logits[0], expected)  # and the unstripped model did end in the activation


def test_keep_final_activation_reports_it_kept():
    model = _head("Softmax", [])
    imported = onnx_attr.load(model, strip_final_activation=False)
    final = imported.outputs[0].final_activation
    assert final is not None and not final.stripped and "caller" in final.reason
    np.testing.assert_allclose(imported.run(X)[0].numpy(), ort_run(model, {"x": X})[0], rtol=1e-5, atol=1e-6)


def test_activation_feeding_other_nodes_is_not_stripped():
    model = _head("Softmax", [])
    model.graph.node.append(helper.make_node("Neg", ["p0"], ["other"], name="other_use"))
    model.graph.output.append(helper.make_tensor_value_info("other", FLOAT, [4, 3]))
    imported = onnx_attr.load(model)
    final = imported.outputs[0].final_activation
    assert not final.stripped and "other nodes" in final.reason
    for got, want in zip(imported.run(X), ort_run(model, {"x": X})):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_no_activation_means_none_reported():
    model = _head("Softmax", [])
    model.graph.node[1].op_type = "Relu"
    del model.graph.node[1].attribute[:]
    assert onnx_attr.load(model).outputs[0].final_activation is None
