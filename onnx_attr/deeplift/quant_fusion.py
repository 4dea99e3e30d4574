"""Static (QDQ) quantization's fake-quant pairs as one monotone step function with the rescale rule.

onnxruntime's static quantizer writes each quantized activation as QuantizeLinear followed by
DequantizeLinear with constant scale and zero point: y = (clamp(round(x / s) + z) - z) · s, an
elementwise non-decreasing staircase of x. The integer tensor between the two has no gradient,
and no rule fits either half alone; together they are an elementwise function of x, so the secant
(y - y0) / (x - x0) is a complete DeepLift multiplier (Σ m·Δx = Σ Δy), as for any other
elementwise nonlinearity. `fuse_fake_quant` folds each pair into one node that calls the very same
converted modules in order (unary_fusion.GateChain), so the forward is theirs bit for bit.
"""

from __future__ import annotations

from torch import fx

from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, GateChain

FAKE_QUANT = "FakeQuant"


def fuse_fake_quant(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each QuantizeLinear → DequantizeLinear pair on a varying tensor (the integer tensor
    read by DequantizeLinears alone, scales and zero points constant) by one `FakeQuant` node per
    DequantizeLinear (a QuantizeLinear shared by several, as dedicated QDQ pairs are not, is
    recomputed in each: the same op on the same input, bit for bit), in place; returns the fused
    DequantizeLinear nodes' ONNX names. The caller recompiles."""
    fused = []
    for q in list(module.graph.nodes):
        if _op(q) != "QuantizeLinear" or q.kwargs or not q.args or not q.users:
            continue
        x, users = q.args[0], list(q.users)
        if not (isinstance(x, fx.Node) and x in variable) or not all(map(_constant, q.args[1:])):
            continue
        if not all(_op(dq) == "DequantizeLinear" and not dq.kwargs and dq.args[0] is q
                   and all(map(_constant, dq.args[1:])) for dq in users):
            continue
        for dq in users:
            name = f"fake_quant_{dq.name}"
            module.add_submodule(name, GateChain(module, [q, dq], x))
            dq.meta.update(onnx_op=FAKE_QUANT, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                           onnx_node=f"{dq.meta['onnx_node']} (DequantizeLinear·QuantizeLinear(x))")
            dq.target, dq.args = name, (x,)
            variable.add(dq)
            fused.append(dq.meta["onnx_node"])
        module.graph.erase_node(q)
    return fused


def _op(node) -> str:
    return node.meta.get("onnx_op", "") if isinstance(node, fx.Node) and node.op == "call_module" else ""


def _constant(arg) -> bool:
    """A scale or zero point the pair reads from the module (an initializer), or left out."""
    return arg is None or isinstance(arg, (int, float)) or isinstance(arg, fx.Node) and arg.op == "get_attr"
