"""Pad in every opset version.

Pad-1/2 take the pads as attributes (onnx2torch ignores Pad-2's `value`: it reads a non-existent
`constant_value`); from Pad-11 they are an input, from Pad-18 with an optional `axes` input, and
Pad-19 adds the `wrap` mode. Constant pads and axes are baked in at conversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from typing import Optional

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register

_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _source_index(count: int, begin: int, end: int, mode: str, device: torch.device) -> torch.Tensor:
    """For each position of an axis padded by (begin, end) >= 0, the source position it copies:
    edge repeats the border, reflect mirrors about it (period 2(n - 1)), circular wraps."""
    i = torch.arange(-begin, count + end, device=device)
    if mode == "replicate":
        return i.clamp(0, count - 1)
    if mode == "circular":
        return i.remainder(count)
    period = max(2 * (count - 1), 1)
    j = i.remainder(period)
    return torch.where(j < count, j, period - j)


def pad_by_index(x: torch.Tensor, torch_pads: list[int], mode: str) -> torch.Tensor:
    """Non-constant padding as an index_select per padded axis: any rank and any axis (torch's
    F.pad pads only the last 1-3 axes in these modes, and only of a 2-5-D tensor: a 4-D tensor
    reflect-padded along its last axis alone is refused). A pure copy, so exact. Negative pads
    crop first, and the padding then repeats the cropped axis (as onnxruntime does)."""
    for k in range(len(torch_pads) // 2):
        begin, end = torch_pads[2 * k], torch_pads[2 * k + 1]
        axis = x.dim() - 1 - k
        if begin < 0 or end < 0:
            x = x.narrow(axis, max(-begin, 0), x.shape[axis] - max(-begin, 0) - max(-end, 0))
        begin, end = max(begin, 0), max(end, 0)
        if begin or end:
            x = x.index_select(axis, _source_index(x.shape[axis], begin, end, mode, x.device))
    return x


class PadStatic(nn.Module):
    """Pads given as ONNX [x1_begin, x2_begin, ..., x1_end, x2_end, ...]; negative pads crop."""

    def __init__(self, pads: list[int], mode: str, value: float):
        super().__init__()
        if mode not in _MODES:
            raise NotImplementedError(f"Pad mode {mode!r} is not supported (expected one of {sorted(_MODES)})")
        rank = len(pads) // 2
        # torch wants (last_begin, last_end, ..., first_begin, first_end)
        self.pads = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]
        self.mode, self.value = _MODES[mode], value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, self.pads, mode="constant", value=self.value)
        return pad_by_index(x, self.pads, self.mode)


@register("Pad", 1, 2)
def convert_pad_attr(node, graph):
    attrs = node.attributes
    pads = attrs.get("pads", attrs.get("paddings"))
    return result(node, PadStatic(list(pads), attrs.get("mode", "constant"), float(attrs.get("value", 0.0))))


def _torch_pads(pads: list[int], axes: list[int], rank: int) -> list[int]:
    """ONNX [begin per axis..., end per axis...] over `axes` -> torch's (last_begin, last_end, ...)."""
    begin, end = [0] * rank, [0] * rank
    half = len(pads) // 2
    for i, axis in enumerate(axes):
        begin[axis % rank], end[axis % rank] = pads[i], pads[i + half]
    return [p for axis in reversed(range(rank)) for p in (begin[axis], end[axis])]


class Pad(nn.Module):
    """Pad-11 and later: pads (and axes) baked in when constant, read at run time otherwise."""

    def __init__(self, mode: str, pads: Optional[list[int]], axes: Optional[list[int]]):
        super().__init__()
        if mode not in _MODES:
            raise NotImplementedError(f"Pad mode {mode!r} is not supported (expected one of {sorted(_MODES)})")
        self.mode, self.pads, self.axes = _MODES[mode], pads, axes

    def forward(self, x: torch.Tensor, pads: Optional[torch.Tensor] = None,
                constant_value: Optional[torch.Tensor] = None, axes: Optional[torch.Tensor] = None) -> torch.Tensor:
        values = self.pads if self.pads is not None else [int(p) for p in pads.tolist()]
        chosen = self.axes if self.axes is not None else (
            [int(a) for a in axes.tolist()] if axes is not None else list(range(x.dim())))
        torch_pads = _torch_pads(values, chosen, x.dim())
        if self.mode == "constant":
            value = 0.0 if constant_value is None or constant_value.numel() == 0 else constant_value.item()
            return F.pad(x, torch_pads, mode="constant", value=value)
        return pad_by_index(x, torch_pads, self.mode)


@register("Pad", 11, 13, 18, 19, 21, 23, 24, 25)
def convert_pad(node, graph):
    inputs = list(node.input_values)
    constants = graph.initializers

    def constant(i):
        return [int(v) for v in constants[inputs[i]].to_torch().reshape(-1).tolist()] if len(inputs) > i and \
            inputs[i] in constants else None

    pads, axes = constant(1), constant(3)
    if len(inputs) > 3 and inputs[3] == "":
        axes = None
    module = Pad(node.attributes.get("mode", "constant"), pads, axes)
    return result(node, module)
