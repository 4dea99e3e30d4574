"""Fuse a LayerNorm written out op by op into one `LayerNormalization` node.

Exporters without a LayerNorm op (PyTorch before opset 17, tf2onnx, jax2tf) spell it
ReduceMean -> Sub -> Pow 2 (or Mul d·d) -> ReduceMean -> Add eps -> Sqrt -> Div (or Reciprocal, or
Div(1, ·) as PyTorch exports torch.rsqrt, then Mul; or no Sqrt but Pow(·, -0.5) then Mul) -> Mul γ
-> Add β (an instance norm is the same over the spatial axes), or (jax2tf's Flax LayerNorm) as max(0, E[x²] - E[x]²) from
ReduceSum · 1/n, or (older tf2onnx) as a BatchNormalization fed the moments of its own input
(`fusion_batch_norm`). Run op by op in float32, DeepLift's product rules lose the
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
    axes: tuple[int, ...]  # the normalized axes: negative (trailing, rank unknown) or all in [0, rank)
    rank: Optional[int]
    epsilon: float
    scale: Optional[str]
    bias: Optional[str]
    dtype: np.dtype
    defaults: tuple[Optional[float], Optional[float]] = (1.0, None)  # γ, β where no tensor is given (None: none)


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
        name = graph.node[m.nodes[0]].name or f"LayerNorm#{k}"
        replaced[max(m.nodes)] = _fused_nodes(graph, m, name)  # where every input of the span is computed
        dropped.update(m.nodes)
    kept = [n for i, node in enumerate(graph.node) if i in replaced or i not in dropped
            for n in replaced.get(i, [node])]
    del graph.node[:]
    graph.node.extend(kept)
    names = [repr(model.graph.node[m.nodes[0]].name or m.output) for m in matches]
    shown = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
    notes.append(f"fused {len(matches)} written-out LayerNorm(s) into LayerNormalization nodes "
                 f"(each named after its first node: {shown}); verify compares against the graph as written")
    return out


#: the fused nodes a note names (g2p-id's tiny-pron has 242: one line of 4.7 KB, hunt 33)
NAMED = 5


def _fused_nodes(graph: onnx.GraphProto, m: _Match, name: str) -> list[onnx.NodeProto]:
    """LayerNormalization over the trailing axes; over others, between two Transposes that move
    the normalized axes last and back (linear: DeepLift passes through them exactly)."""
    trailing = m.rank is None or list(m.axes) == list(range(m.rank - len(m.axes), m.rank))
    perm = None if trailing else [a for a in range(m.rank) if a not in m.axes] + list(m.axes)
    inputs = [m.x]
    for role, tensor, default in (("scale", m.scale, m.defaults[0]), ("bias", m.bias, m.defaults[1])):
        if tensor is None and default is None:
            continue
        value = np.array(default, m.dtype) if tensor is None else numpy_helper.to_array(
            next(t for t in graph.initializer if t.name == tensor))
        if tensor is None or perm is not None:  # a new constant: the default, or γ/β moved like x
            if perm is not None and value.ndim:
                value = np.transpose(value.reshape((1,) * (m.rank - value.ndim) + value.shape), perm)
            tensor = f"{m.output}/layernorm_{role}"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), tensor))
        inputs.append(tensor)
    axis = -len(m.axes) if m.rank is None else m.rank - len(m.axes)
    if perm is None:
        return [helper.make_node("LayerNormalization", inputs, [m.output], name=name, axis=axis, epsilon=m.epsilon)]
    moved, normed = f"{m.output}/layernorm_in", f"{m.output}/layernorm_out"
    back = [perm.index(a) for a in range(m.rank)]
    return [helper.make_node("Transpose", [m.x], [moved], name=f"{name}/transpose_in", perm=perm),
            helper.make_node("LayerNormalization", [moved, *inputs[1:]], [normed], name=name, axis=axis,
                             epsilon=m.epsilon),
            helper.make_node("Transpose", [normed], [m.output], name=f"{name}/transpose_out", perm=back)]


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
        typed = [v for v in [*graph.input, *graph.value_info, *graph.output]
                 if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")]
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in typed}
        #: inferred dims: an int, a symbol's name, or None when unknown
        self.dims = {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                              for d in v.type.tensor_type.shape.dim] for v in typed}

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
    from onnx_attr.importing.fusion_batch_norm import match_batch_norm

    g = _Graph(graph)
    found: list[_Match] = []
    taken: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or i in taken:
            continue
        m = _match(g, i) if node.op_type == "ReduceMean" else _match_moments(g, i) if node.op_type == "Sqrt" \
            else match_batch_norm(g, i) if node.op_type == "BatchNormalization" else None
        if m is not None and not taken & set(m.nodes):
            found.append(m)
            taken.update(m.nodes)
    return found


def _reduce_axes(g: _Graph, node: onnx.NodeProto, keepdims: bool = True) -> Optional[tuple[int, ...]]:
    """A reduction's axes (attribute, or constant input since ReduceSum 13 and ReduceMean 18), or
    None; with `keepdims`, None too when the node drops the reduced axes."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if keepdims and attrs.get("keepdims", 1) != 1:
        return None
    if len(node.input) > 1 and node.input[1]:
        t = g.inits.get(node.input[1])
        return None if t is None else tuple(int(a) for a in numpy_helper.to_array(t).reshape(-1))
    return tuple(attrs["axes"]) if "axes" in attrs else None


