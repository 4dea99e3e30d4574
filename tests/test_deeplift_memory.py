"""What DeepLift's main pass holds for its backward, and what its reference pass keeps.

A first call touches every page of it for the first time (issue 18 §7), so each is checked here as
bytes: one multiplier per elementwise nonlinearity that the explained output is computed from, no
convolution input, nothing for another head. The attributions are checked against Captum's DeepLift
on the same torch model, which holds everything (its hooks keep each op's input and output).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from torch import nn

import onnx_attr
import onnx_attr.deeplift.engine as engine_module

from exporting import to_onnx

SIDE = 10


class TwoHeads(nn.Module):
    """A trunk (conv, ReLU, conv, Sigmoid) and two heads: conv, ReLU, mean; conv, Tanh, mean."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                                   nn.Sigmoid())
        self.head_a = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.ReLU())
        self.head_b = nn.Sequential(nn.Conv2d(6, 5, 1), nn.Tanh())

    def forward(self, x):
        h = self.trunk(x)
        return self.head_a(h).mean((2, 3)), self.head_b(h).mean((2, 3))


class OneHead(nn.Module):
    """One output of `TwoHeads`, for Captum (which explains a module's single output)."""

    def __init__(self, model: TwoHeads, output: int):
        super().__init__()
        self.trunk, self.head = model.trunk, (model.head_a, model.head_b)[output]

    def forward(self, x):
        return self.head(self.trunk(x)).mean((2, 3))


def _saved_bytes_in_main_pass(monkeypatch) -> list[int]:
    """Records, per DeepLift call, the bytes of the distinct non-parameter storages that the
    autograd graph of the explained value holds (every node's saved tensors, read off the graph)."""
    found: list[int] = []
    real = engine_module.target_gradients

    def spy(value, wanted, scale):
        storages: dict[int, int] = {}
        stack, seen = [value.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            tensors = [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
            if hasattr(node, "saved_tensors"):
                tensors += list(node.saved_tensors)
            for t in tensors:
                for u in t if isinstance(t, (tuple, list)) else [t]:
                    if isinstance(u, torch.Tensor) and not isinstance(u, nn.Parameter):
                        storages[u.untyped_storage().data_ptr()] = u.untyped_storage().nbytes()
            stack.extend(n for n, _ in node.next_functions)
        found.append(sum(storages.values()))
        return real(value, wanted, scale)

    monkeypatch.setattr(engine_module, "target_gradients", spy)
    return found


@pytest.fixture(scope="module")
def two_heads():
    model = TwoHeads().eval()
    return model, onnx_attr.load(to_onnx(model, torch.randn(2, 3, SIDE, SIDE)))


def _captum(model: TwoHeads, output: int, x, baseline, target):
    return CaptumDeepLift(OneHead(model, output)).attribute(x, baseline, target=target)


def test_main_pass_holds_one_multiplier_per_nonlinearity_of_the_explained_head(two_heads, monkeypatch):
    model, imported = two_heads
    torch.manual_seed(0)
    x, baseline = torch.randn(2, 3, SIDE, SIDE) * 40, torch.randn(1, 3, SIDE, SIDE) * 40  # far apart
    saved = _saved_bytes_in_main_pass(monkeypatch)
    attributions, delta = onnx_attr.DeepLift(imported).attribute(x, baseline, target=1, return_convergence_delta=True)
    # the ReLU, Sigmoid and ReLU that head a is computed from: 8 + 6 + 4 channels per example; not the
    # convolutions' inputs (their weights' gradient), not the nonlinearities' inputs and outputs, nothing
    # of head b
    multipliers = 4 * 2 * (8 + 6 + 4) * SIDE * SIDE
    assert multipliers <= saved[0] <= multipliers + 4096, (saved, multipliers)
    torch.testing.assert_close(attributions, _captum(model, 0, x, baseline, 1), rtol=1e-4, atol=1e-4)
    assert float(delta.abs().max()) < 1e-4


def test_each_output_has_its_own_reference_and_agrees_with_captum(two_heads, monkeypatch):
    """The other head's ops keep no reference when one output is explained, so a reference is kept
    per output: explaining the second output after the first, with the same baseline, runs its own."""
    model, imported = two_heads
    torch.manual_seed(1)
    x, baseline = torch.rand(3, 3, SIDE, SIDE) * 255, torch.zeros(1, 3, SIDE, SIDE)  # unnormalised pixels
    method = onnx_attr.DeepLift(imported)
    passes = []
    real = method.engine._at_baseline
    monkeypatch.setattr(method.engine, "_at_baseline", lambda *a: passes.append(1) or real(*a))
    first = method.attribute(x, baseline, target=2, output=0)
    second = method.attribute(x, baseline, target=[0, 4, 1], output=1)
    again = method.attribute(x, baseline, target=2, output=0)
    assert len(passes) == 2 and len(method.engine.references) == 2
    torch.testing.assert_close(first, _captum(model, 0, x, baseline, 2), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(second, _captum(model, 1, x, baseline, [0, 4, 1]), rtol=1e-4, atol=1e-3)
    assert torch.equal(again, first)


def test_reference_outputs_computed_again_then_kept_give_the_same_attributions(two_heads):
    """The reference pass keeps no f(x0) of an elementwise nonlinearity: the first two calls on a
    baseline compute it again, the second keeps it for the next. Every call agrees, bit for bit, and
    is complete; a new baseline each call too."""
    model, imported = two_heads
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(0, 30, (2, 3, SIDE, SIDE)).astype(np.float32))
    baseline = torch.from_numpy(rng.normal(5, 30, (1, 3, SIDE, SIDE)).astype(np.float32))
    method = onnx_attr.DeepLift(imported)
    calls = [method.attribute(x, baseline, target=3, output=0, return_convergence_delta=True) for _ in range(3)]
    memos = [memo for _, _, memo in method.engine.references._entries[-1][1].values()]
    assert sum("reference output" in memo for memo in memos) == 3  # ReLU, Sigmoid, ReLU
    for attributions, delta in calls:
        assert torch.equal(attributions, calls[0][0]) and float(delta.abs().max()) < 1e-4
    torch.testing.assert_close(calls[0][0], _captum(model, 0, x, baseline, 3), rtol=1e-4, atol=1e-3)
    method.engine.cache_reference = False
    for shift in (0.0, 50.0):
        attributions, delta = method.attribute(x, baseline + shift, target=3, output=0, return_convergence_delta=True)
        assert float(delta.abs().max()) < 1e-4
        torch.testing.assert_close(attributions, _captum(model, 0, x, baseline + shift, 3), rtol=1e-4, atol=1e-3)
