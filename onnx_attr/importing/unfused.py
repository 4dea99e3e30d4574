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
BLOCK_GATHER_OP = "GatherBlockQuantized"
QUANTIZED_EMBED_OP = "QEmbedLayerNormalization"
MICROSOFT = "com.microsoft"
#: per op: its inputs' positions for (ids, segment ids, word, position and segment tables, gamma, beta,
#: mask, position ids), then for the quantized one each table's, gamma's and beta's scale and zero point
_INPUTS = {EMBED_OP: (range(9), None),
           QUANTIZED_EMBED_OP: ((0, 1, 2, 3, 4, 5, 6, 7, None), ((8, 13), (9, 14), (10, 15), (11, 16), (12, 17)))}


def unfuse_embeddings(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` with each EmbedLayerNormalization of its main graph written out, and each
    GatherBlockQuantized of constant tables (`_block_gather`), or `model` itself when it has none (or an
    opset before Slice took its bounds as inputs, 10)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = {t.name: t for t in model.graph.initializer}
    found = [i for i, n in enumerate(model.graph.node) if n.domain == MICROSOFT and (
        n.op_type in _INPUTS or n.op_type == BLOCK_GATHER_OP and _block_table(n, constants) is not None)]
    if not found or opset < 10:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if i not in found:
            nodes.append(node)
        elif node.op_type == BLOCK_GATHER_OP:
            nodes.append(_block_gather(node, graph, _block_table(node, constants)))
        else:
            nodes.extend(_written_out(node, opset, graph))
    del graph.node[:]
    graph.node.extend(nodes)
    for op, what in ((BLOCK_GATHER_OP, "a Gather of its table dequantized at import"),
                     (None, "Gather, Add and LayerNormalization")):
        these = [i for i in found if (model.graph.node[i].op_type == BLOCK_GATHER_OP) == (op is not None)]
        if these:
            names = ", ".join(repr(model.graph.node[i].name or model.graph.node[i].output[0]) for i in these)
            ops = "/".join(sorted({model.graph.node[i].op_type for i in these}))
            notes.append(f"wrote out {len(these)} {ops} node(s) ({names}) as {what}, so token ids are attributed "
                         "at their embedding; verify compares against the graph as written")
    return out


def _block_table(node: onnx.NodeProto, constants: dict) -> "np.ndarray | None":
    """The float table a GatherBlockQuantized looks rows up in (onnxruntime's weight-only quantizer on a
    Gather: uint4/int4, or uint8 holding 8/bits values per byte low bits first, in blocks of `block_size`
    along `quantize_axis`, each block (q - zero point) · scale; the zero point 0 for 4-bit types, 2^(bits-1)
    for uint8 when none is given). None where it is not constant or not one of those (FP8/FP4 tables)."""
    names = list(node.input) + [""] * (4 - len(node.input))
    if any(name and name not in constants for name in (names[0], names[2], names[3])) or not names[2]:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    data = numpy_helper.to_array(constants[names[0]])
    kind = str(data.dtype)
    if kind not in ("uint4", "int4", "uint8"):
        return None
    bits = int(attrs.get("bits", 4)) if kind == "uint8" else 4
    q = _unpacked(data, bits) if kind == "uint8" and bits < 8 else data.astype(np.int16)
    axis = int(attrs.get("quantize_axis", 1)) % q.ndim
    block = int(attrs.get("block_size", 128))
    if names[3]:
        zero = numpy_helper.to_array(constants[names[3]])
        zero = _unpacked(zero, bits) if kind == "uint8" and bits < 8 else zero.astype(np.int16)
    else:
        zero = np.full(1, (1 << (bits - 1)) if kind == "uint8" else 0, np.int16)
    scale = numpy_helper.to_array(constants[names[2]])
    if zero.ndim == scale.ndim:
        zero = zero[tuple(slice(0, n) for n in scale.shape)]  # packed along the last axis: padding dropped
    size = q.shape[axis]
    widen = lambda v: np.repeat(v, block, axis=axis).take(range(size), axis=axis)  # noqa: E731
    return ((q.astype(np.float32) - widen(zero.astype(np.float32))) * widen(scale)).astype(scale.dtype)


def _unpacked(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., B] of 8 / bits values per byte -> int16 [..., B · 8 / bits], as MatMulNBits' weights unpack."""
    import torch

    from onnx_attr.importing.converters.microsoft import unpack_bits

    return unpack_bits(torch.from_numpy(np.ascontiguousarray(packed)), bits, packed.shape[-1] * 8 // bits).numpy()


def _block_gather(node: onnx.NodeProto, graph: onnx.GraphProto, table: np.ndarray) -> onnx.NodeProto:
    name = f"{node.name or node.output[0]}/table"
    graph.initializer.append(numpy_helper.from_array(table, name))
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "gather_axis"), 0)
    return helper.make_node("Gather", [name, node.input[1]], list(node.output), name=node.name, axis=int(axis))


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
