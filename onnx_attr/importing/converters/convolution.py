"""Conv and ConvTranspose at every opset and every ONNX geometry (explicit, asymmetric, SAME_UPPER,
SAME_LOWER and VALID pads; strides, dilations, groups; output_padding and output_shape).

Constant weights become torch nn.ConvNd modules (the DeepLift rewrite and RevealCancel read their
`weight`): torch's own module where its symmetric padding says what ONNX means, a subclass that
pads per input shape (`pooling.window_padding`) or crops the full transposed output otherwise.
Weights computed in the graph run the functional op over the same geometry.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.pooling import window_padding
from onnx_attr.importing.converters.registry import register



def conv3d(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> torch.Tensor:
    """F.conv3d, but a kernel one frame deep (a 2-D kernel applied to each frame of a video) runs
    as conv2d over the frames: the same sums, and torch's CPU conv3d is 100x slower there (17 s
    against 0.16 s for RivaGAN's 32-channel 11x11 kernel on a 256x256 frame)."""
    if w.shape[2] != 1 or isinstance(padding, str):
        return F.conv3d(x, w, bias, stride, padding, dilation, groups)
    strides, pads, dilations = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * 3
                                for v in (stride, padding, dilation))
    if pads[0]:  # depth padding adds zero frames, each giving the bias alone
        x = F.pad(x, (0, 0, 0, 0, pads[0], pads[0]))
    frames = x[:, :, ::strides[0]]
    n, c, d = frames.shape[:3]
    y = F.conv2d(frames.transpose(1, 2).reshape(n * d, c, *frames.shape[3:]), w[:, :, 0], bias, strides[1:],
                 pads[1:], dilations[1:], groups)
    return y.reshape(n, d, *y.shape[1:]).transpose(1, 2)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _spatial_rank(w: torch.Tensor, op: str) -> int:
    rank = w.dim() - 2
    if rank not in _CONV:
        raise ValueError(f"{op} over {rank} spatial dims is not supported (1 to 3 are)")
    return rank


def _bias_shape(y: torch.Tensor) -> tuple[int, ...]:
    return (1, -1, *([1] * (y.dim() - 2)))


class _WeightAsInput(nn.Module):
    """A convolution whose weight (and bias) arrive as inputs: the node's attributes and groups."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs, self.group = attrs, int(attrs.get("group", 1))


class Conv(_WeightAsInput):
    """ONNX Conv with the weight as an input."""

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        rank = _spatial_rank(w, "Conv")
        plan = window_padding({**self.attrs, "kernel_shape": list(w.shape[2:])}, tuple(x.shape[2:]))
        padded = F.pad(x, plan.pads) if any(plan.pads) else x  # F.pad copies even to pad nothing
        return _CONV[rank](padded, w, b, plan.strides, 0, plan.dilations, self.group)


def transpose_crop(attrs: dict, sizes: tuple[int, ...], kernel: tuple[int, ...]) -> list[int]:
    """F.pad amounts (last axis first) that turn the full transposed output (no padding) into
    ONNX's: output_padding extends the end (zeros: no input reaches there), then the pads, the
    SAME split or `output_shape` crop it."""
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    extra = list(attrs.get("output_padding", [0] * rank))
    natural = [s * (n - 1) + o + (k - 1) * d + 1 for s, n, o, k, d in zip(strides, sizes, extra, kernel, dilations)]
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(attrs["output_shape"])[-rank:] if "output_shape" in attrs else [n * s for n, s in zip(sizes, strides)]
        totals = [nat - want for nat, want in zip(natural, wanted)]
        upper = auto_pad == "SAME_UPPER"  # otherwise the larger half goes first, as in ONNX's reference
        begin = [t // 2 if upper else t - t // 2 for t in totals]
        end = [t - bg for t, bg in zip(totals, begin)]
    elif auto_pad == "VALID":
        begin = end = [0] * rank
    else:
        pads = list(attrs.get("pads", [0] * 2 * rank))
        begin, end = pads[:rank], pads[rank:]
    return [p for axis in reversed(range(rank)) for p in (-begin[axis], extra[axis] - end[axis])]


class ConvTranspose(_WeightAsInput):
    """ONNX ConvTranspose with the weight as an input."""

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        rank = _spatial_rank(w, "ConvTranspose")
        strides = list(self.attrs.get("strides", [1] * rank))
        dilations = list(self.attrs.get("dilations", [1] * rank))
        full = _CONV_T[rank](x, w, None, strides, 0, 0, self.group, dilations)
        y = F.pad(full, transpose_crop(self.attrs, tuple(x.shape[2:]), tuple(w.shape[2:])))
        return y if b is None else y + b.reshape(_bias_shape(y))


class _PaddedConv:
    """A torch nn.ConvNd (its `weight` is what the DeepLift rewrite and RevealCancel read) that
    pads its input as the ONNX geometry asks, per input shape: SAME_UPPER/SAME_LOWER and
    asymmetric pads, which torch's own `padding` cannot express."""

    onnx_attrs: dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attrs = {**self.onnx_attrs, "kernel_shape": list(self.weight.shape[2:])}
        plan = window_padding(attrs, tuple(x.shape[2:]))
        padded = F.pad(x, plan.pads) if any(plan.pads) else x
        return self._conv_forward(padded, self.weight, self.bias)


