"""Matrix ops onnx2torch lacks: Det; Range in its opset-27 form (a stash type for half types)."""

from __future__ import annotations

import torch
from torch import nn

from ._common import result
from .registry import register


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
