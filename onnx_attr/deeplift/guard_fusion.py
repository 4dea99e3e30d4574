"""A quotient guarded against a zero divisor (TensorFlow's divide_no_nan) as one op with its own rule.

tf2onnx writes `tf.math.divide_no_nan(n, d)` as Where(Equal(d, 0), 0, Div(n, d)): n / d, and 0
where d is 0. Models normalise with it: basic-pitch scales its log-CQT as (s - min s) / max(s - min s),
which is 0 / 0 at any constant input, the zero baseline included. Left apart, the Div's value at the
reference is NaN, and Where (linear, its condition read at x) passes the gradient into it: NaN
attributions where the model's own output is finite. As one op it is n · r(d) with r(d) = 1/d and
r(0) = 0, as the guard defines it, and DeepLift takes the rescale rule through r (the secant from a
zero divisor is 1/d², finite) and the product rule with n (rules/product.py, `GuardedQuotient`):
finite and complete. `fuse_guarded_divisions` folds the Equal, the Div and the Where into one node
that calls the same converted modules in order (unary_fusion.GateChain): the forward is theirs,
bit for bit. The negated form, Where(Not(Equal(d, 0)), Div(n, d), 0), is the same op.
"""

from __future__ import annotations

import torch
from torch import fx

from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, GateChain, _attribute

GUARDED_DIV = "GuardedDiv"


def fuse_guarded_divisions(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each zero-guarded Div whose divisor varies by one `GuardedDiv` node of (n, d), in
    place; returns the fused Where nodes' ONNX names. The Equal (and Not) and the Div must be used by
    the Where alone and the Where's other branch must be a constant zero. The caller recompiles."""
    fused = []
    for where in list(module.graph.nodes):
        if _op(where) != "Where" or where.kwargs or len(where.args) != 3:
            continue
        condition, then, otherwise = where.args
        test, negated = (condition.args[0], True) if _op(condition) == "Not" and _single_use(condition) \
            else (condition, False)
        div, zero = (then, otherwise) if negated else (otherwise, then)
        if not (_op(div) == "Div" and _single_use(div) and not div.kwargs and len(div.args) == 2
                and _op(test) == "Equal" and _single_use(test) and not test.kwargs and _zero(module, zero)):
            continue
        n, d = div.args
        if not (isinstance(d, fx.Node) and d in variable and d in test.args
                and all(a is d or _zero(module, a) for a in test.args)):
            continue
        chain = [test, *([condition] if negated else []), div, where]
        name = f"guarded_div_{where.name}"
        module.add_submodule(name, GateChain(module, chain, (n, d)))
        where.meta.update(onnx_op=GUARDED_DIV, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                          onnx_node=f"{where.meta['onnx_node']} (Div guarded by Equal(d, 0))")
        where.target, where.args = name, (n, d)
        for node in reversed(chain[:-1]):
            module.graph.erase_node(node)
        variable.add(where)
        fused.append(where.meta["onnx_node"])
    return fused


def _op(node) -> str:
    return node.meta.get("onnx_op", "") if isinstance(node, fx.Node) and node.op == "call_module" else ""


def _single_use(node: fx.Node) -> bool:
    return len(node.users) == 1


def _zero(module: fx.GraphModule, arg) -> bool:
    """A constant (an initializer or a literal) that is zero everywhere."""
    if isinstance(arg, (int, float)):
        return arg == 0
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = _attribute(module, arg.target)
        return isinstance(value, torch.Tensor) and value.numel() > 0 and not bool(value.any())
    return False
