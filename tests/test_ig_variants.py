"""Split IG and adaptive IG: hand-computed 1-D paths, completeness, and the IG they approach
(Captum's IntegratedGradients at many steps on the same module)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from torch import nn

import onnx_attr

from exporting import to_onnx


class Saturating(nn.Module):
    """f(x) = min(x, 2) = 2 − relu(2 − x): on the path 0 → 4, f(α) = min(4α, 2), flat after α = 0.5."""

    def forward(self, x):
        return (2 - torch.relu(2 - x)).sum(1, keepdim=True)


class Kinked(nn.Module):
    """f(x) = relu(x − 1.3) + 0.5·relu(x − 2.9): kinks at α = 0.325 and 0.725 on the path 0 → 4."""

    def forward(self, x):
        return (torch.relu(x - 1.3) + 0.5 * torch.relu(x - 2.9)).sum(1, keepdim=True)


def load(module, example):
    return onnx_attr.load(to_onnx(module.eval(), example))


def test_split_ig_on_a_saturating_1d_path_by_hand():
    model = load(Saturating(), torch.ones(2, 1))
    split = onnx_attr.SplitIntegratedGradients(model)
    attributions, delta = split.attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0,
                                          split_fraction=0.9, return_convergence_delta=True)
    # f reaches 0.9 · 2 = 1.8 at α = 0.45; the gradient is 1 there, so the attribution is 4 · 0.45
    assert split.split_points.tolist() == pytest.approx([0.45], abs=1e-12)
    assert attributions.item() == pytest.approx(1.8, abs=1e-6)
    assert delta.abs().item() < 1e-6
    assert split.last_report["saturated_change"] == pytest.approx([0.2], abs=1e-6)
    full = onnx_attr.IntegratedGradients(model).attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0)
    assert full.item() == pytest.approx(2.0, abs=1e-2)  # plain IG also credits the saturated half
    # fraction 1 with nothing saturated before the end: the whole path, as plain IG
    whole = split.attribute(torch.tensor([[1.0]]), torch.tensor([[0.0]]), target=0, split_fraction=1.0)
    assert split.split_points.tolist() == pytest.approx([1.0]) and whole.item() == pytest.approx(1.0, abs=1e-6)


def test_adaptive_ig_on_a_kinked_1d_path_by_hand():
    model = load(Kinked(), torch.ones(2, 1))
    adaptive = onnx_attr.AdaptiveIntegratedGradients(model)
    attributions, delta = adaptive.attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0, n_steps=64,
                                             tolerance=1e-3, return_convergence_delta=True)
    exact = 2.7 + 0.5 * 1.1  # IG of one input is its whole change f(4) − f(0)
    assert abs(attributions.item() - exact) <= 1e-3 * exact
    assert delta.abs().item() <= 1e-3 * exact
    used = adaptive.last_report["gradient_points"][0]
    assert used < 64
    # the same number of evenly placed Gauss-Legendre points does worse on the kinks
    plain = onnx_attr.IntegratedGradients(model).attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0,
                                                           n_steps=used)
    assert abs(plain.item() - exact) > abs(attributions.item() - exact)
    # short intervals sit at the kinks: the one holding α = 0.325 is among the shortest
    intervals = adaptive.last_report["intervals"][0]
    around = next(iv for iv in intervals if iv[0] <= 0.325 <= iv[1])
    assert around[1] - around[0] == min(b - a for a, b in intervals)


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    return module, load(module, torch.randn(2, 3, 8, 8))


def test_adaptive_ig_is_complete_and_approaches_many_step_ig(conv):
    module, model = conv
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255  # pixels
    base = torch.full((1, 3, 8, 8), 128.0)
    adaptive = onnx_attr.AdaptiveIntegratedGradients(model)
    ours, delta = adaptive.attribute(x, base, target=[1, 3], n_steps=512, tolerance=1e-4,
                                     return_convergence_delta=True, internal_batch_size=256)
    with torch.no_grad():
        change = (module(x)[[0, 1], [1, 3]] - module(base.expand_as(x))[[0, 1], [1, 3]]).double()
    # the delta is what it says: Σ attributions − (f(x) − f(x0)), and small at this budget
    torch.testing.assert_close(ours.reshape(2, -1).double().sum(1) - change, delta, rtol=0, atol=1e-5)
    assert (delta.abs() <= 2e-3 * change.abs()).all()
    assert max(adaptive.last_report["gradient_points"]) <= 512
    reference = CaptumIG(module).attribute(x, base.expand_as(x), target=[1, 3], n_steps=2000,
                                           method="riemann_trapezoid", internal_batch_size=500)
    scale = reference.abs().max()
    assert (ours - reference).abs().max() < 1e-2 * scale


def test_split_ig_is_complete_up_to_its_split_point(conv):
    _, model = conv
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 255
    split = onnx_attr.SplitIntegratedGradients(model)
    ours, delta = split.attribute(x, 0.0, target=2, n_steps=64, return_convergence_delta=True)
    report = split.last_report
    assert all(0 < s <= 1 for s in report["split_points"])
    assert (delta.abs() < 2e-2 * ours.reshape(2, -1).sum(1).abs()).all()  # 64 GL steps over ReLU kinks
    # the saturated remainder plus the integrated part is the whole change
    with torch.no_grad():
        whole = (model.module(x)[:, 2] - model.module(torch.zeros_like(x))[:, 2]).double()
    torch.testing.assert_close(ours.reshape(2, -1).double().sum(1) - delta + torch.tensor(report["saturated_change"]),
                               whole, rtol=1e-5, atol=1e-4)


def test_adaptive_ig_fits_a_small_budget_with_fewer_first_intervals():
    """n_steps below 2·initial + 1 starts with fewer intervals instead of refusing. At 3 or 4 points
    one Simpson interval, by hand: f' = 0, 1, 1.5 at α = 0, ½, 1 on the path 0 → 4."""
    model = load(Kinked(), torch.ones(2, 1))
    adaptive = onnx_attr.AdaptiveIntegratedGradients(model)
    simpson, exact = 4.0 * (0.0 + 4 * 1.0 + 1.5) / 6, 2.7 + 0.5 * 1.1
    for n_steps in (3, 4):
        ours, delta = adaptive.attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0, n_steps=n_steps,
                                         return_convergence_delta=True)
        report = adaptive.last_report
        assert report["initial"] == 1 and report["gradient_points"] == [3]
        assert [tuple(iv) for iv in report["intervals"][0]] == [(0.0, 1.0)]
        assert ours.item() == pytest.approx(simpson, abs=1e-5)
        assert abs(delta.item()) == pytest.approx(simpson - exact, abs=1e-5)
    adaptive.attribute(torch.tensor([[4.0]]), torch.tensor([[0.0]]), target=0, n_steps=7, initial=4)
    assert adaptive.last_report["initial"] == 3 and adaptive.last_report["gradient_points"] == [7]


def test_clear_errors(conv):
    _, model = conv
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(onnx_attr.InputError, match="split_fraction"):
        onnx_attr.SplitIntegratedGradients(model).attribute(x, split_fraction=1.5)
    with pytest.raises(onnx_attr.InputError, match="n_steps"):
        onnx_attr.AdaptiveIntegratedGradients(model).attribute(x, n_steps=2)
    with pytest.raises(onnx_attr.InputError, match="initial"):
        onnx_attr.AdaptiveIntegratedGradients(model).attribute(x, initial=0)
    with pytest.raises(onnx_attr.InputError, match="tolerance"):
        onnx_attr.AdaptiveIntegratedGradients(model).attribute(x, tolerance=0)
