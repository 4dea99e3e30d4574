"""Elementwise activations onnx2torch lacks."""

from __future__ import annotations

import torch
from torch import nn

from ._common import result
from .registry import register


class Shrink(nn.Module):
    """ONNX Shrink: x+bias below -lambd, x-bias above lambd, 0 between."""

    def __init__(self, lambd: float, bias: float):
        super().__init__()
        self.lambd, self.bias = lambd, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(x < -self.lambd, x + self.bias, torch.where(x > self.lambd, x - self.bias, zero))


@register("Shrink", 9)
def convert_shrink(node, graph):
    return result(node, Shrink(node.attributes.get("lambd", 0.5), node.attributes.get("bias", 0.0)))
