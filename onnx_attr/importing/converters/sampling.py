"""Sampling at computed coordinates: GridSample (opset 16 to 22) and AffineGrid (opset 20).

torch's grid_sample and affine_grid follow the same conventions as ONNX (normalised [-1, 1]
coordinates, align_corners, zeros/border/reflection padding, cubic a = -0.75); only the mode
names differ between GridSample-16 and -20. GridSample is linear in X for a fixed grid, and
DeepLift treats it so; a grid that depends on the attributed inputs gets the Shapley rule of
deeplift/rules/sampling.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register

_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic", "cubic": "bicubic"}


class GridSample(nn.Module):
    def __init__(self, mode: str, padding: str, align_corners: bool):
        super().__init__()
        self.mode, self.padding, self.align_corners = mode, padding, align_corners

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if self.mode == "bicubic" and x.dim() != 4:
            raise ValueError("GridSample cubic is supported on 4-D inputs only")
        return F.grid_sample(x, grid.to(x.dtype), self.mode, self.padding, self.align_corners)


@register("GridSample", 16, 20, 22)
def convert_grid_sample(node, graph):
    attrs = node.attributes
    mode = text_attribute(node, "mode", "bilinear")
    padding = text_attribute(node, "padding_mode", "zeros")
    if mode not in _MODES or padding not in ("zeros", "border", "reflection"):
        raise NotImplementedError(f"GridSample mode {mode!r} with padding_mode {padding!r}")
    return result(node, GridSample(_MODES[mode], padding, bool(attrs.get("align_corners", 0))))


class AffineGrid(nn.Module):
    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

    def forward(self, theta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return F.affine_grid(theta, [int(s) for s in size.tolist()], self.align_corners)


@register("AffineGrid", 20)
def convert_affine_grid(node, graph):
    return result(node, AffineGrid(bool(node.attributes.get("align_corners", 0))))
