"""AveragePool for every opset, asymmetric pads included (onnx2torch refuses those)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import result
from .registry import register

_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class AveragePool(nn.Module):
    """Pads explicitly, then divides a window sum by the count of the elements ONNX counts.

    The count is the same pool run over a mask (1 where ONNX counts an element): real inputs
    only, or padded ones too with `count_include_pad`. Both pools share one divisor, so the
    ratio is exact whatever torch divides by, and the op stays linear in its input.
    """

    def __init__(self, kernel: list[int], strides: list[int], pads: list[int], ceil_mode: bool,
                 count_include_pad: bool):
        super().__init__()
        rank = len(kernel)
        if rank not in _AVG:
            raise NotImplementedError(f"AveragePool over {rank} spatial dims is not supported (1 to 3 are)")
        self.kernel, self.strides, self.ceil_mode = kernel, strides, ceil_mode
        self.count_include_pad = count_include_pad
        self.begin = pads[:rank]
        self.pads = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = _AVG[len(self.kernel)]
        padded = F.pad(x, self.pads)
        total = pool(padded, self.kernel, self.strides, 0, self.ceil_mode, True)
        if not any(self.pads) and not self.ceil_mode:
            return total
        shape = (1, 1, *x.shape[2:])
        if self.count_include_pad:
            mask = torch.ones((1, 1, *padded.shape[2:]), dtype=x.dtype, device=x.device)
        else:
            mask = F.pad(torch.ones(shape, dtype=x.dtype, device=x.device), self.pads)
        out = total / pool(mask, self.kernel, self.strides, 0, self.ceil_mode, True)
        if self.ceil_mode:  # like ONNX (and torch's own padding), drop windows that start in the end padding
            keep = [min(n, -(-(size + b) // s)) for n, size, b, s in
                    zip(out.shape[2:], x.shape[2:], self.begin, self.strides)]
            out = out[(..., *(slice(0, k) for k in keep))]
        return out


@register("AveragePool", 1, 7, 10, 11, 19)
def convert_average_pool(node, graph):
    attrs = node.attributes
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    if any(d != 1 for d in attrs.get("dilations", [1] * rank)):
        raise NotImplementedError("AveragePool with dilations is not supported")
    strides = list(attrs.get("strides", [1] * rank))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(graph, node, kernel, strides, auto_pad)
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
    module = AveragePool(kernel, strides, pads, bool(attrs.get("ceil_mode", 0)),
                         bool(attrs.get("count_include_pad", 0)))
    return result(node, module)


def _same_pads(graph, node, kernel, strides, auto_pad) -> list[int]:
    info = graph.value_info.get(node.input_values[0])
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim][2:] if info is not None else []
    if len(dims) != len(kernel) or not all(dims):
        raise NotImplementedError(f"AveragePool auto_pad={auto_pad} needs static spatial input dims")
    begin, end = [], []
    for size, k, s in zip(dims, kernel, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end
