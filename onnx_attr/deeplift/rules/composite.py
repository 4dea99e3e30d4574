"""Composite ops, decomposed into rescale, product and linear steps so completeness is exact.

Each rule reads the ONNX node's attributes (axis, epsilon, ...), not the converted module's
internals, so the decomposition follows the ONNX spec that `verify` checked the module against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import DecomposedRule, NodeInfo, rule
from onnx_attr.deeplift.rules.paired import pair_amax, pair_max, pair_min, product, rescale, scaled_product, secant_to
from onnx_attr.deeplift.rules.softmax_pair import paired_softmax
from onnx_attr.importing.converters.normalization import channel_window_sum


def _require_constant(info: NodeInfo, positions: range | list[int], what: str) -> None:
    if any(info.variable[i] for i in positions if i < len(info.variable)):
        raise NotImplementedError(f"{info.op_type} with a varying {what} is not supported")


def _softmax_axis(info, z, z0):
    """The axis, and z and z0 reshaped as the op sees them (Softmax/LogSoftmax before opset 13
    flatten to 2-D at `axis`)."""
    axis = info.attrs.get("axis", 1 if info.opset < 13 else -1)
    if info.opset < 13:
        axis = axis % z.dim()
        z = z.reshape(math.prod(z.shape[:axis]), -1)
        z0 = z0.reshape(math.prod(z0.shape[:axis]), -1)
        axis = 1
    return axis, z, z0


def exp_shifted(z: Tensor, z0: Tensor, c: Tensor, c0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(exp(z - c), exp(z0 - c0)) as a rescale (c0 = c by default), with the exponents floored
    where both sides' exp underflow anyway.

    Masks written as huge negative logits (-1e9, the dtype's lowest) would otherwise set the
    rescale's secant tolerance, which is relative to the largest magnitude in the tensor, and
    turn every secant into a gradient. The floor changes each term by less than the smallest
    normal number. Where only one side underflows it is not floored: the other side's change,
    exp(u0) - 0, must flow through the secant to the exponent's full change.
    """
    floor = math.log(torch.finfo(z.dtype).tiny)
    u, u0 = z - c, z0 - (c if c0 is None else c0)
    under = (u < floor) & (u0 < floor)
    return rescale(torch.exp, u.masked_fill(under, floor), u0.masked_fill(under, floor))


@rule("Softmax")
class Softmax(DecomposedRule):
    """softmax = exp(z - logsumexp z): one exponential of a non-positive exponent per side."""

    wide = True

    def decompose(self, info, call, args, refs):
        _require_constant(info, range(1, len(args)), "second input")
        shape = args[0].shape
        axis, z, z0 = _softmax_axis(info, args[0], refs[0])
        y, y0 = paired_softmax(z, z0, axis)
        return y.reshape(shape), y0


@rule("QuantizedSoftmax")
class QuantizedSoftmax(DecomposedRule):
    """com.microsoft QLinearSoftmax on integers carried as floats (deeplift/qoperator.py): the softmax
    of the dequantized row, decomposed as Softmax's, then the kernel's own rounding of it, its output
    as the node computed it, through the secant (rules/paired.secant_to). The row's zero point cancels."""

    wide = True

    def decompose(self, info, call, args, refs):
        _require_constant(info, range(1, len(args)), "scale or zero point")
        shape = args[0].shape
        z, z0 = args[0] * args[1].to(args[0].dtype), refs[0] * refs[1].to(refs[0].dtype)
        axis, z, z0 = _softmax_axis(info, z, z0)
        p, p0 = paired_softmax(z, z0, axis)
        with torch.no_grad():
            q, q0 = call(*(a.detach() if isinstance(a, Tensor) else a for a in args)), call(*refs)
        return secant_to(p.reshape(shape), p0.reshape(q0.shape), q.to(p.dtype), q0.to(p.dtype)), q0


@rule("LogSoftmax")
class LogSoftmax(DecomposedRule):
    """log_softmax = z - logsumexp z."""

    wide = True

    def decompose(self, info, call, args, refs):
        shape = args[0].shape
        axis, z, z0 = _softmax_axis(info, args[0], refs[0])
        lse, lse0 = paired_logsumexp(z, z0, (axis,))
        return (z - lse).reshape(shape), z0 - lse0


def _normalize(x, x0, axes, eps, center: bool = True, inverse_std=None):
    """(x - mean) / sqrt(var + eps) over `axes`, as centring, a square (product), a rescale and a
    product in the order that cannot cancel (`scaled_product`); without `center`, x / sqrt(mean(x²) + eps) (RMS normalization). `inverse_std` maps
    the variance to the factor where an op defines it otherwise."""
    d = x - x.mean(axes, keepdim=True) if center else x
    d0 = x0 - x0.mean(axes, keepdim=True) if center else x0
    sq, sq0 = product(torch.mul, d, d0, d, d0)
    inverse_std = inverse_std or (lambda t: torch.rsqrt(t + eps))
    r, r0 = rescale(inverse_std, sq.mean(axes, keepdim=True), sq0.mean(axes, keepdim=True))
    return scaled_product(d, d0, r, r0)


