"""Comparisons and index-shaped ops onnx2torch lacks: GreaterOrEqual, LessOrEqual, Trilu, Hardmax,
Size, CumProd."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.activations import Elementwise
from onnx_attr.importing.converters.registry import register


@register("GreaterOrEqual", 12, 16)
def convert_greater_or_equal(node, graph):
    return result(node, Binary(torch.ge))


@register("LessOrEqual", 12, 16)
def convert_less_or_equal(node, graph):
    return result(node, Binary(torch.le))


class Binary(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(a, b)


class Trilu(nn.Module):
    def __init__(self, upper: bool):
        super().__init__()
        self.upper = upper

    def forward(self, x: torch.Tensor, k: Optional[torch.Tensor] = None) -> torch.Tensor:
        diagonal = 0 if k is None else int(k)
        return torch.triu(x, diagonal) if self.upper else torch.tril(x, diagonal)


@register("Trilu", 14)
def convert_trilu(node, graph):
    return result(node, Trilu(bool(node.attributes.get("upper", 1))))


def _hardmax(x: torch.Tensor, axis: int, coerce: bool) -> torch.Tensor:
    shape = x.shape
    if coerce:  # opset < 13: flattened to 2-D at `axis`
        axis = axis % x.dim()
        x = x.reshape(math.prod(shape[:axis]), -1)
        axis = 1
    index = x.argmax(axis, keepdim=True)  # the first of equal maxima, as ONNX asks
    return torch.zeros_like(x).scatter_(axis, index, 1).reshape(shape)


@register("Hardmax", 1, 11)
def convert_hardmax_2d(node, graph):
    """Before opset 13 Hardmax flattens its input to 2-D at `axis` (default 1)."""
    return result(node, Elementwise(_hardmax, axis=node.attributes.get("axis", 1), coerce=True))


@register("Hardmax", 13)
def convert_hardmax(node, graph):
    return result(node, Elementwise(_hardmax, axis=node.attributes.get("axis", -1), coerce=False))


class Size(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Size", 1, 13, 19, 21, 23, 24, 25)
def convert_size(node, graph):
    return result(node, Size())


class CumProd(nn.Module):
    def __init__(self, exclusive: bool, reverse: bool):
        super().__init__()
        self.exclusive, self.reverse = exclusive, reverse

    def forward(self, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        dim = int(axis) % x.dim()
        t = x.flip(dim) if self.reverse else x
        out = t.cumprod(dim)
        if self.exclusive:  # shift by one: the first element is the empty product
            ones = torch.ones_like(t.narrow(dim, 0, 1))
            out = torch.cat([ones, out.narrow(dim, 0, t.shape[dim] - 1)], dim)
        return out.flip(dim) if self.reverse else out


@register("CumProd", 26)
def convert_cumprod(node, graph):
    attrs = node.attributes
    return result(node, CumProd(bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))))
