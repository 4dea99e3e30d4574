"""PRelu's slope broadcasts the numpy way (aligned to X's last axes), as onnxruntime computes it;
found by the random-graph campaign (tests/walk_random_graphs.py, seed 31208): a [2, 1] slope on
[1, 2, 2, 4] was taken per channel. DeepLift through it stays complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run


@pytest.mark.parametrize("x_shape,slope_shape", [
    ((1, 2, 2, 4), (2, 1)),  # aligned to axes 2, 3: per row, not per channel
    ((2, 3, 2, 3), (3,)),  # the last axis, though X has 3 channels too
    ((2, 3, 5, 5), (3, 1, 1)),  # per channel (torch's export)
    ((2, 3, 4), (1,)),  # one slope
    ((2, 3, 2, 3), (2, 3, 2, 3)),  # elementwise
])
def test_prelu_broadcasts_as_onnxruntime(x_shape, slope_shape):
    rng = np.random.default_rng(3)
    slope = rng.uniform(0.05, 0.9, slope_shape).astype(np.float32)
    proto = make_model([helper.make_node("PRelu", ["x", "slope"], ["y"])], [("x", FLOAT, list(x_shape))],
                       [("y", FLOAT, list(x_shape))], initializers={"slope": slope}, opset=16)
    x = (rng.standard_normal(x_shape) * 50).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_array_equal(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0])
    x0 = torch.from_numpy((rng.standard_normal(x_shape) * 50).astype(np.float32))
    target = (0,) + (0,) * (len(x_shape) - 1)
    _, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), x0, target=target[1:] or None,
                                                   return_convergence_delta=True)
    assert float(delta.abs().max()) <= 1e-4 * 50


def test_prelu_before_opset_7_is_per_channel():
    """PRelu-6 (PyTorch's old exports, ONNX's backend suite test_PReLU_1d_multiparam) reads a 1-D
    slope of X's channel count per channel, where PRelu-7 would align it to the last axis; onnxruntime
    has no PRelu-6 kernel: numpy is the oracle."""
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    proto = make_model([helper.make_node("PRelu", ["x", "slope"], ["y"])], [("x", FLOAT, [2, 3, 4])],
                       [("y", FLOAT, [2, 3, 4])], initializers={"slope": slope}, opset=6)
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32) * 20
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, np.where(x >= 0, x, slope[None, :, None] * x), rtol=1e-6)
