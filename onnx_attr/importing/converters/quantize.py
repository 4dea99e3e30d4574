"""QuantizeLinear and DequantizeLinear at every opset (10 to 28): per-tensor, per-axis and blocked
scales, output_dtype, and integer targets torch can hold. Float8 and 4-bit types are refused by
name, since torch has no 4-bit tensors and float8 saturation would need its own rounding rules.
Also the ops onnxruntime's quantizer writes around them: DynamicQuantizeLinear, ConvInteger and
QLinearConv (MatMulInteger and QLinearMatMul live in matrix.py), exact against onnxruntime.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from onnx import TensorProto
import torch.nn.functional as F
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register

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
        return q.clamp_(low, high).to(dtype)  # integral and within the type's range: exact


class DequantizeLinear(nn.Module):
    """y = (x - zero_point) * scale, in output_dtype or the scale's type."""

    def __init__(self, axis: int, block_size: int, output_type: int | None):
        super().__init__()
        self.axis, self.block_size = axis, block_size
        self.output = _FLOATS.get(output_type) if output_type else None

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        wide = _compute_dtype(scale)
        # 8- and 16-bit values and their differences are exact in the float type; a 32-bit one is not
        exact = torch.int64 if x.dtype in (torch.int32, torch.int64) else wide
        shifted = x.to(exact)
        if zero_point is not None:
            shifted = shifted - _broadcast(zero_point, x, self.axis, self.block_size).to(exact)
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


# onnxruntime's own QuantizeLinear/DequantizeLinear (com.microsoft, version 1): what its static quantizer
# writes for 16-bit activations below opset 21, or with UseQDQContribOps; ONNX's definition with `axis` alone
@register("QuantizeLinear", 1, domain="com.microsoft")
@register("QuantizeLinear", 10, 13, 19, 21, 23, 24, 25, 28)
def convert_quantize(node, graph):
    attrs = node.attributes
    output_type = attrs.get("output_dtype", 0) or _elem_type(graph, node.input_values[2] if len(node.input_values) > 2 else "")
    _refuse_unsupported("QuantizeLinear", output_type)
    return result(node, QuantizeLinear(attrs.get("axis", 1), attrs.get("block_size", 0), output_type or None))


@register("DequantizeLinear", 1, domain="com.microsoft")
@register("DequantizeLinear", 10, 13, 19, 21, 23, 24, 25, 28)
def convert_dequantize(node, graph):
    attrs = node.attributes
    _refuse_unsupported("DequantizeLinear", _elem_type(graph, node.input_values[0]))
    return result(node, DequantizeLinear(attrs.get("axis", 1), attrs.get("block_size", 0), attrs.get("output_dtype", 0)))


