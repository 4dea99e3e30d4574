"""FeatureAblation and Occlusion, on the imported module and on onnxruntime, against Captum."""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import onnx_attr

from exporting import to_onnx


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).eval()
    return model, onnx_attr.load(to_onnx(model, torch.randn(2, 2, 6, 6)))


X = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(1))
TARGET = [0, 3, 1]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_feature_ablation_equals_captum(pair, backend):
    model, imported = pair
    ablation = onnx_attr.FeatureAblation(imported, backend=backend)
    ours = ablation.attribute(X, baselines=0.5, target=TARGET, perturbations_per_eval=7)
    theirs = CaptumFeatureAblation(model).attribute(X, baselines=0.5, target=TARGET)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    groups = torch.arange(36).reshape(1, 1, 6, 6).expand(1, 2, 6, 6) // 9  # 4 quadrant-ish groups per channel
    ours = ablation.attribute(X, target=TARGET, feature_mask=groups)
    theirs = CaptumFeatureAblation(model).attribute(X, target=TARGET, feature_mask=groups)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("window,strides", [((1, 3, 3), (1, 2, 2)), ((2, 2, 4), (1, 1, 3))])
def test_occlusion_equals_captum(pair, backend, window, strides):
    model, imported = pair
    ours = onnx_attr.Occlusion(imported, backend=backend).attribute(X, window, strides=strides, target=TARGET,
                                                                    perturbations_per_eval=5)
    theirs = CaptumOcclusion(model).attribute(X, sliding_window_shapes=window, strides=strides, target=TARGET)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_per_element_ablation_of_an_image_is_linear_in_its_size():
    """No feature mask: one mask per element, made when its forward comes (an identity over a
    3 x 224 x 224 image was 22 GB before a single forward ran), and each drop credited to its own
    element. Oracle: a linear model, whose drop at element k is w_k * (x_k - b_k) by hand."""
    import numpy as np
    from onnx import helper

    from conftest import FLOAT, make_model
    from onnx_attr.methods.perturbation import ElementMasks

    huge = ElementMasks((3, 224, 224))
    assert len(huge) == 3 * 224 * 224 and huge[-1].reshape(-1)[-1] and int(huge[5].sum()) == 1
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 32 * 32, 2)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3, 32, 32])], [("y", FLOAT, ["n", 2])],
                                      {"w": w}))
    x = (rng.random((2, 3, 32, 32)) * 255).astype(np.float32)  # unnormalised pixels
    b = (rng.random((1, 3, 32, 32)) * 255).astype(np.float32)
    got = onnx_attr.FeatureAblation(model).attribute(torch.from_numpy(x), torch.from_numpy(b), target=1,
                                                     perturbations_per_eval=512)
    want = w[:, 1].reshape(1, 3, 32, 32).astype(np.float64) * (x - b)
    assert got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
