"""Shapley values, KernelShap, Lime, FeaturePermutation and the layer/neuron perturbation forms,
against Captum on the same module (same torch seed where they draw), and against the exact
Shapley values of a tiny model computed here by brute force over every feature order."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from captum import attr as captum
from torch import nn

import onnx_attr
from onnx_attr.methods.lime import weighted_linear_fit
from onnx_attr.methods.masked_eval import MaskedEvaluator, present_to_masks, spread

from exporting import to_onnx


class Tiny(nn.Module):
    """5 features -> 3 outputs with interactions (products through tanh and ReLU), logits in the hundreds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x) / 100) * torch.relu(self.a(x))
        return self.b(h)


class Two(nn.Module):
    """Two inputs, to check features shared across inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(2, 6), nn.Linear(6, 2)

    def forward(self, x, y):
        return self.c(torch.relu(self.a(x)) * torch.sigmoid(self.b(y)))


@pytest.fixture(scope="module")
def tiny():
    model = Tiny().eval()
    return model, onnx_attr.load(to_onnx(model, torch.randn(2, 5)))


@pytest.fixture(scope="module")
def two():
    model = Two().eval()
    return model, onnx_attr.load(to_onnx(model, (torch.randn(2, 3), torch.randn(2, 2)), input_names=("x", "y")))


X = torch.tensor([[120.0, -40.0, 75.0, 10.0, 200.0], [-30.0, 90.0, 5.0, 160.0, -80.0]])
BASE = torch.tensor([[50.0, 50.0, 50.0, 50.0, 50.0]])
TARGET = [0, 2]


def brute_force_shapley(model, x, base, target):
    """φ_i averaged over all F! orders: the gain of feature i when it joins the features before it."""
    f = x.shape[1]
    phi = torch.zeros(x.shape[0], f, dtype=torch.float64)
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        for order in itertools.permutations(range(f)):
            current = base.expand_as(x).clone().double()
            before = model.double()(current)[rows, target]
            for i in order:
                current[:, i] = x[:, i].double()
                after = model(current)[rows, target]
                phi[:, i] += after - before
                before = after
    model.float()
    return phi / math.factorial(f)


def test_shapley_values_equal_brute_force_and_captum(tiny):
    model, imported = tiny
    exact = brute_force_shapley(model, X, BASE, TARGET)
    ours = onnx_attr.ShapleyValues(imported).attribute(X, BASE, target=TARGET, perturbations_per_eval=7)
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-3)
    # completeness, the efficiency axiom: Σ φ = f(x) − f(x0)
    with torch.no_grad():
        change = model(X)[[0, 1], TARGET] - model(BASE.expand_as(X))[[0, 1], TARGET]
    torch.testing.assert_close(ours.sum(1), change, rtol=1e-5, atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = captum.ShapleyValues(model).attribute(X, BASE, target=TARGET)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_shapley_sampling_equals_captum_under_the_same_seed(tiny, backend):
    model, imported = tiny
    torch.manual_seed(7)
    ours = onnx_attr.ShapleyValueSampling(imported, backend=backend).attribute(X, BASE, target=TARGET, n_samples=6,
                                                                               perturbations_per_eval=4)
    torch.manual_seed(7)
    theirs = captum.ShapleyValueSampling(model).attribute(X, BASE, target=TARGET, n_samples=6)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-3)


def test_sampling_and_kernel_shap_approach_the_exact_values(tiny):
    model, imported = tiny
    exact = brute_force_shapley(model, X, BASE, TARGET).float()
    scale = exact.abs().max()
    torch.manual_seed(0)
    sampled = onnx_attr.ShapleyValueSampling(imported).attribute(X, BASE, target=TARGET, n_samples=400,
                                                                 perturbations_per_eval=64)
    kernel = onnx_attr.KernelShap(imported).attribute(X, BASE, target=TARGET, n_samples=600,
                                                      perturbations_per_eval=64)
    few = onnx_attr.KernelShap(imported).attribute(X, BASE, target=TARGET, n_samples=12)
    assert (sampled - exact).abs().max() < 0.05 * scale
    assert (kernel - exact).abs().max() < 0.05 * scale
    assert (kernel - exact).abs().max() < (few - exact).abs().max()  # more samples, closer


@pytest.mark.parametrize("example", [0, 1])
def test_kernel_shap_and_lime_equal_captum_under_the_same_seed(tiny, example):
    """One example per call (Captum's fit takes from torch's generator between a batch's examples)."""
    model, imported = tiny
    x, target = X[example:example + 1], TARGET[example]
    for ours_cls, theirs_cls, options in [(onnx_attr.KernelShap, captum.KernelShap, {}),
                                          (onnx_attr.Lime, captum.Lime, {}),
                                          (onnx_attr.Lime, captum.Lime, {"return_input_shape": False})]:
        torch.manual_seed(11)
        ours = ours_cls(imported).attribute(x, BASE, target=target, n_samples=40, perturbations_per_eval=8, **options)
        torch.manual_seed(11)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = theirs_cls(model).attribute(x, BASE, target=target, n_samples=40, **options)
        assert ours.shape == theirs.shape
        # Captum fits in float32 with scikit-learn's tolerance 1e-4; ours in float64 to convergence
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))
    # a batch: one model per example, the first example's draws as in a call of its own
    torch.manual_seed(11)
    batch = onnx_attr.KernelShap(imported).attribute(X, BASE, target=TARGET, n_samples=40)
    torch.manual_seed(11)
    first = onnx_attr.KernelShap(imported).attribute(X[:1], BASE, target=TARGET[0], n_samples=40)
    torch.testing.assert_close(batch[:1], first)


