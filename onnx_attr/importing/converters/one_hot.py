"""OneHot (opsets 9 and 11), which onnx2torch lacks: `values[1]` where an index names a class,
`values[0]` elsewhere, along a new axis of length `depth`.

ONNX casts non-integer indices and depth to int64 (truncating toward zero); an index outside
[-depth, depth) gives a row of `values[0]`, and negative indices count from the end (opset 11
says so; onnxruntime does the same at opset 9, and it is the reference). The output is a selection of `values` (linear in them) and no function of the indices that
a gradient can follow: the op kind table says so.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


class OneHot(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if depth.numel() != 1 or values.numel() != 2:
            raise ValueError(f"OneHot needs one depth value and two values (off, on); got {depth.numel()} and "
                             f"{values.numel()}")
        classes = int(depth.reshape(-1)[0].item())  # a float depth truncates toward zero, as int64 casts do
        if classes <= 0:
            raise ValueError(f"OneHot depth must be positive, got {classes}")
        rank = indices.dim() + 1
        if not -rank <= self.axis < rank:
            raise ValueError(f"OneHot axis {self.axis} is outside [{-rank}, {rank - 1}] for indices of rank {rank - 1}")
        index = indices.to(torch.int64)  # truncates toward zero, as ONNX's cast to int64 does
        index = torch.where(index < 0, index + classes, index)
        # an index outside [0, depth) matches no class: its row stays `values[0]`
        hit = index.unsqueeze(-1) == torch.arange(classes, device=index.device)
        flat = values.reshape(2)
        out = torch.where(hit, flat[1], flat[0])
        return out.movedim(-1, self.axis % rank)


@register("OneHot", 9, 11)
def convert_one_hot(node, graph):
    return result(node, OneHot(int(node.attributes.get("axis", -1))))
