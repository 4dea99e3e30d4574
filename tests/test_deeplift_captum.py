"""DeepLift against Captum on the original PyTorch model, where Captum supports every op."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from torch import nn

import onnx_attr

from exporting import to_onnx


class ToyModel(nn.Module):
    """Captum README's ToyModel, with its fixed weights."""

    def __init__(self):
        super().__init__()
        self.lin1, self.relu, self.lin2 = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)
        self.lin1.weight = nn.Parameter(torch.arange(-4.0, 5.0).view(3, 3))
        self.lin1.bias = nn.Parameter(torch.zeros(1, 3))
        self.lin2.weight = nn.Parameter(torch.arange(-3.0, 3.0).view(2, 3))
        self.lin2.bias = nn.Parameter(torch.ones(1, 2))

    def forward(self, x):
        return self.lin2(self.relu(self.lin1(x)))


def test_captum_readme_toy_model_figures():
    model = ToyModel().eval()
    torch.manual_seed(123)
    np.random.seed(123)
    x = torch.rand(2, 3)
    imported = onnx_attr.load(to_onnx(model, x))
    attributions, delta = onnx_attr.DeepLift(imported).attribute(x, torch.zeros(2, 3), target=0,
                                                                 return_convergence_delta=True)
    expected = torch.tensor([[-0.5922, -1.5497, -1.0067], [0.0000, -0.2219, -5.1991]])
    torch.testing.assert_close(attributions, expected, atol=1e-4, rtol=0)
    assert delta.abs().max() < 1e-6


def _cnn(act: nn.Module, pool: nn.Module, side: int) -> nn.Module:
    """12x12 inputs; `side` is the spatial size left before the classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act, pool, nn.Conv2d(6, 8, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(8 * side * side, 16), nn.Sigmoid(), nn.Linear(16, 5))


MODELS = {
    # Captum 0.9.0's MaxPool rule is exact for one non-overlapping MaxPool between linear layers,
    # but breaks completeness (deltas of 1e-2 to 0.3) with overlapping windows (its unpool
    # overwrites), a second MaxPool, or another nonlinearity (captum issues #1276, #1104); such
    # models are checked against an independent re-implementation below instead.
    "cnn-relu-avgpool": lambda: _cnn(nn.ReLU(), nn.AvgPool2d(2), 2),
    "cnn-one-maxpool": lambda: (torch.manual_seed(4), nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)))[1],
    "mlp-tanh-sigmoid": lambda: (torch.manual_seed(1), nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 12 * 12, 32), nn.Tanh(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 5)))[1],
    "mlp-relu-elu-softplus-leaky": lambda: (torch.manual_seed(2), nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 12 * 12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 32),
        nn.Softplus(), nn.Linear(32, 16), nn.LeakyReLU(0.1), nn.Linear(16, 5)))[1],
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.usefixtures("hole_filling")
def test_equals_captum_on_the_original_model(name):
    model = MODELS[name]().eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 12, 12, generator=gen)
    baseline = torch.randn(1, 3, 12, 12, generator=gen) * 0.5
    target = [0, 3, 1, 4]
    imported = onnx_attr.load(to_onnx(model, x))
    ours, delta = onnx_attr.DeepLift(imported).attribute(x, baseline, target=target, return_convergence_delta=True)
    theirs, their_delta = CaptumDeepLift(model).attribute(x, baseline.expand(4, -1, -1, -1), target=target,
                                                          return_convergence_delta=True)
    assert their_delta.abs().max() < 1e-4, "Captum is not self-consistent on this model: not a valid oracle"
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-4)
    assert delta.abs().max() < 1e-4


def _replicate_conv_relu_maxpool(model: nn.Sequential, x, x0, target: int):
    """DeepLift for Conv -> ReLU -> MaxPool(2) -> Flatten -> Linear, written out from the paper:
    rescale at the ReLU, cross-max at the pool (credit m - y0 to x's peak, y - m to x0's peak)."""
    conv, _, _, _, linear = model
    x = x.clone().requires_grad_(True)
    h, h0 = conv(x), conv(x0)
    r, r0 = h.relu(), h0.relu()
    n, c, hh, ww = r.shape

    def windows(t):  # [N, C, H/2, W/2, 4]
        return t.reshape(t.shape[0], c, hh // 2, 2, ww // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(
            t.shape[0], c, hh // 2, ww // 2, 4)

    w, w0 = windows(r), windows(r0).expand(n, -1, -1, -1, -1)
    y, i = w.max(-1, keepdim=True)
    y0, j = w0.max(-1, keepdim=True)
    m = torch.maximum(y, y0)
    g_p = linear.weight[target].reshape(1, c, hh // 2, ww // 2, 1).expand(n, -1, -1, -1, -1)
    credit = torch.zeros_like(w).scatter_add(-1, i, (m - y0) * g_p).scatter_add(-1, j, (y - m) * g_p)
    spread = credit.reshape(n, c, hh // 2, ww // 2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    d_r = r - r0
    plain_r = torch.zeros_like(w).scatter(-1, i, g_p).reshape(n, c, hh // 2, ww // 2, 2, 2).permute(
        0, 1, 2, 4, 3, 5).reshape(n, c, hh, ww)
    g_r = torch.where(d_r.abs() > 1e-6, spread / d_r.where(d_r.abs() > 1e-6, torch.ones_like(d_r)), plain_r)
    d_h = h - h0
    m_relu = torch.where(d_h.abs() > 1e-6, d_r / d_h.where(d_h.abs() > 1e-6, torch.ones_like(d_h)),
                         (h > 0).to(h.dtype))
    (g_x,) = torch.autograd.grad(h, x, (g_r * m_relu).detach())
    return (g_x * (x - x0)).detach()


@pytest.mark.usefixtures("hole_filling")
def test_relu_maxpool_stack_equals_an_independent_replication():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval().double()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64)
    x0 = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    x0[..., :6] = torch.randn(1, 3, 12, 6, generator=gen, dtype=torch.float64)  # half zero: ReLU ties at 0
    expected = _replicate_conv_relu_maxpool(model, x, x0, target=2)
    imported = onnx_attr.load(to_onnx(model.float(), x.float()))
    ours, delta = onnx_attr.DeepLift(imported).attribute(x.float(), x0.float(), target=2,
                                                         return_convergence_delta=True)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-4)
    assert delta.abs().max() < 1e-4


@pytest.mark.parametrize("rows_per_pass", [1, 3, 4])
def test_deeplift_shap_equals_captum(rows_per_pass):
    model = MODELS["cnn-relu-avgpool"]().eval()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 3, 12, 12, generator=gen)
    baselines = torch.randn(4, 3, 12, 12, generator=gen) * 0.3
    imported = onnx_attr.load(to_onnx(model, x))
    shap = onnx_attr.DeepLiftShap(imported)
    shap.SHARED_PASS_ELEMENTS = rows_per_pass * x.numel()  # rows in passes of 1, of 3 then 1, all 4 in one
    ours, delta = shap.attribute(x, baselines, target=2, return_convergence_delta=True)
    theirs = CaptumDeepLiftShap(model).attribute(x, baselines, target=2)
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-4)
    assert delta.abs().max() < 1e-4
