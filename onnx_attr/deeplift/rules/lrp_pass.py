"""The LRP rewrite: the DeepLift rewrite's pass with LRP's choice of rule per node.

Each node whose inputs vary with the attributed tensors is classified as DeepLift's pass does
(`opkinds`), then: weighted ops (Conv, ConvTranspose, Gemm, MatMul, Einsum) get the composite's
rule; the other linear ops that sum (pooling, Add, BatchNormalization, reductions, constant
scales) the epsilon rule; elementwise activations pass relevance through; routing ops (reshapes,
slices, concatenation) and max pooling (winner-take-all) keep their plain gradient, which routes
relevance unchanged. Anything else has no LRP rule and is refused by name. The wrapped node is
the DeepLift rewrite's: the same forward, bit for bit, and the rule as its backward while LRP runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor, fx, nn

from onnx_attr.errors import UnsupportedOpError
from onnx_attr.deeplift.layers import insert_after, tensor_node
from onnx_attr.deeplift.ops import BoundOp, DeepLiftCall, signature_names
from onnx_attr.deeplift.rewrite import inline_expansions, variable_nodes, varying_nodes
from onnx_attr.importing.specs import TensorSpec
from onnx_attr.deeplift.rules.base import NodeInfo
from onnx_attr.deeplift.rules.lrp import ACTIVATIONS, MAX_POOLS, ROUTING, WEIGHTED_KINDS, Composite, LRPRule, Pass

PASS = Pass()


class LRPState:
    """Shared by the LRP ops and taps of one rewritten module: whether LRP runs, and the tapped leaves."""

    def __init__(self) -> None:
        self.active = False
        self.leaves: dict[int, Tensor] = {}


class LRPOp(nn.Module):
    """A converted op: its plain forward always; its LRP rule as the backward while LRP runs."""

    def __init__(self, original: nn.Module, rule: LRPRule, info: NodeInfo, state: LRPState):
        super().__init__()
        self.original, self.rule, self.info, self._state = original, rule, info, state
        self.bound = BoundOp(original, signature_names(original))

    def forward(self, *args, **kwargs):
        if not self._state.active:
            return self.original(*args, **kwargs)
        return DeepLiftCall.apply(self, [], None, {}, *self.bound.full(args, kwargs))


class RelevanceTap(nn.Module):
    """Where a layer's relevance is read: while LRP runs, its value becomes a leaf whose gradient
    is the relevance arriving there (LayerLRP)."""

    def __init__(self, state: LRPState, tensor: str):
        super().__init__()
        self._state, self.tensor = state, tensor

    def forward(self, x):
        if self._state.active:
            x = x.detach().requires_grad_(True)
            self._state.leaves[id(self)] = x
        return x


@dataclass
class LRPRewrite:
    module: fx.GraphModule
    state: LRPState
    rules: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, rule)
    taps: list[RelevanceTap] = field(default_factory=list)


def rewrite_for_lrp(module: fx.GraphModule, inputs: Sequence[TensorSpec], composite: Composite, *,
                    layers: Sequence[str] = (), layer_input: bool = False) -> LRPRewrite:
    """A copy of `module` (sharing weights) whose backward propagates relevance by `composite`.

    `layers` names ONNX tensors whose relevance is wanted (LayerLRP): taps on them (or, with
    `layer_input`, on the edges into the node computing each), and only what lies between the taps
    and the outputs is rewritten.
    """
    out = fx.GraphModule(module, copy.deepcopy(module.graph))
    inline_expansions(out)
    state = LRPState()
    result = LRPRewrite(out, state)
    if layer_input:
        result.taps.extend(_tap_inputs(out, layers, state, variable_nodes(out, inputs)))
    elif layers:
        result.taps.extend(insert_after(out, layers, lambda name: RelevanceTap(state, name), "relevance_tap"))
    tapped = {n for n in out.graph.nodes if n.op == "call_module" and isinstance(out.get_submodule(n.target),
                                                                                   RelevanceTap)}
    variable = variable_nodes(out, () if layers else inputs, tapped)
    unsupported: list[tuple[str, str, int, str, str]] = []
    for index, node, kind, info in varying_nodes(out, variable):
        op, domain = info.op_type, node.meta.get("onnx_domain", "")
        rule, reason = _rule(op, domain, kind, info, composite, _fed_by_input(node, variable))
        if rule is not None:
            try:
                rule.check(info)
            except NotImplementedError as err:
                rule, reason = None, str(err)
        if reason:
            unsupported.append((op, domain, info.opset, info.name, reason))
        if rule is None:
            if not reason and op in MAX_POOLS and domain in ("", "ai.onnx"):
                result.rules.append((info.name, op, "winner-take-all"))
            continue
        name = f"lrp_{index}"
        out.add_submodule(name, LRPOp(out.get_submodule(node.target), rule, info, state))
        node.target = name
        result.rules.append((info.name, op, _describe(rule)))
    if unsupported:
        raise UnsupportedOpError(unsupported, action="LRP has no rule for", hint=(
            "LRP propagates relevance through linear layers (Conv, Gemm, MatMul, pooling, Add, "
            "BatchNormalization...), elementwise activations and max pooling; use DeepLift or "
            "IntegratedGradients for this model, or LayerLRP on a tensor after these nodes"))
    out.graph.lint()
    out.recompile()
    return result


def _rule(op: str, domain: str, kind: str, info: NodeInfo, composite: Composite, first: bool
          ) -> tuple[LRPRule | None, str]:
    """The node's rule, or None with no reason (its plain gradient routes relevance), or a refusal."""
    standard = domain in ("", "ai.onnx")
    if kind == "structural" or (kind == "linear" and (not standard or op in ROUTING)):
        return None, ""
    if standard and op in MAX_POOLS:  # winner-take-all (None): the plain gradient of a max routes to the winner
        return composite.max_rule(), ""
    if standard and kind == "linear":
        if op in WEIGHTED_KINDS:
            return composite.rule_for(info.name, WEIGHTED_KINDS[op], first), ""
        return composite.epsilon_rule(), ""
    if standard and op in ACTIVATIONS:
        return PASS, ""
    return None, f"no LRP rule for {kind} op {op}"


def _fed_by_input(node: fx.Node, variable: set[fx.Node]) -> bool:
    """Whether the node's varying input comes from an attributed input through routing ops only."""
    current = [a for a in node.args if isinstance(a, fx.Node) and a in variable]
    while len(current) == 1:
        arg = current[0]
        if arg.op == "placeholder":
            return True
        if arg.op != "call_module" or arg.meta.get("onnx_op") not in ROUTING:
            return False
        current = [a for a in arg.args if isinstance(a, fx.Node) and a in variable]
    return False


def _tap_inputs(module: fx.GraphModule, layers: Sequence[str], state: LRPState, variable: set[fx.Node]
                ) -> list[RelevanceTap]:
    """A tap on each varying edge into the node computing each named tensor (its other users untouched)."""
    taps = []
    for name in layers:
        node = tensor_node(module, name)
        for arg in dict.fromkeys(a for a in node.args if isinstance(a, fx.Node) and a in variable):
            tap = RelevanceTap(state, name)
            target = f"relevance_tap_{len(taps)}"
            module.add_submodule(target, tap)
            with module.graph.inserting_before(node):
                tapped = module.graph.call_module(target, (arg,))
            node.replace_input_with(arg, tapped)
            taps.append(tap)
    return taps


def _describe(rule: LRPRule) -> str:
    return repr(rule) if not isinstance(rule, Pass) else "pass"
