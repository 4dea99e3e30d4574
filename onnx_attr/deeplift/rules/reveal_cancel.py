"""DeepLIFT's RevealCancel rule (Shrikumar et al. 2017, §3.5.3), which Captum never shipped.

Rescale treats a nonlinearity's input change Δx as one quantity, so positive and negative
contributions that cancel inside it (ReLU(+3 - 3)) hide each other. RevealCancel splits Δx
into Δx⁺ and Δx⁻, the sums of the positive and of the negative terms w_i·Δp_i of the weighted
op feeding it, and gives each half the average of its two orderings:

    Δy⁺ = ½[f(x0 + Δx⁺) - f(x0)] + ½[f(x) - f(x0 + Δx⁻)]
    Δy⁻ = ½[f(x0 + Δx⁻) - f(x0)] + ½[f(x) - f(x0 + Δx⁺)]

Δy⁺ + Δy⁻ = f(x) - f(x0) whatever the split, so completeness holds exactly. Input p_i then
gets w_i·m⁺ where w_i·Δp_i > 0 and w_i·m⁻ where it is < 0 (the paper's linear-rule split).

Where the paper leaves a choice we follow the reference implementation (kundajelab/deeplift,
`deeplift/layers/`): an input with Δp_i = 0 gets ½(m⁺ + m⁻)·w_i, and a Δx± of 0 takes a
pseudocount secant rather than f'(x0) (`split_multipliers`); docs/architecture.md works an
example through.

The split needs the weights, so the rewrite fuses the weighted op (Conv, ConvTranspose, Gemm,
MatMul, Mul by a constant), any bias Add, reshapes and positive-linear ops (average pooling,
positive scales) after it, and the nonlinearity into one `LinearThenUnary` node; this rule is
that node's backward. Since w_i·Δp_i > 0 exactly when w_i and Δp_i share a sign,
Δx⁺ = L(Δp⁺; W⁺) + L(Δp⁻; W⁻) with L the linear part of the chain, which keeps the sign of every
term because what follows the weighted op only adds constants or scales by positive factors.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

from onnx_attr.deeplift.rules.base import NodeInfo, Rule, reduce_to
from onnx_attr.deeplift.rules.paired import secant_tolerance, sync_free


class LinearThenUnary(nn.Module):
    """f(L(*linear_args), *unary_args): the fused chain, computing exactly what the nodes did."""

    def __init__(self, linear: fx.GraphModule, unary: nn.Module, n_linear: int, weight: str | None):
        super().__init__()
        self.linear, self.unary = linear, unary
        self.n_linear, self.weight = n_linear, weight  # `weight`: the name functional_call replaces

    def forward(self, *args):
        return self.unary(self.linear(*args[:self.n_linear]), *args[self.n_linear:])

    def current_weight(self) -> Tensor | None:
        """The head's weight; None for a head without one (non-negative coefficients, reveal_fusion)."""
        if self.weight is None:
            return None
        module, _, name = self.weight.rpartition(".")
        return getattr(self.linear.get_submodule(module), name)

    def linear_with(self, weight: Tensor | None, args: Sequence[Any]) -> Tensor:
        """The chain with its weight replaced (bias and other constants unchanged)."""
        if weight is None:
            return self.linear(*args)
        return functional_call(self.linear, {self.weight: weight}, tuple(args))


