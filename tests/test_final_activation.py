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


SOFTMAX_RNG = np.random.default_rng(1818)


# --------------------------------------------------------------------------- a softmax written out

def written_softmax_model(with_max: bool = True, classes: int = 6, features: int = 5):
    """magika 0.6 (jax2tf, tf2onnx): the head's softmax is spelled out as Div(e, ReduceSum(e)),
    e = Exp(z - max(z)), the row max through ReduceMax, Max with a floor, Reshape and Expand."""
    weight = (3.0 * SOFTMAX_RNG.standard_normal((features, classes))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"])]
    shifted = "z"
    if with_max:
        nodes += [helper.make_node("ReduceMax", ["z"], ["peak"], axes=[1], keepdims=0),
                  helper.make_node("Max", ["floor", "peak"], ["peak_f"]),
                  helper.make_node("Reshape", ["peak_f", "col"], ["peak_c"]),
                  helper.make_node("Shape", ["z"], ["z_shape"]),
                  helper.make_node("Expand", ["peak_c", "z_shape"], ["peak_wide"]),
                  helper.make_node("Sub", ["z", "peak_wide"], ["s"])]
        shifted = "s"
    nodes += [helper.make_node("Exp", [shifted], ["e"]),
              helper.make_node("ReduceSum", ["e", "axis"], ["total"], keepdims=0),
              helper.make_node("Reshape", ["total", "col"], ["total_c"]),
              helper.make_node("Div", ["e", "total_c"], ["probs"])]
    inits = {"w": weight, "floor": np.array(-3.4e38, np.float32), "col": np.array([-1, 1], np.int64),
             "axis": np.array([1], np.int64)}
    proto = make_model(nodes, [("x", FLOAT, ["N", features])], [("probs", FLOAT, ["N", classes])],
                       initializers=inits, opset=15)
    return proto, weight


@pytest.mark.parametrize("with_max", [True, False], ids=["z-max(z)", "z"])
def test_a_written_out_softmax_is_stripped_to_its_logits(with_max):
    proto, weight = written_softmax_model(with_max)
    x = (10 * SOFTMAX_RNG.standard_normal((3, 5))).astype(np.float32)  # logits in the tens: a saturated head
    (probs,) = ort_run(proto, {"x": x})
    kept = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(kept.run({"x": x})[0].numpy(), probs, rtol=1e-5, atol=1e-6)

    model = onnx_attr.load(proto)
    found = model.outputs[0].final_activation
    assert found is not None and found.stripped and found.op_type == "Softmax"
    logits = model.run({"x": x})[0].numpy().astype(np.float64)
    np.testing.assert_allclose(logits, x.astype(np.float64) @ weight.astype(np.float64), rtol=1e-5, atol=1e-4)
    assert model.verify({"x": x}).passed  # the stripped graph against onnxruntime on itself

    reference = np.zeros_like(x)
    target = int(np.argmax(probs[0]))
    attributions, delta = onnx_attr.DeepLift(model).attribute(x, baselines=reference, target=target,
                                                               return_convergence_delta=True)
    change = logits[:, target] - (reference @ weight)[:, target]
    np.testing.assert_allclose(np.asarray(attributions, np.float64).sum(axis=1), change, rtol=1e-5, atol=1e-4)
    assert float(np.abs(np.asarray(delta)).max()) <= 1e-4 * max(1.0, float(np.abs(change).max()))


def test_a_division_that_is_not_a_softmax_is_left_alone():
    """Div(Exp(a), ReduceSum(Exp(b))) with two different exponentials is not a softmax of anything."""
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("Neg", ["x"], ["nx"]),
             helper.make_node("Exp", ["nx"], ["e2"]),
             helper.make_node("ReduceSum", ["e2", "axis"], ["total"], keepdims=1),
             helper.make_node("Div", ["e", "total"], ["out"])]
    proto = make_model(nodes, [("x", FLOAT, ["N", 4])], [("out", FLOAT, ["N", 4])],
                       initializers={"axis": np.array([1], np.int64)}, opset=15)
    x = SOFTMAX_RNG.standard_normal((2, 4)).astype(np.float32)
    model = onnx_attr.load(proto)
    assert model.outputs[0].final_activation is None
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5)


def test_a_written_out_softmax_feeding_another_node_is_kept():
    proto, _ = written_softmax_model()
    proto.graph.node.append(helper.make_node("Identity", ["e"], ["e_out"]))
    proto.graph.output.append(helper.make_tensor_value_info("e_out", FLOAT, ["N", 6]))
    model = onnx_attr.load(proto)
    found = model.outputs[0].final_activation
    assert found is not None and not found.stripped
    x = SOFTMAX_RNG.standard_normal((2, 5)).astype(np.float32)
    for ours, theirs in zip(model.run({"x": x}), ort_run(proto, {"x": x})):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)


