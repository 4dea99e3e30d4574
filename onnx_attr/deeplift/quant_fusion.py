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

import torch
from torch import fx

from onnx_attr.deeplift.taps import _cast_dtype
from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, GateChain, _attribute

FAKE_QUANT = "FakeQuant"
#: ops that only move an integer tensor's elements: tf2onnx changes an int8 TFLite tensor's layout between
#: its QuantizeLinear and DequantizeLinear (NHWC to NCHW, a flattening Reshape)
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def fuse_fake_quant(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each QuantizeLinear → DequantizeLinear pair on a varying tensor (the integer tensor
    read by DequantizeLinears alone, scales and zero points constant) by one `FakeQuant` node per
    DequantizeLinear (a QuantizeLinear shared by several, as dedicated QDQ pairs are not, is
    recomputed in each: the same op on the same input, bit for bit), in place; returns the fused
    DequantizeLinear nodes' ONNX names. The caller recompiles."""
    hoist_dequantize(module, variable)
    fused = []
    for q in list(module.graph.nodes):
        if _op(q) != "QuantizeLinear" or q.kwargs or not q.args or not q.users:
            continue
        x, users = q.args[0], list(q.users)
        if not (isinstance(x, fx.Node) and x in variable) or not all(map(_constant, q.args[1:])):
            continue
        # the TorchScript exporter writes torch's int8 models as QuantizeLinear → Cast(to its own type) →
        # DequantizeLinear: a Cast that changes nothing is part of the pair
        casts = {u for u in users if _op(u) == "Cast" and _same_type_cast(module, q, u)}
        pairs = [(dq, u if u in casts else q) for u in users for dq in (u.users if u in casts else [u])]
        if not all(_op(dq) == "DequantizeLinear" and not dq.kwargs and dq.args[0] is via
                   and all(map(_constant, dq.args[1:])) for dq, via in pairs):
            continue
        for dq, via in pairs:
            name = f"fake_quant_{dq.name}"
            module.add_submodule(name, GateChain(module, [q, dq] if via is q else [q, via, dq], x))
            dq.meta.update(onnx_op=FAKE_QUANT, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                           onnx_node=f"{dq.meta['onnx_node']} (DequantizeLinear·QuantizeLinear(x))")
            dq.target, dq.args = name, (x,)
            variable.add(dq)
            fused.append(dq.meta["onnx_node"])
        for cast in casts:
            module.graph.erase_node(cast)
        module.graph.erase_node(q)
    return fused


def hoist_dequantize(module: fx.GraphModule, variable: set[fx.Node]) -> None:
    """Each QuantizeLinear → layout ops → DequantizeLinear chain (`LAYOUT_OPS`, each read once) as
    QuantizeLinear → DequantizeLinear → the same layout ops, in place, where both ends' scale and zero
    point are one number each: the dequantization is then the same elementwise map everywhere, so
    moving elements before or after it gives the same values, bit for bit, and the pair fuses as any
    other. (Per-axis scales would follow their axis through the moves: left as they are.)"""
    for q in list(module.graph.nodes):
        if _op(q) != "QuantizeLinear" or q.kwargs or not _scalar_scale(module, q):
            continue
        for first in list(q.users):
            chain, node = [], first
            while _op(node) in LAYOUT_OPS and not node.kwargs and node.args and node.args[0] is (
                    chain[-1] if chain else q) and all(map(_constant, node.args[1:])) and len(node.users) == 1:
                chain.append(node)
                node = next(iter(node.users))
            if not chain or _op(node) != "DequantizeLinear" or node.kwargs or node.args[0] is not chain[-1] \
                    or not _scalar_scale(module, node):
                continue
            dq, moved = node, []
            for step in chain:  # the same modules, now on the dequantized floats
                with module.graph.inserting_after(moved[-1] if moved else dq):
                    moved.append(module.graph.call_module(step.target, (moved[-1] if moved else dq, *step.args[1:])))
                moved[-1].meta = dict(step.meta)
                variable.add(moved[-1])
            dq.replace_all_uses_with(moved[-1], delete_user_cb=lambda user: user is not moved[0])
            dq.args = (q, *dq.args[1:])
            for step in reversed(chain):
                module.graph.erase_node(step)


def _scalar_scale(module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a QuantizeLinear's or DequantizeLinear's scale and zero point are constants of one element."""
    params = node.args[1:3]
    return bool(params) and all(p is None or isinstance(p, fx.Node) and p.op == "get_attr"
                                and _attribute(module, p.target).numel() == 1 for p in params)


def staircase_range(pair, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dequantized ends of a QuantizeLinear → DequantizeLinear pair's integer range, per element of
    `like` (per-axis scales): the pair at ±1e30, where it saturates (x / s overflowing to ±inf at
    worst, which its clamp takes). A staircase that knows its ends (qoperator.RoundClamp) gives them as
    scalars: two full tensors per quantizer were kept with every reference."""
    ends = getattr(pair, "ends", None)
    if ends is not None:
        return ends(like)
    with torch.no_grad():
        return pair(torch.full_like(like, -1e30)), pair(torch.full_like(like, 1e30))


def fold_constant_dequantize(module: fx.GraphModule, variable: set[fx.Node]) -> None:
    """Each DequantizeLinear of constants (a statically quantized weight or bias) as the float tensor
    it computes, in place: the weighted op before a quantizer then has a constant weight whose
    signs RevealCancel's split and the staircase rule read (reveal_fusion.py). The forward reads
    what the node computed on every call, bit for bit. The caller recompiles."""
    for node in list(module.graph.nodes):
        if _op(node) != "DequantizeLinear" or node.kwargs or node in variable \
                or not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in node.args):
            continue
        with torch.no_grad():
            value = module.get_submodule(node.target)(*(_attribute(module, a.target) for a in node.args))
        name = f"dequantized_{node.name}"
        module.register_buffer(name, value, persistent=False)
        with module.graph.inserting_before(node):
            constant = module.graph.get_attr(name)
        node.replace_all_uses_with(constant)
        module.graph.erase_node(node)


def _same_type_cast(module: fx.GraphModule, q: fx.Node, cast: fx.Node) -> bool:
    """Whether a Cast of a QuantizeLinear's output casts to the type it already has (its zero point's;
    uint8 without one)."""
    zero = q.args[2] if len(q.args) > 2 else None
    dtype = _attribute(module, zero.target).dtype if isinstance(zero, fx.Node) and zero.op == "get_attr" \
        else torch.uint8 if zero is None else None
    return dtype is not None and _cast_dtype(module.get_submodule(cast.target)) == dtype and not cast.kwargs


def _op(node) -> str:
    return node.meta.get("onnx_op", "") if isinstance(node, fx.Node) and node.op == "call_module" else ""


def _constant(arg) -> bool:
    """A scale or zero point the pair reads from the module (an initializer), or left out."""
    return arg is None or isinstance(arg, (int, float)) or isinstance(arg, fx.Node) and arg.op == "get_attr"
