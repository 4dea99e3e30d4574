"""What an output of an ONNX graph is computed from: the tensors upstream of it, and the narrowest
floating type its computation passes through (whose rounding both the import check and a
completeness delta carry: float32 in and out with float16 weights and Casts between rounds as float16)."""

from __future__ import annotations

import onnx

#: ops whose output's size follows their inputs' values (the elements kept, the detections, the distinct
#: values, a loop's trips); a subgraph counts by the ops inside it
VALUE_SIZED = frozenset({"NonZero", "Compress", "NonMaxSuppression", "Unique", "Loop"})

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


def value_sized(node: onnx.NodeProto) -> bool:
    """Whether the node sizes its output by values (`VALUE_SIZED`), itself or inside its subgraphs."""
    if node.op_type in VALUE_SIZED:
        return True
    return any(value_sized(inner) for a in node.attribute for g in (a.g, *a.graphs) for inner in g.node)


def after_value_sized(graph: onnx.GraphProto, output: str) -> bool:
    """Whether `output` is computed after an op that sizes its output by values: a size of its own may
    follow the values too, and its values are no fixed set either."""
    return any(value_sized(node) for node in upstream(graph, output)[1])


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


#: ops whose outputs' element type is fixed whatever their inputs'
_FIXED_TYPES = {**dict.fromkeys(("Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"),
                                onnx.TensorProto.INT64),
                **dict.fromkeys(("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                                 "IsNaN", "IsInf"), onnx.TensorProto.BOOL)}


#: ops whose output has the element type of another of their inputs: op -> that input's position
_TYPED_BY = {"Where": 1, "CastLike": 1, "QuantizeLinear": 2, "OneHot": 2}


def element_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, from the declared ones forward through the main graph by
    each op's rule (most ops keep their first input's type; Cast sets it; comparisons give bool;
    Shape, ArgMax give int64): what a comparison reads, without a shape inference of the whole
    graph (seconds on an unrolled decoder). Names it cannot tell are absent."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)
             if v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output or node.output[0] in types:
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type in _FIXED_TYPES:
            kind = _FIXED_TYPES[node.op_type]
        elif node.op_type == "Cast":
            kind = attrs["to"].i if "to" in attrs else None
        elif node.op_type in ("Constant", "ConstantOfShape"):
            value = attrs.get("value")
            kind = value.t.data_type if value is not None else onnx.TensorProto.FLOAT if node.op_type != "Constant" \
                else None
        elif node.op_type in _TYPED_BY:  # the output's type is another input's
            at = _TYPED_BY[node.op_type]
            kind = types.get(node.input[at]) if len(node.input) > at and node.input[at] else \
                onnx.TensorProto.UINT8 if node.op_type == "QuantizeLinear" else None
        elif node.op_type in ("If", "Loop"):  # as its body declares each output (a Loop's after its condition)
            body = next((a.g for a in node.attribute if a.name in ("then_branch", "body")), None)
            skip = node.op_type == "Loop"
            for name, out in zip(node.output, list(body.output)[skip:] if body is not None else ()):
                if name and out.type.tensor_type.elem_type:
                    types[name] = out.type.tensor_type.elem_type
            continue
        elif node.op_type in ("DequantizeLinear", "DynamicQuantizeLinear", "Scan", "EyeLike",
                              "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"):
            kind = {"DequantizeLinear": onnx.TensorProto.FLOAT,
                    "DynamicQuantizeLinear": onnx.TensorProto.UINT8}.get(node.op_type)
        elif node.op_type in ("MatMulInteger", "ConvInteger"):
            kind = onnx.TensorProto.INT32
        else:  # arithmetic, shape and selection ops: the data's type (input 0)
            kind = types.get(node.input[0]) if node.input else None
        if kind:
            types[node.output[0]] = kind
            if node.op_type == "TopK" and len(node.output) > 1:
                types[node.output[1]] = onnx.TensorProto.INT64
    return types