class _AffineNormalization(DecomposedRule):
    """normalize(x over `axes`) * scale + bias, scale and bias constant."""

    wide = True

    center = True

    def check(self, info):
        _require_constant(info, [1, 2], "scale or bias")

    def axes(self, info, x) -> tuple[int, ...]:
        raise NotImplementedError

    def affine(self, info, x, args):
        """scale and bias, shaped to broadcast against x."""
        raise NotImplementedError

    def decompose(self, info, call, args, refs):
        x = args[0]
        y, y0 = _normalize(x, refs[0], self.axes(info, x), info.attrs.get("epsilon", 1e-5), self.center)
        scale, bias = self.affine(info, x, args)
        return y * scale + bias, y0 * scale + bias


@rule("LayerNormalization")
class LayerNorm(_AffineNormalization):
    def check(self, info):
        super().check(info)
        if info.n_outputs > 1:
            raise NotImplementedError("LayerNormalization's Mean/InvStdDev outputs have no DeepLift rule")

    def axes(self, info, x):
        return tuple(range(info.attrs.get("axis", -1) % x.dim(), x.dim()))

    def affine(self, info, x, args):
        return args[1], (args[2] if len(args) > 2 and args[2] is not None else 0.0)


@rule("RMSNormalization")
class RMSNorm(_AffineNormalization):
    center = False

    def axes(self, info, x):
        return tuple(range(info.attrs.get("axis", -1) % x.dim(), x.dim()))

    def affine(self, info, x, args):
        return args[1], 0.0


@rule("InstanceNormalization")
class InstanceNorm(_AffineNormalization):
    def axes(self, info, x):
        return tuple(range(2, x.dim()))

    def affine(self, info, x, args):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return args[1].reshape(view), args[2].reshape(view)


@rule("GroupNormalization")
class GroupNorm(_AffineNormalization):
    """Each group of channels normalised over its channels and spatial axes."""

    def decompose(self, info, call, args, refs):
        x, groups = args[0], info.attrs["num_groups"]
        grouped = (x.shape[0], groups, -1)
        y, y0 = _normalize(x.reshape(grouped), refs[0].reshape(grouped), (2,), info.attrs.get("epsilon", 1e-5))
        view = (1, -1) + (1,) * (x.dim() - 2)
        scale, bias = args[1].reshape(view), args[2].reshape(view)
        return y.reshape(x.shape) * scale + bias, y0.reshape(x.shape) * scale + bias


@rule("MeanVarianceNormalization")
class MeanVarianceNorm(DecomposedRule):
    """(x - mean) / (sqrt(var) + 1e-9): the epsilon outside the root, as ONNX defines it."""

    wide = True

    def check(self, info):
        if 0 in info.attrs.get("axes", [0, 2, 3]):
            raise NotImplementedError("MeanVarianceNormalization over the batch axis mixes the examples, so no "
                                      "example's attribution is its own; normalise over axes without axis 0")

    def decompose(self, info, call, args, refs):
        axes = tuple(a % args[0].dim() for a in info.attrs.get("axes", [0, 2, 3]))
        return _normalize(args[0], refs[0], axes, 0.0, inverse_std=lambda t: 1.0 / (t.sqrt() + 1e-9))


@rule("SwiGLU")
class SwiGLU(DecomposedRule):
    """swish(a) · b: a rescale through swish, then the product rule when b varies too."""

    def decompose(self, info, call, args, refs):
        alpha = info.attrs.get("alpha", 1.0)
        s, s0 = rescale(lambda t: t * torch.sigmoid(alpha * t), args[0], refs[0])
        if info.variable[1]:
            return product(torch.mul, s, s0, args[1], refs[1])
        return s * args[1], s0 * args[1]


@rule("LRN")
class LocalResponseNorm(DecomposedRule):
    """x / (bias + alpha/size · Σ_window x²)^beta: square (product), window sum, rescale, scaled product."""

    wide = True

    def decompose(self, info, call, args, refs):
        x, x0 = args[0], refs[0]
        size = info.attrs["size"]
        alpha, beta, bias = info.attrs.get("alpha", 1e-4), info.attrs.get("beta", 0.75), info.attrs.get("bias", 1.0)
        sq, sq0 = product(torch.mul, x, x0, x, x0)
        q, q0 = rescale(lambda t: (bias + alpha / size * t) ** (-beta), channel_window_sum(sq, size),
                        channel_window_sum(sq0, size))
        return scaled_product(x, x0, q, q0)


