"""DeepLift through p-norms (rules/lp.py): LpNormalization, GlobalLpPool, LpPool.

Oracles: onnxruntime's outputs at the input and at the baseline (completeness per target, at
magnitudes in the hundreds, with zero vectors and all-zero windows); hand-computed attributions for a
normalisation against the zero vector (y_j = x_j / ‖x‖ moves with x_j alone).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run


def _one(node, shape_in, shape_out):
    return make_model([node], [("x", FLOAT, shape_in)], [("y", FLOAT, shape_out)], opset=18)


def _complete(proto, x, x0, targets, tolerance=1e-5):
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert model.verify(x).passed
    y, y0 = ort_run(proto, {"x": x})[0], ort_run(proto, {"x": np.broadcast_to(x0, x.shape).copy()})[0]
    for target in targets:
        got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), torch.from_numpy(x0), target=target,
                                                         return_convergence_delta=True)
        assert np.isfinite(got.numpy()).all()
        change = (y - y0)[(slice(None), *target)]
        np.testing.assert_allclose(got.numpy().reshape(len(x), -1).sum(1), change, rtol=1e-5,
                                   atol=tolerance * max(1.0, np.abs(y).max()))


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_against_the_zero_vector_moves_each_output_with_its_own_input(p):
    """From x0 = 0 (y0 = 0 by ONNX's convention) each y_j = x_j / ‖x‖_p: its attribution is x_j/‖x‖ on
    input j and 0 elsewhere, by hand; a zero row stays 0, finite."""
    proto = _one(helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=p), ["n", 4], ["n", 4])
    model = onnx_attr.load(proto)
    x = np.array([[300.0, -400.0, 0.0, 1200.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    norm = np.linalg.norm(x[0], ord=p)
    for j in range(4):
        got = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), torch.zeros(1, 4), target=j).numpy()
        expected = np.zeros_like(x)
        expected[0, j] = x[0, j] / norm
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_between_two_points_is_complete(p):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 6)) * 200).astype(np.float32)
    x0 = (rng.standard_normal((1, 5, 6)) * 50).astype(np.float32)
    x[2, :, 1] = 0  # a zero vector at the input only
    proto = _one(helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=p), ["n", 5, 6], ["n", 5, 6])
    _complete(proto, x, x0, [(0, 0), (3, 1), (2, 5)])


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool_is_complete_with_zero_channels(p):
    """Unnormalised pixels; one channel all zero at both points (its root's slope at 0 is infinite)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (2, 3, 5, 5)).astype(np.float32)
    x[:, 2] = 0
    proto = _one(helper.make_node("GlobalLpPool", ["x"], ["y"], p=p), ["n", 3, 5, 5], ["n", 3, 1, 1])
    _complete(proto, x, np.zeros((1, 3, 5, 5), np.float32), [(0, 0, 0), (1, 0, 0), (2, 0, 0)])


def test_lp_pool_with_pads_and_strides_is_complete():
    rng = np.random.default_rng(2)
    x = rng.uniform(-100, 100, (2, 2, 7, 7)).astype(np.float32)
    x[:, :, :3, :3] = 0  # windows of zeros at both points
    node = helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], p=2)
    proto = _one(node, ["n", 2, 7, 7], ["n", 2, 4, 4])
    _complete(proto, x, np.zeros((1, 2, 7, 7), np.float32), [(0, 0, 0), (1, 2, 3), (0, 3, 3)])
