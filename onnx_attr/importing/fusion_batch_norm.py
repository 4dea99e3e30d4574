"""tf2onnx's older Keras LayerNormalization: a BatchNormalization fed the moments of its own input.

x is reshaped so that each example is one channel ([1, N, D, 1]); ReduceMean over every axis but
the channel gives the mean (Squeezed to [N]), ReduceSumSquare of x - mean over the same axes
divided by their element count (computed from Shape at run time) the variance; scale and bias
are ones and zeros Expanded to [N]. That is a LayerNorm over those axes. Left as it is, its
statistics vary with the input, which neither the gradient through `F.batch_norm` nor a linear
DeepLift rule handles, so it is fused like the other written-out forms (`fusions`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import helper

from onnx_attr.importing.fusions import _Graph, _Match, _is_square, _reduce_axes


def match_batch_norm(g: _Graph, bn_index: int) -> Optional[_Match]:
    """The LayerNorm a BatchNormalization with its input's own moments computes, or None."""
    nodes = g.graph.node
    bn = nodes[bn_index]
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    if len(bn.input) != 5 or attrs.get("training_mode", 0) or not attrs.get("spatial", 1) or \
            len([o for o in bn.output if o]) != 1:
        return None
    x, scale, bias, mean_s, var_s = bn.input
    rank = g.ranks.get(x)
    if rank is None or rank < 2:
        return None
    axes = tuple(a for a in range(rank) if a != 1)
    mean = _dropped_mean(g, mean_s, x, axes)
    if mean is None:
        return None
    mean_out, mean_steps = mean
    variance = _population_variance(g, var_s, x, mean_out, axes)
    if variance is None:
        return None
    centre, var_steps = variance
    span = [bn_index, *mean_steps, *var_steps]
    readers = {mean_out: {centre, *mean_steps}}  # the keepdims mean: its Squeeze and x - mean
    for index in span:
        out = nodes[index].output[0]
        if index == bn_index:
            continue
        allowed = readers.get(out, set(span))
        if out in g.pinned or not set(g.consumers.get(out, [])) <= allowed:
            return None
    gamma, beta = _uniform(g, scale), _uniform(g, bias)  # (value, dtype)
    if gamma is None or beta is None:
        return None
    eps = float(attrs.get("epsilon", 1e-5))
    return _Match(sorted(set(span)), x, bn.output[0], axes, rank, eps, None, None, gamma[1],
                  defaults=(gamma[0], beta[0]))


def _dropped_mean(g: _Graph, tensor: str, x: str, axes: tuple[int, ...]) -> Optional[tuple[str, list[int]]]:
    """(the ReduceMean's keepdims output, steps) when `tensor` is Squeeze(ReduceMean(x, axes))."""
    nodes = g.graph.node
    squeeze = g.node(tensor, "Squeeze")
    if squeeze is None:
        return None
    kept = nodes[squeeze].input[0]
    mean = g.node(kept, "ReduceMean")
    if mean is None or nodes[mean].input[0] != x or _normal(_reduce_axes(g, nodes[mean]), len(axes) + 1) != axes:
        return None
    squeezed = _squeeze_axes(g, nodes[squeeze])
    if squeezed is not None and _normal(squeezed, len(axes) + 1) != axes:
        return None
    return kept, [mean, squeeze]


