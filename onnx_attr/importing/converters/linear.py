"""Gemm in the opset versions onnx2torch lacks (1, 6, 7: before C became optional)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


class Gemm(nn.Module):
    """alpha * A' @ B' + beta * C, with numpy broadcasting of C (what `broadcast=1` meant)."""

    def __init__(self, alpha: float, beta: float, trans_a: bool, trans_b: bool):
        super().__init__()
        self.alpha, self.beta, self.trans_a, self.trans_b = alpha, beta, trans_a, trans_b

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        a = a.transpose(0, 1) if self.trans_a else a
        b = b.transpose(0, 1) if self.trans_b else b
        out = a @ b
        if self.alpha != 1.0:
            out = out * self.alpha
        if c is not None and self.beta != 0.0:
            out = out + (c * self.beta if self.beta != 1.0 else c)
        return out


@register("Gemm", 1, 6, 7)
def convert_gemm_old(node, graph):
    attrs = node.attributes
    # broadcast=0 requires C to have the output's shape already, where broadcasting is a no-op.
    module = Gemm(attrs.get("alpha", 1.0), attrs.get("beta", 1.0), bool(attrs.get("transA", 0)),
                  bool(attrs.get("transB", 0)))
    return result(node, module)