def test_kernel_shap_on_two_inputs_with_shared_feature_ids(two):
    model, imported = two
    x, y = torch.randn(1, 3) * 10, torch.randn(1, 2) * 10  # one example: KernelShap draws as Captum
    masks = (torch.tensor([[0, 1, 2]]), torch.tensor([[2, 3]]))  # feature 2 spans both inputs
    for ours_cls, theirs_cls in [(onnx_attr.KernelShap, captum.KernelShap),
                                 (onnx_attr.ShapleyValueSampling, captum.ShapleyValueSampling),
                                 (onnx_attr.ShapleyValues, captum.ShapleyValues)]:
        torch.manual_seed(5)
        ours = ours_cls(imported).attribute((x, y), target=1, feature_mask=masks, n_samples=30) \
            if ours_cls is not onnx_attr.ShapleyValues else ours_cls(imported).attribute((x, y), target=1,
                                                                                      feature_mask=masks)
        torch.manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = {} if theirs_cls is captum.ShapleyValues else {"n_samples": 30}
            theirs = theirs_cls(model).attribute((x, y), target=1, feature_mask=masks, **options)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b.float(), rtol=1e-3, atol=1e-4)
        assert torch.equal(ours[0][:, 2], ours[1][:, 0])  # one feature, one value


@pytest.mark.parametrize("per_eval", [1, 3])
def test_feature_permutation_equals_captum_under_the_same_seed(two, per_eval):
    model, imported = two
    x, y = torch.randn(4, 3) * 10, torch.randn(4, 2) * 10
    for masks in [None, (torch.tensor([[0, 1, 1]]), torch.tensor([[1, 2]]))]:
        torch.manual_seed(9)
        ours = onnx_attr.FeaturePermutation(imported).attribute((x, y), target=0, feature_mask=masks,
                                                                perturbations_per_eval=per_eval)
        torch.manual_seed(9)
        theirs = captum.FeaturePermutation(model).attribute((x, y), target=0, feature_mask=masks,
                                                            perturbations_per_eval=per_eval)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_layer_and_neuron_forms_equal_captum():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(2, 2, 4, 4)))
    layer = next(n.output[0] for n in imported.onnx_model.graph.node if n.op_type == "Relu")
    x = torch.randn(3, 2, 4, 4) * 50
    target = [0, 3, 1]
    ours = onnx_attr.LayerFeatureAblation(imported, layer).attribute(x, layer_baselines=0.5, target=target,
                                                                      perturbations_per_eval=5)
    theirs = captum.LayerFeatureAblation(model, model[1]).attribute(x, layer_baselines=0.5, target=target)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)
    mask = torch.arange(48).reshape(1, 3, 4, 4) // 8
    ours = onnx_attr.LayerFeatureAblation(imported, layer).attribute(x, target=target, layer_mask=mask)
    theirs = captum.LayerFeatureAblation(model, model[1]).attribute(x, target=target, layer_mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)
    torch.manual_seed(1)
    ours = onnx_attr.LayerFeaturePermutation(imported, layer).attribute(x, target=1, layer_mask=mask)
    torch.manual_seed(1)  # Captum's LayerFeaturePermutation picks no target itself: the forward does
    theirs = captum.LayerFeaturePermutation(lambda t: model(t)[:, 1], model[1]).attribute(x, layer_mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)
    ours = onnx_attr.NeuronFeatureAblation(imported, layer).attribute(x, (1, 2, 2), baselines=0.25,
                                                                      perturbations_per_eval=4)
    theirs = captum.NeuronFeatureAblation(model, model[1]).attribute(x, (1, 2, 2), baselines=0.25)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_weighted_linear_fit_equals_scikit_learn():
    from sklearn.linear_model import Lasso, LinearRegression

    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (40, 6)).astype(float)
    y = x @ rng.normal(size=6) * 30 + rng.normal(size=40)
    w = rng.uniform(0.1, 2, 40)
    for alpha in (0.01, 0.5, 3.0):
        expected = Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(x, y, sample_weight=w).coef_
        np.testing.assert_allclose(weighted_linear_fit(x, y, w, alpha), expected, rtol=1e-6, atol=1e-8)
    expected = LinearRegression().fit(x, y, sample_weight=w).coef_
    np.testing.assert_allclose(weighted_linear_fit(x, y, w), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("features, alpha", [(1000, 0.001), (1000, 0.01), (3000, 1.0)])
def test_weighted_lasso_over_far_more_features_than_samples(features, alpha):
    """Lime over every pixel: 50 coalitions of thousands of features, where the solution's support
    is as large as the samples allow (49 after the intercept at α = 0.001). Oracles: scikit-learn's
    Lasso, and the optimality conditions (gradient −α·sign on the support, at most α elsewhere)."""
    from sklearn.linear_model import Lasso

    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, (50, features)).astype(float)
    y = x[:, :5] @ rng.normal(size=5) * 10 + rng.normal(size=50)
    w = rng.uniform(0.1, 2, 50)
    ours = weighted_linear_fit(x, y, w, alpha)
    expected = Lasso(alpha=alpha, tol=1e-12, max_iter=1_000_000).fit(x, y, sample_weight=w).coef_
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    p = w / w.sum()
    xs, ys = (x - p @ x) * np.sqrt(p)[:, None], (y - p @ y) * np.sqrt(p)
    pull = xs.T @ (ys - xs @ ours)
    support = ours != 0
    np.testing.assert_allclose(pull[support], alpha * np.sign(ours[support]), rtol=1e-8, atol=1e-12)
    assert np.abs(pull[~support]).max() <= alpha * (1 + 1e-8)


