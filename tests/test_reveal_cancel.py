"""DeepLIFT's RevealCancel rule: hand-computed values, an independent numpy re-implementation of
the paper's equations, completeness on whole models, and the forward left unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx import helper

from conftest import FLOAT, make_model
from exporting import to_onnx


class _Cancel(nn.Module):
    """relu(x1 - x2): the paper's example of contributions that cancel inside a ReLU."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1, bias=False)
        self.linear.weight.data = torch.tensor([[1.0, -1.0]])

    def forward(self, x):
        return torch.relu(self.linear(x))


def test_hand_computed_values():
    model = onnx_attr.load(to_onnx(_Cancel(), torch.randn(2, 2)))
    x = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, target=0, return_convergence_delta=True)
    # x = (3, 1): Δx⁺ = 3, Δx⁻ = -1; Δy⁺ = ½(relu 3 - 0) + ½(relu 2 - relu -1) = 2.5,
    # Δy⁻ = ½(relu -1 - 0) + ½(relu 2 - relu 3) = -0.5. x = (1, 3): the output is 0 but the
    # rule reveals +0.5 and -0.5 where Rescale gives 0 and 0.
    torch.testing.assert_close(attributions, torch.tensor([[2.5, -0.5], [0.5, -0.5]]))
    assert delta.abs().max() == 0
    assert method.last_report["rule"] == "revealcancel"
    assert len(method.last_report["reveal_cancel_nodes"]) == 1 and method.last_report["rescale_nodes"] == []
    rescale = onnx_attr.DeepLift(model).attribute(x, target=0)
    torch.testing.assert_close(rescale, torch.tensor([[3.0, -1.0], [0.0, 0.0]]))


def _numpy_reveal_cancel(layers, x, x0, target):
    """The paper's equations for a dense net [(W, b, f), ...], straight from §3.5.1 and §3.5.3."""
    acts, refs, parts = [x], [x0], []
    for w, b, f in layers:
        p, p0 = acts[-1], refs[-1]
        terms = w * (p - p0)[None, :]  # w_ji Δp_i
        plus, minus = np.where(terms > 0, terms, 0).sum(1), np.where(terms < 0, terms, 0).sum(1)
        z0 = w @ p0 + b
        y0, y = f(z0), f(w @ p + b)
        dy_plus = 0.5 * (f(z0 + plus) - y0) + 0.5 * (y - f(z0 + minus))
        dy_minus = 0.5 * (f(z0 + minus) - y0) + 0.5 * (y - f(z0 + plus))
        with np.errstate(divide="ignore", invalid="ignore"):
            m_plus = np.where(plus != 0, dy_plus / plus, 0.0)
            m_minus = np.where(minus != 0, dy_minus / minus, 0.0)
        parts.append((terms, m_plus, m_minus, w))
        acts.append(y)
        refs.append(y0)
    grad = np.zeros_like(acts[-1])
    grad[target] = 1.0
    for terms, m_plus, m_minus, w in reversed(parts):
        per_link = np.where(terms > 0, m_plus[:, None], m_minus[:, None]) * w
        grad = grad @ per_link
    return grad * (x - x0)


@pytest.mark.usefixtures("hole_filling")
def test_equals_an_independent_numpy_implementation():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid())
    net = net.double().eval()
    model = onnx_attr.load(to_onnx(net, torch.randn(2, 6, dtype=torch.float64)), strip_final_activation=False)
    x = torch.randn(4, 6, dtype=torch.float64)
    x0 = torch.randn(1, 6, dtype=torch.float64) * 0.3
    targets = [0, 3, 1, 2]
    ours, delta = onnx_attr.DeepLift(model, rule="revealcancel").attribute(x, x0, target=targets,
                                                                          return_convergence_delta=True)
    fns = [lambda z: np.maximum(z, 0), np.tanh, lambda z: 1 / (1 + np.exp(-z))]
    layers = [(lin.weight.detach().numpy(), lin.bias.detach().numpy(), f)
              for lin, f in zip((net[0], net[2], net[4]), fns)]
    expected = np.stack([_numpy_reveal_cancel(layers, x[i].numpy(), x0[0].numpy(), t)
                         for i, t in enumerate(targets)])
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10, rtol=1e-8)
    assert delta.abs().max() < 1e-10


