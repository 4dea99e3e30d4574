"""Matrix ops onnx2torch lacks: Det, MatMulInteger, QLinearMatMul; Range in its opset-27 form
(a stash type for half types)."""

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
    """start, start + delta, ... below limit; half types counted in the stash type, then cast."""

    def __init__(self, stash: torch.dtype):
        super().__init__()
        self.stash = stash

    def forward(self, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        dtype = start.dtype
        compute = self.stash if dtype in (torch.float16, torch.bfloat16) else dtype
        values = torch.arange(start.to(compute).item(), limit.to(compute).item(), delta.to(compute).item(),
                              dtype=compute, device=start.device)
        return values.to(dtype)


@register("Range", 27)
def convert_range(node, graph):
    stash = {1: torch.float32, 11: torch.float64}.get(int(node.attributes.get("stash_type", 1)))
    if stash is None:
        raise NotImplementedError(f"Range stash_type {node.attributes['stash_type']} (FLOAT or DOUBLE expected)")
    return result(node, Range(stash))


def _centred(q: torch.Tensor, zero_point: Optional[torch.Tensor], per_row: bool) -> torch.Tensor:
    """q - zero_point in float64, exact for 8-bit values; a 1-D zero point of A is per row."""
    value = q.to(torch.float64)
    if zero_point is None:
        return value
    zero = zero_point.to(torch.float64)
    if per_row and zero.dim() == 1 and zero.numel() > 1:
        zero = zero[:, None]
    return value - zero


class MatMulInteger(nn.Module):
    """(A - a_zero) @ (B - b_zero) in int32; float64 products of 8-bit values are exact."""

    def forward(self, a: torch.Tensor, b: torch.Tensor, a_zero: Optional[torch.Tensor] = None,
                b_zero: Optional[torch.Tensor] = None) -> torch.Tensor:
        return (_centred(a, a_zero, True) @ _centred(b, b_zero, False)).to(torch.int32)


@register("MatMulInteger", 10)
def convert_matmul_integer(node, graph):
    return result(node, MatMulInteger())


class QLinearMatMul(nn.Module):
    """Quantised matmul: the integer product rescaled by a_scale·b_scale/y_scale (in the scales'
    type, as the spec's reference), rounded half to even, shifted and saturated."""

    def forward(self, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero=None) -> torch.Tensor:
        product = _centred(a, a_zero, True) @ _centred(b, b_zero, False)
        out = product * (a_scale * b_scale / y_scale).to(torch.float64)
        dtype = y_zero.dtype if y_zero is not None else a.dtype
        if y_zero is not None:
            out = out + y_zero.to(torch.float64)
        info = torch.iinfo(dtype)
        return torch.round(out).clamp(info.min, info.max).to(dtype)


@register("QLinearMatMul", 10, 21)
def convert_qlinear_matmul(node, graph):
    return result(node, QLinearMatMul())
