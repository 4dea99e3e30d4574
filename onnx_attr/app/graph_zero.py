"""Where a graph normalises its own raw input: the input value its normalisation maps to 0.

A picture exported with its normalisation inside (tf2onnx's Keras nets: x/127.5 − 1; an OCR net's
(x − 127.5)/127.5) takes raw 0-255 pixels, so zeros are a black picture, and every black pixel, a
pair of glasses or the strokes of a text line, sits at the baseline and gets no attribution (hunt 32:
0.1% of the change to text that carried a third of it). A net normalised outside its graph takes
values whose zero is the normalisation's: the channels' mean colour. `--baseline auto` gives the raw-
pixel net the same reference, the value its own first affine steps (Mul, Div, Add, Sub by constants,
per channel or overall) send to 0, where that lies inside the example's range."""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

_AFFINE = frozenset({"Mul", "Div", "Add", "Sub"})
_PASSING = frozenset({"Cast", "Identity"})


def normalisation_zero(model, name: str, value: np.ndarray) -> Optional[np.ndarray]:
    """[1, *example shape]: the value of input `name` that the graph's first affine steps map to 0, where
    they move zero elsewhere and that value lies within the example's own range; None otherwise."""
    if value.ndim < 2 or not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
        return None
    affine = _leading_affine(model.onnx_model.graph, name, (1, *value.shape[1:]))
    if affine is None:
        return None
    scale, shift = affine
    if not np.all(scale != 0) or not np.any(shift != 0):
        return None
    zero = np.broadcast_to(-shift / scale, (1, *value.shape[1:]))
    low, high = float(value.min()), float(value.max())
    if not np.all((zero > low) & (zero <= high)):  # the graph's zero is no value the input takes: leave zeros
        return None
    return zero.astype(value.dtype)


def _leading_affine(graph: onnx.GraphProto, name: str, shape: tuple) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(scale, shift) with the chain of single-reader elementwise steps by constants from input `name`
    computing scale·x + shift, broadcast to `shape`; None where there is no such step."""
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: next(a.t for a in n.attribute if a.name == "value")
                      for n in graph.node if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)})
    readers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    scale, shift, steps, current = np.ones(()), np.zeros(()), 0, name
    while len(readers.get(current, [])) == 1:
        node = readers[current][0]
        if node.op_type in _PASSING and node.input[0] == current:
            current = node.output[0]
            continue
        if node.op_type not in _AFFINE or len(node.input) != 2:
            break
        other = node.input[1] if node.input[0] == current else node.input[0]
        if other not in constants or node.input[0] == node.input[1]:
            break
        c = numpy_helper.to_array(constants[other]).astype(np.float64)
        try:
            widened = np.broadcast_shapes(c.shape, shape) != tuple(shape)  # per element of the input, or not
        except ValueError:
            break
        if widened:
            break
        first = node.input[0] == current
        if node.op_type == "Mul":
            scale, shift = scale * c, shift * c
        elif node.op_type == "Div" and first:
            scale, shift = scale / c, shift / c
        elif node.op_type == "Add":
            shift = shift + c
        elif node.op_type == "Sub":
            scale, shift = (scale, shift - c) if first else (-scale, c - shift)
        else:  # c / x: not affine
            break
        steps += 1
        current = node.output[0]
    return (np.broadcast_to(scale, shape), np.broadcast_to(shift, shape)) if steps else None
