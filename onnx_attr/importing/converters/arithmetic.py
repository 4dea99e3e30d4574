"""Integer division that cannot kill the process.

torch's truncating integer division traps (SIGFPE, no Python exception) on INT_MIN / -1 in
int32 and int64: the quotient 2^31 (2^63) does not fit. ONNX leaves the overflow to the
runtime; onnxruntime wraps it to INT_MIN for int32 (two's complement) and itself traps for
int64. We compute the wrapped value, INT_MIN, for every width: -a wraps the same way, and a
divisor of -1 never reaches the trapping kernel. Each time the overflow is met it is recorded
(`integer_overflows`), so `verify` can refuse to hand onnxruntime a division that crashes it.
Mod needs nothing: torch's remainder and fmod give 0 for INT_MIN mod -1, as onnxruntime does.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
from onnx2torch.utils.common import old_style_broadcast
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register

#: Where `IntegerSafeDiv` reports an INT_MIN / -1 it met, while someone watches (see `integer_overflows`).
_OVERFLOWS: ContextVar[Optional[list[str]]] = ContextVar("_OVERFLOWS", default=None)


@contextmanager
def integer_overflows() -> Iterator[list[str]]:
    """Collect a line for each integer division that overflowed while the block ran."""
    seen: list[str] = []
    token = _OVERFLOWS.set(seen)
    try:
        yield seen
    finally:
        _OVERFLOWS.reset(token)


def divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: true division for floats, truncation toward zero for integers, INT_MIN / -1 = INT_MIN."""
    if a.is_floating_point() or b.is_floating_point() or a.is_complex() or b.is_complex():
        return torch.div(a, b)
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return torch.div(a, b, rounding_mode="trunc")
    minus_one = b == -1
    if not bool(minus_one.any()):
        return torch.div(a, b, rounding_mode="trunc")
    seen = _OVERFLOWS.get()
    if seen is not None and a.dtype == torch.int64:  # int32 onnxruntime wraps, as we do
        low = torch.iinfo(a.dtype).min
        if bool(((a == low) & minus_one).any()):
            seen.append(f"{a.dtype} {low} / -1")
    quotient = torch.div(a, torch.where(minus_one, torch.ones_like(b), b), rounding_mode="trunc")
    return torch.where(minus_one, torch.neg(a).to(quotient.dtype), quotient)


class IntegerSafeDiv(nn.Module):
    """ONNX Div (opset 1+, with the legacy `broadcast`/`axis` attributes of opsets 1-6)."""

    def __init__(self, broadcast: Optional[int] = None, axis: Optional[int] = None):
        super().__init__()
        self.broadcast, self.axis = broadcast, axis

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        if self.broadcast == 1 and self.axis is not None:
            second = old_style_broadcast(first, second, self.axis)
        return divide(first, second)


@register("Div", 1, 6, 7, 13, 14)
def convert_div(node, graph):
    return result(node, IntegerSafeDiv(node.attributes.get("broadcast"), node.attributes.get("axis")))