def _normal_axes(axes: tuple[int, ...], rank: Optional[int]) -> Optional[tuple[int, ...]]:
    """The reduced axes in [0, rank), sorted; without a rank, only negative axes that are the
    trailing ones; None when they are not distinct valid axes."""
    if not axes or len(set(axes)) != len(axes):
        return None
    if rank is None:
        return tuple(sorted(axes)) if sorted(axes) == list(range(-len(axes), 0)) else None
    normal = sorted(a % rank for a in axes if -rank <= a < rank)
    return tuple(normal) if len(set(normal)) == len(axes) else None


def _match(g: _Graph, mean_index: int) -> Optional[_Match]:
    """The written-out LayerNorm starting at this ReduceMean, or None; every intermediate tensor
    must be read only inside the pattern."""
    nodes = g.graph.node
    mean = nodes[mean_index]
    axes = _reduce_axes(g, mean)
    x = mean.input[0]
    normal = None if axes is None else _normal_axes(axes, g.ranks.get(x))
    if normal is None or mean.output[0] in g.pinned:
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
    if sqrt_index is None:
        return None
    std = nodes[sqrt_index].output[0]
    span = [mean_index, sub_index, square_index, var_index, add_index, sqrt_index]
    divide = nodes[divide_index]
    if nodes[sqrt_index].op_type == "Pow" and _exponent(g, nodes[sqrt_index]) == -0.5:  # rsqrt as one Pow
        if divide.op_type != "Mul" or g.other(divide, d) != std or g.only_consumer(std) != divide_index:
            return None
        span.append(divide_index)
    elif nodes[sqrt_index].op_type != "Sqrt":
        return None
    elif divide.op_type == "Div" and list(divide.input) == [d, std] and g.only_consumer(std) == divide_index:
        span.append(divide_index)
    else:
        recip_index = _reciprocal(g, std)
        if recip_index is None or divide.op_type != "Mul" or \
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
    rank = g.ranks.get(x)
    if rank is not None and any(not _fits(g, t, rank) for t in (scale, bias) if t is not None):
        return None
    return _Match(sorted(span), x, out, normal, rank, float(eps.reshape(-1)[0]), scale, bias, eps.dtype)


def _is_square(g: _Graph, node: onnx.NodeProto, d: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [d, d]
    return node.op_type == "Pow" and node.input[0] == d and _exponent(g, node) == 2


def _exponent(g: _Graph, node: onnx.NodeProto) -> Optional[float]:
    """A Pow's constant scalar exponent (None: computed, or not one number)."""
    exponent = g.inits.get(node.input[1]) if len(node.input) == 2 else None
    if exponent is None or is_external(exponent):
        return None
    value = numpy_helper.to_array(exponent).reshape(-1)
    return float(value[0]) if value.size == 1 else None


def _reciprocal(g: _Graph, std: str) -> Optional[int]:
    """The one node reading `std` that computes 1/std: a Reciprocal, or Div(1, std) (torch.rsqrt as
    PyTorch exports it, after a Sqrt)."""
    index = g.only_consumer(std)
    node = None if index is None else g.graph.node[index]
    if node is None:
        return None
    if node.op_type == "Reciprocal":
        return index
    one = g.value(node.input[0]) if node.op_type == "Div" and list(node.input)[1:] == [std] else None
    return index if one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0 else None


def _affine_step(g: _Graph, tensor: str, op_type: str) -> Optional[int]:
    """The Mul γ / Add β reading `tensor` (its only reader) with a constant float other operand."""
    index = g.only_consumer(tensor)
    if index is None or g.graph.node[index].op_type != op_type:
        return None
    other = g.other(g.graph.node[index], tensor)
    return index if other is not None and g.value(other) is not None else None


#: Ops that put a reduced (keepdims=0) statistic back in the reduced axes' place; jax2tf writes
#: Reshape then Expand to a shape computed at run time, so the check is on the inferred shape.
_BROADCAST_BACK = frozenset({"Reshape", "Expand", "Unsqueeze"})


def _mean_of(g: _Graph, tensor: str) -> Optional[tuple[str, tuple[int, ...], bool, list[int]]]:
    """(t, axes, keepdims, nodes) when `tensor` is ReduceMean(t) or ReduceSum(t) · 1/n, n the count
    of the reduced elements, each step read only by the next."""
    nodes = g.graph.node
    index = g.producer.get(tensor)
    if index is None:
        return None
    node, steps = nodes[index], [index]
    count = 1.0
    if node.op_type == "Mul":
        reduced = next((t for t in node.input if g.node(t, "ReduceSum") is not None), None)
        factor = None if reduced is None else g.value(g.other(node, reduced) or "")
        if factor is None or factor.size != 1 or g.only_consumer(reduced) != index:
            return None
        count, index = 1.0 / float(factor.reshape(-1)[0]), g.producer[reduced]
        node = nodes[index]
        steps.append(index)
    elif node.op_type != "ReduceMean":
        return None
    axes = _reduce_axes(g, node, keepdims=False)
    source = node.input[0]
    normal = None if axes is None else _normal_axes(axes, g.ranks.get(source))
    if normal is None:
        return None
    if node.op_type == "ReduceSum":
        dims = g.dims.get(source)
        n = None if dims is None else np.prod([dims[a] if isinstance(dims[a], int) else np.nan for a in normal])
        if n is None or not np.isclose(n * (1.0 / count), 1.0, rtol=1e-6):
            return None
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1) == 1
    return source, normal, keep, steps


