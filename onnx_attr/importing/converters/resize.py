"""Resize (opset 10 to 19) as one separable linear map per resized axis.

Every ONNX Resize mode (nearest with its four rounding rules, linear, cubic, antialiased
linear/cubic, exclude_outside, every coordinate transformation including tf_crop_and_resize
with its extrapolation value and opsets 11-12's tf_half_pixel_for_nn, axes and
keep_aspect_ratio_policy) is, along each axis, an
(output x input) matrix of interpolation weights. We build that matrix in float64 from the
spec's formulas and multiply; so the op is exactly linear in X (DeepLift needs no rule) and
one code path serves all modes, rather than torch's `interpolate`, whose coordinate rules
match ONNX's in only some modes (why onnx2torch's Resize is refused here rather than used).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register

#: the weights of each output position's taps [len(t), n] from its fractional parts t (1.0 where the
#: coordinate is an integer) and the axis's scale: every row at once (a plan per shape was 0.3 s of a
#: Python loop on a TTS model whose lengths follow its input's values)
Coefficients = Callable[[np.ndarray, float], np.ndarray]


def _nearest(rounding: str) -> Coefficients:
    """Two taps (floor(x), floor(x)+1): which one is taken at a fractional part `t`. "simple" is
    Resize-10's (onnxruntime's): the floor when enlarging, the ceiling when shrinking."""
    pick_upper = {
        "round_prefer_floor": lambda t, scale: t > 0.5,
        "round_prefer_ceil": lambda t, scale: t >= 0.5,
        "floor": lambda t, scale: np.zeros(t.shape, bool),
        "ceil": lambda t, scale: np.ones(t.shape, bool),
        "simple": lambda t, scale: np.full(t.shape, scale < 1),
    }[rounding]

    def coefficients(t: np.ndarray, scale: float) -> np.ndarray:
        upper = (t == 1.0) | pick_upper(t, scale)  # t == 1: the coordinate is an integer
        return np.stack([~upper, upper], -1).astype(np.float64)

    return coefficients


def _linear(antialias: bool) -> Coefficients:
    def coefficients(t: np.ndarray, scale: float) -> np.ndarray:
        if not antialias or scale >= 1:
            return np.stack([1.0 - t, t], -1)
        first = math.floor(-1 / scale) + 1  # a triangle filter widened by 1/scale when shrinking
        taps = (np.arange(first, 2 - first) - t[:, None]) * scale
        weights = np.clip(1 - np.abs(taps), 0, 1)
        return weights / weights.sum(1, keepdims=True)

    return coefficients


def _cubic_kernel(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _cubic(a: float, antialias: bool) -> Coefficients:
    def coefficients(t: np.ndarray, scale: float) -> np.ndarray:
        if not antialias:
            return _cubic_kernel(np.stack([t + 1, t, 1 - t, 2 - t], -1), a)
        scale = min(scale, 1.0)
        first = math.floor(-2 / scale) + 1
        weights = _cubic_kernel(scale * (np.arange(first, 2 - first) - t[:, None]), a)
        return weights / weights.sum(1, keepdims=True)

    return coefficients


def _source_coordinates(mode: str, out: int, size: int, scale: float, roi: tuple[float, float]
                        ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Where each output index samples the input, and (tf_crop_and_resize) which fall outside.

    As the spec (and onnxruntime): `length_resized` is the integer output length; only
    half_pixel_symmetric uses the fractional one. ONNX's Python reference uses the fractional
    length in align_corners too, which differs from both when scale x length is not whole.
    """
    y = np.arange(out, dtype=np.float64)
    outside = None
    if mode == "align_corners":
        x = np.zeros(out) if out == 1 else y * (size - 1) / (out - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        x = (np.full(out, 0.5 * (start + end) * (size - 1)) if out == 1
             else start * (size - 1) + y * (end - start) * (size - 1) / (out - 1))
        outside = (x < 0) | (x > size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.zeros(out) if out == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "tf_half_pixel_for_nn":  # opsets 11-12 (tf2onnx's nearest resize with half_pixel_centers)
        x = (y + 0.5) / scale
    elif mode == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / (scale * size))
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise NotImplementedError(f"Resize coordinate_transformation_mode {mode!r}")
    return x, outside


def interpolation_matrix(size: int, out: int, scale: float, coefficients: Coefficients, mode: str,
                         roi: tuple[float, float], exclude_outside: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The (out, size) weights of one axis, and the rows to fill with the extrapolation value."""
    x, outside = _source_coordinates(mode, out, size, scale, roi)
    matrix = np.zeros((out, size))
    if out == 0:
        return matrix, outside
    base = np.floor(x)
    whole = x == base
    weights = np.asarray(coefficients(np.where(whole, 1.0, x - base), scale), dtype=np.float64)  # [out, n]
    n = weights.shape[1]
    taps = (base - n // 2 + np.where(whole, 0, 1)).astype(np.int64)[:, None] + np.arange(n)
    if exclude_outside:
        weights = np.where((taps < 0) | (taps >= size), 0.0, weights)
        total = weights.sum(1, keepdims=True)
        weights = weights / np.where(total != 0, total, 1.0)
    # edge values beyond the input: the taps clipped to it
    np.add.at(matrix, (np.repeat(np.arange(out), n), np.clip(taps, 0, size - 1).reshape(-1)), weights.reshape(-1))
    return matrix, outside


class Resize(nn.Module):
    def __init__(self, coefficients: Coefficients, coordinate_mode: str, exclude_outside: bool,
                 extrapolation_value: float, axes: Optional[list[int]], policy: str):
        super().__init__()
        self.coefficients, self.coordinate_mode = coefficients, coordinate_mode
        self.exclude_outside, self.extrapolation_value = exclude_outside, extrapolation_value
        self.axes, self.policy = axes, policy
        self._plans: dict[tuple, list] = {}
        self.stored_sizes = False  # roi, scales and sizes all stored in the file (`_traced_key`)

    def forward(self, x: torch.Tensor, roi: Optional[torch.Tensor] = None, scales: Optional[torch.Tensor] = None,
                sizes: Optional[torch.Tensor] = None) -> torch.Tensor:
        compute = x.dtype if x.is_floating_point() else torch.float64
        key = self._traced_key(x, compute)
        if key is None:
            given = tuple(None if t is None or t.numel() == 0 else tuple(t.reshape(-1).tolist())
                          for t in (roi, scales, sizes))
            key = (tuple(x.shape), *given, compute, x.device)
        if key not in self._plans:  # the matrices, as tensors of the compute type on x's device
            self._plans[key] = [
                (axis, torch.from_numpy(matrix).to(device=x.device, dtype=compute),
                 None if outside is None else torch.from_numpy(outside).to(x.device))
                for axis, matrix, outside in self._plan(tuple(x.shape), *given)]
        y = x.to(compute)
        for axis, weights, outside in self._plans[key]:
            y = torch.movedim(torch.movedim(y, axis, -1) @ weights.T, -1, axis)
            if outside is not None:
                shape = [1] * y.dim()
                shape[axis] = -1
                y = y.masked_fill(outside.reshape(shape), self.extrapolation_value)
        if x.is_floating_point():
            return y
        info = torch.iinfo(x.dtype)  # as ONNX's reference: saturate, then truncate
        return y.clamp(info.min, info.max).to(x.dtype)

    def _traced_key(self, x: torch.Tensor, compute) -> Optional[tuple]:
        """Under torch.export (fake tensors: no values to read the scales off), the key of the one plan
        the example's eager run made for this shape (`export_program` runs it first); None otherwise, and
        where a size is computed (from an input's value: a matting net's downsample ratio, which a baked
        plan would ignore)."""
        from onnx_attr.importing.converters.quantize import tracing

        if not self.stored_sizes or not self._plans or not tracing() or not all(isinstance(d, int) for d in x.shape):
            return None
        found = [k for k in self._plans if k[0] == tuple(x.shape) and k[-2] == compute]
        return found[0] if len(found) == 1 else None

    def _plan(self, shape: tuple[int, ...], roi, scales, sizes) -> list:
        rank = len(shape)
        axes = [a % rank for a in self.axes] if self.axes is not None else list(range(rank))
        starts, ends = [0.0] * rank, [1.0] * rank
        if roi is not None:
            for i, a in enumerate(axes):
                starts[a], ends[a] = roi[i], roi[len(axes) + i]
        factor = [1.0] * rank
        out = list(shape)
        if sizes is not None:
            for a, s in zip(axes, sizes):
                factor[a] = s / shape[a]
            if self.policy in ("not_larger", "not_smaller"):
                pick = min if self.policy == "not_larger" else max
                common = pick(factor[a] for a in axes)
                for a in axes:
                    factor[a], out[a] = common, int(common * shape[a] + 0.5)
            else:
                for a, s in zip(axes, sizes):
                    out[a] = int(s)
        elif scales is not None:
            for a, s in zip(axes, scales):
                factor[a], out[a] = float(s), int(float(s) * shape[a])
        else:
            raise ValueError("Resize needs scales or sizes")
        plan = []
        for a in axes:
            identity = math.isclose(factor[a], 1.0) and out[a] == shape[a] and (
                roi is None or (math.isclose(starts[a], 0.0) and math.isclose(ends[a], 1.0)))
            if identity:
                continue
            matrix, outside = interpolation_matrix(shape[a], out[a], factor[a], self.coefficients,
                                                   self.coordinate_mode, (starts[a], ends[a]), self.exclude_outside)
            plan.append((a, matrix, None if outside is None or not outside.any() else outside))
        return plan

    def extra_repr(self) -> str:
        return f"{self.coordinate_mode}, axes={self.axes}"


class Resize10(Resize):
    """Resize-10: inputs X and scales; coordinates x / scale (asymmetric), the nearest pixel as
    onnxruntime takes it (`_nearest("simple")`), linear as Resize-11's. onnx2torch's shifted linear
    by half a pixel (half_pixel), and an Upsample made Resize by the version converter did too."""

    def forward(self, x: torch.Tensor, scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x, None, scales, None)


@register("Resize", 10)
def convert_resize_10(node, graph):
    mode = text_attribute(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise NotImplementedError(f"Resize-10 mode {mode!r}")
    coefficients = _nearest("simple") if mode == "nearest" else _linear(False)
    return _stored(node, graph, Resize10(coefficients, "asymmetric", False, 0.0, None, "stretch"))


@register("Resize", 11, 13, 18, 19)
def convert_resize(node, graph):
    attrs = node.attributes
    mode = text_attribute(node, "mode", "nearest")
    antialias = bool(attrs.get("antialias", 0))
    if mode == "nearest":
        if antialias:
            raise NotImplementedError("Resize antialias is not defined for mode 'nearest'")
        coefficients = _nearest(text_attribute(node, "nearest_mode", "round_prefer_floor"))
    elif mode == "linear":
        coefficients = _linear(antialias)
    elif mode == "cubic":
        coefficients = _cubic(float(attrs.get("cubic_coeff_a", -0.75)), antialias)
    else:
        raise NotImplementedError(f"Resize mode {mode!r}")
    policy = text_attribute(node, "keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise NotImplementedError(f"Resize keep_aspect_ratio_policy {policy!r}")
    axes = attrs.get("axes")
    module = Resize(coefficients, text_attribute(node, "coordinate_transformation_mode", "half_pixel"),
                    bool(attrs.get("exclude_outside", 0)), float(attrs.get("extrapolation_value", 0.0)),
                    None if axes is None else list(axes), policy)
    return _stored(node, graph, module)


def _stored(node, graph, module: Resize):
    """The converter's result, the module told whether its roi, scales and sizes are stored in the file."""
    module.stored_sizes = all(not name or name in graph.initializers for name in node.input_values[1:])
    return result(node, module)
