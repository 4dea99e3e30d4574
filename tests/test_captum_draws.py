"""The sampling methods draw as Captum draws: under one generator state, Captum on the PyTorch module
and onnx-attr on its export give the same numbers for every example of a batch.

Captum's Lime and KernelShap fit each example before drawing the next one's coalitions, and the fit
takes from torch's generator (a DataLoader's base seed, the initial weights of an nn.Linear): only a
batch's first example used to see Captum's coalitions. Oracle: Captum 0.9 itself.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import onnx_attr
from captum_models import load, torch_module

captum_attr = pytest.importorskip("captum.attr")
T = torch.tensor
INPUTS = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0], [1.0, 2.0, 3.0]]),
          T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0], [1.0, 2.0, 3.0]]),
          T([[0.0, 100.0, 10.0], [2.0, 10.0, 3.0], [3.0, 2.0, 1.0]]))
MASK = (T([[1, 1, 1], [0, 1, 0], [0, 0, 0]]), T([[0, 1, 2]]), T([[0, 1, 2], [0, 0, 0], [2, 1, 0]]))


def _both(method: str, ours_kw: dict, theirs_kw: dict, **call):
    model, module = load("MultiLayerMultiInput"), torch_module("MultiLayerMultiInput")
    found = []
    for make, kw in ((lambda: getattr(onnx_attr, method)(model, **ours_kw), ours_kw),
                     (lambda: getattr(captum_attr, method)(module, **theirs_kw), theirs_kw)):
        explainer = make()
        random.seed(1234)
        np.random.seed(1234)
        torch.manual_seed(1234)
        found.append(explainer.attribute(INPUTS, target=0, feature_mask=MASK, additional_forward_args=(1,), **call))
    return found


def test_lime_with_captums_objects_equals_captum_on_every_example():
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    def objects():
        return {"similarity_func": get_exp_kernel_similarity_function("cosine", 10.0),
                "interpretable_model": SkLearnLasso(alpha=1.0)}
    ours, theirs = _both("Lime", objects(), objects(), n_samples=60)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_kernel_shap_equals_captum_on_every_example():
    ours, theirs = _both("KernelShap", {}, {}, n_samples=60)
    for a, b in zip(ours, theirs):  # least squares solved here, by scikit-learn there
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-2)


def test_shapley_value_sampling_equals_captum_on_every_example():
    ours, theirs = _both("ShapleyValueSampling", {}, {}, n_samples=20)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)
