"""A selection by comparisons of varying values, Where(condition, A, B), as one node with a rule.

Elementwise, y = s·A + (1 − s)·B with the step s = [compare(u, v)]: a score masked where a
computed value crosses a threshold (Where(t <= 0, -1e4, scores) before a softmax), a gate
between two computed branches, a box kept where `(w > 0) & (h > 0)`; a Cast of the condition to a
float is Where(c, 1, 0). A comparison alone is a step no multiplier carries: where it flipped
between the input and the reference the call was refused, and with a zero baseline it flips
almost everywhere. When the selected values are functions of the compared one alone,
`unary_fusion.fuse_piecewise` already takes the whole as one elementwise function, and
`unary_fusion.fuse_steps` a threshold of one input cast to a float; this is every other case.

`fuse_step_selects` folds the condition's tree (the comparisons, the logic joining them, the ops
carrying their masks: Unsqueeze, Reshape, Transpose, Expand, Not, Cast...) and the Where or Cast into
one `StepSelect` node that calls the same converted modules in order (unary_fusion.GateChain): the
forward is theirs, bit for bit. Its rule (rules/branch.py) gives each comparison and each branch
its exact Shapley value per element.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, fx

from onnx_attr.deeplift.guard_fusion import _op
from onnx_attr.deeplift.rules.branch import STEP_SELECT
from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, GateChain, _attribute, _Slot
from onnx_attr.importing.final_activation import _FLOAT_TYPES  # ONNX's floating TensorProto types

#: comparisons whose flip is a jump of d = u - v across 0 (or away from it, for Equal)
_COMPARISONS = frozenset({"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"})
#: ops a mask may pass through on its way to the Where: they move, copy or negate its elements
_CARRIERS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand", "Flatten", "Identity", "Cast",
                       "Not"})
#: logic joining the masks of several comparisons (elementwise, broadcasting)
_LOGIC = frozenset({"And", "Or", "Xor"})
#: comparisons one condition may join: the rule's Shapley game has 2^(k+2) coalitions
MAX_COMPARISONS = 4


def fuse_step_selects(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each Where of floats, then each Cast of a bool to a float (Where(c, 1, 0)), whose
    condition is a tree of carriers and logic over comparisons of varying float tensors (at most
    MAX_COMPARISONS) by one `StepSelect` node, in place; returns the fused nodes' ONNX names. The
    tree's other leaves are constants of the call (a held mask). A node of it with users outside
    stays for them (the fused node computes its own copy); one left with none is removed. The
    caller recompiles."""
    fused = []
    for kind in ("Where", "Cast"):  # the Wheres first: a Cast to a float inside a Where's tree joins that tree
        for last in list(module.graph.nodes):
            if _op(last) != kind or last.kwargs or last.meta.get("onnx_domain", "") not in ("", "ai.onnx"):
                continue
            if kind == "Where" and (len(last.args) != 3 or not any(_floating(module, a, variable) for a in last.args[1:])):
                continue  # integers selected (indices): no value a multiplier reaches
            if kind == "Cast" and (len(last.args) != 1 or last.meta.get("onnx_attrs", {}).get("to") not in _FLOAT_TYPES):
                continue
            tree = _condition_tree(module, last.args[0], variable)
            if tree is not None:
                fused.append(_fold_select(module, tree, last))
                variable.add(last)
    return fused


def _fold_select(module: fx.GraphModule, tree: list[fx.Node], last: fx.Node) -> str:
    """Put a `StepSelect` of the tree's nodes and `last` in `last`'s place; returns its new ONNX name."""
    members = set(tree)
    chain = [n for n in module.graph.nodes if n in members] + [last]
    inputs = list(dict.fromkeys(a for n in chain for a in n.all_input_nodes
                                if a not in members and a is not last and a.op != "get_attr"))
    name = f"step_select_{last.name}"
    module.add_submodule(name, StepSelect(module, chain, tuple(inputs)))
    compares = ", ".join(f"{n.meta['onnx_op']} {n.meta['onnx_node']}" for n in chain if _op(n) in _COMPARISONS)
    last.meta.update(onnx_op=STEP_SELECT, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                     onnx_node=f"{last.meta['onnx_node']} ({last.meta['onnx_op']} by {compares})")
    last.target, last.args = name, tuple(inputs)
    for node in reversed(chain[:-1]):
        if not node.users:
            module.graph.erase_node(node)
    return last.meta["onnx_node"]


