"""Shape ops whose onnx2torch version mishandles edge cases."""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import helper
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register


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
            if any(d == 0 for d in target[x.dim():]):  # as onnxruntime refuses it (its optimizer may skip the node)
                raise ValueError(f"the shape {target} copies axis {target.index(0, x.dim())} of an input of shape "
                                 f"{list(x.shape)}, which has {x.dim()} axes (a 0 in a Reshape's shape copies the "
                                 "input's size on that axis)")
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


class ConstantExpand(nn.Module):
    """Expand to a shape the file holds as a constant, baked in: onnx2torch's reads the shape tensor on
    every call, which torch.export cannot trace (`onnx-attr convert` on BERT: its token-type ids are
    expanded to the ids' shape). x · ones(shape), as onnx2torch computes it (a fresh tensor, the
    broadcast both ways)."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.ones(self.shape, dtype=x.dtype, device=x.device)


@register("Expand", 8, 13)
def convert_expand(node, graph):
    from onnx_attr.importing.converters._common import onnx2torch_result

    shape_name = node.input_values[1]
    if shape_name in graph.initializers:
        shape = [int(d) for d in graph.initializers[shape_name].to_torch().tolist()]
        return result(node, ConstantExpand(shape), inputs=node.input_values[:1])
    return onnx2torch_result(node, graph, 13)


@register("Squeeze", 13, 21)
def convert_squeeze(node, graph):
    """Squeeze with its axes baked in where the file holds them as a constant (onnx2torch's reads them
    per call from 13 on, which torch.export cannot trace: torchvision's ViT under `convert`)."""
    from onnx2torch.node_converters.squeeze import OnnxSqueezeStaticAxes

    from onnx_attr.importing.converters._common import onnx2torch_result

    axes_name = node.input_values[1] if len(node.input_values) > 1 else ""
    if axes_name in graph.initializers:
        return result(node, OnnxSqueezeStaticAxes(_values(graph.initializers[axes_name].to_torch())),
                      inputs=node.input_values[:1])
    return onnx2torch_result(node, graph, 13)


def _values(t) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


class Slice(nn.Module):
    """ONNX Slice with its clamping rules (a start before the first element steps backward from
    element 0, where Python's slice would give nothing) and one tuple index: onnx2torch indexes
    with a list, which torch deprecates and will read as a tensor index."""

    def __init__(self, static: tuple | None = None):
        super().__init__()
        self.static = static  # (starts, ends, axes, steps) baked from constants, None: read per call

    def forward(self, x: torch.Tensor, starts: torch.Tensor | None = None, ends: torch.Tensor | None = None,
                axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
        first, last, where, stride = self.static or (_values(starts), _values(ends), _values(axes), _values(steps))
        where = list(range(len(first))) if where is None else where
        stride = [1] * len(first) if stride is None else stride
        index: list = [slice(None)] * x.dim()
        flips = []
        for start, end, axis, step in zip(first, last, where, stride):
            axis = axis + x.dim() if axis < 0 else axis
            size = x.shape[axis]
            if step == 0:
                raise ValueError("Slice: a step of 0 is not allowed")
            start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
            if step > 0:
                index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
            else:  # walk the flipped axis forward: element i is size - 1 - i there
                start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
                index[axis] = slice(size - 1 - start, size - 1 - end, -step)
                flips.append(axis)
        if flips:
            x = torch.flip(x, flips)
        return x[tuple(index)]


@register("Slice", 1, 10, 11, 13)
def convert_slice(node, graph):
    if "starts" in node.attributes:  # Slice-1: attributes, unit steps
        attrs = node.attributes
        static = (list(attrs["starts"]), list(attrs["ends"]), list(attrs["axes"]) if "axes" in attrs else None, None)
        return result(node, Slice(tuple(static)), inputs=node.input_values[:1])
    extra = node.input_values[1:]
    if all(name == "" or name in graph.initializers for name in extra):
        static = [None if name == "" else _values(graph.initializers[name].to_torch()) for name in extra]
        return result(node, Slice(tuple(static + [None] * (4 - len(static)))), inputs=node.input_values[:1])
    return result(node, Slice())


class Unsqueeze(nn.Module):
    """ONNX Unsqueeze: negative axes count from the end of the *output*, and axes may be a scalar.

    onnx2torch's inserts sorted raw axes one by one, which misplaces several negative axes.
    """

    def __init__(self, axes: list[int] | None = None):
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        wanted = self.axes if self.axes is not None else [int(a) for a in axes.reshape(-1).tolist()]
        rank = x.dim() + len(wanted)
        for axis in sorted(a + rank if a < 0 else a for a in wanted):
            x = x.unsqueeze(axis)
        return x


@register("Unsqueeze", 1, 11, 13, 21)
def convert_unsqueeze(node, graph):
    if "axes" in node.attributes:  # before opset 13 the axes are an attribute
        return result(node, Unsqueeze(list(node.attributes["axes"])), inputs=node.input_values[:1])
    axes_name = node.input_values[1]
    if axes_name in graph.initializers:
        axes = graph.initializers[axes_name].to_torch().reshape(-1).tolist()
        return result(node, Unsqueeze([int(a) for a in axes]), inputs=node.input_values[:1])
    return result(node, Unsqueeze())


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
    if num_outputs != len(node.output_values):  # the checker lets 2^31 through; it must not size a list
        raise ValueError(f"Split has {len(node.output_values)} output(s) but num_outputs={num_outputs}; "
                         "ONNX requires them to match")
    return result(node, Split(node.attributes.get("axis", 0), sizes, num_outputs), inputs=inputs)


class _BlockMove(nn.Module):
    """Moves k×k spatial blocks to or from channels, in ONNX's DCR (block-major) or CRD order."""

    def __init__(self, blocksize: int, mode: str):
        super().__init__()
        self.blocksize, self.mode = blocksize, mode


class SpaceToDepth(_BlockMove):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.blocksize
        blocks = x.reshape(b, c, h // k, k, w // k, k)
        order = (0, 3, 5, 1, 2, 4) if self.mode == "DCR" else (0, 1, 3, 5, 2, 4)
        return blocks.permute(order).reshape(b, c * k * k, h // k, w // k)


class DepthToSpace(_BlockMove):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.blocksize
        if self.mode == "DCR":
            y = x.reshape(b, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(b, c // (k * k), k, k, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(b, c // (k * k), h * k, w * k)


def _mode(node) -> str:
    mode = text_attribute(node, "mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise NotImplementedError(f"{node.operation_type} mode {mode!r} (expected DCR or CRD)")
    return mode


@register("SpaceToDepth", 1, 13, 28)
def convert_space_to_depth(node, graph):
    return result(node, SpaceToDepth(int(node.attributes["blocksize"]), _mode(node)))


@register("DepthToSpace", 1, 11, 13, 28)
def convert_depth_to_space(node, graph):
    return result(node, DepthToSpace(int(node.attributes["blocksize"]), _mode(node)))


class CenterCropPad(nn.Module):
    """Crop or zero-pad each listed axis to the target size around its centre (the extra
    element of an odd difference goes to the end)."""

    def __init__(self, axes: list[int] | None):
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        axes = [a % x.dim() for a in self.axes] if self.axes is not None else list(range(x.dim()))
        for axis, size in zip(axes, [int(s) for s in shape.tolist()]):
            have = x.shape[axis]
            if size < have:
                x = x.narrow(axis, (have - size) // 2, size)
            elif size > have:
                before = (size - have) // 2
                pads = [0, 0] * (x.dim() - 1 - axis) + [before, size - have - before]
                x = torch.nn.functional.pad(x, pads)
        return x


@register("CenterCropPad", 18)
def convert_center_crop_pad(node, graph):
    axes = node.attributes.get("axes")
    return result(node, CenterCropPad(None if axes is None else list(axes)))


class BitCast(nn.Module):
    """Reinterpret the bits as another type of the same width."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bool:  # torch cannot view bool as another type; its bytes are 0 and 1
            x = x.to(torch.uint8)
        return x.view(self.dtype) if x.dim() else x.reshape(1).view(self.dtype).reshape(())


@register("BitCast", 26)
def convert_bit_cast(node, graph):
    to = int(node.attributes["to"])
    try:
        torch_dtype = torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(to))).dtype
    except (KeyError, TypeError) as err:
        raise NotImplementedError(f"BitCast to {helper.tensor_dtype_to_string(to)} has no torch type") from err
    return result(node, BitCast(torch_dtype))


class Dropout(nn.Module):
    """Inference: the identity, with an all-true mask. Training mode draws random masks, which an
    attribution cannot reproduce, so it is refused when the graph asks for it."""

    def __init__(self, with_mask: bool):
        super().__init__()
        self.with_mask = with_mask

    def forward(self, x: torch.Tensor, ratio: torch.Tensor | None = None, training_mode: torch.Tensor | None = None):
        if training_mode is not None and bool(training_mode):
            raise ValueError("Dropout in training mode is random; export the model in inference mode")
        return (x, torch.ones_like(x, dtype=torch.bool)) if self.with_mask else x


@register("Dropout", 12, 13, 22)
def convert_dropout(node, graph):
    return result(node, Dropout(len(node.output_values) > 1 and bool(node.output_values[1])))
