"""The reference's int8 weights re-expressed in uint8 where onnxruntime's u8×s8 kernels saturate.

On x86 CPUs with AVX2 but without VNNI, onnxruntime multiplies uint8 activations by int8 weights
with `vpmaddubsw`, which adds each pair of products in int16 and saturates there: 255·127 twice is
32767, not 64770 (onnxruntime documents it: quantize with `reduce_range`, or use uint8 weights).
ONNX defines the exact integer sum, which is what we compute, so on such a CPU onnxruntime's answer
is not the model's and `verify` would fail a correct import. Its uint8×uint8 kernels are exact on
every CPU (and int8 activations take an exact path), so the reference runs each int8 weight of a
uint8-fed integer kernel as the same integers in uint8: w + 128 with zero point + 128, the
differences w − zero point unchanged; a QDQ graph's int8 weights too (its DequantizeLinear gives the
same floats), which the optimizer would fuse into such a kernel. Only where a probe shows this CPU
saturates.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

class Product(NamedTuple):
    """Where an integer product's inputs sit among its op's inputs: the weight, its scale (None: the
    op has none), its zero point, and the activation and its zero point (None: the op quantizes its
    float input to uint8 itself)."""

    weight: int
    scale: Optional[int]
    zero: int
    activation: Optional[int] = None
    activation_zero: Optional[int] = None


KERNELS: dict[tuple[str, str], Product] = {
    ("", "ConvInteger"): Product(1, None, 3, 0, 2),
    ("", "MatMulInteger"): Product(1, None, 3, 0, 2),
    ("", "QLinearConv"): Product(3, 4, 5, 0, 2),
    ("", "QLinearMatMul"): Product(3, 4, 5, 0, 2),
    ("com.microsoft", "QGemm"): Product(3, 4, 5, 0, 2),
    ("com.microsoft", "MatMulIntegerToFloat"): Product(1, 3, 5, 0, 4),
    ("com.microsoft", "DynamicQuantizeMatMul"): Product(1, 2, 3),
    ("com.microsoft", "QAttention"): Product(1, 4, 7, 0, 6),
    # a QDQ weight: onnxruntime's optimizer fuses it with its activation's pair into one of the kernels above
    ("", "DequantizeLinear"): Product(0, 1, 2),
    ("com.microsoft", "DequantizeLinear"): Product(0, 1, 2),
    # (not DynamicQuantizeLSTM: given uint8 weights with a zero point, onnxruntime's answer changes)
}


@functools.cache
def saturates() -> bool:
    """Whether onnxruntime's uint8×int8 product saturates on this CPU: 255·127 + 255·127 in one
    MatMulInteger, exactly 64770 where it does not."""
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [helper.make_tensor("b", TensorProto.INT8, [2, 1], [127, 127])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(session.run(None, {"a": np.full((1, 2), 255, np.uint8)})[0].item()) != 2 * 255 * 127
    except Exception:  # noqa: BLE001  (no onnxruntime kernel: nothing to work around)
        return False


def unsaturated(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """`model` with the int8 weights of its uint8-fed integer kernels in uint8 (a copy), and how many
    kernels changed; `model` itself and 0 where none needs it or this CPU does not saturate."""
    graph = model.graph
    found = [(i, spot) for i, n in enumerate(graph.node)
             if (spot := KERNELS.get(("" if n.domain in ("", "ai.onnx") else n.domain, n.op_type)))]
    if not found or not saturates():
        return model, 0
    constants = {t.name: t for t in graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({name: t.data_type for name, t in constants.items()})
    for n in graph.node:
        if n.op_type == "DynamicQuantizeLinear" and n.domain in ("", "ai.onnx"):
            types[n.output[0]] = TensorProto.UINT8
    changes = []
    for index, spot in found:
        node = graph.node[index]
        w, z, a, az = (node.input[k] if k is not None and k < len(node.input) else ""
                       for k in (spot.weight, spot.zero, spot.activation, spot.activation_zero))
        # the activation's type, or its zero point's (an integer op's output has no inferred type)
        fed = TensorProto.UINT8 if spot.activation is None else types.get(a) or types.get(az)
        if fed == TensorProto.UINT8 and w in constants and constants[w].data_type == TensorProto.INT8 and (
                not z or (z in constants and constants[z].data_type == TensorProto.INT8)):
            changes.append((index, spot))
    if not changes:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph, made = out.graph, {}
    for index, spot in changes:
        node = graph.node[index]
        while len(node.input) <= spot.zero:
            node.input.append("")
        scale = node.input[spot.scale] if spot.scale is not None else ""
        for position in (spot.weight, spot.zero):
            name = node.input[position]
            key = name or f"zero point like {scale}"  # a missing one is 0, shaped as the scale (per axis: 1-D)
            if key not in made:
                value = numpy_helper.to_array(constants[name]) if name else np.zeros(
                    constants[scale].dims if scale in constants else (), np.int8)
                made[key] = f"{name or (scale or 'onnx_attr') + '_zero_point'}__as_uint8"
                graph.initializer.append(numpy_helper.from_array((value.astype(np.int16) + 128).astype(np.uint8),
                                                                 made[key]))
            node.input[position] = made[key]
    return out, len(changes)
