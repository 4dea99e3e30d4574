"""IG on recurrent sequence models, against a slow reference: Gauss-Legendre points one at a time
through the original PyTorch module (not the import), Σ weightᵢ·∇f(x0 + αᵢ(x − x0)) · (x − x0).

Two layouts: a captcha-style CNN+LSTM whose export has a fixed batch of 1 and a time-major output
[T, N, C] read through a greedy-path mask (dddd_ocr's), where the steps stack on the input's batch
axis; and an LSTM over a sequence [T, 1, F] whose time axis is declared like a batch, where the
batch probe finds the rows mix (one whole example), so the steps must not stack on it. On both, at every step count, our
attributions and convergence delta are the reference's: a delta that changes with the steps is the
path's, not the stacking's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import onnx_attr

from conftest import FLOAT, make_model
from exporting import to_onnx


class CaptchaNet(nn.Module):
    """Conv over a text strip, columns as time steps, an LSTM, per-step class scores [T, N, C]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.lstm = nn.LSTM(3 * 4, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):  # [N, 1, 4, W]
        h = torch.relu(self.conv(x))  # [N, 3, 4, W]
        steps = h.flatten(1, 2).permute(2, 0, 1)  # [W, N, 12]: time-major
        y, _ = self.lstm(steps)
        return self.head(y) * 20.0  # logits in the tens, as a trained recogniser's


def frame_lstm(frames: int = 9, features: int = 3, hidden: int = 5):
    """An ONNX LSTM over a sequence of dynamic length T with a fixed batch of 1, X [T, 1, F] ->
    Y [T, 1, 1, H] (silero-vad's sequence export: axis 0 is time, declared like a batch), and the
    same LSTM in PyTorch (ONNX gate order i, o, f, c to PyTorch's i, f, g, o) as the oracle."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((1, 4 * hidden, features)).astype(np.float32) * 0.8
    r = rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.8
    b = rng.standard_normal((1, 8 * hidden)).astype(np.float32) * 0.3
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=hidden)
    onnx_model = make_model([node], [("X", FLOAT, ["T", 1, features])], [("Y", FLOAT, ["T", 1, 1, hidden])],
                            {"W": w, "R": r, "B": b}, opset=14)
    lstm = nn.LSTM(features, hidden)
    order = np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in (0, 2, 3, 1)])
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(w[0][order]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(r[0][order]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b[0, :4 * hidden][order]))
        lstm.bias_hh_l0.copy_(torch.from_numpy(b[0, 4 * hidden:][order]))
    return onnx_model, (lambda x: lstm(x)[0].unsqueeze(2))


def reference_ig(module: nn.Module, value, x: torch.Tensor, base: torch.Tensor, n_steps: int):
    """IG one Gauss-Legendre point at a time through `module` (float64 sums), and its delta."""
    points, weights = np.polynomial.legendre.leggauss(n_steps)
    total = torch.zeros_like(x, dtype=torch.float64)
    for p, w in zip((points + 1) / 2, weights / 2):
        xa = (base + float(p) * (x - base)).requires_grad_(True)
        grad, = torch.autograd.grad(value(module(xa)), xa)
        total += float(w) * grad.double()
    attributions = total * (x - base).double()
    with torch.no_grad():
        change = float(value(module(x))) - float(value(module(base)))
    return attributions, attributions.sum().item() - change


def test_ig_on_a_time_major_cnn_lstm_equals_the_point_at_a_time_reference():
    module = CaptchaNet().eval()
    x = torch.rand(1, 1, 4, 7, generator=torch.Generator().manual_seed(2)) * 2 - 1  # (pixel/255 − 0.5)/0.5
    model = onnx_attr.load(to_onnx(module, x, dynamic_batch=False))
    with torch.no_grad():
        out = module(x)  # [7, 1, 5]
    mask = torch.zeros(1, *out.shape[::2])  # the greedy path: each step's argmax class
    mask[0, torch.arange(out.shape[0]), out[:, 0].argmax(1)] = 1.0
    target = onnx_attr.Target(weights=mask, per_example=True, batch_axis=1)

    def greedy(o):
        return (o[:, 0] * mask[0]).sum()

    base = torch.zeros_like(x)
    ig = onnx_attr.IntegratedGradients(model)
    for n_steps in (4, 16, 64):
        ours, delta = ig.attribute(x, base, target=target, n_steps=n_steps, return_convergence_delta=True)
        assert ig.last_report["steps_stacked"]  # one example per row: the steps ride the batch axis
        reference, reference_delta = reference_ig(module, greedy, x, base, n_steps)
        scale = reference.abs().max().item()
        assert (ours.double() - reference).abs().max().item() <= 1e-5 * scale, n_steps
        assert delta.item() == pytest.approx(reference_delta, abs=1e-4 * scale)


def test_ig_on_a_sequence_read_as_one_example_does_not_stack_steps_on_time():
    onnx_model, module = frame_lstm()
    x = torch.randn(9, 1, 3, generator=torch.Generator().manual_seed(3)) * 3
    model = onnx_attr.load(onnx_model)
    base = torch.zeros_like(x)
    ig = onnx_attr.IntegratedGradients(model)

    def last(o):  # the last frame's unit 2: a target in the output read as one whole example
        return o[8, 0, 0, 2]

    for n_steps in (8, 32):
        ours, delta = ig.attribute(x, base, target=(8, 0, 0, 2), n_steps=n_steps, return_convergence_delta=True)
        assert not ig.last_report["steps_stacked"]  # the probe found the frames mix: one example
        reference, reference_delta = reference_ig(module, last, x, base, n_steps)
        scale = reference.abs().max().item()
        assert (ours.double() - reference).abs().max().item() <= 1e-5 * scale, n_steps
        assert delta.item() == pytest.approx(reference_delta, abs=1e-4 * scale)
