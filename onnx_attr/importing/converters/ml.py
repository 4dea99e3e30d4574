"""The ai.onnx.ml ops that scikit-learn's neural models export around their tensors.

ZipMap turns a [N, C] probability tensor into a sequence of {class: probability} maps, a value
PyTorch has no type for; it is imported as the tensor itself, columns in the order of its class
labels (which is the order of the maps' keys), and `verify` compares it so.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


class ZipMapAsTensor(nn.Module):
    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities


@register("ZipMap", 1, domain="ai.onnx.ml")
def convert_zipmap(node, graph):
    return result(node, ZipMapAsTensor())


class ArrayFeatureExtractor(nn.Module):
    """X[..., indices] on the last axis; a 1-D X gives [1, len(indices)] (as onnxruntime does)."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        picked = x.index_select(-1, indices.reshape(-1).long())
        return picked.reshape(1, -1) if x.dim() == 1 else picked


@register("ArrayFeatureExtractor", 1, domain="ai.onnx.ml")
def convert_array_feature_extractor(node, graph):
    return result(node, ArrayFeatureExtractor())


class Binarizer(nn.Module):
    """1 where x > threshold, else 0, in x's type."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


@register("Binarizer", 1, domain="ai.onnx.ml")
def convert_binarizer(node, graph):
    return result(node, Binarizer(float(node.attributes.get("threshold", 0.0))))
