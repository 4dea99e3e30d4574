"""A selection by a comparison of varying values, Where(compare(u, v), A, B), as one node with a rule.

Elementwise, y = s·A + (1 − s)·B with the step s = [compare(u, v)]: a score masked where a
computed value crosses a threshold (Where(t <= 0, -1e4, scores) before a softmax), a gate
between two computed branches, a box kept where its confidence beats another's. The comparison
alone is a step no multiplier carries: where it flips between the input and the reference the
call was refused, and with a zero baseline it flips almost everywhere. When the selected values
are functions of the compared one alone, `unary_fusion.fuse_piecewise` already takes the whole
as one elementwise function; this is the case of several varying tensors.

`fuse_step_selects` folds the comparison, the ops carrying its mask to the Where (Unsqueeze,
Reshape, Transpose, Expand, Not, Cast...) and the Where into one `StepSelect` node that calls the
same converted modules in order (unary_fusion.GateChain): the forward is theirs, bit for bit. Its
rule (rules/branch.py, the elementwise `BranchSelect`) splits each element's change exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, fx

from onnx_attr.deeplift.rules.branch import STEP_SELECT
from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, GateChain, _attribute, _Slot
from onnx_attr.importing.final_activation import _FLOAT_TYPES  # ONNX's floating TensorProto types

#: comparisons whose flip is a jump of d = u - v across 0 (or away from it, for Equal)
_COMPARISONS = frozenset({"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"})
#: ops a mask may pass through on its way to the Where: they move, copy or negate its elements
_CARRIERS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand", "Flatten", "Identity", "Cast",
                       "Not"})


def fuse_step_selects(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each Where whose condition is a comparison of a varying float tensor (through
    carriers only) by one `StepSelect` node, in place; returns the fused Where nodes' ONNX names.
    A comparison or carrier with other users stays for them (the fused node computes its own copy);
    one left with none is removed. The caller recompiles."""
    fused = []
    for where in list(module.graph.nodes):
        if _op(where) != "Where" or where.kwargs or len(where.args) != 3 \
                or where.meta.get("onnx_domain", "") not in ("", "ai.onnx"):
            continue
        carriers, current = [], where.args[0]
        while _op(current) in _CARRIERS and not current.kwargs and current.args \
                and not any(a in variable for a in current.all_input_nodes):
            carriers.append(current)
            current = current.args[0]
        compare = current
        if _op(compare) not in _COMPARISONS or compare.kwargs or len(compare.args) != 2 \
                or compare.meta.get("onnx_domain", "") not in ("", "ai.onnx") \
                or not any(isinstance(a, fx.Node) and a in variable for a in compare.args) \
                or not any(_floating(module, a, variable) for a in where.args[1:]):
            continue  # a selection of integers (indices) is no value a multiplier reaches
        chain = [compare, *reversed(carriers), where]
        members = set(chain)
        inputs = list(dict.fromkeys(a for n in chain for a in n.all_input_nodes
                                    if a not in members and a.op != "get_attr"))
        name = f"step_select_{where.name}"
        module.add_submodule(name, StepSelect(module, chain, tuple(inputs)))
        where.meta.update(onnx_op=STEP_SELECT, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                          onnx_node=f"{where.meta['onnx_node']} (Where by {compare.meta['onnx_op']} "
                                    f"{compare.meta['onnx_node']})")
        where.target, where.args = name, tuple(inputs)
        for node in reversed(chain[:-1]):
            if not node.users:
                module.graph.erase_node(node)
        variable.add(where)
        fused.append(where.meta["onnx_node"])
    return fused


class StepSelect(GateChain):
    """Where(carriers(compare(u, v)), A, B) called as its converted modules; `trace` gives every
    value on the way, which the rule reads at the input and at the reference."""

    def __init__(self, root: fx.GraphModule, nodes: list[fx.Node], inputs: tuple[fx.Node, ...]):
        super().__init__(root, nodes, inputs)
        self.n_inputs = len(inputs)
        self.carrier_ops = [n.meta["onnx_op"] for n in nodes[1:-1]]
        compare = nodes[0]  # (op, domain, opset, node), as a refusal names it
        self.comparison = (compare.meta["onnx_op"], "", compare.meta.get("onnx_opset", 0), compare.meta["onnx_node"])

    def operands_of(self, step: int, values: Sequence[Any]) -> list:
        """What op `step` (0: the comparison, -1: the Where) was called with in this trace."""
        step %= len(self.ops)
        return self.operands(values, self.arguments[step], self._constant_args[step])

    def inputs_of(self, step: int) -> list:
        """Per operand of op `step`, the fused node's input index it reads (None: a constant or a value
        of the chain)."""
        step %= len(self.ops)
        return [int(a) if isinstance(a, _Slot) and a < self.n_inputs and i not in self._constant_args[step] else None
                for i, a in enumerate(self.arguments[step])]

    def carry(self, mask: Tensor, values: Sequence[Any]) -> Tensor:
        """The carriers applied to a float tensor in the comparison's place (Not as a negation, a Cast
        as nothing): linear in it, so autograd through it maps the mask's multipliers back onto
        the comparison's elements."""
        current = mask
        for k, op_type in enumerate(self.carrier_ops, start=1):
            if op_type == "Not":
                current = -current
            elif op_type != "Cast":
                operands = self.operands_of(k, values)
                current = self.ops[k](current, *operands[1:])
        return current


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


def _op(node) -> str:
    return node.meta.get("onnx_op", "") if isinstance(node, fx.Node) and node.op == "call_module" else ""

