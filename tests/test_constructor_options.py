"""Constructor options: none is dropped silently, and Lime takes Captum's own objects.

A method's constructor used to swallow every keyword it did not know: Captum's
`Lime(net, similarity_func=..., interpretable_model=SkLearnLasso(alpha=1.0))` ran with Lime's defaults
(α = 0.01, width 1) and returned their answer, as did a misspelt option.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_attr
from captum_models import export, load

X = torch.tensor([[20.0, 50.0, 30.0]])


@pytest.mark.parametrize("method", ["Lime", "KernelShap", "IntegratedGradients", "FeatureAblation", "Saliency",
                                    "GuidedBackprop", "DeepLift"])
def test_an_unknown_keyword_is_refused_by_name(method):
    with pytest.raises(TypeError, match=r"kernel_widht"):
        getattr(onnx_attr, method)(load("MultiLayer"), kernel_widht=10.0)


def test_lime_fits_a_scikit_learn_model_with_the_users_similarity():
    """A linear model explained with unit weights and least squares: each coalition's output is
    exactly linear in the coalition, so the fit recovers w·(x - b) feature by feature (by hand)."""
    from sklearn.linear_model import LinearRegression

    linear = torch.nn.Linear(7, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.5, -2.0, 0.25, 4.0, -0.5, 3.0, 1.0]]))
        linear.bias.fill_(7.0)
    model = onnx_attr.load(export(linear, [torch.zeros(2, 7)], ["x"]), strip_final_activation=False)
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5, 10.0, -4.0, 1.0]])
    seen = []

    def unit(original, perturbed, sample):
        seen.append((tuple(original.shape), tuple(perturbed.shape), tuple(sample.shape)))
        return 1.0

    lime = onnx_attr.Lime(model, similarity_func=unit, interpretable_model=LinearRegression())
    got = lime.attribute(x, n_samples=200)
    np.testing.assert_allclose(got.numpy(), (linear.weight * x).detach().numpy(), rtol=1e-4, atol=1e-4)
    assert seen[0] == ((1, 7), (1, 7), (1, 7)) and len(seen) == 200


def test_lime_takes_captums_similarity_and_interpretable_model():
    """Captum's stated value for this exact constructor call (test_lime.py::test_simple_lime)."""
    lime_module = pytest.importorskip("captum.attr._core.lime")
    from captum._utils.models.linear_model import SkLearnLasso

    lime = onnx_attr.Lime(load("MultiLayer"),
                          similarity_func=lime_module.get_exp_kernel_similarity_function("cosine", 10.0),
                          interpretable_model=SkLearnLasso(alpha=1.0))
    got = lime.attribute(X, target=0, n_samples=500)
    assert float((got - torch.tensor([[73.3716, 193.3349, 113.3349]])).abs().max()) <= 1.0
    default = onnx_attr.Lime(load("MultiLayer")).attribute(X, target=0, n_samples=500)
    assert not torch.allclose(got, default)  # the objects were used, not dropped


def test_lime_similarity_sees_held_inputs_as_given_and_refuses_zero_weights():
    class Gained(torch.nn.Module):
        def forward(self, x, gain):
            return x.sum(1, keepdim=True) * gain

    model = onnx_attr.load(export(Gained(), [torch.ones(2, 3), torch.tensor(2.0)], ["x", "gain"]),
                           strip_final_activation=False)
    seen = []

    def unit(original, perturbed, sample):
        seen.append((type(original).__name__, len(original), float(original[1])))
        return 1.0

    from sklearn.linear_model import LinearRegression

    x = torch.tensor([[1.0, 2.0, 3.0]])
    lime = onnx_attr.Lime(model, similarity_func=unit, interpretable_model=LinearRegression())
    got = lime.attribute((x, torch.tensor(2.0)), n_samples=40)
    torch.testing.assert_close(got[0], 2 * x)  # linear: 2·x per feature, by hand
    assert seen[0] == ("tuple", 2, 2.0)
    with pytest.raises(onnx_attr.InputError, match="no positive weight"):
        onnx_attr.Lime(model, similarity_func=lambda *a: 0.0).attribute((x, torch.tensor(2.0)), n_samples=10)
