"""A quantizer's staircase fed by a linear op, with multipliers that stay bounded.

Rescale's secant ΔQ/Δx is a complete multiplier for a static quantizer's QuantizeLinear →
DequantizeLinear pair Q (unary.FakeQuant), but an unbounded one: where the terms w_i·Δp_i of the
linear op before it cancel to a Δx far below the step s while x and x0 straddle a step, ΔQ = ±s
and the multiplier is s/|Δx|. In a deep quantized network such elements sit on every path (one in
10⁵ takes 10⁵ or more), the products of their multipliers reach 10¹⁷, and float rounding swamps
Σ attributions: U²-Net after onnxruntime's static quantizer had a relative delta of 4·10³.

Here Q = c + r, c the clamp to Q's range and r the rounding. Every term gets c's secant m_c, which
lies in [0, 1]; r's change Δr = ΔQ - m_c·Δx goes to the terms in proportion to their size, each
with its sign: input p_i gets w_i·m_c + |w_i|·sign(Δp_i)·Δr/S, where S = Σ|w_i·Δp_i|. Then
Σ contributions = m_c·Δx + Δr·S/S = ΔQ exactly, and |Δr/S| ≤ (s + |Δx|)/S: large only where
every term is small, not where large terms cancel. S comes from Δp through the op itself; Δx is
x - x0 as the forward rounded them, whose gap to the op applied to Δp meets only m_c ≤ 1, as
after a ReLU.

The linear op is fused with the quantizer by reveal_fusion (a Conv, Gemm or MatMul with its
constant weight, or a chain of sign-keeping ops alone, such as an upsampling Resize or a residual
Add of two varying tensors; |L| is then L itself). A quantizer with no linear op before it keeps
unary.FakeQuant.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from onnx_attr.deeplift.quant_fusion import staircase_range
from onnx_attr.deeplift.rules.base import NodeInfo, Rule, reduce_to
from onnx_attr.deeplift.rules.reveal_cancel import LinearThenUnary


class StaircaseSplit(Rule):
    kind = "unary"
    memoizes = True  # the linear op at the reference and at 0, and Q's range, once per reference
    keeps_graph = True  # the linear op's graph at x, recorded by the forward, serves the backward

    def forward_with_graph(self, info: NodeInfo, call: Callable, live: Sequence[Any], refs: Sequence[Any],
                           memo: dict | None = None):
        """Q(L(p)) as the fused node computes it, keeping L(p) and its graph for the backward (in the
        memo, which lives with the reference; each forward replaces it)."""
        fused: LinearThenUnary = call.module
        x = fused.linear(*live[:fused.n_linear])
        memo["x"] = x
        return fused.unary(x.detach(), *live[fused.n_linear:])

    def backward(self, info: NodeInfo, call: Callable, grad: Tensor, args: Sequence[Any], out: Tensor,
                 refs: Sequence[Any], ref_out: Tensor, memo: dict | None = None,
                 graph: tuple | None = None) -> list[Tensor | None]:
        fused: LinearThenUnary = call.module
        k = fused.n_linear
        positions = info.variable_positions()  # one, or a residual Add's two
        weight = fused.current_weight()
        memo = {} if memo is None else memo
        staircase = (lambda t: fused.unary(t, *args[k:])) if len(args) > k else fused.unary
        if "x0" not in memo:
            memo["x0"] = x0 = fused.linear(*refs[:k])
            memo["offset"] = _compact(_linear(fused, refs[:k], {i: torch.zeros_like(refs[i]) for i in positions}, weight))
            memo["range"] = staircase_range(staircase, x0)
            # |W|, once: a head without a weight has coefficients ≥ 0 (one tensor kept, so that an integer
            # convolution's exact plan for it is found once too)
            memo["size"] = None if weight is None else weight.abs()
        x0, offset, size = memo["x0"], memo["offset"], memo["size"]  # the op at the reference, its constant terms
        dps = [args[i] - refs[i] for i in positions]
        with torch.enable_grad():
            live, x = graph[0], memo.pop("x")  # the varying inputs and L at them, from the forward
            magnitudes = [dp.abs().requires_grad_(True) for dp in dps]
            spread_at = _linear(fused, args[:k], dict(zip(positions, magnitudes)), size)
            spread = spread_at.detach() - offset  # S = Σ|w_i·Δp_i| ≥ |Δx|
            dx = x.detach() - x0
            m_c = _clamp_secant(*memo["range"], x0, dx, memo)
            # Δr / S where S > 0; 0 where nothing moved (0/0) or where S rounded to 0 or below (±inf, NaN)
            share = (out - ref_out - m_c * dx).div_(spread.clamp_(min=0.0)).nan_to_num_(0.0, 0.0, 0.0)
            found = torch.autograd.grad([x, spread_at], live + magnitudes, [grad * m_c, grad * share],
                                        allow_unused=True)
        grads: list[Tensor | None] = [None] * len(args)
        for n, (i, dp) in enumerate(zip(positions, dps)):
            through, sized = (torch.zeros_like(dp) if g is None else g for g in (found[n], found[len(dps) + n]))
            grads[i] = reduce_to(through + torch.sign(dp) * sized, args[i].shape)
        return grads

    def check(self, info: NodeInfo) -> None:
        if not info.variable_positions():
            raise NotImplementedError("the staircase split needs a varying input to its linear op")


def _linear(fused: LinearThenUnary, args: Sequence[Any], values: dict[int, Tensor], weight: Tensor | None) -> Tensor:
    """The fused linear op with `values` for its varying inputs and `weight` for its weight."""
    return fused.linear_with(weight, [values.get(i, a) for i, a in enumerate(args)])


def _compact(t: Tensor) -> Tensor:
    """`t` kept as one value per channel (axis 1) where it is constant over the other axes (a bias,
    the op at zero), else whole: it is kept with the reference for every quantizer."""
    if t.dim() < 3:
        return t
    axes = (0, *range(2, t.dim()))
    low, high = t.amin(axes, keepdim=True), t.amax(axes, keepdim=True)
    return high if bool(torch.equal(low, high)) else t


def _clamp_secant(low: Tensor, high: Tensor, x0: Tensor, dx: Tensor, memo: dict | None = None) -> Tensor:
    """The secant of Q's clamp to its range [low, high] over [x0, x0 + Δx], in [0, 1]; where Δx is 0,
    the clamp's slope at x0 (1 inside the range, 0 at or past its ends). The reference's side is kept
    in `memo` (it is the same on every call over one reference)."""
    memo = {} if memo is None else memo
    if "clamped0" not in memo:
        memo["clamped0"] = torch.clamp(x0, low, high)
        memo["inside0"] = ((x0 > low) & (x0 < high)).to(x0.dtype)
    still = dx == 0
    secant = (torch.clamp(x0 + dx, low, high) - memo["clamped0"]).div_(dx.masked_fill(still, 1.0))
    return torch.where(still, memo["inside0"].to(dx.dtype), secant).clamp_(0.0, 1.0)
