"""The DeepLift rewrite: one fx pass that wraps every nonlinear node in a `DeepLiftOp`.

The pass is general: it asks `opkinds` what kind each node is (given which of its inputs vary
with the attributed inputs) and `rules.RULES` for the rule of that op type. It never mutates the
module it is given, and shares its weights. A `DeepLiftOp` (ops.py) computes exactly the wrapped
op's forward; only while the engine runs DeepLift does its backward return the rule's multipliers.
Token inputs and layers are attributed at taps (taps.py); RevealCancel fuses each nonlinearity
with the weighted op before it (reveal_fusion.py).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from torch import fx
from torch.fx._lazy_graph_module import _LazyGraphModule

from onnx_attr.deeplift.argmax_fusion import fuse_argmax_one_hots
from onnx_attr.deeplift.guard_fusion import fuse_guarded_divisions
from onnx_attr.deeplift.input_grad import lean_convolutions
from onnx_attr.deeplift.opkinds import QOPERATOR_OPS, domain_op_kind, op_kind, refusal
from onnx_attr.deeplift.ops import DeepLiftOp, DeepLiftState, StepGuard, signature_names
from onnx_attr.deeplift.reveal_fusion import REVEAL_CANCEL, STAIRCASE_SPLIT, fuse_weighted_chain
from onnx_attr.deeplift.rules import RULES, NodeInfo
from onnx_attr.deeplift.rules.quantized import fuse_quantized_blocks, fuse_quantized_products
from onnx_attr.deeplift.select_fusion import fuse_step_selects
from onnx_attr.deeplift.taps import (EmbeddingTap, LayerTap, embedding_taps, id_path, insert_layer_taps,
                                    placeholder_fed)
from onnx_attr.deeplift.qoperator import expand_qoperator
from onnx_attr.deeplift.quant_fusion import FAKE_QUANT, fold_constant_dequantize, fuse_fake_quant
from onnx_attr.deeplift.quantized_lookup import dequantize_lookups
from onnx_attr.deeplift.unary_fusion import fuse_piecewise, fuse_self_gated, fuse_steps, fuse_unary_chains
from onnx_attr.deeplift.target_grad import NO_GRADIENT_PATH
from onnx_attr.errors import NoGradientPathError, UnsupportedOpError
from onnx_attr.importing.specs import TensorSpec


@dataclass
class RewriteResult:
    module: fx.GraphModule
    state: DeepLiftState
    rewritten: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, kind)
    fallback: list[tuple[str, str]] = field(default_factory=list)  # (node, op) left with their gradient
    taps: list[EmbeddingTap] = field(default_factory=list)  # where integer inputs are attributed
    layers: list[LayerTap] = field(default_factory=list)  # tensors attributed instead of the inputs
    reveal_cancel: list[str] = field(default_factory=list)  # nonlinearities given RevealCancel
    reveal_cancel_skipped: list[str] = field(default_factory=list)  # no weighted op before them: Rescale
    staircases_rescaled: list[str] = field(default_factory=list)  # quantizers with no linear op before them
    self_gated: list[str] = field(default_factory=list)  # Muls fused with their gate: x·g(x), one rescale
    unary_chains: list[str] = field(default_factory=list)  # chains of elementwise nonlinearities: one rescale
    steps_fused: list[str] = field(default_factory=list)  # Cast(Less(x, c)): a step function, one rescale
    selects_fused: list[str] = field(default_factory=list)  # Where(compare(u, v), A, B) (select_fusion.py)
    qoperator: list[str] = field(default_factory=list)  # QOperator ops carried as floats (qoperator.py)
    #: per graph output, the nodes with no rule it is computed from (refused when it is explained)
    refused: list[list[tuple[str, str, int, str, str]]] = field(default_factory=list)
    #: per graph output, the comparisons of attributed values it is computed from (`StepGuard`):
    #: refused in a call where one of them differs between the input and the reference
    steps: list[list[tuple[str, str, int, str, str]]] = field(default_factory=list)
    #: per graph output, whether it follows the attributed inputs through any differentiable step
    varying_outputs: list[bool] = field(default_factory=list)
    #: per graph output, the DeepLift-aware ops it is not computed from (a detector's other head): in
    #: a call explaining it they run plain, recording nothing for a backward that never reaches them
    off_path: list[frozenset[int]] = field(default_factory=list)
    gradient_fallback: bool = False

    def moved_steps(self, output: int) -> list[tuple[str, str, int, str, str]]:
        """The comparisons the explained output is computed from that differed between the input and
        the reference in the pass just run (see `StepGuard`)."""
        moved = self.state.steps_moved
        return [s for s in (self.steps[output] if output < len(self.steps) else []) if s[3] in moved]

    def refuse_moved_steps(self, moved: Sequence[tuple], incomplete: bool) -> Optional[str]:
        """A call whose explained output depends on comparisons that moved, and is not complete: refused
        naming them (with `gradient_fallback`, a warning to report instead). Complete, it stands: the
        elements that flipped were not ones the target is computed from (a detector's peak mask)."""
        if not moved or not incomplete:
            return None
        if not self.gradient_fallback:
            raise UnsupportedOpError(list(moved), action="DeepLift is not complete on this call: it has", hint=STEP_HINT)
        return ("not complete: " + ", ".join(dict.fromkeys(s[3] for s in moved)) + " differ between the input and "
                "the reference, and the jumps they make are not attributed")

    def refuses(self, output: int) -> bool:
        """Whether `output` is computed through a node with no DeepLift rule."""
        return output < len(self.refused) and bool(self.refused[output])

    def check_output(self, output: int) -> None:
        """Refuse to explain an output computed through a node with no DeepLift rule."""
        if output < len(self.refused) and self.refused[output]:
            raise UnsupportedOpError(self.refused[output], action="DeepLift has no exact rule for",
                                     hint=FALLBACK_HINT + ", or explain another output (output=...)")
        if output < len(self.varying_outputs) and not self.varying_outputs[output]:
            raise NoGradientPathError(NO_GRADIENT_PATH)


#: ops whose output is a step of their inputs (a bool, an index): guarded where those vary (`StepGuard`)
STEP_OPS = frozenset({"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf", "ArgMax",
                      "ArgMin", "TopK"})
STEP_REASON = ("a comparison of values that follow the attributed inputs, different at the input and at the "
               "reference: the jump it makes downstream has no multiplier")
SELECTION_REASON = ("a selection (TopK) of values that follow the attributed inputs, choosing other elements at "
                    "the input than at the reference: the jump between them has no multiplier")
STEP_HINT = ("Use a perturbation method (FeatureAblation, KernelShap; the CLI's --method featureablation), or a "
             "baseline on the same side of these comparisons as the input")


FALLBACK_HINT = ("pass gradient_fallback=True (CLI: --gradient-fallback) to let these nodes use their plain "
                 "gradient, at the cost of completeness")


def refusals_per_output(module: fx.GraphModule, nodes: Sequence[fx.Node | list[fx.Node]], refusals: Sequence[tuple]
                        ) -> list[list[tuple]]:
    """For each graph output, the refusals of those `nodes` (or of any node of a list) it is computed from."""
    return [[r for n, r in zip(nodes, refusals) if not seen.isdisjoint(n if isinstance(n, list) else [n])]
            for seen in computed_from(module)]


def computed_from(module: fx.GraphModule) -> list[set[fx.Node]]:
    """For each graph output, the nodes it is computed from (itself included)."""
    result = next(n for n in module.graph.nodes if n.op == "output").args[0]
    per_output = []
    for final in list(result) if isinstance(result, (tuple, list)) else [result]:
        seen: set[fx.Node] = set()
        stack = [final] if isinstance(final, fx.Node) else []
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(node.all_input_nodes)
        per_output.append(seen)
    return per_output


def variable_nodes(module: fx.GraphModule, inputs: Sequence[TensorSpec], sources: set[fx.Node] = frozenset(),
                   held: frozenset = frozenset()) -> set[fx.Node]:
    """Nodes whose value depends on a differentiable (floating) model input or an embedding tap; not
    on the inputs named in `held`, which the call holds at one value in both passes (constants)."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    variable = {n for n, spec in zip(placeholders, inputs) if spec.differentiable and spec.name not in held}
    variable |= set(sources)
    for node in module.graph.nodes:
        if node.op in ("call_module", "call_function"):
            flags = [isinstance(a, fx.Node) and a in variable for a in (*node.args, *node.kwargs.values())]
            if any(flags) and op_kind(node.meta.get("onnx_op", ""), flags) != "structural":
                variable.add(node)
    return variable


def inline_expansions(module: fx.GraphModule, recompile: bool = True) -> None:
    """Splice the steps of fused nodes (`converters.microsoft.Expansion`: each step an ordinary ONNX
    op) into the graph in place, so each step gets its own op's rule; named `node/step`.

    `recompile=False` leaves the code generation to a caller that edits the graph further
    (on an unrolled Loop, 80k nodes, each recompile costs seconds)."""
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not getattr(module.get_submodule(node.target), "onnx_expansion", False):
            continue
        sub = module.get_submodule(node.target)
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        values = list(node.args) + [node.kwargs.get(p.target) for p in placeholders[len(node.args):]]
        env: dict[fx.Node, Any] = dict(zip(placeholders, values))
        outputs: Any = None
        with module.graph.inserting_before(node):
            for n in sub.graph.nodes:
                if n.op == "placeholder":
                    continue
                if n.op == "output":
                    outputs = fx.map_arg(n.args[0], lambda a: env[a])
                    break
                new = module.graph.node_copy(n, lambda a: env[a])
                if n.op == "call_module":
                    new.target = f"{node.target}__{n.target}"
                    module.add_submodule(new.target, sub.get_submodule(n.target))
                    new.meta["onnx_node"] = f"{node.meta.get('onnx_node', node.name)}/{n.meta['onnx_op']}"
                    new.meta["onnx_opset"] = node.meta.get("onnx_opset", 0)
                env[n] = new
        if isinstance(outputs, (tuple, list)):  # users select outputs by index (convert.select_output)
            for user in list(node.users):
                chosen = outputs[user.args[1]]
                chosen.meta.setdefault("onnx_tensor", user.meta.get("onnx_tensor"))
                user.replace_all_uses_with(chosen)
                module.graph.erase_node(user)
        else:
            if "onnx_tensor" in node.meta:
                outputs.meta.setdefault("onnx_tensor", node.meta["onnx_tensor"])
            node.replace_all_uses_with(outputs)
        module.graph.erase_node(node)
    if recompile:
        module.graph.lint()
        module.recompile()


def rewrite_for_deeplift(module: fx.GraphModule, inputs: Sequence[TensorSpec], *,
                         gradient_fallback: bool = False, layers: Sequence[str] = (),
                         reveal_cancel: bool = False, held: frozenset = frozenset()) -> RewriteResult:
    """Wrap each nonlinear node in a DeepLiftOp; refuse (or, opted in, warn about) nodes with no rule.

    `layers` names ONNX tensors to attribute instead of the inputs (layer attribution).
    `reveal_cancel` fuses each elementwise nonlinearity fed by a weighted op into one node with
    the RevealCancel rule; nonlinearities with no weighted op before them keep Rescale. `held`:
    floating inputs held at their values, constants here (a GridSample's grid given as an input).
    """
    # generated and compiled once, on its first call: a GraphModule compiles its forward when made,
    # and the rewrite changes the graph at once (~10-20 ms of a first call on a 400-node graph)
    out = _LazyGraphModule(module, copy.deepcopy(module.graph))
    inline_expansions(out, recompile=False)  # the rewrite lints and recompiles once, at its end
    fuse_quantized_blocks(out)  # dynamically quantized blocks as one node each (rules/quantized.py)
    fuse_quantized_products(out)  # and products of two dynamically quantized activations
    # what only fed a resolved condition (a held decoder's stop test) is dead: its ArgMax then has
    # one user left, the OneHot fed back, and fuses
    out.graph.eliminate_dead_code()
    fuse_argmax_one_hots(out, placeholder_fed(out))  # a greedy decoder's fed-back token (argmax_fusion.py)
    state = DeepLiftState()
    result = RewriteResult(out, state, gradient_fallback=gradient_fallback)
    result.layers.extend(insert_layer_taps(out, state, layers))
    dequantize_lookups(out)  # an 8-bit embedding table: its lookup yields the floats, a tap (quantized_lookup.py)
    taps = embedding_taps(out, inputs)
    variable = variable_nodes(out, inputs, set(taps), held)
    for index, (node, input_name) in enumerate(taps.items()):
        path = id_path(out, node)
        if path is not None:
            path.record_in(out, f"id_path_{index}")
        tap = EmbeddingTap(out.get_submodule(node.target), state, node.meta["onnx_node"], input_name,
                           path, node.meta.get("measured_tap", False))
        out.add_submodule(f"embedding_tap_{index}", tap)
        node.target = f"embedding_tap_{index}"
        result.taps.append(tap)
    result.qoperator, why = expand_qoperator(out, variable)  # QOperator's integers as floats (qoperator.py)
    if result.qoperator:
        variable = variable_nodes(out, inputs, set(taps), held)
    elif why:  # the region's integer ops stay refused, saying why they could not be carried
        for node in out.graph.nodes:
            if node.meta.get("onnx_op") in QOPERATOR_OPS:
                node.meta["refusal"] = f"{refusal(node.meta['onnx_op'], 'unknown')}; here {why}"
    result.steps_fused.extend(fuse_steps(out, variable))  # Cast(Less(x, c)): a step with its jump (unary_fusion.py)
    result.unary_chains.extend(fuse_piecewise(out, variable))  # Where(x > 0, Log(x), 0): one function (unary_fusion.py)
    if result.steps_fused or result.unary_chains:  # what a step feeds now varies too (a comparison's did not)
        variable = variable_nodes(out, inputs, set(taps), held)
    fold_constant_dequantize(out, variable)  # static quantization's weights as floats (quant_fusion.py)
    fuse_fake_quant(out, variable)  # static quantization's Q → DQ pairs (quant_fusion.py)
    fuse_guarded_divisions(out, variable)  # divide_no_nan: Where(Equal(d, 0), 0, n / d) (guard_fusion.py)
    # a Where (or a Cast to a float) decided by comparisons of varying values (select_fusion.py): after the
    # guarded divisions (their Where is one), before the guards (which would refuse its comparisons' flips)
    result.selects_fused.extend(fuse_step_selects(out, variable))
    if result.selects_fused:  # a Where of constants by a varying comparison varies now
        variable = variable_nodes(out, inputs, set(taps), held)
    guard_steps(out, variable, state, result)
    result.self_gated.extend(fuse_self_gated(out, variable, recompile=False))  # SiLU, HardSwish as exported (unary_fusion.py)
    result.unary_chains.extend(fuse_unary_chains(out, variable))  # 1 / (1 + Exp(-z)) as exported (unary_fusion.py)
    unsupported: list[tuple[str, str, int, str, str]] = []
    unsupported_nodes: list[fx.Node] = []
    for index, node, kind, info in varying_nodes(out, variable, taps):
        if kind in ("linear", "structural"):
            continue
        op, flags = info.op_type, list(info.variable)
        rule = RULES.get(op)
        reason = "" if rule is not None else node.meta.get("refusal") or refusal(op, kind)
        if rule is not None:
            try:
                rule.check(info)
            except NotImplementedError as err:
                reason = str(err)
        if reason:
            unsupported.append((op, node.meta.get("onnx_domain", ""), info.opset, info.name, reason))
            unsupported_nodes.append(node)
            continue
        name = f"deeplift_{index}"
        original = out.get_submodule(node.target)
        staircase = op == FAKE_QUANT  # Rescale's secant on a staircase is unbounded: always split (StaircaseSplit)
        if (reveal_cancel or staircase) and rule.kind == "unary":
            fused = fuse_weighted_chain(out, node, flags, variable, name, weightless=staircase)
            if fused is None:
                (result.reveal_cancel_skipped if reveal_cancel else result.staircases_rescaled).append(info.name)
            else:
                original, flags = fused
                rule = STAIRCASE_SPLIT if staircase else REVEAL_CANCEL
                info = NodeInfo(op, info.attrs, info.opset, flags, info.name, info.n_outputs)
                if reveal_cancel:
                    result.reveal_cancel.append(info.name)
        out.add_submodule(name, DeepLiftOp(original, rule, info, state))
        node.target = name
        result.rewritten.append((info.name, op, rule.kind))
    if unsupported and not gradient_fallback:
        per_output = refusals_per_output(out, unsupported_nodes, unsupported)
        floating = sum(s.differentiable and s.name not in held for s in inputs)
        if all(per_output) and floating < 2:  # every output needs one of them: nothing can be explained (with
            # two floating inputs, a call holding one may make them constants: refused when asked, `check_output`)
            raise UnsupportedOpError(unsupported, action="DeepLift has no exact rule for", hint=FALLBACK_HINT)
        result.refused = per_output  # the others run plain; an output they reach is refused when asked for
        unsupported = []
    if unsupported:
        result.fallback = [(u[3], u[0]) for u in unsupported]
        warnings.warn("DeepLift falls back to the plain gradient at: "
                      + ", ".join(f"{n} ({o})" for n, o in result.fallback), stacklevel=2)
    lean_convolutions(out, variable, state)  # their saved inputs, which no attribution reads (input_grad.py)
    finals = next(n for n in out.graph.nodes if n.op == "output").args[0]
    result.varying_outputs = [isinstance(f, fx.Node) and f in variable
                              for f in (finals if isinstance(finals, (tuple, list)) else [finals])]
    rewritten = [n for n in out.graph.nodes
                 if n.op == "call_module" and isinstance(out.get_submodule(n.target), DeepLiftOp)]
    result.off_path = [frozenset(id(out.get_submodule(n.target)) for n in rewritten if n not in seen)
                       for seen in computed_from(out)]
    out.graph.lint()
    out.recompile()
    return result


def guard_steps(module: fx.GraphModule, variable: set[fx.Node], state: DeepLiftState, result: RewriteResult) -> None:
    """Wrap each comparison of varying values in a `StepGuard`, and record per output which it
    reaches. A TopK's values have their rule (rules/selection.py): only its indices are a step,
    and only the outputs computed from them are refused when they flip."""
    guards, reach = [], []
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node.meta.get("onnx_op") not in STEP_OPS \
                or node.meta.get("onnx_domain", "") not in ("", "ai.onnx") \
                or not any(a in variable for a in node.all_input_nodes):
            continue
        through = [node]
        if node.meta["onnx_op"] == "TopK":
            through = [u for u in node.users if u.op == "call_function" and u.args[1:2] == (1,)]
            if not through:
                continue
        name = f"step_guard_{len(guards)}"
        module.add_submodule(name, StepGuard(module.get_submodule(node.target), node.meta["onnx_node"], state))
        node.target = name
        guards.append(node)
        reach.append(through)
    reasons = [(n.meta["onnx_op"], n.meta.get("onnx_domain", ""), n.meta.get("onnx_opset", 0), n.meta["onnx_node"],
                SELECTION_REASON if n.meta["onnx_op"] == "TopK" else STEP_REASON) for n in guards]
    result.steps = refusals_per_output(module, reach, reasons) if guards else []


def varying_nodes(module: fx.GraphModule, variable: set[fx.Node], skip: Any = ()
                  ) -> Iterator[tuple[int, fx.Node, str, NodeInfo]]:
    """Each converted node with an input varying with the attributed tensors, with its op kind and
    what a rule reads about it (inputs in signature order; trailing skipped inputs dropped)."""
    for index, node in enumerate(list(module.graph.nodes)):
        if node.op != "call_module" or "onnx_op" not in node.meta or node in skip:
            continue
        op = node.meta["onnx_op"]
        names = signature_names(module.get_submodule(node.target))
        inputs_in_order = list(node.args) + [node.kwargs.get(n) for n in names[len(node.args):]]
        flags = [isinstance(a, fx.Node) and a in variable for a in inputs_in_order]
        while flags and not flags[-1] and inputs_in_order[len(flags) - 1] is None:
            flags.pop()
        if not any(flags):
            continue
        kind = domain_op_kind(node.meta.get("onnx_domain", ""), op, flags, node.meta.get("onnx_attrs"))
        yield index, node, kind, NodeInfo(op, node.meta.get("onnx_attrs", {}), node.meta.get("onnx_opset", 0), flags,
                                          node.meta["onnx_node"], len(node.meta.get("onnx_outputs", ())) or 1)