class _CroppedConvTranspose:
    """A torch nn.ConvTransposeNd whose full output is cropped or extended as ONNX's pads,
    SAME auto_pad, output_shape and output_padding ask (torch's own padding is symmetric only)."""

    onnx_attrs: dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() - 2
        full = _CONV_T[rank](x, self.weight, None, self.stride, 0, 0, self.groups, self.dilation)
        y = F.pad(full, transpose_crop(self.onnx_attrs, tuple(x.shape[2:]), tuple(self.weight.shape[2:])))
        return y if self.bias is None else y + self.bias.reshape(_bias_shape(y))


class Conv3d(nn.Conv3d):
    """torch's Conv3d computed by `conv3d` (frame by frame when the kernel is one frame deep)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class PaddedConv1d(_PaddedConv, nn.Conv1d):
    pass


class PaddedConv2d(_PaddedConv, nn.Conv2d):
    pass


class PaddedConv3d(_PaddedConv, Conv3d):
    pass


class CroppedConvTranspose1d(_CroppedConvTranspose, nn.ConvTranspose1d):
    pass


class CroppedConvTranspose2d(_CroppedConvTranspose, nn.ConvTranspose2d):
    pass


class CroppedConvTranspose3d(_CroppedConvTranspose, nn.ConvTranspose3d):
    pass


_PADDED = {1: PaddedConv1d, 2: PaddedConv2d, 3: PaddedConv3d}
_CROPPED = {1: CroppedConvTranspose1d, 2: CroppedConvTranspose2d, 3: CroppedConvTranspose3d}


def _torch_handles(attrs: dict, rank: int, transpose: bool, weight: torch.Tensor) -> bool:
    """Whether torch's own ConvNd computes the node: symmetric explicit pads (or VALID), and for
    ConvTranspose no output_shape and an output_padding torch accepts."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return False
    pads = list(attrs.get("pads", [0] * 2 * rank)) if auto_pad != "VALID" else [0] * 2 * rank
    if pads[:rank] != pads[rank:]:
        return False
    if not transpose:
        return True
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    extra = list(attrs.get("output_padding", [0] * rank))
    return "output_shape" not in attrs and all(o < max(s, d) for o, s, d in zip(extra, strides, dilations))


def constant_conv(attrs: dict, op: str, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """A torch ConvNd holding the constant weight, for any ONNX geometry."""
    transpose = op == "ConvTranspose"
    rank = _spatial_rank(weight, op)
    group = int(attrs.get("group", 1))
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    native = _torch_handles(attrs, rank, transpose, weight)
    pads = list(attrs.get("pads", [0] * 2 * rank))[:rank] if native and attrs.get("auto_pad", "NOTSET") != "VALID" \
        else [0] * rank
    kernel = list(weight.shape[2:])
    if transpose:
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[rank - 1] if native else _CROPPED[rank]
        extra = list(attrs.get("output_padding", [0] * rank)) if native else [0] * rank
        module = cls(weight.shape[0], weight.shape[1] * group, kernel, strides, pads, extra, group, bias is not None,
                     dilations, device="meta")
    else:
        cls = (nn.Conv1d, nn.Conv2d, Conv3d)[rank - 1] if native else _PADDED[rank]
        module = cls(weight.shape[1] * group, weight.shape[0], kernel, strides, pads, dilations, group,
                     bias is not None, device="meta")
    module.weight = nn.Parameter(weight)
    if bias is not None:
        module.bias = nn.Parameter(bias)
    module.onnx_attrs = dict(attrs)
    return module


def _convert(module_type):
    op = module_type.__name__

    def convert(node, graph):
        names = node.input_values
        if names[1] in graph.initializers and (len(names) < 3 or not names[2] or names[2] in graph.initializers):
            weight = graph.initializers[names[1]].to_torch()
            bias = graph.initializers[names[2]].to_torch() if len(names) > 2 and names[2] else None
            return result(node, constant_conv(dict(node.attributes), op, weight, bias), (names[0],))
        return result(node, module_type(dict(node.attributes)))

    return convert


convert_conv = register("Conv", 1, 11, 22)(_convert(Conv))
convert_conv_transpose = register("ConvTranspose", 1, 11, 22)(_convert(ConvTranspose))


def _silu_in_float32(y: torch.Tensor) -> torch.Tensor:
    wide = y.float()
    return (wide * torch.sigmoid(wide)).to(y.dtype)


class CausalConvWithState(nn.Module):
    """A depthwise causal 1-D convolution over [past state, input] (opset 27), optionally SiLU,
    returning the output and the last k-1 steps as the next state."""

    def __init__(self, silu: bool):
        super().__init__()
        self.silu = silu

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None,
                past: Optional[torch.Tensor] = None):
        k = w.shape[-1]
        if past is None:
            past = x.new_zeros((x.shape[0], x.shape[1], k - 1))
        padded = torch.cat((past.to(x.dtype), x), -1)
        y = F.conv1d(padded, w, b, groups=x.shape[1])
        return (_silu_in_float32(y) if self.silu else y), padded[..., padded.shape[-1] - (k - 1):]