#: The reference implementation's pseudocount (`deeplift.util.NEAR_ZERO_THRESHOLD`): a Δx⁺ or Δx⁻
#: too small to divide by is moved this far from 0 (up for Δ ≥ 0) and its multiplier is the secant
#: over that step. Here the step grows with the tensor's magnitude where 10⁻⁷ would be lost to
#: rounding (float32, large activations), and only a Δ below rounding noise takes it.
PSEUDOCOUNT = 1e-7


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
        linear_args = list(args[:k])

        def lin(v: Tensor, w: Tensor) -> Tensor:  # the chain's linear part: bias removed
            linear_args[pos] = v
            return fused.linear_with(w, linear_args)

        zeros = torch.zeros_like(dp)
        offset = lin(zeros, w_pos) + lin(zeros, w_neg)  # the constant terms (bias) of both sums
        dp_pos, dp_neg = dp.clamp(min=0), dp.clamp(max=0)
        d_plus = lin(dp_pos, w_pos) + lin(dp_neg, w_neg) - offset
        d_minus = lin(dp_pos, w_neg) + lin(dp_neg, w_pos) - offset
        m_plus, m_minus = split_multipliers(f, fused.linear(*refs[:k]), out, ref_out, d_plus, d_minus)
        a, b = m_plus * grad, m_minus * grad
        # An input with Δp > 0 sends its terms w·Δp to Δx⁺ through W⁺ and to Δx⁻ through W⁻ (Δp < 0:
        # the other way round); one with Δp = 0 (a ReLU off at input and reference, common) adds
        # nothing to either and gets the mean of the two routes, ½(m⁺ + m⁻)·w, as the reference
        # implementation gives it. Its multiplier still matters upstream, where its 0 = Δy⁺ + Δy⁻
        # may hide a cancellation.
        half = torch.sign(dp) * 0.5
        up, down = 0.5 + half, 0.5 - half  # 1, 0 or ½: exact in floating point
        with torch.enable_grad():
            v = torch.zeros_like(p).requires_grad_(True)
            pos_part, neg_part = v * up, v * down
            surrogate = ((a * (lin(pos_part, w_pos) + lin(neg_part, w_neg))).sum()
                         + (b * (lin(pos_part, w_neg) + lin(neg_part, w_pos))).sum())
            (grad_p,) = torch.autograd.grad(surrogate, v)
        grads: list[Tensor | None] = [None] * len(args)
        grads[pos] = reduce_to(grad_p, p.shape)
        return grads

    def check(self, info: NodeInfo) -> None:
        if len(info.variable_positions()) != 1:
            raise NotImplementedError("RevealCancel needs one varying input to its weighted op")


def split_multipliers(f: Callable[[Tensor], Tensor], x0: Tensor, y: Tensor, y0: Tensor, d_plus: Tensor,
                      d_minus: Tensor) -> tuple[Tensor, Tensor]:
    """m⁺ = Δy⁺/Δx⁺ and m⁻ = Δy⁻/Δx⁻, each Δy the mean of its two orderings.

    Δy⁺ = ½[f(x0 + Δx⁺) - f(x0)] + ½[f(x) - f(x0 + Δx⁻)] uses f(x) itself, not f(x0 + Δx⁻ + Δx⁺)
    as the reference implementation does, so that Δy⁺ + Δy⁻ = f(x) - f(x0) exactly. A Δx± below
    rounding noise (exactly 0 when every term has the other sign) takes the reference's
    pseudocount instead: the same mean of two secants, over a step s from x0 and from x0 + Δx∓,
    ½[(f(x0 + s) - f(x0)) / s + (f(x0 + Δx∓ + s) - f(x0 + Δx∓)) / s]. For a ReLU that is
    off at x0 and on at x, that is ½, where f'(x0) would be 0.
    """
    f_plus, f_minus = f(x0 + d_plus), f(x0 + d_minus)
    dy_plus = 0.5 * ((f_plus - y0) + (y - f_minus))
    dy_minus = 0.5 * ((f_minus - y0) + (y - f_plus))
    small_plus = d_plus.abs() <= secant_tolerance(d_plus, x0.expand_as(d_plus))
    small_minus = d_minus.abs() <= secant_tolerance(d_minus, x0.expand_as(d_minus))
    m_plus = dy_plus / d_plus.masked_fill(small_plus, 1.0)
    m_minus = dy_minus / d_minus.masked_fill(small_minus, 1.0)
    if not sync_free(m_plus) and not bool(small_plus.any() | small_minus.any()):
        return m_plus, m_minus
    scale = torch.maximum(_max_abs(x0), torch.maximum(_max_abs(d_plus), _max_abs(d_minus)))
    step = torch.clamp(scale * torch.finfo(scale.dtype).eps ** 0.5, min=PSEUDOCOUNT)
    # the reference's sign convention: a Δ that is 0 or positive moves up, a negative one down
    pc_plus = torch.where(small_plus, d_plus + torch.where(d_plus < 0, -step, step), d_plus)
    pc_minus = torch.where(small_minus, d_minus + torch.where(d_minus < 0, -step, step), d_minus)
    m_plus = torch.where(small_plus, _mean_secant(f, x0, x0 + pc_minus, pc_plus), m_plus)
    m_minus = torch.where(small_minus, _mean_secant(f, x0, x0 + pc_plus, pc_minus), m_minus)
    return m_plus, m_minus


def _mean_secant(f: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, step: Tensor) -> Tensor:
    """½ of the secants of f over [a, a + step] and [b, b + step], each over the step as rounded."""
    a, b = a.expand_as(b), b
    a_end, b_end = a + step, b + step
    return 0.5 * ((f(a_end) - f(a)) / (a_end - a) + (f(b_end) - f(b)) / (b_end - b))


def _max_abs(t: Tensor) -> Tensor:
    return t.detach().abs().amax() if t.numel() else t.new_zeros(())
