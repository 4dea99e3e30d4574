"""DeepLIFT's RevealCancel rule (Shrikumar et al. 2017, §3.5.3), which Captum never shipped.

Rescale treats a nonlinearity's input change Δx as one quantity, so positive and negative
contributions that cancel inside it (ReLU(+3 - 3)) hide each other. RevealCancel splits Δx
into Δx⁺ and Δx⁻, the sums of the positive and of the negative terms w_i·Δp_i of the weighted
op feeding it, and gives each half the average of its two orderings:

    Δy⁺ = ½[f(x0 + Δx⁺) - f(x0)] + ½[f(x) - f(x0 + Δx⁻)]
    Δy⁻ = ½[f(x0 + Δx⁻) - f(x0)] + ½[f(x) - f(x0 + Δx⁺)]

Δy⁺ + Δy⁻ = f(x) - f(x0) whatever the split, so completeness holds exactly. Input p_i then
gets w_i·m⁺ where w_i·Δp_i > 0 and w_i·Δp_i·m⁻ otherwise (the paper's linear-rule split).

The split needs the weights, so the rewrite fuses the weighted op (Conv, ConvTranspose, Gemm,
MatMul, Mul by a constant), any bias Add and reshapes after it, and the nonlinearity into one
`LinearThenUnary` node; this rule is that node's backward. Since w_i·Δp_i > 0 exactly when
w_i and Δp_i share a sign, Δx⁺ = L(Δp⁺; W⁺) + L(Δp⁻; W⁻) with L the linear part of the chain.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

from .base import NodeInfo, Rule, reduce_to
from .paired import secant_tolerance, sync_free


class LinearThenUnary(nn.Module):
    """f(L(*linear_args), *unary_args): the fused chain, computing exactly what the nodes did."""

    def __init__(self, linear: fx.GraphModule, unary: nn.Module, n_linear: int, weight: str):
        super().__init__()
        self.linear, self.unary = linear, unary
        self.n_linear, self.weight = n_linear, weight  # `weight`: the name functional_call replaces

    def forward(self, *args):
        return self.unary(self.linear(*args[:self.n_linear]), *args[self.n_linear:])

    def current_weight(self) -> Tensor:
        module, _, name = self.weight.rpartition(".")
        return getattr(self.linear.get_submodule(module), name)

    def linear_with(self, weight: Tensor, args: Sequence[Any]) -> Tensor:
        """The chain with its weight replaced (bias and other constants unchanged)."""
        return functional_call(self.linear, {self.weight: weight}, tuple(args))


class RevealCancel(Rule):
    kind = "unary"

    def backward(self, info: NodeInfo, call: Callable, grad: Tensor, args: Sequence[Any], out: Tensor,
                 refs: Sequence[Any], ref_out: Tensor) -> list[Tensor | None]:
        fused: LinearThenUnary = call.module
        k = fused.n_linear
        (pos,) = info.variable_positions()
        rest = list(args[k:])
        f = lambda t: fused.unary(t, *rest)  # noqa: E731
        weight = fused.current_weight()
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        p, p0 = args[pos], refs[pos]
        dp = p - p0
        up = dp > 0
        dp_pos, dp_neg = dp * up, dp * ~up
        linear_args = list(args[:k])

        def lin(v: Tensor, w: Tensor) -> Tensor:  # the chain's linear part: bias removed
            linear_args[pos] = v
            return fused.linear_with(w, linear_args)

        zeros = torch.zeros_like(dp)
        offset = lin(zeros, w_pos) + lin(zeros, w_neg)  # the constant terms (bias) of both sums
        d_plus = lin(dp_pos, w_pos) + lin(dp_neg, w_neg) - offset
        d_minus = lin(dp_pos, w_neg) + lin(dp_neg, w_pos) - offset
        x0 = fused.linear(*refs[:k])
        y, y0 = out, ref_out
        f_plus, f_minus = f(x0 + d_plus), f(x0 + d_minus)
        m_plus = _secant(0.5 * ((f_plus - y0) + (y - f_minus)), d_plus, x0, f)
        m_minus = _secant(0.5 * ((f_minus - y0) + (y - f_plus)), d_minus, x0, f)
        a, b = m_plus * grad, m_minus * grad
        with torch.enable_grad():
            v = torch.zeros_like(p).requires_grad_(True)
            pos_part, neg_part = v * up, v * ~up
            surrogate = ((a * (lin(pos_part, w_pos) + lin(neg_part, w_neg))).sum()
                         + (b * (lin(pos_part, w_neg) + lin(neg_part, w_pos))).sum())
            (grad_p,) = torch.autograd.grad(surrogate, v)
        grads: list[Tensor | None] = [None] * len(args)
        grads[pos] = reduce_to(grad_p, p.shape)
        return grads

    def check(self, info: NodeInfo) -> None:
        if len(info.variable_positions()) != 1:
            raise NotImplementedError("RevealCancel needs one varying input to its weighted op")


def _secant(change: Tensor, d: Tensor, x0: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """change / d, with f'(x0) where d is too small to divide by (its term is ~0 either way)."""
    close = d.abs() <= secant_tolerance(d, x0.expand_as(d))
    m = change / d.masked_fill(close, 1.0)
    if not sync_free(m) and not bool(close.any()):
        return m
    with torch.enable_grad():
        xg = x0.detach().expand_as(d).clone().requires_grad_(True)
        (slope,) = torch.autograd.grad(f(xg), xg, torch.ones_like(m))
    return torch.where(close, slope, m)