def _square_of(g: _Graph, tensor: str) -> Optional[tuple[str, int]]:
    """(t, node) when `tensor` is Mul(t, t) or Pow(t, 2)."""
    index = g.producer.get(tensor)
    if index is None:
        return None
    node = g.graph.node[index]
    if node.op_type in ("Mul", "Pow") and _is_square(g, node, node.input[0]):
        return node.input[0], index
    return None


def _broadcast_back(g: _Graph, tensor: str, x: Optional[str], axes: tuple[int, ...], forward: bool,
                    reader: Optional[int] = None) -> Optional[tuple[str, list[int]]]:
    """Follow Reshape/Expand/Unsqueeze steps from `tensor` (forward: to its readers; backward: to
    its producers), each read only by the next, while they only restore the reduced axes as 1s:
    (the tensor reached, the steps). Without steps, `tensor` itself; without `x`, unchecked.
    `reader`: the one reader to follow first, where `tensor` has others."""
    nodes = g.graph.node
    steps: list[int] = []
    while True:
        if forward:
            index = reader if reader is not None and not steps else g.only_consumer(tensor)
            if index is None or nodes[index].op_type not in _BROADCAST_BACK or nodes[index].input[0] != tensor:
                break
            steps.append(index)
            tensor = nodes[index].output[0]
        else:
            index = g.producer.get(tensor)
            if index is None or nodes[index].op_type not in _BROADCAST_BACK or \
                    g.only_consumer(nodes[index].output[0]) is None:
                break
            steps.append(index)
            tensor = nodes[index].input[0]
    if not steps or x is None:
        return tensor, steps
    kept = tensor if forward else nodes[steps[0]].output[0]  # the broadcast statistic
    shape, x_shape = g.dims.get(kept), g.dims.get(x)
    if shape is None or x_shape is None or len(shape) != len(x_shape):
        return None
    fits = all(d == 1 if a in axes else _same_dim(d, x_shape[a]) for a, d in enumerate(shape))
    return (tensor, steps) if fits else None


