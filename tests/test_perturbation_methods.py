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
