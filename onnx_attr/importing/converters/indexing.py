"""Index ops with the ONNX semantics onnx2torch misses: negative indices, GatherND's batch_dims,
scatter reductions, TopK's order among equal values, NonZero's (rank, N) layout, and the ops it
lacks (Compress, ReverseSequence, Unique, TensorScatter).

Scatters and gathers are written once over flat indices: the ND forms compute a linear index
into the leading axes they address and reuse the same scatter, so every reduction and every
variant shares one code path.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import onnx2torch_result, result, text_attribute
from onnx_attr.importing.converters.registry import register

#: ONNX scatter reduction -> torch scatter_reduce name (None: plain assignment)
_REDUCE = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(indices: torch.Tensor, size: int) -> torch.Tensor:
    """ONNX allows indices in [-size, size): negative ones count from the end."""
    return torch.where(indices < 0, indices + size, indices)


def _scatter(data: torch.Tensor, dim: int, index: torch.Tensor, updates: torch.Tensor,
             reduction: Optional[str]) -> torch.Tensor:
    if reduction is None:
        return data.scatter(dim, index, updates)
    return data.scatter_reduce(dim, index, updates, reduction, include_self=True)


class ScatterElements(nn.Module):
    def __init__(self, axis: int, reduction: str):
        super().__init__()
        self.axis, self.reduction = axis, _REDUCE[reduction]

    def forward(self, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        dim = self.axis % data.dim()
        return _scatter(data, dim, _wrap(indices.long(), data.shape[dim]), updates, self.reduction)


def _reduction(node) -> str:
    reduction = text_attribute(node, "reduction", "none")
    if reduction not in _REDUCE:
        raise NotImplementedError(f"scatter reduction {reduction!r} is not defined by ONNX")
    return reduction


@register("Scatter", 9, 11)
@register("ScatterElements", 11, 13, 16, 18)
def convert_scatter_elements(node, graph):
    return result(node, ScatterElements(node.attributes.get("axis", 0), _reduction(node)))


def _linear_index(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row-major linear index of the last axis of `indices` into the leading axes `shape`."""
    k = indices.shape[-1]
    strides = [math.prod(shape[i + 1:k]) for i in range(k)]
    wrapped = _wrap(indices.long(), torch.tensor(shape[:k], device=indices.device))
    return (wrapped * torch.tensor(strides, device=indices.device)).sum(-1)


class ScatterND(nn.Module):
    def __init__(self, reduction: str):
        super().__init__()
        self.reduction = _REDUCE[reduction]

    def forward(self, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        k = indices.shape[-1]
        rest = data.shape[k:]
        flat = data.reshape(math.prod(data.shape[:k]), *rest)
        lin = _linear_index(indices, tuple(data.shape)).reshape(-1)
        values = updates.reshape(-1, *rest)
        index = lin.reshape(-1, *([1] * len(rest))).expand(values.shape)
        return _scatter(flat, 0, index, values, self.reduction).reshape(data.shape)


@register("ScatterND", 11, 13, 16, 18)
def convert_scatter_nd(node, graph):
    return result(node, ScatterND(_reduction(node)))


class GatherElements(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        dim = self.axis % data.dim()
        return torch.gather(data, dim, _wrap(indices.long(), data.shape[dim]))


@register("GatherElements", 11, 13)
def convert_gather_elements(node, graph):
    return result(node, GatherElements(node.attributes.get("axis", 0)))


class GatherND(nn.Module):
    def __init__(self, batch_dims: int):
        super().__init__()
        self.batch_dims = batch_dims

    def forward(self, data: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        b, k = self.batch_dims, indices.shape[-1]
        batch = data.shape[:b]
        n = math.prod(batch)
        addressed = tuple(data.shape[b:b + k])
        rest = data.shape[b + k:]
        table = data.reshape(n, math.prod(addressed), *rest)
        lin = _linear_index(indices, addressed).reshape(n, -1)
        out = table[torch.arange(n, device=data.device)[:, None], lin]
        return out.reshape(*batch, *indices.shape[b:-1], *rest)


@register("GatherND", 11, 12, 13)
def convert_gather_nd(node, graph):
    return result(node, GatherND(node.attributes.get("batch_dims", 0)))


class TopK(nn.Module):
    """A stable sort, so equal values keep their index order as ONNX requires."""

    def __init__(self, axis: int, largest: bool, k: Optional[int] = None):
        super().__init__()
        self.axis, self.largest, self.k = axis, largest, k

    def forward(self, x: torch.Tensor, k: Optional[torch.Tensor] = None):
        count = self.k if self.k is not None else int(k.reshape(-1)[0])
        values, indices = torch.sort(x, dim=self.axis, descending=self.largest, stable=True)
        return values.narrow(self.axis, 0, count), indices.narrow(self.axis, 0, count)


@register("TopK", 1)
def convert_top_k_1(node, graph):
    return result(node, TopK(node.attributes.get("axis", -1), True, int(node.attributes["k"])))


@register("TopK", 10, 11, 24)
def convert_top_k(node, graph):
    return result(node, TopK(node.attributes.get("axis", -1), bool(node.attributes.get("largest", 1))))


class NonZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x.reshape(1) if x.dim() == 0 else x).T  # ONNX: (rank, count)


@register("NonZero", 9, 13)
def convert_non_zero(node, graph):
    return result(node, NonZero())


class Compress(nn.Module):
    def __init__(self, axis: Optional[int]):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            x, dim = x.reshape(-1), 0
        else:
            dim = self.axis % x.dim()
        keep = torch.nonzero(condition.reshape(-1).bool()).reshape(-1)  # may be shorter than the axis
        return x.index_select(dim, keep)


@register("Compress", 9, 11, 28)
def convert_compress(node, graph):
    return result(node, Compress(node.attributes.get("axis")))


class ReverseSequence(nn.Module):
    """Reverse the first sequence_lens[b] steps of each batch entry along the time axis."""

    def __init__(self, batch_axis: int, time_axis: int):
        super().__init__()
        self.batch_axis, self.time_axis = batch_axis, time_axis

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = x.shape[self.time_axis]
        t = torch.arange(steps, device=x.device)[None, :]
        n = lengths.long()[:, None]
        source = torch.where(t < n, n - 1 - t, t)  # (batch, time)
        shape = [1] * x.dim()
        shape[self.batch_axis], shape[self.time_axis] = source.shape
        if self.batch_axis > self.time_axis:
            source = source.T
        return torch.gather(x, self.time_axis, source.reshape(shape).expand(x.shape))


@register("ReverseSequence", 10, 28)
def convert_reverse_sequence(node, graph):
    attrs = node.attributes
    return result(node, ReverseSequence(attrs.get("batch_axis", 1), attrs.get("time_axis", 0)))


class Unique(nn.Module):
    """Unique values (sorted, or in order of first occurrence) with ONNX's four outputs."""

    def __init__(self, axis: Optional[int], sorted_: bool, n_outputs: int):
        super().__init__()
        self.axis, self.sorted, self.n_outputs = axis, sorted_, n_outputs

    def forward(self, x: torch.Tensor):
        if self.axis is None:
            x, dim = x.reshape(-1), 0
        else:
            dim = self.axis % x.dim()
        values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True, dim=dim)
        n = x.shape[dim]
        first = torch.full((values.shape[dim],), n, dtype=torch.long, device=x.device)
        first = first.scatter_reduce(0, inverse, torch.arange(n, device=x.device), "amin")
        if not self.sorted:  # reorder by first occurrence
            order = torch.argsort(first)
            rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=x.device))
            values, first, counts, inverse = values.index_select(dim, order), first[order], counts[order], rank[inverse]
        return (values, first, inverse.reshape(-1), counts) if self.n_outputs > 1 else values


