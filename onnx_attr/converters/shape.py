"""Shape ops whose onnx2torch version mishandles edge cases."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import result
from .registry import register


class Flatten(nn.Module):
    """ONNX Flatten: always 2-D, (prod(dims[:axis]), prod(dims[axis:])), any input rank."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        outer = math.prod(x.shape[:axis])
        return x.reshape(outer, -1) if outer else x.reshape(0, math.prod(x.shape[axis:]))


@register("Flatten", 1, 9, 11, 13, 21)
def convert_flatten(node, graph):
    return result(node, Flatten(node.attributes.get("axis", 1)))


class Reshape(nn.Module):
    """ONNX Reshape: 0 copies the input's dim (unless `allowzero`), -1 is inferred.

    With a constant target shape the shape is baked in (`static`), which keeps the module
    traceable by torch.export; otherwise it is read from the second input at run time.
    """

    def __init__(self, allowzero: bool, static: list[int] | None = None):
        super().__init__()
        self.allowzero, self.static = allowzero, static

    def forward(self, x: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        target = self.static if self.static is not None else [int(d) for d in shape.tolist()]
        if not self.allowzero:
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return x.reshape(target)


@register("Reshape", 1, 5, 13, 14, 19, 21)
def convert_reshape(node, graph):
    allowzero = bool(node.attributes.get("allowzero", 0))
    if "shape" in node.attributes:  # Reshape-1 takes the shape as an attribute
        return result(node, Reshape(allowzero, [int(d) for d in node.attributes["shape"]]),
                      inputs=node.input_values[:1])
    shape_name = node.input_values[1]
    if shape_name in graph.initializers:
        static = [int(d) for d in graph.initializers[shape_name].to_torch().tolist()]
        return result(node, Reshape(allowzero, static), inputs=node.input_values[:1])
    return result(node, Reshape(allowzero))


class Split(nn.Module):
    """ONNX Split-13/18: sizes from a constant `split` input, or `num_outputs` near-equal chunks."""

    def __init__(self, axis: int, sizes: list[int] | None, num_outputs: int | None):
        super().__init__()
        self.axis, self.sizes, self.num_outputs = axis, sizes, num_outputs

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if self.sizes is not None:
            sizes = self.sizes
        elif split is not None:
            sizes = [int(s) for s in split.tolist()]
        else:  # ceil-sized chunks, the last one smaller (ONNX's num_outputs rule)
            length = x.shape[self.axis]
            chunk = -(-length // self.num_outputs)
            sizes = [min(chunk, length - i * chunk) for i in range(self.num_outputs)]
        return tuple(torch.split(x, sizes, dim=self.axis))


@register("Split", 18)
def convert_split(node, graph):
    inputs = node.input_values
    sizes = None
    if len(inputs) > 1 and inputs[1]:
        if inputs[1] in graph.initializers:
            sizes = [int(s) for s in graph.initializers[inputs[1]].to_torch().tolist()]
            inputs = inputs[:1]
    else:
        inputs = inputs[:1]
    num_outputs = node.attributes.get("num_outputs", len(node.output_values))
    return result(node, Split(node.attributes.get("axis", 0), sizes, num_outputs), inputs=inputs)
