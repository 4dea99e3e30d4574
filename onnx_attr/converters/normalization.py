"""Normalizations that keep scale and bias as inputs.

onnx2torch folds them into `nn.LayerNorm`/`nn.InstanceNorm` parameters, which hides from the
DeepLift rewrite which inputs are constants; here they stay visible graph inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._common import result
from .registry import register


class LayerNormalization(nn.Module):
    def __init__(self, axis: int, epsilon: float):
        super().__init__()
        self.axis, self.epsilon = axis, epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape[self.axis % x.dim():]
        if scale.shape == shape and (bias is None or bias.shape == shape):
            return F.layer_norm(x, shape, scale, bias, self.epsilon)
        out = F.layer_norm(x, shape, None, None, self.epsilon) * scale
        return out if bias is None else out + bias


@register("LayerNormalization", 17)
def convert_layer_normalization(node, graph):
    if len([o for o in node.output_values if o]) > 1:
        raise NotImplementedError("LayerNormalization's Mean/InvStdDev outputs are not supported")
    attrs = node.attributes
    if attrs.get("stash_type", 1) != 1:
        raise NotImplementedError("LayerNormalization with stash_type other than float32 is not supported")
    return result(node, LayerNormalization(attrs.get("axis", -1), attrs.get("epsilon", 1e-5)))


class InstanceNormalization(nn.Module):
    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=scale, bias=bias, eps=self.epsilon)


@register("InstanceNormalization", 1, 6)
def convert_instance_normalization(node, graph):
    return result(node, InstanceNormalization(node.attributes.get("epsilon", 1e-5)))
