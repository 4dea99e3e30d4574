"""RevealCancel's fusion: a nonlinearity and the weighted op before it become one node.

RevealCancel splits a nonlinearity's input change into the positive and negative contributions of
the weighted op that feeds it; that needs the weights, so `fuse_weighted_chain` folds
`weighted op -> (bias, reshapes, positive scales) -> nonlinearity` into one `LinearThenUnary`.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.rules.reveal_cancel import LinearThenUnary, RevealCancel
from onnx_attr.deeplift.rules.staircase import StaircaseSplit


REVEAL_CANCEL = RevealCancel()
STAIRCASE_SPLIT = StaircaseSplit()


#: Ops whose constant operand is a weight whose signs decide a contribution's sign (RevealCancel).
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Mul"})


#: Ops that may sit between the weighted op and the nonlinearity without flipping a term's sign: a
#: constant bias, reshapes, identities, positive-linear ops (average pooling, sums and means,
#: padding, slicing: the reference implementation carries the positive and negative terms through
#: these) and, checked per node, a positive scale (BatchNormalization, Mul or Div by a constant).
CHAIN_TAIL = frozenset({"Add", "Sub", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                        "Cast", "BatchNormalization", "Mul", "Div", "AveragePool", "GlobalAveragePool",
                        "ReduceMean", "ReduceSum", "Pad", "Slice", "Resize", "Upsample"})


def fuse_weighted_chain(module: fx.GraphModule, node: fx.Node, flags: list[bool], variable: set[fx.Node],
                         name: str, weightless: bool = False) -> tuple[nn.Module, list[bool]] | None:
    """Fold `weighted op -> (bias add, reshapes) -> node` into one LinearThenUnary call, in place.

    Returns the fused module and which of its inputs vary, or None when the node's input does not
    come (through single-use nodes only) from a weighted op with a constant weight. `weightless`:
    a chain of sign-keeping ops alone (an upsampling Resize before a quantizer, a residual Add of two
    varying tensors) will do too, its LinearThenUnary without a weight.
    """
    args = list(node.args)
    if node.kwargs or len(flags) != len(args) or not flags or not flags[0] or any(flags[1:]) \
            or any(a is None for a in args):
        return None
    chain, current = [], args[0]
    while isinstance(current, fx.Node) and current.op == "call_module" and len(current.users) == 1 \
            and current.meta.get("onnx_op") in CHAIN_TAIL and not variable.intersection(_kwarg_nodes(current)):
        varying = [a for a in current.args if isinstance(a, fx.Node) and a in variable]
        if weightless and len(varying) > 1 and current.meta["onnx_op"] == "Add":
            chain.append(current)  # a residual Add: a head of two sources, each with coefficient 1
            break
        if len(varying) != 1 or (current.meta["onnx_op"] not in ("Add", "Mul") and current.args[0] is not varying[0]):
            return None  # a residual Add mixes two sources; c - v flips every sign; data comes first
        if not _keeps_signs(module, current):
            break  # a scale that may be negative: the weighted op, if any, is this one
        chain.append(current)
        current = varying[0]
    weight = None
    if isinstance(current, fx.Node) and current.op == "call_module" and len(current.users) == 1 \
            and current.meta.get("onnx_op") in WEIGHTED and not current.kwargs:
        weight = _weight_of(module, current, variable)
    if weight is not None:
        head = current
    elif weightless and chain:
        head = chain.pop()
    else:
        return None
    nodes = [head, *reversed(chain)]
    inside = set(nodes)
    graph, mapping, external = fx.Graph(), {}, []
    for n in nodes:
        for a in n.all_input_nodes:  # a Resize's scales come as a keyword
            if a not in inside and a not in mapping:
                if a.op == "get_attr":
                    mapping[a] = graph.get_attr(a.target)
                else:
                    mapping[a] = graph.placeholder(f"in_{len(external)}")
                    external.append(a)
        mapping[n] = graph.node_copy(n, lambda a: mapping[a])
    graph.output(mapping[nodes[-1]])
    linear = fx.GraphModule(module, graph)
    fused = LinearThenUnary(linear, module.get_submodule(node.target), len(external), weight)
    node.args = (*external, *args[1:])
    for n in reversed(nodes):
        if not n.users:
            module.graph.erase_node(n)
    return fused, [a in variable for a in external] + [False] * (len(args) - 1)


def _kwarg_nodes(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.kwargs.values() if isinstance(a, fx.Node)]


def _keeps_signs(module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a chain op scales contributions by positive factors only (or not at all)."""
    op = node.meta["onnx_op"]
    if op == "BatchNormalization":
        bn = module.get_submodule(node.target)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            return False
        scale = torch.rsqrt(bn.running_var + bn.eps)
        return bool(((scale * bn.weight) > 0).all()) if bn.weight is not None else True
    if op in ("Mul", "Div"):
        constant = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        return len(constant) == 1 and bool((module.get_buffer(constant[0].target) > 0).all())
    if op in ("Resize", "Upsample"):  # nearest and linear weights are ≥ 0, cubic's are not
        return (node.meta.get("onnx_attrs") or {}).get("mode", "nearest") in ("nearest", "linear", "bilinear")
    return True


def _weight_of(module: fx.GraphModule, head: fx.Node, variable: set[fx.Node]) -> str | None:
    """The name of the head's weight: a module's own `weight`, or its one constant operand."""
    varying = [a for a in head.args if isinstance(a, fx.Node) and a in variable]
    if len(varying) != 1:
        return None
    own = module.get_submodule(head.target)
    if isinstance(getattr(own, "weight", None), Tensor) and len(head.args) == 1:
        return f"{head.target}.weight"
    operands = head.args[:2]
    constant = [a for a in operands if isinstance(a, fx.Node) and a.op == "get_attr"]
    if len(operands) == 2 and len(constant) == 1 and varying[0] in operands:
        return constant[0].target
    return None