def _condition_tree(module: fx.GraphModule, condition, variable: set[fx.Node]) -> list[fx.Node] | None:
    """The nodes computing a Where's condition from comparisons of varying floats through carriers and
    logic, each read once inside the tree (the rule routes each element's share back along one path);
    None where anything else decides it, or nothing varying does."""
    tree, seen, stack, compares = [], set(), [condition], 0
    while stack:
        node = stack.pop()
        op = _op(node)
        if node in seen or node.kwargs or not node.args or op not in _COMPARISONS | _CARRIERS | _LOGIC:
            return None
        tree.append(node)
        seen.add(node)
        if op in _COMPARISONS:
            compared = [a for a in node.args if isinstance(a, fx.Node) and a in variable]
            if len(node.args) != 2 or node.meta.get("onnx_domain", "") not in ("", "ai.onnx") or not compared \
                    or not all(_floating(module, a, variable) for a in compared):
                return None
            compares += 1
            continue
        if any(a in variable for a in node.all_input_nodes):
            return None
        masks = node.args[:1] if op in _CARRIERS else node.args
        for mask in masks:  # any other operand (a held mask) is a constant of the call
            if _op(mask) in _COMPARISONS | _CARRIERS | _LOGIC:
                stack.append(mask)
    used = {n: sum(u in seen for u in n.users) for n in tree}
    if not 0 < compares <= MAX_COMPARISONS or any(used[n] != 1 for n in tree if n is not condition):
        return None
    return tree


class StepSelect(GateChain):
    """Where(condition, A, B), the condition a tree of carriers and logic over comparisons, called as
    its converted modules; `trace` gives every value on the way, which the rule reads at the input
    and at the reference, and `condition` the condition with each comparison's mask chosen."""

    def __init__(self, root: fx.GraphModule, nodes: list[fx.Node], inputs: tuple[fx.Node, ...]):
        super().__init__(root, nodes, inputs)
        self.n_inputs = len(inputs)
        self.op_types = [n.meta["onnx_op"] for n in nodes]
        self.compares = [i for i, op in enumerate(self.op_types) if op in _COMPARISONS]
        #: per comparison, (op, domain, opset, node), as a refusal names it
        self.comparisons = [(nodes[i].meta["onnx_op"], "", nodes[i].meta.get("onnx_opset", 0),
                             nodes[i].meta["onnx_node"]) for i in self.compares]

    def selection(self, values: Sequence[Any]) -> tuple[Tensor, Any, Any, Optional[int], Optional[int]]:
        """(the condition, A, B, the fused node's inputs A and B are, or None): a Cast of the condition to
        a float is Where(c, 1, 0)."""
        if self.op_types[-1] == "Where":
            return (*self.operands_of(-1, values), *self.inputs_of(-1)[1:])
        condition = self.operands_of(-1, values)[0]
        return condition, 1.0, 0.0, None, None

    def operands_of(self, step: int, values: Sequence[Any]) -> list:
        """What op `step` (-1: the Where) was called with in this trace."""
        step %= len(self.ops)
        return self.operands(values, self.arguments[step], self._constant_args[step])

    def inputs_of(self, step: int) -> list:
        """Per operand of op `step`, the fused node's input index it reads (None: a constant or a value
        of the chain)."""
        step %= len(self.ops)
        return [int(a) if isinstance(a, _Slot) and a < self.n_inputs and i not in self._constant_args[step] else None
                for i, a in enumerate(self.arguments[step])]

    def condition(self, values: Sequence[Any], masks: dict[int, Tensor], linear: bool = False) -> Tensor:
        """The Where's condition with comparison `step`'s mask replaced by masks[step] (the others as
        traced). `linear`: float masks through a linear stand-in of the tree (carriers on floats, Not
        and Cast as nothing, logic as a sum): autograd through it maps each element of the condition
        back onto the comparison elements it was computed from."""
        values = list(values)
        for step, mask in masks.items():
            values[self.n_inputs + step] = mask
        for step, (op, op_type) in enumerate(zip(self.ops[:-1], self.op_types[:-1])):
            if op_type in _COMPARISONS:
                continue
            operands = self.operands_of(step, values)
            floats = [o for o in operands if isinstance(o, Tensor) and o.is_floating_point()] if linear else []
            if floats and op_type in ("Not", "Cast"):
                out = floats[0]
            elif floats and op_type in _LOGIC:  # as wide as the op's output, a held mask's width included
                shape = torch.broadcast_shapes(*(o.shape for o in operands if isinstance(o, Tensor)))
                out = sum(floats[1:], floats[0]).expand(shape)
            else:  # the real op: not linear, or a part of the tree no comparison reaches (a held mask)
                out = op(*operands)
            values[self.n_inputs + step] = out
        return self.operands_of(-1, values)[0]  # the Where's condition, or what the Cast casts


def _floating(module: fx.GraphModule, arg, variable: set[fx.Node]) -> bool:
    """A value the Where selects that is a float: a varying one not cast to another type, a float
    constant or literal."""
    if isinstance(arg, float):
        return True
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = _attribute(module, arg.target)
        return isinstance(value, Tensor) and value.is_floating_point()
    return isinstance(arg, fx.Node) and arg in variable and not (
        _op(arg) == "Cast" and arg.meta.get("onnx_attrs", {}).get("to") not in _FLOAT_TYPES)
