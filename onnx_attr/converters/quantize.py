"""QuantizeLinear and DequantizeLinear at every opset (10 to 28): per-tensor, per-axis and blocked
scales, output_dtype, and integer targets torch can hold. Float8 and 4-bit types are refused by
name, since torch has no 4-bit tensors and float8 saturation would need its own rounding rules.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from torch import nn

from ._common import result
from .registry import register

_INT_RANGES = {TensorProto.UINT8: (torch.uint8, 0, 255), TensorProto.INT8: (torch.int8, -128, 127),
               TensorProto.UINT16: (torch.uint16, 0, 65535), TensorProto.INT16: (torch.int16, -32768, 32767),
               TensorProto.INT32: (torch.int32, -2 ** 31, 2 ** 31 - 1)}
_TORCH_TO_ONNX = {torch_dtype: onnx_type for onnx_type, (torch_dtype, _, _) in _INT_RANGES.items()}
_FLOATS = {TensorProto.FLOAT: torch.float32, TensorProto.FLOAT16: torch.float16,
           TensorProto.BFLOAT16: torch.bfloat16, TensorProto.DOUBLE: torch.float64}


def _broadcast(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against x: scalar, one per slice along `axis`,
    or (blocked) one per `block_size` elements along it."""
    if param.dim() == 0 or param.numel() == 1 and param.dim() <= 1:
        return param.reshape(())
    axis = axis + x.dim() if axis < 0 else axis
    if block_size > 0:
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = param.numel()
    return param.reshape(shape)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


class QuantizeLinear(nn.Module):
    """y = clamp(round_half_even(x / scale) + zero_point) in the output integer type."""

    def __init__(self, axis: int, block_size: int, output_type: int | None):
        super().__init__()
        self.axis, self.block_size, self.output_type = axis, block_size, output_type

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        kind = self.output_type or (_TORCH_TO_ONNX.get(zero_point.dtype) if zero_point is not None else TensorProto.UINT8)
        if kind not in _INT_RANGES:
            raise NotImplementedError(f"QuantizeLinear to {zero_point.dtype if zero_point is not None else kind}")
        dtype, low, high = _INT_RANGES[kind]
        wide = _compute_dtype(x, scale)
        q = torch.round(x.to(wide) / _broadcast(scale, x, self.axis, self.block_size).to(wide))
        if zero_point is not None:
            q = q + _broadcast(zero_point, x, self.axis, self.block_size).to(wide)
        return q.clamp_(low, high).to(torch.int64).to(dtype)


class DequantizeLinear(nn.Module):
    """y = (x - zero_point) * scale, in output_dtype or the scale's type."""

    def __init__(self, axis: int, block_size: int, output_type: int | None):
        super().__init__()
        self.axis, self.block_size = axis, block_size
        self.output = _FLOATS.get(output_type) if output_type else None

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        wide = _compute_dtype(scale)
        shifted = x.to(torch.int64)
        if zero_point is not None:
            shifted = shifted - _broadcast(zero_point, x, self.axis, self.block_size).to(torch.int64)
        y = shifted.to(wide) * _broadcast(scale, x, self.axis, self.block_size).to(wide)
        return y.to(self.output or scale.dtype)


def _elem_type(graph, name: str) -> int | None:
    if not name:
        return None
    if name in graph.initializers:
        return graph.initializers[name].proto.data_type
    info = graph.value_info.get(name)
    return info.type.tensor_type.elem_type if info is not None else None


def _refuse_unsupported(op: str, elem_type: int | None) -> None:
    if elem_type and elem_type not in _INT_RANGES and elem_type not in _FLOATS:
        name = TensorProto.DataType.Name(elem_type)
        raise NotImplementedError(f"{op} with {name} tensors: torch has no such type (4-bit and float8 "
                                  "quantization are not supported)")


@register("QuantizeLinear", 10, 13, 19, 21, 23, 24, 25, 28)
def convert_quantize(node, graph):
    attrs = node.attributes
    output_type = attrs.get("output_dtype", 0) or _elem_type(graph, node.input_values[2] if len(node.input_values) > 2 else "")
    _refuse_unsupported("QuantizeLinear", output_type)
    return result(node, QuantizeLinear(attrs.get("axis", 1), attrs.get("block_size", 0), output_type or None))


@register("DequantizeLinear", 10, 13, 19, 21, 23, 24, 25, 28)
def convert_dequantize(node, graph):
    attrs = node.attributes
    _refuse_unsupported("DequantizeLinear", _elem_type(graph, node.input_values[0]))
    return result(node, DequantizeLinear(attrs.get("axis", 1), attrs.get("block_size", 0), attrs.get("output_dtype", 0)))