def _same_dim(a: int | str | None, b: int | str | None) -> bool:
    """Two inferred dims that can be the same axis: equal sizes, or symbols (inference names the
    batch afresh after a Squeeze), never a 1 against something else."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return a != 1 and b != 1


def _match_moments(g: _Graph, sqrt_index: int) -> Optional[_Match]:
    """The jax2tf/Flax form, found from its Sqrt: var = max(0, E[x²] - E[x]²) with E as
    ReduceSum · 1/n or ReduceMean, the statistics dropped (keepdims=0) and broadcast back, then
    (x - E[x]) · (Reciprocal(Sqrt(var + eps)) · γ) + β (or Div by the Sqrt, γ after)."""
    nodes = g.graph.node
    sqrt = nodes[sqrt_index]
    add_index = g.producer.get(sqrt.input[0])
    if add_index is None or nodes[add_index].op_type != "Add" or g.only_consumer(sqrt.input[0]) != sqrt_index:
        return None
    add = nodes[add_index]
    eps_name = next((t for t in add.input if g.value(t) is not None), None)
    var_b = g.other(add, eps_name) if eps_name is not None else None
    eps = g.value(eps_name or "")
    if var_b is None or eps is None or eps.size != 1 or g.only_consumer(var_b) != add_index:
        return None
    span = [sqrt_index, add_index]
    # backwards: broadcast steps, an optional Max(0, .), E[x²] - E[x]²
    back = _broadcast_back(g, var_b, None, (), forward=False)  # checked once x and the axes are known
    if back is None:
        return None
    var, steps = back
    span += steps
    clamp = g.producer.get(var)
    if clamp is not None and nodes[clamp].op_type == "Max":
        floor = g.value(next((t for t in nodes[clamp].input if t != var and g.value(t) is not None), ""))
        inner = next((t for t in nodes[clamp].input if g.value(t) is None), None)
        if floor is None or floor.size != 1 or float(floor.reshape(-1)[0]) != 0.0 or inner is None or \
                len(nodes[clamp].input) != 2 or g.only_consumer(inner) != clamp:
            return None
        span.append(clamp)
        var = inner
    sub_index = g.node(var, "Sub")
    if sub_index is None:
        return None
    ex2, mu2 = nodes[sub_index].input
    second, mean_sq = _mean_of(g, ex2), _square_of(g, mu2)
    if second is None or mean_sq is None or g.only_consumer(ex2) != sub_index or g.only_consumer(mu2) != sub_index:
        return None
    squared = _square_of(g, second[0])
    mu = mean_sq[0]
    first = _mean_of(g, mu)
    if squared is None or first is None or g.only_consumer(second[0]) != second[3][-1]:
        return None
    x, axes, keep, mean_steps = first
    if squared[0] != x or second[1] != axes or second[2] != keep:
        return None
    span += [sub_index, mean_sq[1], squared[1], *second[3], *mean_steps]
    # the mean, broadcast back, is subtracted from x; nothing else reads it
    readers = [i for i in sorted(set(g.consumers.get(mu, []))) if i != mean_sq[1]]
    if mu in g.pinned or len(readers) != 1:
        return None
    found = _broadcast_back(g, mu, x, axes, forward=True, reader=readers[0])
    if found is None:
        return None
    mu_b, steps = found
    if _broadcast_back(g, var_b, x, axes, forward=False) is None:
        return None
    span += steps
    centre_index = g.only_consumer(mu_b)
    if centre_index is None or nodes[centre_index].op_type != "Sub" or list(nodes[centre_index].input) != [x, mu_b]:
        return None
    d = nodes[centre_index].output[0]
    span.append(centre_index)
    # forwards: d / std, or d · (1/std [· γ])
    std, scale = sqrt.output[0], None
    final = g.only_consumer(std)
    if final is None or g.only_consumer(d) != final:
        if final is None or _reciprocal(g, std) != final:
            return None
        span.append(final)
        inverse = nodes[final].output[0]
        step = g.only_consumer(inverse)
        if step is not None and step != g.only_consumer(d) and nodes[step].op_type == "Mul" and \
                g.value(g.other(nodes[step], inverse) or "") is not None:
            scale = g.other(nodes[step], inverse)
            span.append(step)
            inverse = nodes[step].output[0]
        final = g.only_consumer(inverse)
        if final is None or g.only_consumer(d) != final or nodes[final].op_type != "Mul" or \
                g.other(nodes[final], d) != inverse:
            return None
    elif nodes[final].op_type != "Div" or list(nodes[final].input) != [d, std]:
        return None
    span.append(final)
    out = nodes[final].output[0]
    if scale is None:
        scale_index = _affine_step(g, out, "Mul")
        if scale_index is not None:
            scale, out = g.other(nodes[scale_index], out), nodes[scale_index].output[0]
            span.append(scale_index)
    bias, bias_index = None, _affine_step(g, out, "Add")
    if bias_index is not None:
        bias, out = g.other(nodes[bias_index], out), nodes[bias_index].output[0]
        span.append(bias_index)
    if any(nodes[i].output[0] in g.pinned for i in span if nodes[i].output[0] != out):
        return None
    rank = g.ranks.get(x)
    if rank is None or any(not _fits(g, t, rank) for t in (scale, bias) if t is not None):
        return None
    return _Match(sorted(set(span)), x, out, axes, rank, float(eps.reshape(-1)[0]), scale, bias, eps.dtype)


def _fits(g: _Graph, name: str, rank: int) -> bool:
    """A γ/β constant broadcasts against x without adding axes."""
    value = g.value(name)
    return value is not None and value.ndim <= rank