@register("CausalConvWithState", 27)
def convert_causal_conv_with_state(node, graph):
    activation = text_attribute(node, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise NotImplementedError(f"CausalConvWithState activation {activation!r}")
    return result(node, CausalConvWithState(activation != "none"))


class Col2Im(nn.Module):
    """Sum sliding blocks back into an image: the adjoint of im2col, i.e. a transposed depthwise
    convolution with one-hot kernels (any number of spatial axes up to 3, asymmetric pads)."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs = attrs

    def forward(self, cols: torch.Tensor, image_shape: torch.Tensor, block_shape: torch.Tensor) -> torch.Tensor:
        image = [int(s) for s in image_shape.tolist()]
        block = [int(s) for s in block_shape.tolist()]
        rank = len(image)
        if rank not in _CONV_T:
            raise ValueError(f"Col2Im over {rank} spatial dims is not supported (1 to 3 are)")
        strides = list(self.attrs.get("strides", [1] * rank))
        dilations = list(self.attrs.get("dilations", [1] * rank))
        pads = list(self.attrs.get("pads", [0] * 2 * rank))
        blocks = [(n + pads[i] + pads[i + rank] - d * (k - 1) - 1) // s + 1
                  for i, (n, k, s, d) in enumerate(zip(image, block, strides, dilations))]
        size = math.prod(block)
        channels = cols.shape[1] // size
        one_hot = torch.eye(size, dtype=cols.dtype, device=cols.device).reshape(size, 1, *block)
        kernel = one_hot.repeat(channels, 1, *([1] * rank))  # (C * size, 1, *block)
        full = _CONV_T[rank](cols.reshape(cols.shape[0], channels * size, *blocks), kernel, None, strides, 0, 0,
                             channels, dilations)
        crop = [p for axis in reversed(range(rank))  # keep [pad_begin, pad_begin + image) of each axis
                for p in (-pads[axis], image[axis] + pads[axis] - full.shape[2 + axis])]
        return F.pad(full, crop)


@register("Col2Im", 18)
def convert_col2im(node, graph):
    return result(node, Col2Im(dict(node.attributes)))


class DeformConv(nn.Module):
    """Deformable 2-D convolution (torchvision's kernel; ONNX's offset and mask layouts are
    the same), with asymmetric pads applied to the input first."""

    def __init__(self, attrs: dict):
        super().__init__()
        self.attrs = attrs

    def forward(self, x: torch.Tensor, w: torch.Tensor, offset: torch.Tensor, b: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        from torchvision.ops import deform_conv2d

        if x.dim() != 4:
            raise ValueError("DeformConv is supported over 2 spatial dims")
        pads = list(self.attrs.get("pads", [0] * 4))
        strides = tuple(self.attrs.get("strides", [1, 1]))
        dilations = tuple(self.attrs.get("dilations", [1, 1]))
        padded = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
        return deform_conv2d(padded, offset, w, b, strides, (0, 0), dilations, mask)


@register("DeformConv", 19, 22)
def convert_deform_conv(node, graph):
    return result(node, DeformConv(dict(node.attributes)))
