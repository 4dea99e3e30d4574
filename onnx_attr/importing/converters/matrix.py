"""Matrix ops onnx2torch lacks: Det, MatMulInteger, QLinearMatMul; Range (onnx2torch's refuses an
empty range; opset 27 adds a stash type for half types)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


class Det(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x)


@register("Det", 11, 22)
def convert_det(node, graph):
    return result(node, Det())


class Range(nn.Module):
    """start, start + delta, ... below limit: max(ceil((limit - start) / delta), 0) values, so a limit
    on the wrong side of start is an empty range (torch's arange refuses it: ppocr-vectron's line
    extractor meets one on a page without text); half types counted in the stash type, then cast."""

    def __init__(self, stash: torch.dtype = torch.float32):
        super().__init__()
        self.stash = stash

    def forward(self, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        dtype = start.dtype
        compute = self.stash if dtype in (torch.float16, torch.bfloat16) else dtype
        first, last, step = (t.to(compute).item() for t in (start, limit, delta))
        if step != 0 and (last - first) / step <= 0:
            return torch.empty(0, dtype=dtype, device=start.device)
        return torch.arange(first, last, step, dtype=compute, device=start.device).to(dtype)


@register("Range", 11)
def convert_range_11(node, graph):
    return result(node, Range())


@register("Range", 27)
def convert_range(node, graph):
    stash = {1: torch.float32, 11: torch.float64}.get(int(node.attributes.get("stash_type", 1)))
    if stash is None:
        raise NotImplementedError(f"Range stash_type {node.attributes['stash_type']} (FLOAT or DOUBLE expected)")
    return result(node, Range(stash))


def _centred(q: torch.Tensor, zero_point: Optional[torch.Tensor], per_row: bool,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """q - zero_point in `dtype`, exact for 8-bit values (float32 too); a 1-D zero point of A is per row."""
    value = q.to(dtype)
    if zero_point is None:
        return value
    zero = zero_point.to(dtype)
    if per_row and zero.dim() == 1 and zero.numel() > 1:
        zero = zero[:, None]
    return value - zero


def integer_product(a: torch.Tensor, b: torch.Tensor, a_zero: Optional[torch.Tensor] = None,
                    b_zero: Optional[torch.Tensor] = None, plans: Optional[dict] = None,
                    bound: Optional[float] = None) -> torch.Tensor:
    """(A - a_zero) @ (B - b_zero) of 8-bit integers, exact, as a floating tensor: float32 over
    chunks of the shared axis whose partial sums stay integers below 2^24 (max|A| times the
    largest column sum of |B| bounds them, in any order of addition; the bound ConvInteger's chunks
    use), added in float64 when there are several. A float64 product, the fallback, costs several
    times a float32 one on CPU. `plans` keeps B's centred copy and its chunks for the next call
    (B is a weight: reading it whole on every call cost more than the product). `bound`: a bound on
    |A - a_zero| where A's type gives none (integers carried in a float tensor)."""
    cuts, bs = _plan(a, b, a_zero, b_zero, {} if plans is None else plans, bound)
    if cuts is None:
        return _centred(a, a_zero, True) @ _centred(b, b_zero, False)
    as_ = _centred(a, a_zero, True, torch.float32)
    if len(cuts) == 1:
        return as_ @ bs
    total, start = None, 0
    for stop in cuts:
        part = (as_[..., start:stop] @ bs[..., start:stop, :]).double()
        total = part if total is None else total.add_(part)
        start = stop
    return total


def _plan(a, b, a_zero, b_zero, plans: dict, bound: Optional[float] = None):
    """(chunks of the shared axis or None, B - b_zero in float32), found once per B and bound."""
    from onnx_attr.importing.converters.quantize import _float32_chunks, _magnitude, tensor_identity, tracing

    if a.dim() < 1 or b.dim() < 2:
        return None, None
    # |A - a_zero| for any zero point in A's range (a dynamically quantized A's moves every call)
    if bound is None:
        bound = _magnitude(a, None) if a_zero is None or a.dtype.is_floating_point else \
            float(torch.iinfo(a.dtype).max) - torch.iinfo(a.dtype).min
    if "plan" in plans and tracing():  # torch.export's fake tensors have no address nor values to plan by:
        return plans["plan"]  # the plan of the example's eager run (export_program runs it first)
    key = (tensor_identity(b), tensor_identity(b_zero), bound, a.device)
    if plans.get("key") != key:
        bs = _centred(b, b_zero, False, torch.float32)
        columns = bs.reshape(-1, *bs.shape[-2:]).transpose(1, 2).reshape(-1, bs.shape[-2], 1)  # [(batch·N), K, 1]
        # B itself is held beside its key: while it lives, no other tensor can take its storage, so a B
        # computed in the pass (attention's Kᵀ, quantized on its own range) cannot meet a stale plan at
        # the address a freed one had (hunt 29: a quantized DeBERTa's scores came from an earlier call)
        plans.update(key=key, plan=(_float32_chunks(bound, columns, 1, a.device), bs), held=(b, b_zero))
    return plans["plan"]


class MatMulInteger(nn.Module):
    """(A - a_zero) @ (B - b_zero) in int32, exact (`integer_product`)."""

    def __init__(self):
        super().__init__()
        self.plans: dict = {}

    def forward(self, a: torch.Tensor, b: torch.Tensor, a_zero: Optional[torch.Tensor] = None,
                b_zero: Optional[torch.Tensor] = None) -> torch.Tensor:
        return integer_product(a, b, a_zero, b_zero, self.plans).to(torch.int32)


@register("MatMulInteger", 10)
def convert_matmul_integer(node, graph):
    return result(node, MatMulInteger())


class QLinearMatMul(nn.Module):
    """Quantised matmul: the integer product rescaled by a_scale·b_scale/y_scale (in the scales'
    type, as the spec's reference), rounded half to even, shifted and saturated."""

    def __init__(self):
        super().__init__()
        self.plans: dict = {}

    def forward(self, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero=None) -> torch.Tensor:
        product = integer_product(a, b, a_zero, b_zero, self.plans).double()
        return requantized_product(product, a_scale * b_scale / y_scale, y_zero, a)


def requantized_product(product: torch.Tensor, ratio: torch.Tensor, zero: Optional[torch.Tensor],
                        like: torch.Tensor) -> torch.Tensor:
    """An integer product (float64) times its output scale ratio (computed in the scales' type, then
    widened), plus the zero point, rounded half to even and saturated to the zero point's type (or
    `like`'s): QLinearMatMul's and QGemm's quantized output."""
    dtype = zero.dtype if zero is not None else like.dtype
    info = torch.iinfo(dtype)
    return torch.round(product_rescaled(product, ratio, zero)).clamp(info.min, info.max).to(dtype)


def product_rescaled(product: torch.Tensor, ratio: torch.Tensor, zero: Optional[torch.Tensor]) -> torch.Tensor:
    """`requantized_product` before rounding: the product times the ratio, plus the zero point, in float64."""
    out = product * ratio.to(torch.float64)
    return out + zero.to(torch.float64) if zero is not None else out


@register("QLinearMatMul", 10, 21)
def convert_qlinear_matmul(node, graph):
    return result(node, QLinearMatMul())
