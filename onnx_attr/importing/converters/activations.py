"""Elementwise activations onnx2torch lacks."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import onnx2torch_result, result
from onnx_attr.importing.converters.registry import register


class Shrink(nn.Module):
    """ONNX Shrink: x+bias below -lambd, x-bias above lambd, 0 between."""

    def __init__(self, lambd: float, bias: float):
        super().__init__()
        self.lambd, self.bias = lambd, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(x < -self.lambd, x + self.bias, torch.where(x > self.lambd, x - self.bias, zero))


class PRelu(nn.Module):
    """ONNX PRelu: slope·x below 0, x elsewhere. From opset 7 the slope broadcasts the numpy way
    (aligned to X's last axes); onnx2torch's took any slope whose first dim matched X's channels as
    per channel, so a [2, 1] slope on [1, 2, 2, 4] (rows) and a [C] slope (the last axis) came out
    wrong. Before opset 7 a 1-D slope of X's channel count is per channel (PyTorch's old exports)."""

    def __init__(self, legacy: bool):
        super().__init__()
        self.legacy = legacy

    def forward(self, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        rank = x.dim()
        channels = rank >= 2 and slope.shape[:1] == x.shape[1:2] and (
            slope.dim() == rank - 1 and all(s == 1 for s in slope.shape[1:]) or self.legacy and slope.dim() == 1)
        if slope.numel() == 1 and rank >= 1 or channels:
            return nn.functional.prelu(x, slope.reshape(-1))  # per channel: torch's own kernel
        return torch.where(x < 0, x * slope, x)


@register("PRelu", 1, 6)
def convert_prelu_per_channel(node, graph):
    return result(node, PRelu(legacy=True))


@register("PRelu", 7, 9, 16)
def convert_prelu(node, graph):
    return result(node, PRelu(legacy=False))


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


def _selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@register("Selu", 1, 6, 22)
def convert_selu(node, graph):
    """Any alpha and gamma (torch's SELU fixes both to the self-normalising constants)."""
    attrs = node.attributes
    return result(node, Elementwise(_selu, alpha=float(attrs.get("alpha", 1.67326319217681884765625)),
                                    gamma=float(attrs.get("gamma", 1.05070102214813232421875))))


def _swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@register("Swish", 24)
def convert_swish(node, graph):
    return result(node, Elementwise(_swish, alpha=float(node.attributes.get("alpha", 1.0))))


class SwiGLU(nn.Module):
    """swish_alpha(a) * b."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _swish(a, self.alpha) * b


@register("SwiGLU", 28)
def convert_swiglu(node, graph):
    return result(node, SwiGLU(float(node.attributes.get("alpha", 1.0))))


def _is_inf(x: torch.Tensor, negative: bool, positive: bool) -> torch.Tensor:
    return (torch.isneginf(x) if negative else torch.zeros_like(x, dtype=torch.bool)) | \
        (torch.isposinf(x) if positive else torch.zeros_like(x, dtype=torch.bool))


@register("IsInf", 10, 20)
def convert_is_inf(node, graph):
    attrs = node.attributes
    return result(node, Elementwise(_is_inf, negative=bool(attrs.get("detect_negative", 1)),
                                    positive=bool(attrs.get("detect_positive", 1))))


class Clip(nn.Module):
    """Clip with bounds computed in the graph, or absent (onnx2torch needs constant ones)."""

    def forward(self, x: torch.Tensor, low: Optional[torch.Tensor] = None,
                high: Optional[torch.Tensor] = None) -> torch.Tensor:
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x


@register("Clip", 11, 12, 13)
def convert_clip(node, graph):
    bounds = node.input_values[1:]
    # onnx2torch reads an omitted bound written as an empty name (torch's F.normalize exports
    # Clip(norm, eps, "")) as a tensor called "" and fails: only fully listed constant bounds go there
    # and it passes constant bounds as Python numbers, which turns an int64 clip (of an index, before a
    # Gather) into float32: integer bounds stay tensors, with ours
    if bounds and all(name and name in graph.initializers and graph.initializers[name].to_torch().is_floating_point()
                      for name in bounds):
        return onnx2torch_result(node, graph, 13)  # one onnx2torch converter serves 11 to 13
    return result(node, Clip())
