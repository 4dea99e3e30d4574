"""Unsigned integers wider than 8 bits, which torch stores but has few CPU kernels for.

ONNX defines Add, Div, Greater, Max, TopK, ... on uint16/32/64; torch raises "not implemented
for 'UInt32'". Every such op runs through one wrapper that computes in int64 where that is
exact, and narrows the value outputs back:
- uint16/uint32 widen to int64 exactly, and narrowing wraps modulo 2^width as ONNX does;
- uint64 is reinterpreted bit for bit: wrapping arithmetic (ring ops) is the same in int64;
  order (comparisons, max, top-k) is kept by flipping the top bit; a quotient is exact only
  below 2^63, so larger values are refused with a clear error rather than computed wrong.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from torch import nn

_UNSIGNED = {torch.uint16, torch.uint32, torch.uint64}
ONNX_UNSIGNED = {TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}
_TOP_BIT = -(2 ** 63)

#: op type -> (how uint64 is carried in int64, which outputs hold values to narrow back)
WIDENED_OPS = {
    **{op: ("ring", (0,)) for op in ("Add", "Sub", "Mul", "Neg", "Sum", "CumSum", "ReduceSum", "ReduceProd")},
    **{op: ("order", ()) for op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "ArgMax",
                                    "ArgMin")},
    **{op: ("order", (0,)) for op in ("Max", "Min", "TopK", "ReduceMax", "ReduceMin", "Clip", "Sort")},
    **{op: ("divide", (0,)) for op in ("Div", "Mod")},
}


class WidenedUnsigned(nn.Module):
    """Run `inner` on int64 copies of its unsigned inputs; see the module docstring."""

    def __init__(self, inner: nn.Module, op_type: str):
        super().__init__()
        self.inner, self.op_type = inner, op_type
        self.how, self.value_outputs = WIDENED_OPS[op_type]

    def forward(self, *args, **kwargs):
        dtype = next((a.dtype for a in (*args, *kwargs.values())
                      if isinstance(a, torch.Tensor) and a.dtype in _UNSIGNED), None)
        if dtype is None:
            return self.inner(*args, **kwargs)
        out = self.inner(*(self._widen(a) for a in args), **{k: self._widen(v) for k, v in kwargs.items()})
        if isinstance(out, (tuple, list)):
            return type(out)(self._narrow(o, dtype) if i in self.value_outputs else o for i, o in enumerate(out))
        return self._narrow(out, dtype) if 0 in self.value_outputs else out

    def _widen(self, t):
        if not isinstance(t, torch.Tensor) or t.dtype not in _UNSIGNED:
            return t
        if t.dtype != torch.uint64:
            return t.to(torch.int64)
        bits = t.view(torch.int64)
        if self.how == "order":
            return bits ^ _TOP_BIT
        if self.how == "divide" and bool((bits < 0).any()):
            raise ValueError(f"{self.op_type} on uint64 values of 2^63 or more has no exact torch kernel")
        return bits

    def _narrow(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if t.dtype != torch.int64:
            return t
        if dtype != torch.uint64:
            return t.to(dtype)
        return (t ^ _TOP_BIT if self.how == "order" else t).view(torch.uint64)

    def extra_repr(self) -> str:
        return f"{self.op_type}: uint16/32/64 computed in int64"