class _Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2, 16), nn.Linear(16, 5)
        self.act = nn.PReLU(16)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.nn.functional.elu(self.conv2(h) + h[:, :1, 1:-1, 1:-1])  # a residual add: Rescale there
        h = self.act(self.fc1(h.flatten(1)))
        return self.fc2(h * torch.sigmoid(h))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)], ids=["float64", "float32"])
@pytest.mark.usefixtures("hole_filling")
def test_completeness_on_a_cnn(dtype, tol):
    torch.manual_seed(0)
    net = _Cnn().to(dtype).eval()
    model = onnx_attr.load(to_onnx(net, torch.randn(2, 3, 8, 8, dtype=dtype)))
    x = torch.randn(5, 3, 8, 8, dtype=dtype)
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    attributions, delta = method.attribute(x, torch.randn(1, 3, 8, 8, dtype=dtype) * 0.1, target=[0, 1, 2, 3, 4],
                                           return_convergence_delta=True)
    change = method.last_report["convergence_delta"]
    assert attributions.shape == x.shape and len(change) == 5
    assert method.last_report["max_relative_delta"] <= tol
    ops = {n for n, _, _ in method.engine.rewrite.rewritten}
    assert set(method.last_report["reveal_cancel_nodes"]) <= ops
    # conv1 -> Relu and fc1 -> PRelu fused; Elu follows a residual Add, Sigmoid a PRelu: Rescale there
    assert len(method.last_report["reveal_cancel_nodes"]) == 2
    assert len(method.last_report["rescale_nodes"]) == 2
    differs = onnx_attr.DeepLift(model).attribute(x, torch.randn(1, 3, 8, 8, dtype=dtype) * 0.1,
                                                  target=[0, 1, 2, 3, 4])
    assert not torch.allclose(differs, attributions)


def test_forward_is_unchanged_bit_for_bit():
    torch.manual_seed(1)
    net = _Cnn().eval()
    model = onnx_attr.load(to_onnx(net, torch.randn(2, 3, 8, 8)))
    rewritten = onnx_attr.DeepLift(model, rule="revealcancel").engine.rewrite.module
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(rewritten(x), model(x))


def test_unknown_rule_is_a_clear_error():
    model = onnx_attr.load(to_onnx(_Cancel(), torch.randn(2, 2)))
    with pytest.raises(onnx_attr.InputError, match="unknown DeepLift rule 'revealcancell'"):
        onnx_attr.DeepLift(model, rule="revealcancell")



def _conv_bn_model(sign: float):
    """Conv -> BatchNormalization -> Relu -> MatMul -> bias Add -> Tanh -> ReduceSum, built by hand
    (exporters fold the BatchNormalization into the Conv)."""
    rng = np.random.default_rng(4)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "proj"], ["m"]),
        helper.make_node("Add", ["m", "proj_bias"], ["a"]),
        helper.make_node("Tanh", ["a"], ["h"]),
        helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=0),
    ]
    inits = {"w": f32(rng.normal(size=(3, 2, 3, 3))), "scale": f32(sign * np.array([0.5, 1.0, 2.0])),
             "bias": f32(rng.normal(size=3)), "mean": f32(rng.normal(size=3)), "var": f32(rng.random(3) + 0.5),
             "proj": f32(rng.normal(size=(3, 4))), "proj_bias": f32(rng.normal(size=4)),
             "axes": np.array([1, 2], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["n", 2, 6, 6])], [("y", FLOAT, ["n", 4])], inits)


@pytest.mark.parametrize("sign,fused", [(1.0, 2), (-1.0, 1)], ids=["positive-scale", "negative-scale"])
def test_chains_through_bias_and_positive_scales_only(sign, fused):
    model = onnx_attr.load(_conv_bn_model(sign))
    method = onnx_attr.DeepLift(model, rule="revealcancel")
    x = torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    method.attribute(x, target=[0, 1, 3])
    assert method.last_report["max_relative_delta"] < 1e-4
    assert len(method.last_report["reveal_cancel_nodes"]) == fused