class DynamicQuantizeLinear(nn.Module):
    """x -> (uint8 y, scale, zero point) from x's own range widened to include 0, as onnxruntime
    computes it in float32: scale = (max - min) / 255 (1 when the range is empty), zero point
    round(clamp(-min / scale)), y = saturate(round(x / scale) + zero point), rounding half to even."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.float()
        zero = x.new_zeros(())
        low, high = torch.aminmax(x) if x.numel() else (zero, zero)  # one pass over x
        low, high = torch.minimum(low, zero), torch.maximum(high, zero)
        scale = torch.where(high == low, torch.ones_like(high), (high - low) / 255.0)
        zero_point = torch.round((0.0 - low / scale).clamp(0.0, 255.0))
        y = torch.div(x, scale).round_().add_(zero_point).clamp_(0.0, 255.0)  # in place: one buffer
        return y.to(torch.uint8), scale, zero_point.to(torch.uint8)


@register("DynamicQuantizeLinear", 11)
def convert_dynamic_quantize_linear(node, graph):
    return result(node, DynamicQuantizeLinear())


def _centred_per_channel(q: torch.Tensor, zero_point: torch.Tensor | None, channel_axis: int | None,
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """q - zero_point in `dtype` (exact for 8-bit values in float32 too); a 1-D zero point is per
    `channel_axis`."""
    value = q.to(dtype)
    if zero_point is None:
        return value
    zero = zero_point.to(dtype)
    if zero.dim() == 1 and zero.numel() > 1 and channel_axis is not None:
        shape = [1] * q.dim()
        shape[channel_axis] = zero.numel()
        zero = zero.reshape(shape)
    return value - zero.reshape(()) if zero.numel() == 1 else value - zero


def _magnitude(q: torch.Tensor, zero_point: torch.Tensor | None) -> float:
    """A bound on |q - zero point| read from the types and the zero point, without a pass over q."""
    if q.dtype not in (torch.uint8, torch.int8, torch.int16, torch.uint16):
        return float("inf")
    info = torch.iinfo(q.dtype)
    if zero_point is None or zero_point.numel() == 0:
        return float(max(abs(info.min), info.max))
    if _for_export or tracing():  # any zero point of the type: the plan then holds for every input the
        return float(info.max - info.min)  # exported program meets, and reads no value a fake tensor lacks
    zero = zero_point.to(torch.float64)
    return float(torch.maximum(info.max - zero, zero - info.min).max())


def _float32_chunks(x_bound: float, ws: torch.Tensor, group: int, device: torch.device) -> list[int] | None:
    """Where to cut the input channels so that each float32 convolution is exact: a partial sum of
    output o over a chunk C is an integer of magnitude at most max|x| · Σ_{c∈C,k} |w[o,c,k]|, exact
    in float32 while under 2^24, whatever order the kernel adds in. Cuts follow the weights' own
    sizes (the bound 255·255 per product cut an 8-bit 3x3 layer every 28 channels, which cost
    several convolutions and float64 sums per layer). None when float32 cannot be exact (CPU's
    float64 convolution is the fallback: grouped with several chunks, a product over 2^24, GPU)."""
    if device.type != "cpu" or ws.numel() == 0 or not math.isfinite(x_bound):
        return None
    limit = float(2 ** 24 - 1)
    per_channel = ws.abs().flatten(2).sum(2).to(torch.float64) * max(x_bound, 1.0)  # [O, C]
    cuts, start, channels = [], 0, ws.shape[1]
    while start < channels:
        reach = per_channel[:, start:].cumsum(1).amax(0)  # the chunk's bound for each stop
        stop = start + int((reach <= limit).sum())
        if stop == start:
            return None
        cuts.append(stop)
        start = stop
    if group > 1 and len(cuts) > 1:
        return None
    return cuts


class IntegerConv(nn.Module):
    """Σ (x - x_zero)(w - w_zero) over ONNX's conv windows, exact (float32 partial sums below 2^24,
    added in float64 when there are several), padding contributing 0, as ConvInteger defines it."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs, self.group = attrs, int(attrs.get("group", 1))

    def accumulate(self, x, w, x_zero=None, w_zero=None, bound: float | None = None) -> torch.Tensor:
        """The exact integer sums, in float32 (one exact convolution) or float64. `bound`: a bound on
        |x - x_zero| where x's type does not give one (integers carried in a float tensor)."""
        cuts, ws = self._weights(w, w_zero, _magnitude(x, x_zero) if bound is None else bound, x.device)
        return self.summed(_centred_per_channel(x, x_zero, None, ws.dtype), ws, cuts)

    def summed(self, xs: torch.Tensor, ws: torch.Tensor, cuts: list[int] | None) -> torch.Tensor:
        """The convolution of centred inputs `xs` with centred weights `ws` over ONNX's windows (padding
        contributing 0), in float32 partial sums over the channel chunks `cuts`, added in float64."""
        from onnx_attr.importing.converters.convolution import _CONV, _spatial_rank
        from onnx_attr.importing.converters.pooling import window_padding

        rank = _spatial_rank(ws, "ConvInteger")
        plan = window_padding({**self.attrs, "kernel_shape": list(ws.shape[2:])}, tuple(xs.shape[2:]))
        pairs = [plan.pads[i:i + 2] for i in range(0, len(plan.pads), 2)]
        symmetric = all(a == b for a, b in pairs)
        padding = tuple(a for a, _ in reversed(pairs)) if symmetric else 0
        if not symmetric:
            xs = F.pad(xs, plan.pads)
        conv = lambda a, b: _CONV[rank](a, b, None, plan.strides, padding, plan.dilations, self.group)  # noqa: E731
        if cuts is None or len(cuts) == 1:
            return conv(xs, ws)
        total, start = None, 0
        for stop in cuts:  # each partial sum an integer below 2^24: exact
            part = conv(xs[:, start:stop], ws[:, start:stop]).double()
            total = part if total is None else total.add_(part)
            start = stop
        return total

    def _weights(self, w, w_zero, bound: float, device) -> tuple[list[int] | None, torch.Tensor]:
        """The chunks for inputs bounded by `bound` and the centred weights in their type, kept per
        weight tensor (a pass over the weights on every call cost a third of a quantized network's
        forward); the chunks per bound (a dynamically quantized input's zero point moves). Two weight
        tensors are kept: DeepLift's staircase split runs the op with |W| beside W (qoperator.py)."""
        kept = self.__dict__.setdefault("plans", {})
        if kept and tracing():  # torch.export: the plan of the example's eager run (see matrix._plan)
            found = next(reversed(kept.values())).get((bound, device))
            if found is not None:
                return found
        key = (tensor_identity(w), tensor_identity(w_zero))
        if key not in kept:
            while len(kept) >= 2:
                kept.pop(next(iter(kept)))
            # w held beside its key, so that no tensor computed later takes its storage (matrix._plan)
            kept[key] = {"ws32": _centred_per_channel(w, w_zero, 0, torch.float32), "held": (w, w_zero)}
        plans = kept[key]
        found = plans.get((bound, device))
        if found is None:
            cuts = _float32_chunks(bound, plans["ws32"], self.group, device)
            if cuts is None and "ws64" not in plans:
                plans["ws64"] = _centred_per_channel(w, w_zero, 0, torch.float64)
            found = plans[(bound, device)] = (cuts, plans["ws32"] if cuts is not None else plans["ws64"])
        return found

    def forward(self, x, w, x_zero=None, w_zero=None) -> torch.Tensor:
        return self.accumulate(x, w, x_zero, w_zero).to(torch.int32)


