"""float16 graphs computed in float32, as onnxruntime's CPU provider computes them.

onnxruntime's CPU provider has no half-precision kernels for most ops: it casts a float16 graph's
inputs to float32 once, runs the nodes in float32, removes the Cast pairs between them, and casts
the outputs back (a float16 MLP: exactly a float32 chain rounded at its end; float16 per op differed
by 0.5 on outputs near 490, and a float16 LSTM's cell state drifted 0.3). Computing in float16
here was neither onnxruntime's answer nor fast: torch's float16 convolutions on a CPU are several
times slower than float32 ones (a float16 document unwarper: 156 s against 21 s), and DeepLift's
secant multipliers overflow float16 where a Log meets a small input (inf · 0 = NaN).

So the converted graph (not the canonical one `verify` runs) holds float32 where the file says
float16: weights, Casts to float16, tensor attributes, subgraphs; each float16 graph input gets a
Cast to float32, and each float16 output a Cast back, so the module is fed and answers in the
file's types. What a graph computes in float16 on a GPU provider is not what this reproduces.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_attr.importing.read import external_folder, is_external, read_external

HALF, FULL = TensorProto.FLOAT16, TensorProto.FLOAT
#: attributes that name an element type (Cast's `to`, EyeLike's and the Random ops' `dtype`,
#: DequantizeLinear's `output_dtype`)
_TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")


def widen_float16(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` computing in float32 where it holds float16, or `model` itself where it
    holds none."""
    if not _holds_half(model.graph):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _widen_graph(graph, external_folder(model))
    taken = {name for n in _all_nodes(graph) for name in (*n.input, *n.output)} | \
        {v.name for v in (*graph.input, *graph.output, *graph.initializer)}

    def fresh(name: str) -> str:
        wide = f"{name}/float32"
        while wide in taken:
            wide = "_" + wide
        taken.add(wide)
        return wide

    inputs = {v.name for v in graph.input}
    entry = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == HALF:
            wide = fresh(value.name)
            _rename_uses(graph, value.name, wide)
            entry.append(helper.make_node("Cast", [value.name], [wide], to=FULL, name=wide))
    exit_ = []
    for value in graph.output:
        if value.type.tensor_type.elem_type == HALF and value.name not in inputs:
            wide = fresh(value.name)
            _rename_everywhere(graph, value.name, wide)
            exit_.append(helper.make_node("Cast", [wide], [value.name], to=HALF, name=f"{value.name}/float16"))
    nodes = [*entry, *graph.node, *exit_]
    del graph.node[:]
    graph.node.extend(nodes)
    notes.append("float16 computed in float32, as onnxruntime's CPU provider computes it: the inputs cast up once, "
                 "the outputs cast back to float16")
    return out


def _holds_half(graph: onnx.GraphProto) -> bool:
    values = (*graph.input, *graph.output, *graph.value_info)
    if any(v.type.tensor_type.elem_type == HALF for v in values) or any(t.data_type == HALF for t in graph.initializer):
        return True
    for node in graph.node:
        for a in node.attribute:
            if a.name in _TYPE_ATTRIBUTES and a.type == onnx.AttributeProto.INT and a.i == HALF:
                return True
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == HALF:
                return True
            if any(_holds_half(g) for g in _subgraphs(a)):
                return True
    return False


def _widen_graph(graph: onnx.GraphProto, folder) -> None:
    """float16 → float32 in this graph and its subgraphs: weights, tensor attributes, type attributes, and
    the declared types of everything but the main graph's inputs and outputs (the file's interface)."""
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == HALF:
            graph.initializer[i].CopyFrom(_widened(tensor, folder))
    for value in graph.value_info:
        _widen_type(value.type)
    for node in graph.node:
        for a in node.attribute:
            if a.name in _TYPE_ATTRIBUTES and a.type == onnx.AttributeProto.INT and a.i == HALF:
                a.i = FULL
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == HALF:
                a.t.CopyFrom(_widened(a.t, folder))
            for g in _subgraphs(a):
                _widen_subgraph(g, folder)


def _widen_subgraph(graph: onnx.GraphProto, folder) -> None:
    _widen_graph(graph, folder)
    for value in (*graph.input, *graph.output):
        _widen_type(value.type)


def _widen_type(kind: onnx.TypeProto) -> None:
    which = kind.WhichOneof("value")
    if which == "tensor_type" and kind.tensor_type.elem_type == HALF:
        kind.tensor_type.elem_type = FULL
    elif which == "sequence_type":
        _widen_type(kind.sequence_type.elem_type)
    elif which == "optional_type":
        _widen_type(kind.optional_type.elem_type)


def _widened(tensor: onnx.TensorProto, folder) -> onnx.TensorProto:
    """The tensor in float32 (exact: every float16 value is a float32 one), its external data read."""
    value = read_external(tensor, folder) if is_external(tensor) else numpy_helper.to_array(tensor)
    return numpy_helper.from_array(value.astype(np.float32), tensor.name)


def _subgraphs(attribute: onnx.AttributeProto) -> tuple:
    """The graphs an attribute holds (an If's branch, a Loop's body), none for other attributes."""
    return (*([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else ()), *attribute.graphs)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for a in node.attribute:
            for g in _subgraphs(a):
                yield from _all_nodes(g)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node reading `old` reads `new`, in subgraphs too (outer-scope values), unless a subgraph
    declares a value of that name itself."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for a in node.attribute:
            for g in _subgraphs(a):
                if old not in {v.name for v in (*g.input, *g.initializer)} | {o for n in g.node for o in n.output}:
                    _rename_uses(g, old, new)


def _rename_everywhere(graph: onnx.GraphProto, old: str, new: str) -> None:
    """`old` renamed `new` as a node's output, an initializer, a value_info and wherever it is read;
    the graph's own output keeps the name (the Cast back writes it)."""
    _rename_uses(graph, old, new)
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new
    for value in graph.value_info:
        if value.name == old:
            value.name = new
