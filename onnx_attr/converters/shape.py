"""Shape ops whose onnx2torch version mishandles edge cases."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import result
from .registry import register


class Flatten(nn.Module):
    """ONNX Flatten: always 2-D, (prod(dims[:axis]), prod(dims[axis:])), any input rank."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        outer = math.prod(x.shape[:axis])
        return x.reshape(outer, -1) if outer else x.reshape(0, math.prod(x.shape[axis:]))


@register("Flatten", 1, 9, 11, 13, 21)
def convert_flatten(node, graph):
    return result(node, Flatten(node.attributes.get("axis", 1)))
