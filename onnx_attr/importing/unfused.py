"""onnxruntime's fused BERT embedding (com.microsoft EmbedLayerNormalization, and its dynamic
quantizer's QEmbedLayerNormalization over 8-bit tables) written back as the ONNX ops it fuses, in
the converted model only (`verify` runs onnxruntime on the graph as written).

Not a converter expansion (microsoft.py) because the lookups must be tensors of the ONNX graph:
token ids are attributed at the output of their embedding Gather, by DeepLift's taps and by the
gradient methods, which cut the graph at that tensor (`tensors_as_inputs`). Written out, the
word, position and segment lookups are three Gathers, their sum an Add, then LayerNormalization
(onnxruntime's own below opset 17), and the mask index a ReduceSum of the mask (zeros without one),
which is what onnxruntime computes (checked in tests against it). An 8-bit table's rows are looked
up, then dequantized (per-tensor scale and zero point: the same values as dequantizing the table,
without a float copy of it per call); DeepLift's taps read the dequantized rows.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

EMBED_OP = "EmbedLayerNormalization"
QUANTIZED_EMBED_OP = "QEmbedLayerNormalization"
MICROSOFT = "com.microsoft"
#: per op: its inputs' positions for (ids, segment ids, word, position and segment tables, gamma, beta,
#: mask, position ids), then for the quantized one each table's, gamma's and beta's scale and zero point
_INPUTS = {EMBED_OP: (range(9), None),
           QUANTIZED_EMBED_OP: ((0, 1, 2, 3, 4, 5, 6, 7, None), ((8, 13), (9, 14), (10, 15), (11, 16), (12, 17)))}


def unfuse_embeddings(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` with each EmbedLayerNormalization of its main graph written out, or `model`
    itself when it has none (or an opset before Slice took its bounds as inputs, 10)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    found = [i for i, n in enumerate(model.graph.node) if n.op_type in _INPUTS and n.domain == MICROSOFT]
    if not found or opset < 10:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        nodes.extend(_written_out(node, opset, graph) if i in found else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    names = ", ".join(repr(model.graph.node[i].name or model.graph.node[i].output[0]) for i in found)
    ops = "/".join(sorted({model.graph.node[i].op_type for i in found}))
    notes.append(f"wrote out {len(found)} {ops} node(s) ({names}) as Gather, Add and "
                 "LayerNormalization, so token ids are attributed at their embedding; verify compares against "
                 "the graph as written")
    return out


def _written_out(node: onnx.NodeProto, opset: int, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    ins = list(node.input) + [""] * (18 - len(node.input))
    order, quantization = _INPUTS[node.op_type]
    ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids = (
        "" if i is None else ins[i] for i in order)
    scales = {} if quantization is None else dict(zip((words, positions, segment_table, gamma, beta),
                                                     ((ins[s], ins[z]) for s, z in quantization)))
    outs = list(node.output) + [""] * (3 - len(node.output))
    prefix = node.name or outs[0]
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    made: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], suffix: str, output: str = "", **attrs) -> str:
        name = output or f"{prefix}/{suffix}"
        made.append(helper.make_node(op, inputs, [name], name=f"{prefix}/{suffix}", **attrs))
        return name

    def constant(suffix: str, values: list[int]) -> str:
        name = f"{prefix}/{suffix}"
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def floats(value: str, table: str, suffix: str) -> str:
        """An 8-bit table's values (or rows) dequantized; a float one's as they are."""
        if table not in scales:
            return value
        scale, zero = scales[table]
        return add("DequantizeLinear", [value, scale, zero], f"{suffix}_dequantized")

    total = floats(add("Gather", [words, ids], "word_embedding"), words, "word_embedding")
    if position_ids:
        position = add("Gather", [positions, position_ids], "position_embedding")
    else:  # positions 0..S-1: the table's first S rows, broadcast over the batch
        shape = add("Shape", [ids], "shape")
        length = add("Slice", [shape, constant("one", [1]), constant("two", [2])], "length")
        position = add("Slice", [positions, constant("zero", [0]), length, constant("zero_axis", [0])],
                       "position_embedding")
    total = add("Add", [total, floats(position, positions, "position_embedding")], "word_and_position")
    if segments and segment_table:
        segment = floats(add("Gather", [segment_table, segments], "segment_embedding"), segment_table,
                         "segment_embedding")
        total = add("Add", [total, segment], "embedding_sum", output=outs[2])
    elif outs[2]:
        total = add("Identity", [total], "embedding_sum", output=outs[2])
    add("LayerNormalization", [total, floats(gamma, gamma, "gamma"), floats(beta, beta, "beta")], "layer_norm",
        output=outs[0], axis=-1, epsilon=epsilon)
    if outs[1]:  # the mask index: valid tokens per sequence (zeros without a mask), int32
        if mask:
            if opset >= 13:
                summed = add("ReduceSum", [mask, constant("sequence_axis", [1])], "mask_sum", keepdims=0)
            else:
                summed = add("ReduceSum", [mask], "mask_sum", axes=[1], keepdims=0)
            add("Cast", [summed], "mask_index", output=outs[1], to=onnx.TensorProto.INT32)
        else:
            shape = add("Shape", [ids], "ids_shape")
            batch = add("Slice", [shape, constant("first", [0]), constant("second", [1])], "batch")
            add("ConstantOfShape", [batch], "mask_index", output=outs[1],
                value=helper.make_tensor("zero", onnx.TensorProto.INT32, [1], [0]))
    return made
