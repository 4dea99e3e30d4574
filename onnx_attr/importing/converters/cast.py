"""Cast and CastLike in every opset version, for the types PyTorch has."""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; NotImplementedError for those torch lacks."""
    name = helper.tensor_dtype_to_string(elem_type).replace("TensorProto.", "")
    if name == "BFLOAT16":
        return torch.bfloat16
    try:
        return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(elem_type))).dtype
    except (TypeError, KeyError, ValueError) as err:
        raise NotImplementedError(f"casting to {name} is not supported (PyTorch has no such dtype)") from err


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class CastLike(nn.Module):
    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


@register("Cast", 1, 6, 9, 13, 19, 21, 23, 24, 25)
def convert_cast(node, graph):
    to = node.attributes["to"]
    if isinstance(to, str):  # Cast-1 names the type
        from onnx import TensorProto

        to = getattr(TensorProto, to.upper())
    return result(node, Cast(torch_dtype(int(to))))


@register("CastLike", 15, 19, 21, 23, 24, 25)
def convert_cast_like(node, graph):
    return result(node, CastLike())