def _population_variance(g: _Graph, tensor: str, x: str, mean: str, axes: tuple[int, ...]
                         ) -> Optional[tuple[int, list[int]]]:
    """(the x - mean node, steps) when `tensor` is ReduceSumSquare(x - mean, axes) / count of the
    reduced elements (a constant, or Cast(ReduceProd(Gather(Shape(.), axes)))), or
    ReduceMean((x - mean)², axes) with keepdims=0."""
    nodes = g.graph.node
    rank = len(axes) + 1
    div = g.node(tensor, "Div")
    if div is not None:
        total, count = nodes[div].input
        rss = g.node(total, "ReduceSumSquare")
        if rss is None or _normal(_reduce_axes(g, nodes[rss], keepdims=False), rank) != axes or _keeps(nodes[rss]):
            return None
        if not _is_count(g, count, nodes[rss].input[0], axes):
            return None
        centre, steps = g.producer.get(nodes[rss].input[0]), [div, rss]
    else:
        mean_sq = g.node(tensor, "ReduceMean")
        if mean_sq is None or _normal(_reduce_axes(g, nodes[mean_sq], keepdims=False), rank) != axes or \
                _keeps(nodes[mean_sq]):
            return None
        square = g.producer.get(nodes[mean_sq].input[0])
        if square is None or not _is_square(g, nodes[square], nodes[square].input[0]):
            return None
        centre, steps = g.producer.get(nodes[square].input[0]), [mean_sq, square]
    if centre is None or nodes[centre].op_type != "Sub" or list(nodes[centre].input) != [x, mean]:
        return None
    return centre, [*steps, centre]


def _is_count(g: _Graph, name: str, of: str, axes: tuple[int, ...]) -> bool:
    """`name` is the number of elements of `of` along `axes`: a constant equal to the product of
    their inferred sizes, or computed from Shape(of) (or the same-shaped x) as tf2onnx writes it."""
    value = g.value(name)
    if value is not None:
        dims = g.dims.get(of)
        sizes = [dims[a] for a in axes] if dims else [None]
        return value.size == 1 and all(isinstance(d, int) for d in sizes) and float(value.reshape(-1)[0]) == \
            float(np.prod(sizes))
    nodes = g.graph.node
    cast = g.node(name, "Cast")
    prod = None if cast is None else g.node(nodes[cast].input[0], "ReduceProd")
    gather = None if prod is None else g.node(nodes[prod].input[0], "Gather")
    shape = None if gather is None else g.node(nodes[gather].input[0], "Shape")
    if shape is None or len(nodes[shape].attribute) or _reduce_axes(g, nodes[prod], keepdims=False) not in (None, (0,)):
        return False
    index = g.inits.get(nodes[gather].input[1])
    if index is None:
        return False
    from onnx import numpy_helper

    picked = tuple(sorted(int(a) % (len(axes) + 1) for a in numpy_helper.to_array(index).reshape(-1)))
    source = nodes[shape].input[0]
    sub = g.producer.get(of)
    same = source == of or (sub is not None and source == g.graph.node[sub].input[0])
    return same and picked == axes


def _uniform(g: _Graph, name: str) -> Optional[tuple[float, np.dtype]]:
    """The one value (and dtype) of a constant whose elements are all equal, also Expanded to a
    shape: per-channel γ/β that do not vary by channel are a LayerNorm's scalar γ/β."""
    expand = g.node(name, "Expand")
    value = g.value(g.graph.node[expand].input[0] if expand is not None else name)
    if value is None or value.size == 0 or not np.all(value == value.reshape(-1)[0]):
        return None
    return float(value.reshape(-1)[0]), value.dtype


def _normal(axes: Optional[tuple[int, ...]], rank: int) -> Optional[tuple[int, ...]]:
    if axes is None or any(not -rank <= a < rank for a in axes):
        return None
    return tuple(sorted({a % rank for a in axes}))


def _keeps(node) -> bool:
    return next((a.i for a in node.attribute if a.name == "keepdims"), 1) == 1


def _squeeze_axes(g: _Graph, node) -> Optional[tuple[int, ...]]:
    """A Squeeze's axes (attribute, or constant input since opset 13); None when not given."""
    from onnx import numpy_helper

    if len(node.input) > 1 and node.input[1]:
        t = g.inits.get(node.input[1])
        return None if t is None else tuple(int(a) for a in numpy_helper.to_array(t).reshape(-1))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return tuple(attrs["axes"]) if "axes" in attrs else None
