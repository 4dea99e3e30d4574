"""Sequences (opset 11+) as Python lists of tensors, and Optional (opset 15+) as a value or None.

Scripted PyTorch exports and tf2onnx's TensorArrays build outputs element by element with them:
SequenceConstruct/Empty/Insert/Erase/At/Length, SplitToSequence and ConcatFromSequence. Each is a
gather or a concatenation of its tensors, so autograd (and so DeepLift, which takes them as linear
ops) goes through a list as through `torch.cat`. A position may be negative (counted from the end)
and must fall inside the sequence, as onnxruntime requires.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


def _position(position: Optional[torch.Tensor], length: int, inserting: bool = False) -> int:
    """A sequence position as an index into a list of `length` (inserting: `length` is allowed)."""
    if position is None:
        return length if inserting else length - 1
    index = int(position.reshape(()))
    if not -length <= index <= (length if inserting else length - 1):
        raise IndexError(f"sequence position {index} is outside a sequence of {length}")
    return index + length if index < 0 else index


class SequenceConstruct(nn.Module):
    def forward(self, *tensors: torch.Tensor) -> list:
        return list(tensors)


class SequenceEmpty(nn.Module):
    def forward(self) -> list:
        return []


class SequenceInsert(nn.Module):
    def forward(self, sequence: list, tensor: torch.Tensor, position: Optional[torch.Tensor] = None) -> list:
        out = list(sequence)
        out.insert(_position(position, len(out), inserting=True), tensor)
        return out


class SequenceErase(nn.Module):
    def forward(self, sequence: list, position: Optional[torch.Tensor] = None) -> list:
        out = list(sequence)
        del out[_position(position, len(out))]
        return out


class SequenceAt(nn.Module):
    def forward(self, sequence: list, position: torch.Tensor) -> torch.Tensor:
        return sequence[_position(position, len(sequence))]


class SequenceLength(nn.Module):
    def forward(self, sequence: list) -> torch.Tensor:
        return torch.tensor(len(sequence), dtype=torch.int64)


class ConcatFromSequence(nn.Module):
    """The tensors concatenated along `axis`, or stacked along a new one (`new_axis`)."""

    def __init__(self, axis: int, new_axis: bool):
        super().__init__()
        self.axis, self.new_axis = axis, new_axis

    def forward(self, sequence: list) -> torch.Tensor:
        if not sequence:
            raise ValueError("ConcatFromSequence of an empty sequence")
        return torch.stack(sequence, self.axis) if self.new_axis else torch.cat(sequence, self.axis)


class SplitToSequence(nn.Module):
    """`input` cut along `axis` into pieces of `split` (a length, the last piece shorter, or the
    lengths), or into single slices (without `split`; `keepdims` keeps the split axis then)."""

    def __init__(self, axis: int, keepdims: bool):
        super().__init__()
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x: torch.Tensor, split: Optional[torch.Tensor] = None) -> list:
        if split is None:
            pieces = list(torch.split(x, 1, self.axis))
            return pieces if self.keepdims else [p.squeeze(self.axis) for p in pieces]
        sizes = split.reshape(-1).tolist()
        return list(torch.split(x, int(sizes[0]) if split.dim() == 0 else [int(s) for s in sizes], self.axis))


class OptionalOf(nn.Module):
    """Optional(x): x itself (None for an empty optional); OptionalGetElement is then the identity."""

    def forward(self, value=None):
        return value


class OptionalHasElement(nn.Module):
    def forward(self, value=None) -> torch.Tensor:
        return torch.tensor(value is not None)


# the ops without attributes: one module each
for _op, _module in (("SequenceConstruct", SequenceConstruct), ("SequenceEmpty", SequenceEmpty),
                     ("SequenceInsert", SequenceInsert), ("SequenceErase", SequenceErase),
                     ("SequenceAt", SequenceAt), ("SequenceLength", SequenceLength)):
    register(_op, 11)(lambda node, graph, module=_module: result(node, module()))


@register("ConcatFromSequence", 11)
def convert_concat_from_sequence(node, graph):
    return result(node, ConcatFromSequence(int(node.attributes["axis"]), bool(node.attributes.get("new_axis", 0))))


@register("SplitToSequence", 11)
def convert_split_to_sequence(node, graph):
    return result(node, SplitToSequence(int(node.attributes.get("axis", 0)), bool(node.attributes.get("keepdims", 1))))


register("Optional", 15)(lambda node, graph: result(node, OptionalOf()))
register("OptionalGetElement", 15, 18)(lambda node, graph: result(node, OptionalOf()))
register("OptionalHasElement", 15, 18)(lambda node, graph: result(node, OptionalHasElement()))
