"""A statically quantized graph's own rounding sensitivity, measured where the rounding happens.

`verify` judges a QDQ graph's difference from onnxruntime by how far onnxruntime's own answer moves
under a few ulps of jitter (verify._quantized_spread). Jittering the inputs alone misses graphs
that quantize their input first (pipecat's smart-turn v3.0: the input's QuantizeLinear absorbs
the jitter, spread 0), while ours and onnxruntime still differ inside: a Conv summed in another
order lands an element on the other side of a rounding boundary of the next QuantizeLinear, one
step, which the layers after it carry to the logits. `jittered_quantizers` gives a copy of the
graph whose every activation QuantizeLinear reads x·(1 + k·eps·sin(ω·x)): each element moved by
up to k ulps, pseudo-randomly per element without knowing the tensor's shape, so onnxruntime's
spread over a few copies is the one-step flips a few ulps cause, wherever they happen.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: relative size of the jitter before each quantizer (ulps), and the per-run frequencies and signs
JITTER_ULPS = 4
_RUNS = ((12345.678, 1.0), (2345.6789, -1.0), (34567.891, 1.0), (456.78912, -1.0))
#: ops that quantize their input 0 at run time over its own range (onnxruntime's dynamic quantizer)
DYNAMIC_QUANTIZERS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul"})
_FLOATS = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
           onnx.TensorProto.DOUBLE: np.float64}


def jitter_runs() -> int:
    return len(_RUNS)


def jittered_quantizers(model: onnx.ModelProto, run: int) -> Optional[onnx.ModelProto]:
    """A copy of `model` with run `run`'s jitter before every QuantizeLinear of a computed tensor
    whose scale's float type is known, and every DynamicQuantizeLinear; None when there is none."""
    constants = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            constants[node.output[0]] = node.attribute[0].t.data_type
    frequency, sign = _RUNS[run]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes, added = [], 0
    for index, node in enumerate(copy.graph.node):
        # a dynamic quantizer reads float32 and takes its range from it: a few ulps there move a step too
        # (onnxruntime's DynamicQuantizeLSTM and DynamicQuantizeMatMul quantize their input X inside)
        dynamic = node.op_type in DYNAMIC_QUANTIZERS
        dtype = np.float32 if dynamic else _FLOATS.get(constants.get(node.input[1] if len(node.input) > 1 else "", -1))
        if (node.op_type == "QuantizeLinear" or dynamic) and node.input[0] not in constants and dtype is not None:
            x, p = node.input[0], f"onnx_attr_jitter{run}_{index}"
            eps = float(np.finfo(dtype).eps)
            copy.graph.initializer.extend([
                numpy_helper.from_array(np.array(frequency, dtype), f"{p}_w"),
                numpy_helper.from_array(np.array(sign * JITTER_ULPS * eps, dtype), f"{p}_k"),
                numpy_helper.from_array(np.array(1.0, dtype), f"{p}_one")])
            nodes += [helper.make_node("Mul", [x, f"{p}_w"], [f"{p}_a"], name=f"{p}_mul_w"),
                      helper.make_node("Sin", [f"{p}_a"], [f"{p}_s"], name=f"{p}_sin"),
                      helper.make_node("Mul", [f"{p}_s", f"{p}_k"], [f"{p}_t"], name=f"{p}_mul_k"),
                      helper.make_node("Add", [f"{p}_t", f"{p}_one"], [f"{p}_j"], name=f"{p}_add"),
                      helper.make_node("Mul", [x, f"{p}_j"], [f"{p}_x"], name=f"{p}_mul_x")]
            node.input[0] = f"{p}_x"
            added += 1
        kept = onnx.NodeProto()
        kept.CopyFrom(node)  # detached: the graph's list is rebuilt below
        nodes.append(kept)
    if not added:
        return None
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy
