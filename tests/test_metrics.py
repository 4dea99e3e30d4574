"""Infidelity, sensitivity-max and the parameter-randomisation check, against Captum's metrics
and scipy's Spearman correlation on the same inputs and perturbations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from scipy.stats import spearmanr
from torch import nn

import onnx_attr
from onnx_attr.methods.metrics import (gaussian_perturbation, infidelity, parameter_randomization, randomized_copy,
                               sensitivity_max, spearman)

from exporting import to_onnx


@pytest.fixture(scope="module")
def imported():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return onnx_attr.load(to_onnx(net, torch.randn(2, 6)))


X = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
TARGET = [0, 2, 1, 2]


def _noise(inputs):  # Captum's undecorated contract: (perturbations, perturbed inputs)
    noise = torch.randn_like(inputs) * 0.2
    return noise, inputs - noise


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_captum(imported, normalize):
    attributions = onnx_attr.Saliency(imported).attribute(X, target=TARGET, abs=False)
    torch.manual_seed(7)
    ours = infidelity(imported, _noise, X, attributions, target=TARGET, n_perturb_samples=16,
                      normalize=normalize)  # Captum's call, unchanged
    torch.manual_seed(7)
    theirs = captum_infidelity(imported.module, _noise, X, attributions, target=TARGET, n_perturb_samples=16,
                               normalize=normalize)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-7)


def test_infidelity_ranks_a_faithful_explanation_above_noise(imported):
    """For a small Gaussian perturbation, the gradient predicts f(x) - f(x - I) far better than
    random attributions of the same size (the default perturbation, global convention off)."""
    torch.manual_seed(0)
    perturb = gaussian_perturbation(0.01, multiply_by_inputs=False)
    gradient = onnx_attr.Saliency(imported).attribute(X, target=TARGET, abs=False)
    good = infidelity(imported, gradient, X, target=TARGET, perturb_func=perturb, n_perturb_samples=32)
    bad = infidelity(imported, torch.randn_like(gradient) * gradient.std(), X, target=TARGET, perturb_func=perturb,
                     n_perturb_samples=32)
    assert (good < bad / 10).all() and good.median() < bad.median() / 1000


def test_sensitivity_max_equals_captum(imported):
    ig = onnx_attr.IntegratedGradients(imported)
    torch.manual_seed(3)
    ours = sensitivity_max(ig, X, target=TARGET, n_steps=8, n_perturb_samples=6, perturb_radius=0.05)
    torch.manual_seed(3)
    theirs = captum_sensitivity_max(CaptumIG(imported.module).attribute, X, target=TARGET, n_steps=8,
                                    n_perturb_samples=6, perturb_radius=0.05)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-4, atol=1e-6)


def test_sensitivity_max_of_saliency_equals_captum_with_baselines_free_method(imported):
    torch.manual_seed(4)
    ours = sensitivity_max(onnx_attr.Saliency(imported), X, target=1, n_perturb_samples=5)
    torch.manual_seed(4)
    theirs = captum_sensitivity_max(CaptumSaliency(imported.module).attribute, X, target=1, n_perturb_samples=5)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-4, atol=1e-6)


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(size=200)
    assert float(spearman(torch.tensor(a), torch.tensor(b))) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_parameter_randomization(imported):
    report = parameter_randomization(onnx_attr.DeepLift, imported, X, target=TARGET, seed=1)
    assert len(report["spearman"]) == 4 and -1 <= report["mean_spearman"] <= 1
    assert len(report["randomized_tensors"]) == 3 and report["max_output_change"] > 0
    # the same weights re-drawn twice give the same copy; the original is untouched
    first, second = randomized_copy(imported, 5), randomized_copy(imported, 5)
    for (name, a), (_, b) in zip(first.module.named_buffers(), second.module.named_buffers()):
        assert torch.equal(a, b), name
    again = parameter_randomization(onnx_attr.DeepLift, imported, X, target=TARGET, seed=1)
    assert again["spearman"] == report["spearman"]
    # an explanation that ignores the model (the input itself) survives randomisation perfectly
    class InputOnly:
        def __init__(self, model):
            pass

        def attribute(self, inputs, **_):
            return inputs

    assert parameter_randomization(InputOnly, imported, X)["mean_spearman"] == pytest.approx(1.0)
