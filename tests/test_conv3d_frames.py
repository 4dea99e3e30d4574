"""A Conv over [N, C, D, H, W] with a kernel one deep runs as conv2d over the frames (torch's CPU
conv3d took 17 s a call on RivaGAN's 256x256 frames, conv2d 0.16 s). Oracles: torch's own conv3d in float64, and
onnxruntime on the ONNX Conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

import onnx_attr
from onnx_attr.importing.converters.convolution import Conv3d, conv3d

from conftest import FLOAT, make_model, ort_run


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, groups", [
    ((2, 3, 4, 9, 10), (6, 3, 1, 3, 3), (2, 1, 2), (0, 1, 2), (1, 2, 1), 1),
    ((1, 4, 1, 8, 8), (4, 2, 1, 3, 3), 1, 0, 1, 2),
    ((1, 2, 3, 5, 5), (3, 2, 1, 3, 3), (2, 1, 1), (1, 0, 1), 1, 1),  # zero frames padded, every other frame
    ((1, 2, 3, 5, 5), (3, 2, 2, 3, 3), 1, 1, 1, 1),  # two deep: conv3d itself
])
def test_frames_fold_equals_conv3d_and_its_gradient(shape, kernel, stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(*kernel, dtype=torch.float64), torch.randn(kernel[0], dtype=torch.float64)
    ours = conv3d(x, w, b, stride, padding, dilation, groups)
    theirs = F.conv3d(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(-1, 1, ours.numel(), dtype=torch.float64).reshape(ours.shape)
    grads = [torch.autograd.grad((y * weights).sum(), x)[0] for y in (ours, theirs)]
    torch.testing.assert_close(*grads, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads", [[0, 2, 2, 0, 2, 2], [0, 1, 3, 0, 3, 1], [1, 2, 2, 1, 2, 2]])
def test_an_onnx_conv_over_frames_matches_onnxruntime_and_deeplift_is_complete(pads):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 1, 5, 5)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 5, 5], pads=pads),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[2, 3, 4], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 2, 16, 16])], [("y", FLOAT, [1, 8])], initializers={"w": w},
                       opset=13)
    x = (rng.random((1, 3, 2, 16, 16)) * 255).astype(np.float32)  # unnormalised pixels
    model = onnx_attr.load(proto)
    assert any(isinstance(m, Conv3d) for m in model.module.modules())  # the frame-wise path ran
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-4)
    _, delta = onnx_attr.DeepLift(model).attribute({"x": x}, target=3, return_convergence_delta=True)
    assert abs(float(delta[0])) <= 1e-5 * abs(float(model.run({"x": x})[0][0, 3])) + 1e-6