@register("Unique", 11, 28)
def convert_unique(node, graph):
    return result(node, Unique(node.attributes.get("axis"), bool(node.attributes.get("sorted", 1)),
                               len(node.output_values)))


class TensorScatter(nn.Module):
    """Write `update` into a KV cache along `axis`, at per-batch offsets, linear or circular."""

    def __init__(self, axis: int, circular: bool):
        super().__init__()
        self.axis, self.circular = axis, circular

    def forward(self, cache: torch.Tensor, update: torch.Tensor, write_indices: Optional[torch.Tensor] = None):
        dim = self.axis % cache.dim()
        size, steps = cache.shape[dim], update.shape[dim]
        start = (torch.zeros(cache.shape[0], dtype=torch.long, device=cache.device) if write_indices is None
                 else write_indices.long())
        position = start[:, None] + torch.arange(steps, device=cache.device)[None, :]  # (batch, steps)
        if self.circular:
            position = position % size
        shape = [1] * cache.dim()
        shape[0], shape[dim] = cache.shape[0], steps
        if dim == 0:
            raise ValueError("TensorScatter along the batch axis is not defined")
        return cache.scatter(dim, position.reshape(shape).expand(update.shape), update)


@register("TensorScatter", 24)
def convert_tensor_scatter(node, graph):
    mode = text_attribute(node, "mode", "linear")
    if mode not in ("linear", "circular"):
        raise NotImplementedError(f"TensorScatter mode {mode!r}")
    return result(node, TensorScatter(node.attributes.get("axis", -2), mode == "circular"))


class CornersInOrder(nn.Module):
    """ONNX lets [y1, x1, y2, x2] boxes name either diagonal pair; torchvision's NMS (inside
    onnx2torch's module) needs min corner first, so the corners are sorted before it runs."""

    def __init__(self, nms: nn.Module):
        super().__init__()
        self.nms = nms

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor, max_output_boxes_per_class: Optional[torch.Tensor] = None,
                iou_threshold: Optional[torch.Tensor] = None, score_threshold: Optional[torch.Tensor] = None):
        low = torch.minimum(boxes[..., :2], boxes[..., 2:])
        high = torch.maximum(boxes[..., :2], boxes[..., 2:])
        return self.nms(torch.cat((low, high), -1), scores, max_output_boxes_per_class, iou_threshold, score_threshold)


@register("NonMaxSuppression", 10, 11)
def convert_non_max_suppression(node, graph):
    converted = onnx2torch_result(node, graph, 11)
    if node.attributes.get("center_point_box", 0):  # centre and size: no corners to order
        return converted
    return converted._replace(torch_module=CornersInOrder(converted.torch_module))
