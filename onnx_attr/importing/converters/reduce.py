"""Reductions at opset 18+, where `axes` moved from an attribute to an optional input (and ReduceMax,
ReduceMin, ReduceProd, ReduceSum and ReduceMean at every opset).

One module for the whole family: the reduction function, the axes (baked in when they are a
constant), keepdims and noop_with_empty_axes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


def _prod(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keepdim)
    return x


def _extreme(largest: bool):
    """amax/amin, with ONNX's identity over an empty set: the lowest (highest) value of the type."""

    def reduce(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
        if all(x.shape[d] for d in dims):
            return x.amax(dims, keepdim=keepdim) if largest else x.amin(dims, keepdim=keepdim)
        shape = [1 if d in dims else n for d, n in enumerate(x.shape) if keepdim or d not in dims]
        if x.dtype == torch.bool:
            fill = not largest
        else:
            info = torch.finfo(x.dtype) if x.is_floating_point() else torch.iinfo(x.dtype)
            fill = (-math.inf if largest else math.inf) if x.is_floating_point() else (info.min if largest else info.max)
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)

    return reduce


_REDUCERS: dict[str, Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": _extreme(largest=True),
    "ReduceMin": _extreme(largest=False),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


class Reduce(nn.Module):
    def __init__(self, op: str, keepdims: bool, noop_with_empty_axes: bool, axes: Optional[list[int]]):
        super().__init__()
        self.op, self.keepdims, self.noop = op, keepdims, noop_with_empty_axes
        self.axes = axes

    def forward(self, x: torch.Tensor, axes: Optional[torch.Tensor] = None) -> torch.Tensor:
        dims = self.axes if self.axes is not None else ([] if axes is None else [int(a) for a in axes.tolist()])
        if not dims:
            if self.noop:
                return x
            dims = list(range(x.dim()))
        dims = tuple(d % x.dim() for d in dims)
        if self.op == "ReduceMean" and not x.is_floating_point():  # onnxruntime: the integer sum / count, truncated
            return x.double().mean(dims, keepdim=self.keepdims).trunc().to(x.dtype)
        out = _REDUCERS[self.op](x, dims, self.keepdims)
        return out if out.dtype == x.dtype else out.to(x.dtype)  # torch sums int32 into int64; ONNX keeps the type

    def extra_repr(self) -> str:
        return f"{self.op}, axes={self.axes}, keepdims={self.keepdims}"


def convert_reduce(node, graph):
    attrs = node.attributes
    axes = None
    inputs = node.input_values
    if "axes" in attrs:  # before opset 18 (13 for ReduceSum): an attribute
        axes = [int(a) for a in attrs["axes"]]
        inputs = inputs[:1]
    elif len(inputs) > 1 and inputs[1] and inputs[1] in graph.initializers:
        axes = [int(a) for a in graph.initializers[inputs[1]].to_torch().reshape(-1).tolist()]
        inputs = inputs[:1]
    elif len(inputs) < 2 or not inputs[1]:
        axes = []
    module = Reduce(node.operation_type, bool(attrs.get("keepdims", 1)), bool(attrs.get("noop_with_empty_axes", 0)),
                    axes)
    return result(node, module, inputs=inputs)


for _op in ("ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
            "ReduceLogSumExp"):
    register(_op, 18)(convert_reduce)
# onnx2torch's ReduceMax/Min/Prod before 18 reduce one axis at a time and shift a negative axis as if it
# were positive ([0, -1] with keepdims=0 reduced the wrong axes): ours from opset 1
register("ReduceMax", 1, 11, 12, 13, 18, 20)(convert_reduce)
register("ReduceMin", 1, 11, 12, 13, 18, 20)(convert_reduce)
register("ReduceProd", 1, 11, 13)(convert_reduce)
# onnx2torch's ReduceSum-13 fails on empty constant axes without noop_with_empty_axes (sum over all axes)
register("ReduceSum", 1, 11, 13)(convert_reduce)
register("ReduceMean", 1, 11, 13)(convert_reduce)  # onnx2torch's refuses integers (torch's mean does)


class _SequentialCumsum(torch.autograd.Function):
    """float32 running sums added one element at a time in float32, as onnxruntime's CPU kernel adds
    them: torch's CPU cumsum accumulates float32 in double, which over 100,000 steps of 0.05 ends
    0.034 away from onnxruntime's (a vocoder's phase accumulator then differs in its sines). The
    gradient is the plain one: the running sums of the incoming gradient from the other end."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim = dim
        return torch.from_numpy(np.cumsum(x.detach().numpy(), axis=dim))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.flip(ctx.dim).cumsum(ctx.dim).flip(ctx.dim), None


def _cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling() \
            and not isinstance(x, FakeTensor):  # torch.export traces torch's own
        return _SequentialCumsum.apply(x, dim)
    return torch.cumsum(x, dim)


class CumSum(nn.Module):
    """Running sums along `axis` (an input), optionally exclusive (each sum leaves its own element
    out) and reversed. Ours because onnx2torch's reads a missing `reverse` as 1: every CumSum that
    PyTorch exports (no attributes) came out summed from the other end. float32 sums on the CPU are
    added in onnxruntime's order and precision (`_SequentialCumsum`)."""

    def __init__(self, exclusive: bool, reverse: bool, axis: Optional[int] = None):
        super().__init__()
        self.exclusive, self.reverse = exclusive, reverse
        self.axis = axis  # a constant axis, baked in (torch.export reads a tensor's value as data)

    def forward(self, x: torch.Tensor, axis: Optional[torch.Tensor] = None) -> torch.Tensor:
        dim = self.axis if self.axis is not None else int(axis.reshape(-1)[0])
        if self.reverse:
            x = x.flip(dim)
        out = _cumsum(x, dim)
        if self.exclusive:  # shifted by one: 0 first, the last element's sum dropped
            out = torch.cat([torch.zeros_like(out.narrow(dim, 0, 1)), out.narrow(dim, 0, out.shape[dim] - 1)], dim) \
                if out.shape[dim] else out
        return out.flip(dim) if self.reverse else out


@register("CumSum", 11, 14)
def convert_cumsum(node, graph):
    exclusive, reverse = bool(node.attributes.get("exclusive", 0)), bool(node.attributes.get("reverse", 0))
    axis = node.input_values[1]
    if axis in graph.initializers:
        constant = int(graph.initializers[axis].to_torch().reshape(-1)[0])
        return result(node, CumSum(exclusive, reverse, constant), inputs=node.input_values[:1])
    return result(node, CumSum(exclusive, reverse))