def test_a_log_space_softmax_is_stripped_to_its_joint_log_likelihoods():
    """skl2onnx's GaussianNB: probabilities = Exp(jll - ReduceLogSumExp(jll)). On breast-cancer features (values
    in the thousands) the joint log-likelihoods are about ±1e5 and the predicted class's probability moves by
    1e-5 from a zero baseline: float32 multipliers through the cancellation missed it by most of its size
    (relative delta 1e-3). Stripped, the log-likelihoods are explained, complete; the probabilities stay as
    scikit-learn and onnxruntime give them when the activation is kept."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.naive_bayes import GaussianNB

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    proto = to_onnx(GaussianNB().fit(x, y), x[:1], target_opset=17, options={"zipmap": False})
    model = onnx_attr.load(proto)
    (found,) = [o for o in model.outputs if o.final_activation is not None]
    assert found.final_activation.op_type == "Softmax" and found.final_activation.stripped
    dl = onnx_attr.DeepLift(model)
    _, delta = dl.attribute(x[:5], target=0, output=found.name, return_convergence_delta=True)
    assert dl.last_report["max_relative_delta"] < 1e-5
    kept = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(kept.run({"X": x[:5]})[1].numpy(), ort_run(proto, {"X": x[:5]})[1], rtol=1e-5, atol=1e-6)


def _quantized_head(kind: str):
    """A classifier whose probabilities leave quantized: Softmax -> QuantizeLinear -> DequantizeLinear
    (onnxruntime's QDQ format), or a QOperator QLinearMatMul -> QLinearSoftmax -> DequantizeLinear.
    Logits of tens, as a trained head gives, which a probability grid of 1/256 would clip to [0, 1]."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 3)) * 8).astype(np.float32)
    if kind == "qdq":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]),
                 helper.make_node("Softmax", ["z"], ["p"], axis=1, name="head"),
                 helper.make_node("QuantizeLinear", ["p", "ps", "pz"], ["pq"]),
                 helper.make_node("DequantizeLinear", ["pq", "ps", "pz"], ["y"])]
        inits = {"w": w, "ps": np.float32(1 / 256), "pz": np.uint8(0)}
        return make_model(nodes, [("x", FLOAT, ["N", 6])], [("y", FLOAT, ["N", 3])], inits), w
    wq = np.clip(np.round(w / 0.1), -127, 127).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "wq", "ws", "wz", "zs", "zz"], ["zq"]),
             helper.make_node("QLinearSoftmax", ["zq", "zs", "zz", "ps", "pz"], ["pq"], domain="com.microsoft",
                              axis=1, opset=13, name="head"),
             helper.make_node("DequantizeLinear", ["pq", "ps", "pz"], ["y"])]
    inits = {"xs": np.float32(0.05), "xz": np.uint8(128), "wq": wq, "ws": np.float32(0.1), "wz": np.int8(0),
             "zs": np.float32(0.5), "zz": np.uint8(128), "ps": np.float32(1 / 256), "pz": np.uint8(0)}
    model = make_model(nodes, [("x", FLOAT, ["N", 6])], [("y", FLOAT, ["N", 3])], inits,
                       domains=[("com.microsoft", 1)])
    return model, wq.astype(np.float32) * 0.1