def _reduction(info, args, refs, call):
    """x, x0, the reduced axes and keepdims of a Reduce* node."""
    x = args[0]
    return x, refs[0], _reduce_axes(info, args, x.dim(), call), bool(info.attrs.get("keepdims", 1))


def _reduce_axes(info, args, rank, call=None):
    axes = info.attrs.get("axes")
    # from opset 18 the axes are an input, which the converter reads into its module when constant
    folded = getattr(getattr(call, "module", None), "axes", None)
    if axes is None and folded is not None:
        axes = list(folded)
    elif axes is None and len(args) > 1 and args[1] is not None:
        _require_constant(info, [1], "axes input")
        axes = [int(a) for a in args[1].reshape(-1).tolist()]
    if not axes:
        if info.attrs.get("noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


class _Elementwise(DecomposedRule):
    """Max/Min of several tensors (numpy broadcasting), folded pairwise."""

    pair = staticmethod(pair_max)

    def decompose(self, info, call, args, refs):
        y, y0 = args[0], refs[0]
        for a, a0 in zip(args[1:], refs[1:]):
            y, a = torch.broadcast_tensors(y, a)
            y, y0 = self.pair(y, y0, a, a0)
        return y, y0


@rule("Max")
class Max(_Elementwise):
    pass


@rule("Min")
class Min(_Elementwise):
    pair = staticmethod(pair_min)


@rule("ReduceLogSumExp")
class ReduceLogSumExp(DecomposedRule):
    wide = True

    def decompose(self, info, call, args, refs):
        x, x0, axes, keep = _reduction(info, args, refs, call)
        y, y0 = paired_logsumexp(x, x0, axes)
        return (y, y0) if keep else (y.squeeze(axes), y0.squeeze(axes))


def paired_logsumexp(x: Tensor, x0: Tensor, axes, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """log Σ exp over `axes` (kept) = c + log Σ exp(x - c), with c each side's own maximum;
    entries where `valid` is False (padding) are left out of the sum.

    A shift shared by both sides (max over x and x0 together) sends the far side's exponentials
    to 0 once the two are tens apart, and the log's secant then multiplies rounding noise by up
    to 1/tiny. With c = max x and c0 = max x0, both sums lie in [1, n] and every factor is of
    order one; Δc is attributed by the cross-max rule (`pair_amax`), so the split stays exact.
    """
    if valid is not None:  # a constant mask: out of the max and the exponentials (floored to 0)
        x, x0 = masked_lowest(x, valid), masked_lowest(x0, valid)
    c, c0 = pair_amax(x, x0, axes)
    e, e0 = exp_shifted(x, x0, c, c0)
    if valid is not None:  # a constant mask: linear
        e, e0 = e * valid, e0 * valid
    l, l0 = rescale(torch.log, e.sum(axes, keepdim=True), e0.sum(axes, keepdim=True))
    return l + c, l0 + c0


def masked_lowest(x: Tensor, valid: Tensor) -> Tensor:
    """x with the entries outside `valid` at the dtype's lowest: never the max, and exp(lowest - c)
    is floored to 0 (never inf · 0 = NaN where a masked score is far above the valid ones)."""
    return x.masked_fill(~valid, torch.finfo(x.dtype).min)


@rule("LogSumExpPool")
class LogSumExpPoolRule(DecomposedRule):
    """onnx_attr.smooth's pooling: the same log-sum-exp decomposition over each window."""

    wide = True

    def decompose(self, info, call, args, refs):
        pool, beta = call.module, call.module.beta
        y, y0 = paired_logsumexp(beta * pool.windows(args[0]), beta * pool.windows(refs[0]), (-1,),
                                 pool.valid(args[0]))
        return y.squeeze(-1) / beta, y0.squeeze(-1) / beta


@rule("ReduceSumSquare", "ReduceL2")
class ReduceSquares(DecomposedRule):
    def decompose(self, info, call, args, refs):
        x, x0, axes, keep = _reduction(info, args, refs, call)
        sq, sq0 = product(torch.mul, x, x0, x, x0)
        y, y0 = sq.sum(axes, keepdim=keep), sq0.sum(axes, keepdim=keep)
        return rescale(torch.sqrt, y, y0) if info.op_type == "ReduceL2" else (y, y0)


@rule("ReduceProd")
class ReduceProd(DecomposedRule):
    """Π x over the axes as a tree of pairwise products, each the Shapley product rule (exact for
    two factors: Δ(ab) = Δa·b̄ + ā·Δb), so the whole is exact, in log₂ n vectorised levels.
    scikit-learn's PolynomialFeatures exports each monomial as a ReduceProd of the chosen columns."""

    def decompose(self, info, call, args, refs):
        x, x0, axes, keep = _reduction(info, args, refs, call)
        kept = [a for a in range(x.dim()) if a not in axes]
        # the reduced axes last, flattened into one
        y = x.permute(*kept, *axes).reshape(*[x.shape[a] for a in kept], -1)
        y0 = x0.permute(*kept, *axes).reshape(*[x0.shape[a] for a in kept], -1)
        while y.shape[-1] > 1:
            half = y.shape[-1] // 2
            p, p0 = product(torch.mul, y[..., :half], y0[..., :half], y[..., half:2 * half], y0[..., half:2 * half])
            y, y0 = torch.cat([p, y[..., 2 * half:]], -1), torch.cat([p0, y0[..., 2 * half:]], -1)
        if y.shape[-1] == 0:  # an empty product is 1
            y, y0 = y.new_ones(*y.shape[:-1], 1), y0.new_ones(*y0.shape[:-1], 1)
        shape = [1 if a in axes else x.shape[a] for a in range(x.dim())] if keep else [x.shape[a] for a in kept]
        return y.reshape(shape), y0.reshape(shape)


@rule("ReduceLogSum")
class ReduceLogSum(DecomposedRule):
    """log Σ x: the sum (linear), then the log's secant."""

    def decompose(self, info, call, args, refs):
        x, x0, axes, keep = _reduction(info, args, refs, call)
        return rescale(torch.log, x.sum(axes, keepdim=keep), x0.sum(axes, keepdim=keep))


@rule("ReduceL1")
class ReduceL1(DecomposedRule):
    def decompose(self, info, call, args, refs):
        x, x0, axes, keep = _reduction(info, args, refs, call)
        a, a0 = rescale(torch.abs, x, x0)
        return a.sum(axes, keepdim=keep), a0.sum(axes, keepdim=keep)


@rule("Attention")
class AttentionRule(DecomposedRule):
    """softmax(q·kᵀ·scale (softcapped) + mask) · v: two Shapley products around a masked softmax.

    Masked keys (-inf in the additive mask) are left out of the exponentials by a constant mask
    rather than computed as exp(-inf), so no infinities meet in a secant; the softmax is written
    as exp(z - logsumexp z), whose factors all stay in [0, 1].
    """

    def check(self, info):
        _require_constant(info, range(3, 7), "mask, cache or key count")
        if info.n_outputs > 1:
            raise NotImplementedError("Attention's present_key/present_value/qk outputs have no DeepLift rule")

    def decompose(self, info, call, args, refs):
        op = call.module
        args, refs = list(args) + [None] * (7 - len(args)), list(refs) + [None] * (7 - len(refs))
        q, k, v, mask, past_key, past_value, nonpad = args
        q0, k0, v0 = refs[:3]
        three_d = q.dim() == 3
        if three_d:
            q, q0 = op._heads(q, op.q_heads), op._heads(q0, op.q_heads)
            k, k0, v, v0 = (op._heads(t, op.kv_heads) for t in (k, k0, v, v0))
        if past_key is not None:  # a constant cache; k0, v0 already have k's and v's shapes
            k, k0 = torch.cat([past_key, k], 2), torch.cat([past_key, k0], 2)
            v, v0 = torch.cat([past_value, v], 2), torch.cat([past_value, v0], 2)
        bias = op._bias(q, k.shape[2], mask, past_key, nonpad)
        if q.shape[1] != k.shape[1] and q.shape[1] % k.shape[1] == 0:
            reps = q.shape[1] // k.shape[1]
            k, k0, v, v0 = (t.repeat_interleave(reps, 1) for t in (k, k0, v, v0))
        root = math.sqrt(op.scale if op.scale is not None else 1 / math.sqrt(q.shape[-1]))
        s, s0 = product(lambda a, b: (a * root) @ (b * root).transpose(-1, -2), q, q0, k, k0)
        if op.softcap > 0:
            s, s0 = rescale(lambda t: torch.tanh(t / op.softcap) * op.softcap, s, s0)
        allowed = ~torch.isneginf(bias)
        dead = ~allowed.any(-1, keepdim=True)  # rows with no key: 0 by definition
        finite = bias.masked_fill(~allowed, 0.0)
        z, z0 = s + finite, s0 + finite
        # p = exp(z - logsumexp(z)): every factor stays in [0, 1] (exp · 1/Σexp would multiply a tiny
        # exponential by a huge reciprocal and lose float32 precision when one key dominates)
        p, p0 = paired_softmax(z, z0, -1, allowed | dead)
        keep = allowed & ~dead
        p, p0 = p * keep, p0 * keep
        y, y0 = product(torch.matmul, p, p0, v, v0)
        if three_d:
            y, y0 = (t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1) for t in (y, y0))
        return y, y0
