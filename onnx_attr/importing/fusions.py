"""Fuse a LayerNorm written out op by op into one `LayerNormalization` node.

Exporters without a LayerNorm op (PyTorch before opset 17, tf2onnx, jax2tf) spell it
ReduceMean -> Sub -> Pow 2 (or Mul d·d) -> ReduceMean -> Add eps -> Sqrt -> Div (or Reciprocal
and Mul) -> Mul γ -> Add β. Run op by op in float32, DeepLift's product rules lose the
attribution to cancellation at a reference where the variance is 0 (1/√eps ≈ 1000 times terms
that nearly cancel); the `LayerNormalization` rule computes its multipliers in float64 and
rounds once. The fused graph is only what we convert: `verify` still runs onnxruntime on the
graph as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_attr.importing.read import is_external


@dataclass
class _Match:
    """One written-out LayerNorm: the nodes it spans (by index) and the fused node's pieces."""

    nodes: list[int]
    x: str
    output: str
    axis: int
    epsilon: float
    scale: Optional[str]
    bias: Optional[str]
    dtype: np.dtype


def fuse_layer_norms(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` with every written-out LayerNorm replaced by one node (named after its
    first node), or `model` itself when there is none."""
    graph = model.graph
    matches = _find(graph)
    if not matches:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for k, m in enumerate(matches):
        first = graph.node[m.nodes[0]]
        inputs = [m.x, m.scale or _constant(graph, f"{m.output}/layernorm_scale", 1.0, m.dtype)]
        if m.bias is not None:
            inputs.append(m.bias)
        fused = helper.make_node("LayerNormalization", inputs, [m.output], name=first.name or f"LayerNorm#{k}",
                                 axis=m.axis, epsilon=m.epsilon)
        replaced[max(m.nodes)] = fused  # where every input of the span is already computed
        dropped.update(m.nodes)
    kept = [replaced.get(i, node) for i, node in enumerate(graph.node) if i in replaced or i not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    names = ", ".join(repr(model.graph.node[m.nodes[0]].name or m.output) for m in matches)
    notes.append(f"fused {len(matches)} written-out LayerNorm(s) into LayerNormalization nodes "
                 f"(each named after its first node: {names}); verify compares against the graph as written")
    return out


def _constant(graph: onnx.GraphProto, name: str, value: float, dtype: np.dtype) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
    return name


class _Graph:
    """Lookups over one graph: producers, consumers, constants, ranks."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(graph.node):
            for name in n.input:
                self.consumers.setdefault(name, []).append(i)
        self.inits = {t.name: t for t in graph.initializer}
        self.pinned = {o.name for o in graph.output} | _names_in_bodies(graph)
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim)
                      for v in [*graph.input, *graph.value_info, *graph.output]
                      if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}

    def node(self, name: str, op_type: str) -> Optional[int]:
        i = self.producer.get(name)
        n = None if i is None else self.graph.node[i]
        return i if n is not None and n.op_type == op_type and n.domain in ("", "ai.onnx") else None

    def only_consumer(self, name: str) -> Optional[int]:
        """The one node reading `name`, when nothing else (no other node, graph output, or body) does."""
        users = set(self.consumers.get(name, []))
        return next(iter(users)) if len(users) == 1 and name not in self.pinned else None

    def value(self, name: str) -> Optional[np.ndarray]:
        t = self.inits.get(name)
        return None if t is None or is_external(t) or t.data_type not in _FLOATS else numpy_helper.to_array(t)

    def other(self, node: onnx.NodeProto, name: str) -> Optional[str]:
        """The other input of a two-input node that reads `name` once."""
        if len(node.input) != 2 or list(node.input).count(name) != 1:
            return None
        return node.input[1] if node.input[0] == name else node.input[0]


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _names_in_bodies(graph: onnx.GraphProto) -> set[str]:
    """Every name an If/Loop/Scan body reads (bodies may read outer tensors)."""
    used: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used.update(name for n in body.node for name in n.input)
                used |= _names_in_bodies(body)
    return used


def _find(graph: onnx.GraphProto) -> list[_Match]:
    g = _Graph(graph)
    found: list[_Match] = []
    taken: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type == "ReduceMean" and node.domain in ("", "ai.onnx") and i not in taken:
            m = _match(g, i)
            if m is not None and not taken & set(m.nodes):
                found.append(m)
                taken.update(m.nodes)
    return found


def _reduce_axes(g: _Graph, node: onnx.NodeProto) -> Optional[tuple[int, ...]]:
    """A keepdims ReduceMean's axes (attribute before opset 18, constant input after), or None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("keepdims", 1) != 1:
        return None
    if len(node.input) > 1 and node.input[1]:
        t = g.inits.get(node.input[1])
        return None if t is None else tuple(int(a) for a in numpy_helper.to_array(t).reshape(-1))
    return tuple(attrs["axes"]) if "axes" in attrs else None


def _trailing_axis(axes: tuple[int, ...], rank: Optional[int]) -> Optional[int]:
    """LayerNormalization's `axis` when `axes` are the last len(axes) axes, else None."""
    if not axes:
        return None
    if all(a < 0 for a in axes):
        wanted = list(range(-len(axes), 0))
        return -len(axes) if sorted(axes) == wanted else None
    if rank is None:
        return None
    normal = sorted(a % rank for a in axes if -rank <= a < rank)
    return normal[0] if len(normal) == len(axes) and normal == list(range(rank - len(axes), rank)) else None


def _match(g: _Graph, mean_index: int) -> Optional[_Match]:
    """The written-out LayerNorm starting at this ReduceMean, or None; every intermediate tensor
    must be read only inside the pattern."""
    nodes = g.graph.node
    mean = nodes[mean_index]
    axes = _reduce_axes(g, mean)
    x = mean.input[0]
    axis = None if axes is None else _trailing_axis(axes, g.ranks.get(x))
    if axis is None or mean.output[0] in g.pinned:
        return None
    sub_index = g.only_consumer(mean.output[0])
    if sub_index is None or nodes[sub_index].op_type != "Sub" or list(nodes[sub_index].input) != [x, mean.output[0]]:
        return None
    d = nodes[sub_index].output[0]
    users = sorted(set(g.consumers.get(d, [])))
    if d in g.pinned or len(users) != 2:
        return None
    square_index = next((u for u in users if _is_square(g, nodes[u], d)), None)
    if square_index is None:
        return None
    divide_index = next(u for u in users if u != square_index)
    var_index = g.only_consumer(nodes[square_index].output[0])
    if var_index is None or nodes[var_index].op_type != "ReduceMean" or _reduce_axes(g, nodes[var_index]) != axes:
        return None
    add_index = g.only_consumer(nodes[var_index].output[0])
    if add_index is None or nodes[add_index].op_type != "Add":
        return None
    eps = g.value(g.other(nodes[add_index], nodes[var_index].output[0]) or "")
    if eps is None or eps.size != 1:
        return None
    sqrt_index = g.only_consumer(nodes[add_index].output[0])
    if sqrt_index is None or nodes[sqrt_index].op_type != "Sqrt":
        return None
    std = nodes[sqrt_index].output[0]
    span = [mean_index, sub_index, square_index, var_index, add_index, sqrt_index]
    divide = nodes[divide_index]
    if divide.op_type == "Div" and list(divide.input) == [d, std] and g.only_consumer(std) == divide_index:
        span.append(divide_index)
    else:
        recip_index = g.only_consumer(std)
        if recip_index is None or nodes[recip_index].op_type != "Reciprocal" or divide.op_type != "Mul" or \
                g.only_consumer(nodes[recip_index].output[0]) != divide_index or \
                g.other(divide, d) != nodes[recip_index].output[0]:
            return None
        span += [recip_index, divide_index]
    out, scale = divide.output[0], None
    scale_index = _affine_step(g, out, "Mul")
    if scale_index is not None:
        scale = g.other(nodes[scale_index], out)
        out = nodes[scale_index].output[0]
        span.append(scale_index)
    bias, bias_index = None, _affine_step(g, out, "Add")
    if bias_index is not None:
        bias = g.other(nodes[bias_index], out)
        out = nodes[bias_index].output[0]
        span.append(bias_index)
    return _Match(sorted(span), x, out, axis, float(eps.reshape(-1)[0]), scale, bias, eps.dtype)


def _is_square(g: _Graph, node: onnx.NodeProto, d: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [d, d]
    if node.op_type == "Pow" and len(node.input) == 2 and node.input[0] == d:
        exponent = g.inits.get(node.input[1])
        return exponent is not None and not is_external(exponent) and \
            np.array_equal(numpy_helper.to_array(exponent).reshape(-1), [2])
    return False


def _affine_step(g: _Graph, tensor: str, op_type: str) -> Optional[int]:
    """The Mul γ / Add β reading `tensor` (its only reader) with a constant float other operand."""
    index = g.only_consumer(tensor)
    if index is None or g.graph.node[index].op_type != op_type:
        return None
    other = g.other(g.graph.node[index], tensor)
    return index if other is not None and g.value(other) is not None else None