def tracing() -> bool:
    """Whether torch.export (or torch.compile) is tracing the module: its tensors are fake."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


_for_export = False  # set while `planned_for_export` runs the module eagerly before torch.export traces it


@contextlib.contextmanager
def planned_for_export():
    """The integer ops' plans found as the export's trace will look them up (bounds from the types
    alone): the eager run inside this context is the one whose plans the trace reuses."""
    global _for_export
    _for_export = True
    try:
        yield
    finally:
        _for_export = False


def tensor_identity(t: torch.Tensor | None):
    """A tensor's storage and version: a weight read again, or written in place, is seen as new."""
    return None if t is None else (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


@register("ConvInteger", 10)
def convert_conv_integer(node, graph):
    return result(node, IntegerConv(dict(node.attributes)))


class QLinearConv(IntegerConv):
    """The integer convolution (+ int32 bias) requantised as onnxruntime does: the accumulator
    in float32 times x_scale·w_scale/y_scale (per output channel where w_scale is), rounded half
    to even, shifted by y_zero and saturated to y's type."""

    def forward(self, x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero=None, bias=None) -> torch.Tensor:
        acc = self.accumulate(x, w, x_zero, w_zero)
        out = torch.round(conv_rescaled(acc, bias, conv_multiplier(x_scale, w_scale, y_scale, acc.dim())))
        dtype = y_zero.dtype if y_zero is not None else x.dtype
        if y_zero is not None:
            out = out + y_zero.float()
        info = torch.iinfo(dtype)
        return out.clamp(info.min, info.max).to(dtype)


def conv_multiplier(x_scale, w_scale, y_scale, rank: int) -> torch.Tensor:
    """QLinearConv's requantizing factor x_scale·w_scale/y_scale in float32, per output channel
    (shaped for an accumulator of `rank` dims) where w_scale is."""
    multiplier = (x_scale.float() * w_scale.float() / y_scale.float()).reshape(-1)
    return multiplier.reshape(1, -1, *([1] * (rank - 2))) if multiplier.numel() > 1 else multiplier.reshape(())


def conv_rescaled(acc: torch.Tensor, bias: torch.Tensor | None, multiplier: torch.Tensor) -> torch.Tensor:
    """The exact accumulator (+ int32 bias, in float64) as onnxruntime rescales it before rounding:
    in float32, times the multiplier. (An integer below 2^31 reaches float32 by the same rounding
    whether through int32, as the kernel's accumulator is, or straight from float64, which keeps a
    gradient.)"""
    if bias is not None:
        acc = acc + bias.to(torch.float64).reshape(1, -1, *([1] * (acc.dim() - 2)))
    return acc.float() * multiplier


@register("QLinearConv", 10)
def convert_qlinear_conv(node, graph):
    return result(node, QLinearConv(dict(node.attributes)))


# onnxruntime's com.microsoft quantized elementwise ops (QOperator format): dequantize, compute in
# float32, requantize with rounding half to even and saturation, as its kernels define them.


def _requantize(value: torch.Tensor, zero: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """round(value) (+ zero), saturated to the type of `zero` (or of `like`)."""
    dtype = zero.dtype if zero is not None else like.dtype
    out = torch.round(value) + (zero.float() if zero is not None else 0.0)
    info = torch.iinfo(dtype)
    return out.clamp(info.min, info.max).to(dtype)


def _shifted(q: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    return q.float() - (zero.float() if zero is not None else 0.0)


class QLinearAdd(nn.Module):
    """C = requantize(A·(a_scale/c_scale) + B·(b_scale/c_scale) + fixed), fixed = c_zero -
    (a_zero·a_scale/c_scale + b_zero·b_scale/c_scale), every step in float32 in the order
    onnxruntime's x86 kernel takes (a scalar operand is folded into `fixed` first), since the
    order decides which way a near-half value rounds."""

    def forward(self, a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero=None) -> torch.Tensor:
        value = qlinear_add_value(a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero)
        return _requantize(value, None, c_zero if c_zero is not None else a)


def qlinear_add_value(a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero=None) -> torch.Tensor:
    """QLinearAdd's sum before rounding, c_zero included (its arithmetic: `QLinearAdd`)."""
    c_scale = c_scale.float()
    zero = torch.zeros((), dtype=torch.float32, device=a.device)
    ra, rb = a_scale.float() / c_scale, b_scale.float() / c_scale
    za = a_zero.float().reshape(()) if a_zero is not None else zero
    zb = b_zero.float().reshape(()) if b_zero is not None else zero
    if a.numel() == 1 and b.numel() > 1:  # the kernel's scalar operand is always the second
        a, ra, za, b, rb, zb = b, rb, zb, a, ra, za
    zc = c_zero.float().reshape(()) if c_zero is not None else zero
    fixed = zc - (ra * za + rb * zb)
    if b.numel() == 1:
        return (fixed + b.float().reshape(()) * rb) + a.float() * ra
    return (fixed + a.float() * ra) + b.float() * rb


class QLinearMul(nn.Module):
    """C = requantize((A - a_zero)·(B - b_zero)·a_scale·b_scale/c_scale)."""

    def forward(self, a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero=None) -> torch.Tensor:
        ratio = a_scale.float() * b_scale.float() / c_scale.float()
        return _requantize(_shifted(a, a_zero) * _shifted(b, b_zero) * ratio, c_zero, a)


class QLinearSigmoid(nn.Module):
    """Y = requantize(sigmoid((X - x_zero)·x_scale) / y_scale)."""

    def forward(self, x, x_scale, x_zero, y_scale, y_zero=None) -> torch.Tensor:
        return _requantize(torch.sigmoid(_shifted(x, x_zero) * x_scale.float()) / y_scale.float(), y_zero, x)


class QLinearGlobalAveragePool(nn.Module):
    """Y = requantize((Σ X - n·x_zero)·x_scale/(n·y_scale)) over the spatial axes (channels first)."""

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x, x_scale, x_zero, y_scale, y_zero=None) -> torch.Tensor:
        return _requantize(self.value(x, x_scale, x_zero, y_scale), y_zero, x)

    def value(self, x, x_scale, x_zero, y_scale) -> torch.Tensor:
        """The mean before rounding. The sum is exact in int64, or in float64 for integers carried in a
        float tensor (qoperator.py), which keeps a gradient: the same integer either way."""
        axes = tuple(range(1, x.dim() - 1)) if self.channels_last else tuple(range(2, x.dim()))
        n = 1
        for axis in axes:
            n *= x.shape[axis]
        exact = torch.float64 if x.is_floating_point() else torch.int64
        total = x.to(exact).sum(axes, keepdim=True)
        if x_zero is not None:
            total = total - n * x_zero.to(exact)
        return total.float() * (x_scale.float() / (float(n) * y_scale.float()))


_MICROSOFT = "com.microsoft"


@register("QLinearAdd", 1, domain=_MICROSOFT)
def convert_qlinear_add(node, graph):
    return result(node, QLinearAdd())


@register("QLinearMul", 1, domain=_MICROSOFT)
def convert_qlinear_mul(node, graph):
    return result(node, QLinearMul())


@register("QLinearSigmoid", 1, domain=_MICROSOFT)
def convert_qlinear_sigmoid(node, graph):
    return result(node, QLinearSigmoid())


@register("QLinearGlobalAveragePool", 1, domain=_MICROSOFT)
def convert_qlinear_global_average_pool(node, graph):
    return result(node, QLinearGlobalAveragePool(bool(node.attributes.get("channels_last", 0))))


class QLinearAveragePool(nn.Module):
    """Y = requantize(AveragePool((X - x_zero)·x_scale) / y_scale): ONNX's AveragePool geometry
    (pads, SAME, ceil mode, count_include_pad) over the dequantized input, channels first or last."""

    def __init__(self, pool: nn.Module, channels_last: bool):
        super().__init__()
        self.pool, self.channels_last = pool, channels_last

    def forward(self, x, x_scale, x_zero, y_scale, y_zero=None) -> torch.Tensor:
        return _requantize(self.value(x, x_scale, x_zero, y_scale), y_zero, x)

    def value(self, x, x_scale, x_zero, y_scale) -> torch.Tensor:
        """The average before rounding."""
        value = _shifted(x, x_zero) * x_scale.float()
        if self.channels_last:
            value = value.movedim(-1, 1)
        pooled = self.pool(value)
        if self.channels_last:
            pooled = pooled.movedim(1, -1)
        return pooled / y_scale.float()


@register("QLinearAveragePool", 1, domain=_MICROSOFT)
def convert_qlinear_average_pool(node, graph):
    from onnx_attr.importing.converters.pooling import GeneralAveragePool

    attrs = {k: v for k, v in node.attributes.items() if k != "channels_last"}
    return result(node, QLinearAveragePool(GeneralAveragePool(attrs), bool(node.attributes.get("channels_last", 0))))


class QLinearLeakyRelu(nn.Module):
    """Y = requantize(leaky_relu((X - x_zero)·x_scale) / y_scale), as onnxruntime's table of the
    256 input values computes it (dequantize, the float op, quantize)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x, x_scale, x_zero, y_scale, y_zero=None) -> torch.Tensor:
        value = _shifted(x, x_zero) * x_scale.float()
        return _requantize(torch.where(value >= 0, value, value * self.alpha) / y_scale.float(), y_zero, x)


class QLinearConcat(nn.Module):
    """Concat of each input requantized to the output's scale and zero point:
    requantize((X_i - zero_i)·scale_i / y_scale) (its own values where they already match)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, y_scale, y_zero, *triples) -> torch.Tensor:
        parts = []
        for x, x_scale, x_zero in zip(triples[0::3], triples[1::3], triples[2::3]):
            parts.append(_requantize(_shifted(x, x_zero) * x_scale.float() / y_scale.float(), y_zero, x))
        return torch.cat(parts, self.axis)


class QGemm(nn.Module):
    """com.microsoft QGemm: alpha·a_scale·b_scale·((A - a_zero)(B - b_zero) + C) with C int32 at
    that scale; quantized to y_scale/y_zero when given (as QLinearMatMul requantizes), else float."""

    def __init__(self, alpha: float, trans_a: bool, trans_b: bool):
        super().__init__()
        self.alpha, self.trans_a, self.trans_b = alpha, trans_a, trans_b
        self.plans: dict = {}

    def forward(self, a, a_scale, a_zero, b, b_scale, b_zero, c=None, y_scale=None, y_zero=None) -> torch.Tensor:
        from onnx_attr.importing.converters.matrix import integer_product, requantized_product

        a = a.transpose(0, 1) if self.trans_a else a
        b = b.transpose(0, 1) if self.trans_b else b
        product = integer_product(a, b, a_zero, b_zero, self.plans).double()
        if c is not None:
            product = product + c.double()
        scale = self.alpha * a_scale.float() * b_scale.float()
        if y_scale is None:
            return (product * scale.double()).float()
        return requantized_product(product, scale / y_scale.float(), y_zero, a)


class QLinearSoftmax(nn.Module):
    """onnxruntime's quantized softmax kernel, step for step where its rounding shows: each value's
    exp((x - max + shift)·x_scale) evaluated in float64 and stored as float32 (shift =
    max(0, ln(FLT_MAX / D) - 5) / x_scale keeps the row's sum finite), the row summed in float32 in
    order, then round((e·floor(1 / y_scale)) / sum) + y_zero, above 255 saturated (the kernel's one
    bound, also for int8). Over the axis (opset 13+) or the flattened axes from it (before)."""

    def __init__(self, axis: int, opset: int):
        super().__init__()
        self.axis, self.opset = axis, opset

    def forward(self, x, x_scale, x_zero, y_scale, y_zero=None) -> torch.Tensor:
        axis = self.axis % x.dim()
        rows = x.flatten(axis) if self.opset < 13 else x.movedim(axis, -1)
        data = rows.to(torch.int32)
        width = data.shape[-1]
        scale = x_scale.double()  # as a tensor: torch.export traces it (a float() of it is data-dependent)
        shift = max(0.0, math.log(float(np.finfo(np.float32).max) / width) - 5.0) / scale
        steps = (data - data.amax(-1, keepdim=True)).double()
        e = torch.exp((steps + shift) * scale).float()
        total = _sum_in_order(e)
        inverse = torch.floor(1.0 / y_scale.float())
        q = torch.round((e * inverse) / total).to(torch.int32)
        if y_zero is not None:
            q = q + y_zero.to(torch.int32)
        out = q.clamp(max=255).to(torch.uint8)  # int8 as the kernel casts it: the low byte
        out = out if x.dtype == torch.uint8 else out.view(torch.int8)
        return out.reshape(x.shape) if self.opset < 13 else out.movedim(-1, axis)


#: the widest row whose in-order float32 sum a traced program writes out as additions (a classifier's
#: softmax); a wider one is summed by torch there (pairwise: a step off the kernel's at most, rarely)
_TRACED_IN_ORDER = 256


def _sum_in_order(e: torch.Tensor) -> torch.Tensor:
    """The last axis summed in float32 from its first element to its last, as onnxruntime's kernel sums
    (torch's own sums are pairwise, and its cumsum accumulates in float64): numpy's accumulate eagerly,
    a chain of additions under torch.export, which cannot trace numpy."""
    if not torch.compiler.is_compiling():
        in_order = np.add.accumulate(e.detach().cpu().numpy(), axis=-1, dtype=np.float32)
        return torch.from_numpy(in_order[..., -1:].copy()).to(e.device)
    if e.shape[-1] > _TRACED_IN_ORDER:
        return e.sum(-1, keepdim=True)
    total = e[..., :1]
    for j in range(1, e.shape[-1]):
        total = total + e[..., j:j + 1]
    return total


@register("QLinearLeakyRelu", 1, domain=_MICROSOFT)
def convert_qlinear_leaky_relu(node, graph):
    return result(node, QLinearLeakyRelu(float(node.attributes.get("alpha", 0.01))))


@register("QLinearConcat", 1, domain=_MICROSOFT)
def convert_qlinear_concat(node, graph):
    return result(node, QLinearConcat(int(node.attributes["axis"])))


@register("QGemm", 1, domain=_MICROSOFT)
def convert_qgemm(node, graph):
    attrs = node.attributes
    return result(node, QGemm(float(attrs.get("alpha", 1.0)), bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))))


