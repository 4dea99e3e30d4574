"""onnxruntime's offline optimizer folds an activation into the node before it: com.microsoft
FusedConv (Conv, + Z, then Relu / Sigmoid / Tanh / LeakyRelu / Clip / HardSigmoid) and FusedGemm
(Gemm, then the same). Written back as the ONNX ops they fuse, before anything reads the graph, the
file means what its unoptimized twin means to everything downstream: a final Sigmoid is found and
stripped (a FusedConv(Sigmoid) heat-map head's logits are explained, as they are without the
optimizer), `--smooth` reaches every Relu, the layer methods and `inspect` name each activation's
tensor. The split computes the same values (the contrib ops' definition), so `verify` runs
onnxruntime on it and the converters keep the fused forms only for nodes without an activation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnx_attr.importing.legacy import _graphs, _rewrite_graphs, _Scope, default_opset

MICROSOFT = "com.microsoft"
FUSED = ("FusedConv", "FusedGemm")
_ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid")


def split_fused_activations(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """A copy of `model` with each FusedConv / FusedGemm that has an activation written as its ops, or
    `model` itself when it has none (an activation this module does not know stays fused, and the
    converter names it)."""
    def chosen(node: onnx.NodeProto) -> bool:
        return node.domain == MICROSOFT and node.op_type in FUSED and _activation(node) in _ACTIVATIONS

    if not any(chosen(n) for g in _graphs(model.graph) for n in g.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = default_opset(out)
    count = {op: 0 for op in FUSED}

    def rewrite(node: onnx.NodeProto, index: int, scope: _Scope) -> list[onnx.NodeProto]:
        if not chosen(node):
            return [node]
        count[node.op_type] += 1
        return _split(node, index, scope, opset)

    _rewrite_graphs(out.graph, rewrite)
    listed = " and ".join(f"{n} {op}" for op, n in count.items() if n)
    notes.append(f"split {listed} (onnxruntime's optimizer) into the ONNX ops they fuse, each activation its own node")
    return out


def _activation(node: onnx.NodeProto) -> str:
    found = next((a for a in node.attribute if a.name == "activation"), None)
    return found.s.decode() if found is not None else ""


def _split(node: onnx.NodeProto, index: int, scope: _Scope, opset: int) -> list[onnx.NodeProto]:
    name = node.name or f"{node.op_type}#{index}"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    activation = attrs.pop("activation").decode()
    inputs = list(node.input)
    if node.op_type == "FusedConv":
        params = [float(p) for p in attrs.pop("activation_params", [])]
        y = scope.fresh(f"{node.output[0]}/conv")
        nodes = [helper.make_node("Conv", inputs[:3], [y], name=f"{name}/Conv", **attrs)]  # Conv's own attributes
        if len(inputs) > 3 and inputs[3]:  # Z, added before the activation
            total = scope.fresh(f"{node.output[0]}/sum")
            nodes.append(helper.make_node("Add", [y, inputs[3]], [total], name=f"{name}/Add"))
            y = total
    else:
        # by name, as onnxruntime copies only the attributes the activation had (a HardSigmoid with its beta alone)
        named = [attrs.pop(k, None) for k in ("activation_alpha", "activation_beta")]
        attrs.pop("activation_gamma", None)
        params = [_default(activation, i) if v is None else float(v) for i, v in enumerate(named)]
        kept = {k: v for k, v in attrs.items() if k in ("alpha", "beta", "transA", "transB")}
        y = scope.fresh(f"{node.output[0]}/gemm")
        nodes = [helper.make_node("Gemm", inputs, [y], name=f"{name}/Gemm", **kept)]
    nodes.append(_activation_node(activation, params, y, node.output[0], f"{name}/{activation}", scope, opset))
    return nodes


#: each activation's parameters where the node leaves them out (ONNX's defaults; a Clip's: no bound)
_DEFAULTS = {"LeakyRelu": (0.01,), "HardSigmoid": (0.2, 0.5), "Clip": (-np.inf, np.inf)}


def _default(op: str, index: int) -> float:
    found = _DEFAULTS.get(op, ())
    return found[index] if index < len(found) else 0.0


def _activation_node(op: str, params: list[float], x: str, y: str, name: str, scope: _Scope,
                     opset: int) -> onnx.NodeProto:
    """The activation as onnxruntime's fused kernels read its parameters (their defaults where absent)."""
    params = params + [_default(op, i) for i in range(len(params), 2)]
    if op == "LeakyRelu":
        return helper.make_node(op, [x], [y], name=name, alpha=params[0])
    if op == "HardSigmoid":
        return helper.make_node(op, [x], [y], name=name, alpha=params[0], beta=params[1])
    if op == "Clip":
        low, high = params[:2]
        if opset < 11:  # bounds as attributes before opset 11
            return helper.make_node(op, [x], [y], name=name, min=float(low), max=float(high))
        bounds = [scope.constant(f"{y}/{which}", np.array(v, np.float32)) for which, v in (("min", low), ("max", high))]
        return helper.make_node(op, [x, *bounds], [y], name=name)
    return helper.make_node(op, [x], [y], name=name)
