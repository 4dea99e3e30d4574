"""A float16 model's completeness is judged at float16's rounding: its outputs are known to steps of
~1e-3 of their size, so a delta of a few such steps is rounding, not a broken rule (a CNN tagger
shipped in float16, logits near 120, deltas of 0.05-0.09, was warned about at float32's precision)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnx_attr


def _half_mlp():
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(48, 64)) * 0.6).astype(np.float16)
    w2 = (rng.normal(size=(64, 10)) * 0.6).astype(np.float16)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None, 10])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_float16_models_delta_is_judged_at_float16_rounding():
    model = onnx_attr.load(_half_mlp())
    x = (np.random.default_rng(1).normal(size=(6, 48)) * 4).astype(np.float16)
    logits = model.run(x)[0].numpy().astype(np.float64)
    assert np.abs(logits).max() > 50  # logits in the tens to hundreds, as the shipped tagger's
    target = logits.argmax(1).tolist()
    method = onnx_attr.DeepLift(model)
    _, delta = method.attribute(x, target=target, return_convergence_delta=True)
    delta = np.abs(delta.numpy().astype(np.float64))
    # the independent bound: a few float16 steps of the larger output (eps16 = 2^-10)
    assert delta.max() <= 8 * 2.0 ** -10 * np.abs(logits).max()
    assert delta.max() > 1e-4 * np.abs(logits).max() / 100  # float16 arithmetic really is coarse here
    assert method.last_report["max_relative_delta"] <= 1e-4
    assert not any("convergence delta" in w for w in method.last_report["warnings"])


def test_a_float32_model_computing_in_float16_is_judged_at_float16():
    """ukis-csmask: float32 in and out, its 655 weights float16, Casts to float16 after the input and
    back before the output. Its deltas are float16 rounding (2.6e-3 of the change on its U-Net), not
    a rule's error; judged at float32 they were warned about. A float32 graph stays judged at float32."""
    from onnx import TensorProto, helper, numpy_helper

    import onnx_attr
    from onnx_attr.methods.deeplift import rounded_in

    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((64, 64)) * 0.5).astype(np.float16)
    w2 = (rng.standard_normal((64, 8)) * 0.5).astype(np.float16)
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["h", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["b"]), helper.make_node("Cast", ["b"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "half_inside", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = onnx_attr.load(proto)
    assert rounded_in(model, 0) == "float16"
    x = (rng.standard_normal((6, 64)) * 3).astype(np.float32)
    dl = onnx_attr.DeepLift(model)
    dl.attribute(x, target=2, return_convergence_delta=True)
    assert dl.last_report["max_relative_delta"] <= 1e-4 and not dl.last_report["warnings"]
    plain = onnx_attr.load(helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "f32", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w2.astype(np.float32).repeat(8, 0), "w")]), opset_imports=[helper.make_opsetid("", 17)]))
    assert rounded_in(plain, 0) == "float32"