@register("QLinearSoftmax", 1, domain=_MICROSOFT)
def convert_qlinear_softmax(node, graph):
    opset = int(node.attributes["opset"])
    return result(node, QLinearSoftmax(int(node.attributes.get("axis", 1 if opset < 13 else -1)), opset))


class QuantizedWeight:
    """An integer weight [K, N] with its scale (one, or one per column) and zero point (onnxruntime's
    quantized GEMM reads one): `exact` is onnxruntime's dynamic quantized product, `dequantized` the
    float product it approximates (the DeepLift multipliers of the block, see rules/quantized.py)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None):
        if zero is not None and zero.numel() > 1 and bool((zero != zero.reshape(-1)[0]).any()):
            raise NotImplementedError("a quantized weight with differing zero points per column (onnxruntime's "
                                      "quantized GEMM reads one)")
        self.q, self.scale = q, scale.float().reshape(-1)
        self.zero = zero.reshape(-1)[0].to(torch.float64) if zero is not None else torch.zeros((), dtype=torch.float64)
        self.weight = ((q.to(torch.float64) - self.zero) * self.scale.double()).float()
        self.saturation = _RiskyPairs(q) if q.dtype == torch.int8 and pairs_saturate() else None

    def exact(self, a: torch.Tensor) -> torch.Tensor:
        """a quantized to uint8 over its whole range, the integer product exact (float32 chunks or
        float64: matrix.integer_product), then float(acc)·(a_scale·w_scale) in float32. Its
        gradient passes the rounding straight through (the dequantized product's, `_PassedThrough`):
        the rounded value's own is zero almost everywhere, and autograd reached a only through
        a_scale, a function of a's two extremes (methods/straight_through.py says the same of blocks)."""
        if torch.is_grad_enabled() and a.requires_grad:
            return _PassedThrough.apply(a, self)
        return self._exact(a)

    def _exact(self, a: torch.Tensor) -> torch.Tensor:
        from onnx_attr.importing.converters.matrix import integer_product

        q, a_scale, a_zero = DynamicQuantizeLinear()(a)
        acc = integer_product(q, self.q, a_zero, self.zero, self.__dict__.setdefault("plans", {})).double()
        if self.saturation is not None:
            acc = acc + self.saturation.correction(q)
        return acc.float() * (a_scale * self.scale)

    def dequantized(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.weight


class _PassedThrough(torch.autograd.Function):
    """`QuantizedWeight.exact`'s value, with the dequantized product's gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:  # noqa: D102
        ctx.weight = weight
        return weight._exact(a)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad @ ctx.weight.weight.to(grad.dtype).T, None


def pairs_saturate() -> bool:
    """Whether onnxruntime's u8·s8 GEMM on this CPU sums each pair of products in int16 with
    saturation: its x86 kernels without VNNI do (the multiply-add of AVX2 and AVX-512BW); with
    AVX-VNNI or AVX512-VNNI, and elsewhere, the sum is exact."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx2" in flags and "avx512_vnni" not in flags and "avx_vnni" not in flags


class _RiskyPairs:
    """The (pair k, column n) of an int8 weight where a uint8 row could saturate the int16 pair
    sum: |w[2k, n]| + |w[2k+1, n]| > 32767 / 255. Found once; usually a small share of the weight."""

    def __init__(self, w: torch.Tensor):
        w2 = w.to(torch.float32)
        if w2.shape[0] % 2:
            w2 = F.pad(w2, (0, 0, 0, 1))
        even, odd = w2[0::2], w2[1::2]
        self.k, self.n = torch.nonzero(even.abs() + odd.abs() > 32767.0 / 255.0, as_tuple=True)
        self.w_even, self.w_odd = even[self.k, self.n], odd[self.k, self.n]
        self.columns = w.shape[1]

    def correction(self, a: torch.Tensor) -> torch.Tensor:
        """What int16 saturation of each pair sum a[2k]·w[2k] + a[2k+1]·w[2k+1] (raw uint8 × int8,
        before the zero points are taken out) removes from the exact product, in float64."""
        rows = a.reshape(-1, a.shape[-1]).to(torch.float32)
        if rows.shape[1] % 2:
            rows = F.pad(rows, (0, 1))
        out = torch.zeros(rows.shape[0], self.columns, dtype=torch.float64, device=a.device)
        if self.k.numel():
            pairs = rows[:, 2 * self.k] * self.w_even + rows[:, 2 * self.k + 1] * self.w_odd  # exact in float32
            out.index_add_(1, self.n, (pairs.clamp(-32768.0, 32767.0) - pairs).double())
        return out.reshape(*a.shape[:-1], self.columns)
