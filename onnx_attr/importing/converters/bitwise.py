"""BitShift on every integer type, with the ONNX semantics: a logical shift of unsigned values,
an arithmetic right shift of signed ones, left shifts wrapping within the type's width, and
shifts by a negative amount or by the width or more giving 0 (-1 for a negative value shifted
right). torch has no shift kernels for uint16/32/64, so the bits are shifted in int64 (exact for
every width; uint64 by reinterpreting its bits) and cut back."""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register

_WIDTH = {torch.uint8: 8, torch.uint16: 16, torch.uint32: 32, torch.uint64: 64,
          torch.int8: 8, torch.int16: 16, torch.int32: 32, torch.int64: 64}


def _as_int64(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int64) if t.dtype == torch.uint64 else t.to(torch.int64)


class BitShift(nn.Module):
    def __init__(self, left: bool):
        super().__init__()
        self.left = left

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        width = _WIDTH.get(x.dtype)
        if width is None:
            raise TypeError(f"BitShift takes integers, got {x.dtype}")
        signed = x.dtype.is_signed
        wide, amount = torch.broadcast_tensors(_as_int64(x), _as_int64(y))
        out_of_range = (amount < 0) | (amount >= width)  # uint64 amounts >= 2^63 read as negative
        amount = amount.clamp(0, width - 1)
        if self.left:
            out = wide << amount
            if width < 64:  # keep the low `width` bits, as a signed or unsigned value of that width
                out = out & ((1 << width) - 1)
                if signed:
                    out = torch.where(out >= 1 << (width - 1), out - (1 << width), out)
            fill = torch.zeros_like(out)
        elif signed:
            out = wide >> amount
            fill = torch.where(wide < 0, torch.full_like(out, -1), torch.zeros_like(out))
        else:  # unsigned in int64: uint64's top bit reads as a sign, so clear what an arithmetic shift copies
            out = (wide >> amount) & torch.where(amount == 0, torch.full_like(amount, -1),
                                                 (1 << (64 - amount).clamp(max=63)) - 1)
            fill = torch.zeros_like(out)
        out = torch.where(out_of_range, fill, out)
        return out.view(torch.uint64) if x.dtype == torch.uint64 else out.to(x.dtype)


@register("BitShift", 11)
def convert_bit_shift(node, graph):
    direction = text_attribute(node, "direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise NotImplementedError(f"BitShift direction {direction!r} (expected LEFT or RIGHT)")
    return result(node, BitShift(direction == "LEFT"))


_BITWISE = {"BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor}


class Bitwise(nn.Module):
    """And/Or/Xor/Not of integer bits; uint16/32/64 go through int64 bit for bit, which these
    ops preserve (each output bit depends on the same input bits only)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        dtype = a.dtype
        wide = dtype in (torch.uint16, torch.uint32, torch.uint64)
        if wide:
            a = _as_int64(a)
            b = None if b is None else _as_int64(b)
        out = torch.bitwise_not(a) if self.op == "BitwiseNot" else _BITWISE[self.op](a, b)
        if not wide:
            return out
        return out.view(torch.uint64) if dtype == torch.uint64 else out.to(dtype)


@register("BitwiseAnd", 18)
@register("BitwiseOr", 18)
@register("BitwiseXor", 18)
@register("BitwiseNot", 18)
def convert_bitwise(node, graph):
    return result(node, Bitwise(node.operation_type))