@pytest.mark.parametrize("kind", ["qdq", "qoperator"])
def test_a_quantized_final_softmax_is_stripped_to_unclipped_logits(kind):
    model, w = _quantized_head(kind)
    x = (np.random.default_rng(6).standard_normal((5, 6)) * 2).astype(np.float32)
    imported = onnx_attr.load(model)
    final = imported.outputs[0].final_activation
    assert final is not None and final.op_type == "Softmax" and final.stripped and final.node_name == "head"
    assert "DequantizeLinear" in final.through
    # oracle: onnxruntime on the graph cut before its softmax (the float logits, or the quantized ones dequantized)
    cut = make_model(list(model.graph.node[:-3 if kind == "qdq" else -2]) + (
        [] if kind == "qdq" else [helper.make_node("DequantizeLinear", ["zq", "zs", "zz"], ["z"])]),
        [("x", FLOAT, ["N", 6])], [("z", FLOAT, ["N", 3])], [], domains=[("com.microsoft", 1)])
    cut.graph.initializer.extend(model.graph.initializer)
    (logits,) = ort_run(cut, {"x": x})
    assert np.abs(logits).max() > 5  # beyond the probabilities' [0, 1] grid, which the strip must not keep
    np.testing.assert_allclose(imported.run(x)[0].numpy(), logits, rtol=1e-5, atol=1e-5)
    assert imported.verify(x).passed
    if kind == "qdq":  # the float head: x @ w by hand
        np.testing.assert_allclose(logits, x @ w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("softmax", [True, False])
def test_a_quantized_output_is_attributed_as_the_floats_its_quantizer_rounds(softmax):
    """Qualcomm AI Hub's w8a8 exports end in a QuantizeLinear: uint8 scores out (sead's YAMNet
    `class_scores` uint8[1, 521]). No method could explain that staircase: DeepLift has no rule for a
    final QuantizeLinear, IG saw a zero gradient. The quantizer is stripped (and the Softmax before it):
    the floats it rounds come out, as onnxruntime computes them before it."""
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((6, 3)) * 6).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=1, name="head"))
    nodes.append(helper.make_node("QuantizeLinear", ["p" if softmax else "z", "s", "zp"], ["y"], name="out_q"))
    inits = {"w": w, "s": np.float32(1 / 256 if softmax else 0.25), "zp": np.uint8(0 if softmax else 128)}
    model = make_model(nodes, [("x", FLOAT, ["N", 6])], [("y", TensorProto.UINT8, ["N", 3])], inits)
    x = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    imported = onnx_attr.load(model)
    final = imported.outputs[0].final_activation
    assert final.stripped and final.op_type == ("Softmax" if softmax else "QuantizeLinear")
    assert imported.outputs[0].dtype == np.float32
    cut = make_model(nodes[:1], [("x", FLOAT, ["N", 6])], [("z", FLOAT, ["N", 3])], {"w": w})
    np.testing.assert_allclose(imported.run(x)[0].numpy(), ort_run(cut, {"x": x})[0], rtol=1e-5, atol=1e-4)
    assert imported.verify(x).passed
    attributions, delta = onnx_attr.DeepLift(imported).attribute(x, target=2, return_convergence_delta=True)
    change = ort_run(cut, {"x": x})[0][:, 2] - ort_run(cut, {"x": 0 * x})[0][:, 2]
    np.testing.assert_allclose(np.asarray(attributions).sum(1), change, rtol=1e-5, atol=1e-4)
    integrated = onnx_attr.IntegratedGradients(imported).attribute(x, target=2)  # linear: x·w exactly
    np.testing.assert_allclose(np.asarray(integrated), x * w[:, 2], rtol=1e-4, atol=1e-4)
    kept = onnx_attr.load(model, strip_final_activation=False)
    assert not kept.outputs[0].final_activation.stripped and kept.outputs[0].dtype == np.uint8


@pytest.mark.parametrize("other_use", [False, True])
def test_a_softmax_split_into_outputs_is_stripped_on_each(other_use):
    """MarbleNet's VAD ends Softmax -> Split into score_silence and score_active [N, T, 1]: the
    Softmax was left in place. Both parts are logits once it is stripped; a part that also feeds
    another node keeps it (that node expects probabilities)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]),
             helper.make_node("Softmax", ["z"], ["p"], axis=-1, name="head"),
             helper.make_node("Split", ["p", "parts"], ["silence", "active"], axis=-1)]
    outputs = [("silence", FLOAT, ["N", 5, 1]), ("active", FLOAT, ["N", 5, 1])]
    if other_use:
        nodes.append(helper.make_node("Neg", ["active"], ["other"]))
        outputs.append(("other", FLOAT, ["N", 5, 1]))
    w = (np.random.default_rng(9).standard_normal((6, 2)) * 5).astype(np.float32)
    model = make_model(nodes, [("x", FLOAT, ["N", 5, 6])], outputs, {"w": w, "parts": np.array([1, 1], np.int64)},
                       opset=13)
    x = np.random.default_rng(10).standard_normal((3, 5, 6)).astype(np.float32)
    imported = onnx_attr.load(model)
    finals = [o.final_activation for o in imported.outputs[:2]]
    assert all(f is not None and f.stripped != other_use and f.through == ("Split",) for f in finals)
    got = [t.numpy() for t in imported.run(x)]
    z = x.astype(np.float64) @ w  # by hand: the logits, split
    want = [z[..., :1], z[..., 1:]] if not other_use else ort_run(model, {"x": x})[:2]
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)
    assert imported.verify(x).passed