def test_masked_evaluator_chunks_within_the_budget_and_matches_one_pass(tiny):
    _, imported = tiny
    groups = [torch.tensor([[0, 0, 1, 2, 2]])]
    patterns = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]]).bool().unsqueeze(1)
    masks = present_to_masks(patterns, groups[0])
    assert masks.shape == (5, 1, 5) and masks[0, 0].tolist() == [False, False, True, False, False]
    calls = []

    def value(tensors, targets):
        calls.append(tensors[0].shape[0])
        return onnx_attr.methods.gradient.target_values(imported, tensors, targets, 0)

    targets = onnx_attr.deeplift.engine.Targets(TARGET, 2)
    small = MaskedEvaluator(value, [X], [BASE], [True], targets, per_eval=4, budget_bytes=2 * X.numel() * 4)
    got, _ = small.evaluate_patterns(5, lambda a, b: patterns[a:b], groups)
    assert calls == [4, 4, 2]  # two copies of the batch per forward: the budget, below per_eval
    with torch.no_grad():
        copies = torch.where(masks, BASE.unsqueeze(0), X.unsqueeze(0))  # [5, 2, 5]
        expected = imported.module(copies.reshape(10, 5)).reshape(5, 2, 3)[:, [0, 1], TARGET]
    assert got.shape == (5, 2, 1)  # [patterns, examples, values per example]
    torch.testing.assert_close(got[..., 0], expected)
    torch.testing.assert_close(spread(torch.tensor([[1.0, 2, 3], [4, 5, 6]]), groups[0], 2),
                               torch.tensor([[1.0, 1, 2, 3, 3], [4, 4, 5, 6, 6]]))


def test_clear_errors(tiny):
    _, imported = tiny
    with pytest.raises(onnx_attr.InputError, match="2\\*\\*F coalitions and there are 17"):
        onnx_attr.ShapleyValues(imported).attribute(X, feature_mask=torch.tensor([[0, 1, 2, 3, 16]]))
    with pytest.raises(onnx_attr.InputError, match="batch has 1 example"):
        onnx_attr.FeaturePermutation(imported).attribute(X[:1], target=0)
    with pytest.raises(onnx_attr.InputError, match="n_samples"):
        onnx_attr.KernelShap(imported).attribute(X, target=0, n_samples=0)
    with pytest.raises(onnx_attr.InputError, match="negative ids"):
        onnx_attr.ShapleyValueSampling(imported).attribute(X, target=0, feature_mask=torch.tensor([[0, -1, 1, 1, 1]]))
    with pytest.raises(onnx_attr.InputError, match="distance_mode"):
        onnx_attr.Lime(imported, distance_mode="manhattan")


@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_a_value_that_never_moves_fits_exact_zeros(alpha):
    """KernelShap on a model whose explained value is the same for every coalition (sweep 35): its
    weighted mean rounds off that value, and least squares fitted the rounding, ~1e-32 noise that
    the run's "every attribution is exactly 0" warning missed. Oracle: β = 0 fits a constant exactly
    (the intercept takes it), and a moving y still fits scikit-learn's coefficients."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, (60, 7)).astype(float)
    w = rng.uniform(0.1, 2, 60)
    w[:2] = 1e6  # KernelShap's endpoints
    for value in (0.1, 317.25, -4.4e5):
        assert not np.any(weighted_linear_fit(x, np.full(60, value), w, alpha))
    y = x @ rng.normal(size=7) * 300 + 317.25
    expected = LinearRegression().fit(x, y, sample_weight=w).coef_
    np.testing.assert_allclose(weighted_linear_fit(x, y, w), expected, rtol=1e-8, atol=1e-8)
