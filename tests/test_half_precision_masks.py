"""A mask target over many output values on a graph that computes in float16.

The backward's seed is the mask: gradients pooled over it (a GlobalAveragePool's, a squeeze-and-
excitation gate's) reach Σ mask · activation, past float16's 65504 on a 64×64 map of unnormalised
pixels. ukis-csmask's cloud-mask U-Net (float16 weights and Casts, 32 such gates) came back with NaN
attributions for its default `segment` target. Oracles: onnxruntime's f(x) - f(0) (completeness),
the same call with the mask scaled down by hand.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model


def gated_half_model():
    """x [N, 1, 64, 64] -> float16 -> h · mean(h) -> float32 -> [N, 2, 64, 64] (y, -y)."""
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("GlobalAveragePool", ["h"], ["g"]),
             helper.make_node("Mul", ["h", "g"], ["y16"]),
             helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Neg", ["y"], ["n"]),
             helper.make_node("Concat", ["y", "n"], ["out"], axis=1)]
    return make_model(nodes, [("x", FLOAT, ["N", 1, 64, 64])], [("out", FLOAT, ["N", 2, 64, 64])])


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_a_large_mask_on_a_float16_graph_gives_finite_complete_attributions(method):
    proto = gated_half_model()
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (np.random.default_rng(0).uniform(20, 40, size=(1, 1, 64, 64))).astype(np.float32)
    mask = torch.zeros(2, 64, 64)
    mask[0] = 1.0  # channel 0 over the whole map: the seed of the gate's gradient sums 4096 values
    explainer = getattr(onnx_attr, method)(model)
    attributions, delta = explainer.attribute(x, target=onnx_attr.Target(weights=mask), return_convergence_delta=True)
    a = np.asarray(attributions, np.float64)
    assert np.isfinite(a).all()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    change = float(session.run(None, {"x": x})[0][0, 0].astype(np.float64).sum())  # f(0) = 0
    tolerance = 2e-3 if method == "DeepLift" else 2e-2  # float16's rounding over 4096 values; IG's steps
    assert abs(a.sum() - change) <= tolerance * abs(change)
    small = np.asarray(explainer.attribute(x, target=onnx_attr.Target(weights=mask / 64)), np.float64)
    np.testing.assert_allclose(a, small * 64, rtol=2e-2, atol=1e-3 * np.abs(a).max())
