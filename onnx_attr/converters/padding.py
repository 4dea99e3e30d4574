"""Pad-2, whose `value` attribute onnx2torch ignores (it reads a non-existent `constant_value`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import result
from .registry import register

_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


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
        # torch's non-constant modes pad only trailing spatial dims: trim all-zero leading pairs
        pads = list(self.pads)
        while len(pads) > 2 and pads[-2:] == [0, 0]:
            pads = pads[:-2]
        return F.pad(x, pads, mode=self.mode)


@register("Pad", 1, 2)
def convert_pad_attr(node, graph):
    attrs = node.attributes
    pads = attrs.get("pads", attrs.get("paddings"))
    return result(node, PadStatic(list(pads), attrs.get("mode", "constant"), float(attrs.get("value", 0.0))))
