"""Pooling: AveragePool and MaxPool for every opset (asymmetric and SAME pads, dilation, ceil mode), the global pools."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register

_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class AveragePool(nn.Module):
    """Pads explicitly, then divides a window sum by the count of the elements ONNX counts.

    The count is the same pool run over a mask (1 where ONNX counts an element): real inputs
    only, or padded ones too with `count_include_pad`. Both pools share one divisor, so the
    ratio is exact whatever torch divides by, and the op stays linear in its input.

    An input shorter than one window (with its pads) still gets one, as in onnxruntime, whose
    output size truncates toward zero where ONNX's formula floors (`out_sizes`): the window is
    padded out to its end, and that overhang counts with `count_include_pad` below opset 19
    (`counts_overhang`), as there.
    """

    def __init__(self, kernel: list[int], strides: list[int], pads: list[int], ceil_mode: bool,
                 count_include_pad: bool, counts_overhang: bool = False):
        super().__init__()
        rank = len(kernel)
        if rank not in _AVG:
            raise NotImplementedError(f"AveragePool over {rank} spatial dims is not supported (1 to 3 are)")
        self.kernel, self.strides, self.ceil_mode = kernel, strides, ceil_mode
        self.count_include_pad, self.counts_overhang = count_include_pad, counts_overhang
        self.begin, self.end = pads[:rank], pads[rank:]
        self.pads = _torch_pads(self.begin, self.end)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = _AVG[len(self.kernel)]
        spatial = tuple(x.shape[2:])
        overhang = [0] * len(spatial)
        if not self.ceil_mode:  # (torch's ceil mode already gives the short input its window)
            sizes = out_sizes(spatial, self.kernel, self.strides, self.begin, self.end)
            if min(sizes) <= 0:
                return x.new_zeros((*x.shape[:2], *(max(n, 0) for n in sizes)))
            overhang = [max(k - (n + b + e), 0) for n, k, b, e in zip(spatial, self.kernel, self.begin, self.end)]
        extra = _torch_pads([0] * len(spatial), overhang)
        padded = F.pad(x, [p + q for p, q in zip(self.pads, extra)])
        total = pool(padded, self.kernel, self.strides, 0, self.ceil_mode, True)
        if not any(self.pads) and not self.ceil_mode and not any(overhang):
            return total
        ones = torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            mask = F.pad(F.pad(ones, self.pads, value=1.0), extra, value=float(self.counts_overhang))
        else:
            mask = F.pad(ones, [p + q for p, q in zip(self.pads, extra)])
        out = total / pool(mask, self.kernel, self.strides, 0, self.ceil_mode, True)
        if self.ceil_mode:  # like ONNX (and torch's own padding), drop windows that start in the end padding
            keep = [min(n, -(-(size + b) // s)) for n, size, b, s in
                    zip(out.shape[2:], x.shape[2:], self.begin, self.strides)]
            out = out[(..., *(slice(0, k) for k in keep))]
        return out


def out_sizes(spatial, extents, strides, begin, end) -> list[int]:
    """Pooling output sizes without ceil mode as onnxruntime computes them: (n + pads - extent) / stride + 1
    in integer arithmetic, which truncates toward zero, so an input shorter than one window by less
    than a stride still gets that window (ONNX's formula floors, giving none)."""
    spans = [n + b + e - k for n, k, b, e in zip(spatial, extents, begin, end)]
    return [(span // s if span >= 0 else -(-span // s)) + 1 for span, s in zip(spans, strides)]


@register("AveragePool", 1, 7, 10, 11)
def convert_average_pool(node, graph):
    return _average_pool(node, graph, counts_overhang=True)


@register("AveragePool", 19, 22)
def convert_average_pool_19(node, graph):
    return _average_pool(node, graph, counts_overhang=False)


def _average_pool(node, graph, counts_overhang: bool):
    attrs = node.attributes
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    same = auto_pad in ("SAME_UPPER", "SAME_LOWER")
    if any(d != 1 for d in attrs.get("dilations", [1] * rank)) or same and _same_pads(graph, node, kernel, strides,
                                                                                        auto_pad) is None:
        return result(node, GeneralAveragePool(dict(attrs)))
    if same:
        pads = _same_pads(graph, node, kernel, strides, auto_pad)
    elif auto_pad == "VALID":
        pads = [0] * 2 * rank
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
    module = AveragePool(kernel, strides, pads, bool(attrs.get("ceil_mode", 0)),
                         bool(attrs.get("count_include_pad", 0)), counts_overhang)
    return result(node, module)


def _same_pads(graph, node, kernel, strides, auto_pad) -> list[int] | None:
    """The SAME pads for the input's static spatial dims; None when shape inference has not fixed them."""
    info = graph.value_info.get(node.input_values[0])
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim][2:] if info is not None else []
    if len(dims) != len(kernel) or not all(dims):
        return None
    begin, end = [], []
    for size, k, s in zip(dims, kernel, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class WindowSums(nn.Module):
    """Sums over the ONNX pooling windows (any pads, strides, dilations, ceil mode), as a
    depthwise convolution with a kernel of ones over the input padded as the geometry needs.

    `counted` gives, per output, how many elements ONNX counts in the window: the real ones,
    or with `count_include_pad` the explicit padding too (never the ceil-mode overhang).
    """

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs = attrs
        if len(attrs["kernel_shape"]) not in _CONV:
            raise NotImplementedError("pooling over more than 3 spatial dims is not supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = window_padding(self.attrs, tuple(x.shape[2:]), pool=True)
        empty = plan.empty(x)
        return self._sum(F.pad(x, plan.pads), plan) if empty is None else empty

    def _sum(self, padded: torch.Tensor, plan: WindowPadding) -> torch.Tensor:
        ones = torch.ones((padded.shape[1], 1, *self.attrs["kernel_shape"]), dtype=padded.dtype, device=padded.device)
        return _CONV[len(plan.strides)](padded, ones, None, plan.strides, 0, plan.dilations, padded.shape[1])

    def counted(self, x: torch.Tensor, include_pad: bool) -> torch.Tensor:
        plan = window_padding(self.attrs, tuple(x.shape[2:]), pool=True)
        empty = plan.empty(x[:1, :1])
        if empty is not None:
            return empty
        mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        if include_pad:  # the op's own pads count as ones; the ceil-mode overhang beyond them does not
            mask = F.pad(mask, plan.own_pads, value=1.0)
            return self._sum(F.pad(mask, [p - q for p, q in zip(plan.pads, plan.own_pads)]), plan)
        return self._sum(F.pad(mask, plan.pads), plan)


class GeneralAveragePool(nn.Module):
    """AveragePool with dilations (opset 19+), or SAME pads over spatial dims fixed only at run
    time: window sums over window counts, the geometry computed per input shape."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.sums = WindowSums(attrs)
        self.include_pad = bool(attrs.get("count_include_pad", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sums(x) / self.sums.counted(x, self.include_pad)


class LpPool(nn.Module):
    """(Σ_window |x|^p)^(1/p), padding counted as zeros."""

    def __init__(self, attrs: dict, p: int):
        super().__init__()
        self.sums, self.p = WindowSums(attrs), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sums(x.abs().pow(self.p)).pow(1.0 / self.p)


@register("LpPool", 1, 2, 11, 18, 22)
def convert_lp_pool(node, graph):
    attrs = dict(node.attributes)
    return result(node, LpPool(attrs, int(attrs.get("p", 2))))


class GlobalLpPool(nn.Module):
    """(Σ |x|^p)^(1/p) over every spatial axis, kept as 1s."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().pow(self.p).sum(dim=tuple(range(2, x.dim())), keepdim=True).pow(1.0 / self.p)


@register("GlobalLpPool", 1, 2, 22)
def convert_global_lp_pool(node, graph):
    return result(node, GlobalLpPool(node.attributes.get("p", 2)))


class GlobalAveragePool(nn.Module):
    """The mean over every axis after the channels, read off the input when it runs: onnx2torch's
    converter took the axes from the declared shape, and a value whose inference kept its type but
    lost its shape (after a reshape to a computed shape in an opset-9 torch export) read as rank 0,
    so it averaged the channels away too ([N, 1, 1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalAveragePool", 1, 22)
def convert_global_average_pool(node, graph):
    return result(node, GlobalAveragePool())


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool", 1, 22)
def convert_global_max_pool(node, graph):
    return result(node, GlobalMaxPool())


class WindowPadding(NamedTuple):
    """How to pad an input so that windows without padding read exactly what ONNX's do.

    `pads` (F.pad order, last axis first) extends the input to the span the windows cover; a
    negative end pad drops trailing elements no window reads, so the op's output has exactly
    ONNX's size. `own_pads` are the op's pads alone (explicit or SAME), without the ceil-mode
    overhang: the elements AveragePool's count_include_pad counts."""

    pads: list[int]
    own_pads: list[int]
    strides: list[int]
    dilations: list[int]
    sizes: list[int]  # the output's spatial sizes: one <= 0 where the input is a stride or more short of one window

    def empty(self, x: torch.Tensor) -> torch.Tensor | None:
        """onnxruntime's empty output where no window fits, else None (torch's pools refuse)."""
        return x.new_zeros((*x.shape[:2], *(max(n, 0) for n in self.sizes))) if min(self.sizes) <= 0 else None


def _torch_pads(begin: list[int], end: list[int]) -> list[int]:
    return [p for axis in reversed(range(len(begin))) for p in (begin[axis], end[axis])]


def window_padding(attrs: dict, spatial: tuple[int, ...], pool: bool = False) -> WindowPadding:
    """The ONNX window geometry (pads or SAME/VALID auto_pad, strides, dilations, ceil mode) of a
    pooling or convolution over inputs of this spatial shape. A `pool` over an input shorter than
    one window gets onnxruntime's sizes (`out_sizes`); a convolution's is refused, as there."""
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((-(-n // s) - 1) * s + e - n, 0) for n, s, e in zip(spatial, strides, extents)]
        small = [t // 2 for t in totals]
        begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(totals, small)]
        end = [t - b for t, b in zip(totals, begin)]
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
        begin, end = pads[:rank], pads[rank:]
    ceil = bool(attrs.get("ceil_mode", 0)) and auto_pad in ("NOTSET", "")
    reach = []
    sizes = out_sizes(spatial, extents, strides, begin, end) if pool else \
        [(n + b + f - e) // s + 1 for n, s, e, b, f in zip(spatial, strides, extents, begin, end)]
    for axis, (n, s, e, b, f) in enumerate(zip(spatial, strides, extents, begin, end)):
        if ceil:
            sizes[axis] = -(-(n + b + f - e) // s) + 1
            if (sizes[axis] - 1) * s >= n + b:  # a window may not start in the end padding
                sizes[axis] -= 1
        last = max(sizes[axis] - 1, 0) if pool else sizes[axis] - 1
        reach.append(last * s + e - n - b)  # the end pad the last window needs
    return WindowPadding(_torch_pads(begin, reach), _torch_pads(begin, end), strides, dilations, sizes)


_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class MaxPool(nn.Module):
    """Pads with the dtype's lowest value as far as the ONNX geometry needs, then pools without padding."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs = attrs
        if len(attrs["kernel_shape"]) not in _MAX:
            raise NotImplementedError("MaxPool over more than 3 spatial dims is not supported")
        self._plans: dict[tuple[int, ...], WindowPadding] = {}  # per spatial shape

    def plan(self, spatial: tuple[int, ...]) -> WindowPadding:
        if spatial not in self._plans:
            self._plans[spatial] = window_padding(self.attrs, spatial, pool=True)
        return self._plans[spatial]

    def padded(self, x: torch.Tensor) -> tuple[torch.Tensor, WindowPadding]:
        """x padded with its dtype's lowest value as far as the windows read, and the plan."""
        plan = self.plan(tuple(x.shape[2:]))
        if not x.is_floating_point():  # torch's integer max_pool2d refuses large channels-last tensors (a
            x = x.contiguous()  # QLinearConv's int8 output over a transposed NHWC input): row-major it pools
        if not any(plan.pads):
            return x, plan  # F.pad would copy x even to pad nothing
        low = torch.finfo(x.dtype).min if x.is_floating_point() else torch.iinfo(x.dtype).min
        return F.pad(x, plan.pads, value=low), plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, plan = self.padded(x)
        empty = plan.empty(x)
        if empty is not None:
            return empty
        return _MAX[len(plan.strides)](padded, list(self.attrs["kernel_shape"]), plan.strides, 0, plan.dilations)


class MaxPoolWithIndices(MaxPool):
    """MaxPool that also gives ONNX's Indices: flat positions in the unpadded input, counting
    the batch and channel too, over its spatial dims in row-major (or, with `storage_order` 1,
    column-major) order."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = tuple(x.shape[2:])
        padded, plan = self.padded(x)
        y, where = _MAX[len(spatial)](padded, list(self.attrs["kernel_shape"]), plan.strides, 0, plan.dilations,
                                      return_indices=True)
        flat = torch.zeros_like(where)
        stride = 1
        axes = range(len(spatial)) if self.attrs.get("storage_order", 0) else reversed(range(len(spatial)))
        for axis in axes:  # padded coordinates -> unpadded, re-flattened in the wanted order
            inner = math.prod(padded.shape[2 + axis + 1:])
            coord = (where // inner) % padded.shape[2 + axis] - plan.pads[2 * (len(spatial) - 1 - axis)]
            flat += coord * stride
            stride *= spatial[axis]
        n, c = x.shape[:2]
        planes = torch.arange(n * c, device=x.device).reshape(n, c, *([1] * len(spatial)))
        return y, flat + planes * math.prod(spatial)


@register("MaxPool", 1, 8, 10, 11, 12)
def convert_max_pool(node, graph):
    if len(node.output_values) > 1 and node.output_values[1]:
        return result(node, MaxPoolWithIndices(dict(node.attributes)))
    return OperationConverterResult(torch_module=MaxPool(dict(node.attributes)),
                                    onnx_mapping=OnnxMapping(inputs=node.input_values,
                                                             outputs=node.output_values[:1]))


class MaxUnpool(nn.Module):
    """ONNX MaxUnpool: each value is written at its flat index (MaxPool's Indices) in a zero
    tensor of `output_shape`, or of the shape the pooling geometry implies.

    The indices address `output_shape`, as in onnxruntime and torch's max_unpool; ONNX's own
    reference (and so one node-suite case) reads them in the implied shape instead.
    """

    def __init__(self, kernel: list[int], strides: list[int], pads: list[int]):
        super().__init__()
        self.kernel, self.strides, self.pads = kernel, strides, pads

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_shape: torch.Tensor | None = None):
        if output_shape is not None:  # the shape MaxPool's input had, which its indices address
            shape = [int(d) for d in output_shape.tolist()]
        else:
            rank = len(self.kernel)
            shape = [*x.shape[:2], *((n - 1) * s + k - b - e for n, s, k, b, e in zip(
                x.shape[2:], self.strides, self.kernel, self.pads[:rank], self.pads[rank:]))]
        out = x.new_zeros(math.prod(shape))
        return out.index_put((indices.reshape(-1),), x.reshape(-1)).reshape(shape)


@register("MaxUnpool", 9, 11, 22)
def convert_max_unpool(node, graph):
    kernel = list(node.attributes["kernel_shape"])
    rank = len(kernel)
    return result(node, MaxUnpool(kernel, list(node.attributes.get("strides", [1] * rank)),
                                  list(node.attributes.get("pads", [0] * 2 * rank))))
