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


class Elementwise(nn.Module):
    """An elementwise torch function with fixed keyword arguments (the ONNX attributes)."""

    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.kwargs)

    def extra_repr(self) -> str:
        return f"{self.fn.__name__}, {self.kwargs}" if self.kwargs else self.fn.__name__


def _thresholded_relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(torch.nn.functional.softplus(x))


_MATH = {"Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh, "Sinh": torch.sinh, "Cosh": torch.cosh}


@register("Asinh", 9)
@register("Acosh", 9)
@register("Atanh", 9)
@register("Sinh", 9)
@register("Cosh", 9)
def convert_hyperbolic(node, graph):
    return result(node, Elementwise(_MATH[node.operation_type]))


@register("ThresholdedRelu", 10)
def convert_thresholded_relu(node, graph):
    return result(node, Elementwise(_thresholded_relu, alpha=float(node.attributes.get("alpha", 1.0))))


@register("Mish", 18)
def convert_mish(node, graph):
    return result(node, Elementwise(_mish))


@register("Gelu", 20)
def convert_gelu(node, graph):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not defined by ONNX")
    return result(node, Elementwise(torch.nn.functional.gelu, approximate=approximate))
