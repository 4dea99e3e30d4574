"""What an output of an ONNX graph is computed from: the tensors upstream of it, and the narrowest
floating type its computation passes through (whose rounding both the import check and a
completeness delta carry: float32 in and out with float16 weights and Casts between rounds as float16)."""

from __future__ import annotations

import onnx

#: ONNX element types narrower than float32, by numpy-style name
NARROW_FLOATS = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


def upstream(graph: onnx.GraphProto, output: str) -> tuple[set[str], list[onnx.NodeProto]]:
    """The tensor names `output` is computed from (itself included) and the nodes computing them
    (main graph; a node with subgraphs counts as one), in one backward sweep of the sorted graph."""
    needed, nodes = {output}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            needed.update(name for name in node.input if name)
            nodes.append(node)
    return needed, nodes


def computed_in(graph: onnx.GraphProto, output: str, own: str) -> str:
    """The floating type `output` is computed in: `own` (its declared type's name), or a narrower one
    a Cast or an initializer upstream of it has (bfloat16 before float16: the coarser rounding)."""
    if own in NARROW_FLOATS.values():
        return own
    needed, nodes = upstream(graph, output)
    narrow = {NARROW_FLOATS[a.i] for node in nodes if node.op_type == "Cast"
              for a in node.attribute if a.name == "to" and a.i in NARROW_FLOATS}
    narrow.update(NARROW_FLOATS[t.data_type] for t in graph.initializer
                  if t.name in needed and t.data_type in NARROW_FLOATS)
    return "bfloat16" if "bfloat16" in narrow else "float16" if narrow else own
