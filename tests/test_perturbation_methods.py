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


@pytest.mark.parametrize("mask", ["elements", "blocks", "groups"])
def test_features_already_at_their_baseline_run_no_pass_and_get_0(pair, mask, monkeypatch):
    """A digit's black background under a zero baseline (and padding ids under id 0): ablating it replaces each
    value by itself. Those features get exactly 0 and no forward pass; the rest are Captum's."""
    model, imported = pair
    x = X * 80  # unnormalised
    x[:, :, :, :3] = 0  # the left half at the baseline in every example
    x[1, 0, 0, 0] = 0.0
    x[2, 1, 5, 0] = 7.0  # one background element that moves in one example only
    kwargs = {"elements": {}, "blocks": {"feature_mask": None},
              "groups": {"feature_mask": torch.arange(36).reshape(1, 1, 6, 6).expand(1, 2, 6, 6) // 3}}[mask]
    ablation = onnx_attr.FeatureAblation(imported, max_features=18) if mask == "blocks" else \
        onnx_attr.FeatureAblation(imported)
    passes = []
    value = ablation._value
    monkeypatch.setattr(ablation, "_value", lambda tensors, *a: passes.append(len(tensors[0])) or value(tensors, *a))
    ours = ablation.attribute(x, target=TARGET, **kwargs)
    if mask == "blocks":  # Captum with the same 18 blocks (3 x 3 pixels through both channels)
        from onnx_attr.methods.perturbation import block_groups

        kwargs = {"feature_mask": block_groups((2, 6, 6), 18)}
    theirs = CaptumFeatureAblation(model).attribute(x, target=TARGET, **kwargs)
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)
    # elements: the right half of both channels and the one that moves; blocks: 3 x 3 of 2 x 2 pixels, 6 right of
    # column 2 and the one holding (5, 0); groups: 12 runs of 3 in a row, the 6 right ones and the one holding (5, 0)
    features = {"elements": 2 * 36, "blocks": 9, "groups": 12}[mask]
    moving = {"elements": 2 * 18 + 1, "blocks": 6 + 1, "groups": 6 + 1}[mask]
    assert len(passes) - 1 == moving < features  # one unperturbed pass, then one per moving feature
    assert torch.all(ours[:, :, :, :3][x[:, :, :, :3].eq(0).all(0, keepdim=True).expand(3, 2, 6, 3)
                                       & (mask == "elements")] == 0)
