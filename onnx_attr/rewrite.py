"""The DeepLift rewrite: one fx pass that wraps every nonlinear node in a `DeepLiftOp`.

The pass is general: it asks `opkinds` what kind each node is (given which of its inputs vary
with the attributed inputs) and `rules.RULES` for the rule of that op type. It never mutates the
module it is given, and shares its weights. A `DeepLiftOp` computes exactly the wrapped op's
forward; only while the engine runs DeepLift does its backward return the rule's multipliers.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor, fx, nn

from .errors import UnsupportedOpError
from .opkinds import domain_op_kind, op_kind
from .rules import RULES, NodeInfo, Rule
from .rules.quantized import fuse_quantized_blocks
from .rules.reveal_cancel import RevealCancel
from .specs import TensorSpec


class ReferenceShapeMismatch(Exception):
    """A batch-1 reference does not broadcast against the input here (batch merged into another dim)."""


class DeepLiftState:
    """Shared by every DeepLiftOp of one rewritten module: the mode and the recorded references."""

    def __init__(self) -> None:
        self.mode = "off"  # off | tap_baseline | reference | deeplift
        # per DeepLiftOp: its inputs and output at the reference, and a memo of what its rule
        # derives from them alone (kept, like them, as long as the baseline is reused)
        self.refs: dict[int, tuple[list[Any], Tensor, dict]] = {}
        self.tap_baselines: dict[int, Tensor] = {}  # embedding of the baseline ids, per tap
        self.tap_leaves: dict[int, Tensor] = {}  # the embedding the main pass differentiates against

    def clear(self) -> None:
        self.mode, self.refs, self.tap_baselines, self.tap_leaves = "off", {}, {}, {}


class EmbeddingTap(nn.Module):
    """A Gather of a constant table by token ids: where integer inputs are attributed.

    Its output is the attributed tensor: the main pass differentiates against it, the reference
    pass substitutes the embedding of the baseline ids (recorded in a `tap_baseline` pass), so
    masks and positions computed from the ids stay those of the input in both passes.
    """

    def __init__(self, original: nn.Module, state: DeepLiftState, node: str, input_name: str):
        super().__init__()
        self.original, self._state, self.node, self.input_name = original, state, node, input_name

    def forward(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        state = self._state
        if state.mode == "tap_baseline":
            state.tap_baselines[id(self)] = out.detach()
        elif state.mode == "reference":
            out = state.tap_baselines[id(self)].expand_as(out)
        elif state.mode == "deeplift":
            out = out.detach().requires_grad_(True)
            state.tap_leaves[id(self)] = out
        return out


class BoundOp:
    """Calls a converted module with its inputs in signature order, None for skipped ones.

    onnx2torch passes the inputs after a skipped optional one as keyword arguments; a rule must
    see every input positionally, with its reference, to differentiate through it.
    """

    def __init__(self, module: nn.Module, names: list[str]):
        self.module, self.names = module, names

    @functools.cached_property
    def holds_tensors(self) -> bool:
        """Whether the module holds tensor state beyond scalars (PRelu's per-channel slope)."""
        return any(p.numel() > 1 for p in (*self.module.parameters(), *self.module.buffers()))

    def full(self, args: tuple, kwargs: dict) -> list:
        values = list(args) + [kwargs.get(n) for n in self.names[len(args):]]
        while values and values[-1] is None:
            values.pop()
        return values

    def split(self, values: Sequence[Any]) -> tuple[tuple, dict]:
        """Positional arguments up to the first skipped input, keyword arguments after it."""
        first_missing = next((i for i, v in enumerate(values) if v is None), len(values))
        kwargs = {n: v for n, v in zip(self.names[first_missing:], values[first_missing:]) if v is not None}
        return tuple(values[:first_missing]), kwargs

    def __call__(self, *values):
        args, kwargs = self.split(values)
        return self.module(*args, **kwargs)


class _DeepLiftCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: "DeepLiftOp", refs: list, ref_out, memo: dict, *args):
        ctx.graph, ctx.memo = None, memo
        if op.rule.keeps_graph:  # the op's own graph at x, for a rule that differentiates it there
            positions = op.info.variable_positions()
            with torch.enable_grad():
                live = [a.detach().requires_grad_(True) if i in positions and a.is_floating_point() else a
                        for i, a in enumerate(args)]
                out = op.bound(*live)
            ctx.graph = ([live[i] for i in positions], out)
            out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
        else:
            out = op.bound(*args)
        ctx.op, ctx.refs, ctx.ref_out = op, refs, ref_out
        ctx.template = [None if isinstance(a, Tensor) else a for a in args]
        ctx.is_tensor = [isinstance(a, Tensor) for a in args]
        outs = out if isinstance(out, tuple) else (out,)
        ctx.n_out = len(outs)
        ctx.save_for_backward(*outs, *(a for a in args if isinstance(a, Tensor)))
        return out

    @staticmethod
    def backward(ctx, *grads: Tensor):
        saved = ctx.saved_tensors
        outs, it = saved[:ctx.n_out], iter(saved[ctx.n_out:])
        args = [next(it) if t else v for t, v in zip(ctx.is_tensor, ctx.template)]
        out, grad = (outs[0], grads[0]) if ctx.n_out == 1 else (outs, grads)
        extra = {"graph": ctx.graph} if ctx.graph is not None else {}
        if ctx.op.rule.memoizes:
            extra["memo"] = ctx.memo
        grads_in = ctx.op.rule.backward(ctx.op.info, ctx.op.bound, grad, args, out, ctx.refs, ctx.ref_out, **extra)
        ctx.graph = None
        return (None, None, None, None, *grads_in)


class DeepLiftOp(nn.Module):
    """Wraps a converted op: plain forward always; the rule's multipliers as backward under DeepLift."""

    def __init__(self, original: nn.Module, rule: Rule, info: NodeInfo, state: DeepLiftState):
        super().__init__()
        self.original = original
        self.rule, self.info = rule, info
        self._state = state
        self.bound = BoundOp(original, signature_names(original))

    def forward(self, *args, **kwargs):
        state = self._state
        if state.mode in ("off", "tap_baseline"):
            return self.original(*args, **kwargs)
        values = self.bound.full(args, kwargs)
        if state.mode == "reference":
            out = self.bound(*values)
            detached = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
            state.refs[id(self)] = ([a.detach() if isinstance(a, Tensor) else a for a in values], detached, {})
            return out
        refs, ref_out, memo = state.refs[id(self)]
        for pos in self.info.variable_positions():
            if not _broadcasts(refs[pos].shape, values[pos].shape):
                raise ReferenceShapeMismatch(self.info.name)
        return _DeepLiftCall.apply(self, refs, ref_out, memo, *values)


def signature_names(module: nn.Module) -> list[str]:
    return [n for n, p in inspect.signature(module.forward).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _insert_layer_taps(module: fx.GraphModule, state: DeepLiftState, layers: Sequence[str],
                       result: "RewriteResult") -> None:
    """A LayerTap after each named tensor's node, between it and all of its users."""
    from .layers import insert_after

    result.layers.extend(insert_after(module, layers, lambda name: LayerTap(state, name), "layer_tap"))


def _broadcasts(ref: torch.Size, actual: torch.Size) -> bool:
    return len(ref) == len(actual) and all(r in (1, a) for r, a in zip(ref, actual))


class LayerTap(nn.Module):
    """Marks an ONNX tensor whose attributions are wanted (layer attribution).

    The reference pass records its reference value; the main pass differentiates against it (the
    layer becomes the leaf, so the multipliers are those of the output w.r.t. this tensor).
    """

    def __init__(self, state: DeepLiftState, tensor: str):
        super().__init__()
        self._state, self.tensor = state, tensor

    def forward(self, x):
        state = self._state
        if state.mode == "reference":
            state.tap_baselines[id(self)] = x.detach()
        elif state.mode == "deeplift":
            x = x.detach().requires_grad_(True)
            state.tap_leaves[id(self)] = x
        return x


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


REVEAL_CANCEL = RevealCancel()
#: Ops whose output depends on their input's shape only, not on its values.
SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "EyeLike"})


def _integer_sources(module: fx.GraphModule, inputs: Sequence[TensorSpec]) -> dict[fx.Node, set[str]]:
    """For each node, the integer (non-differentiable) model inputs its *values* are computed from
    (positions made from Range(Shape(ids)) are not: they depend on the ids' shape alone)."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    sources = {n: {spec.name} for n, spec in zip(placeholders, inputs) if spec.dtype is not None
               and not spec.differentiable}
    for node in module.graph.nodes:
        if node.meta.get("onnx_op") in SHAPE_ONLY:
            continue
        if node.op in ("call_module", "call_function"):
            found = set().union(*(sources.get(a, set()) for a in (*node.args, *node.kwargs.values())
                                  if isinstance(a, fx.Node)))
            if found:
                sources[node] = found
    return sources


def _embedding_taps(module: fx.GraphModule, inputs: Sequence[TensorSpec]) -> dict[fx.Node, str]:
    """Where ids derived from one integer input become floating values that carry them: a Gather
    of a constant table (an embedding), or a floating one-hot (Cast(Equal(ids, classes)), as tf2onnx
    writes it, or OneHot) whose last axis is the class axis."""
    sources = _integer_sources(module, inputs)
    taps = {}
    for node in module.graph.nodes:
        if node.op != "call_module" or len(node.args) < 1:
            continue
        op = node.meta.get("onnx_op")
        if op == "Gather" and len(node.args) >= 2:
            table, ids = node.args[0], node.args[1]
            if not (isinstance(table, fx.Node) and table not in sources and _constant(table)):
                continue
        elif op == "Cast" and _cast_dtype(module.get_submodule(node.target)) in _FLOATS:
            ids = _compared_ids(node.args[0], sources)
        elif op == "OneHot":
            ids = node.args[0] if all(_constant(a) for a in node.args[1:] if isinstance(a, fx.Node)) else None
        else:
            continue
        if isinstance(ids, fx.Node) and len(sources.get(ids, ())) == 1:
            taps[node] = next(iter(sources[ids]))
    return taps


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cast_dtype(cast: nn.Module) -> Optional[torch.dtype]:
    """What a Cast module casts to (ours: `dtype`; onnx2torch's: `torch_dtype`)."""
    return getattr(cast, "dtype", getattr(cast, "torch_dtype", None))


def _compared_ids(node: Any, sources: dict[fx.Node, set[str]]) -> Optional[fx.Node]:
    """The ids side of Equal(ids, classes) when the classes carry no input's values (constants,
    or built from shapes), so that its Cast is a one-hot of the ids."""
    if not isinstance(node, fx.Node) or node.meta.get("onnx_op") != "Equal" or len(node.args) != 2:
        return None
    a, b = node.args
    for ids, classes in ((a, b), (b, a)):
        if isinstance(ids, fx.Node) and ids in sources and _class_table(classes):
            return ids
    return None


_SAME_VALUES = frozenset({"Expand", "Reshape", "Unsqueeze", "Squeeze", "Identity", "Cast"})


def _class_table(node: Any) -> bool:
    """A constant with several values along its last axis: the classes of a one-hot (a single
    value, as in Equal(ids, pad_id), makes a mask instead, which stays computed from the ids)."""
    while isinstance(node, fx.Node) and node.meta.get("onnx_op") in _SAME_VALUES and node.args:
        node = node.args[0]  # broadcast or reshaped: the same class values
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return False
    value = functools.reduce(getattr, node.target.split("."), node.graph.owning_module)
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[-1] > 1


def _constant(node: fx.Node) -> bool:
    """Computed from initializers alone (no placeholder among its ancestors)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n.op == "placeholder":
            return False
        seen.add(n)
        stack.extend(a for a in (*n.args, *n.kwargs.values()) if isinstance(a, fx.Node) and a not in seen)
    return True


def _variable_nodes(module: fx.GraphModule, inputs: Sequence[TensorSpec], sources: set[fx.Node] = frozenset()
                    ) -> set[fx.Node]:
    """Nodes whose value depends on a differentiable (floating) model input or an embedding tap."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    variable = {n for n, spec in zip(placeholders, inputs) if spec.differentiable} | set(sources)
    for node in module.graph.nodes:
        if node.op in ("call_module", "call_function"):
            flags = [isinstance(a, fx.Node) and a in variable for a in (*node.args, *node.kwargs.values())]
            if any(flags) and op_kind(node.meta.get("onnx_op", ""), flags) != "structural":
                variable.add(node)
    return variable


def inline_expansions(module: fx.GraphModule) -> None:
    """Splice the steps of fused nodes (`converters.microsoft.Expansion`: each step an ordinary ONNX
    op) into the graph in place, so each step gets its own op's rule; named `node/step`."""
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
    module.graph.lint()
    module.recompile()


def rewrite_for_deeplift(module: fx.GraphModule, inputs: Sequence[TensorSpec], *,
                         gradient_fallback: bool = False, layers: Sequence[str] = (),
                         reveal_cancel: bool = False) -> RewriteResult:
    """Wrap each nonlinear node in a DeepLiftOp; refuse (or, opted in, warn about) nodes with no rule.

    `layers` names ONNX tensors to attribute instead of the inputs (layer attribution).
    `reveal_cancel` fuses each elementwise nonlinearity fed by a weighted op into one node with
    the RevealCancel rule; nonlinearities with no weighted op before them keep Rescale.
    """
    out = fx.GraphModule(module, copy.deepcopy(module.graph))
    inline_expansions(out)
    fuse_quantized_blocks(out)  # dynamically quantized blocks as one node each (rules/quantized.py)
    state = DeepLiftState()
    result = RewriteResult(out, state)
    _insert_layer_taps(out, state, layers, result)
    taps = _embedding_taps(out, inputs)
    variable = _variable_nodes(out, inputs, set(taps))
    for index, (node, input_name) in enumerate(taps.items()):
        tap = EmbeddingTap(out.get_submodule(node.target), state, node.meta["onnx_node"], input_name)
        out.add_submodule(f"embedding_tap_{index}", tap)
        node.target = f"embedding_tap_{index}"
        result.taps.append(tap)
    unsupported: list[tuple[str, str, int, str, str]] = []
    for index, node, kind, info in varying_nodes(out, variable, taps):
        if kind in ("linear", "structural"):
            continue
        op, flags = info.op_type, list(info.variable)
        rule = RULES.get(op)
        reason = "" if rule is not None else f"no DeepLift rule for {kind} op {op}"
        if rule is not None:
            try:
                rule.check(info)
            except NotImplementedError as err:
                reason = str(err)
        if reason:
            unsupported.append((op, node.meta.get("onnx_domain", ""), info.opset, info.name, reason))
            continue
        name = f"deeplift_{index}"
        original = out.get_submodule(node.target)
        if reveal_cancel and rule.kind == "unary":
            fused = _fuse_weighted_chain(out, node, flags, variable, name)
            if fused is None:
                result.reveal_cancel_skipped.append(info.name)
            else:
                original, flags = fused
                rule = REVEAL_CANCEL
                info = NodeInfo(op, info.attrs, info.opset, flags, info.name, info.n_outputs)
                result.reveal_cancel.append(info.name)
        out.add_submodule(name, DeepLiftOp(original, rule, info, state))
        node.target = name
        result.rewritten.append((info.name, op, rule.kind))
    if unsupported and not gradient_fallback:
        raise UnsupportedOpError(unsupported, action="DeepLift has no exact rule for", hint="pass gradient_fallback=True (CLI: --gradient-fallback) to let "
                                                   "these nodes use their plain gradient, at the cost of completeness")
    if unsupported:
        result.fallback = [(u[3], u[0]) for u in unsupported]
        warnings.warn("DeepLift falls back to the plain gradient at: "
                      + ", ".join(f"{n} ({o})" for n, o in result.fallback), stacklevel=2)
    out.graph.lint()
    out.recompile()
    return result


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


#: Ops whose constant operand is a weight whose signs decide a contribution's sign (RevealCancel).
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Mul"})
#: Ops that may sit between the weighted op and the nonlinearity without flipping a term's sign: a
#: constant bias, reshapes, identities, positive-linear ops (average pooling, sums and means,
#: padding, slicing: the reference implementation carries the positive and negative terms through
#: these) and, checked per node, a positive scale (BatchNormalization, Mul or Div by a constant).
CHAIN_TAIL = frozenset({"Add", "Sub", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                        "Cast", "BatchNormalization", "Mul", "Div", "AveragePool", "GlobalAveragePool",
                        "ReduceMean", "ReduceSum", "Pad", "Slice"})


def _fuse_weighted_chain(module: fx.GraphModule, node: fx.Node, flags: list[bool], variable: set[fx.Node],
                         name: str) -> tuple[nn.Module, list[bool]] | None:
    """Fold `weighted op -> (bias add, reshapes) -> node` into one LinearThenUnary call, in place.

    Returns the fused module and which of its inputs vary, or None when the node's input does not
    come (through single-use nodes only) from a weighted op with a constant weight.
    """
    from .rules.reveal_cancel import LinearThenUnary

    args = list(node.args)
    if node.kwargs or len(flags) != len(args) or not flags or not flags[0] or any(flags[1:]) \
            or any(a is None for a in args):
        return None
    chain, current = [], args[0]
    while isinstance(current, fx.Node) and current.op == "call_module" and len(current.users) == 1 \
            and current.meta.get("onnx_op") in CHAIN_TAIL and not current.kwargs:
        varying = [a for a in current.args if isinstance(a, fx.Node) and a in variable]
        if len(varying) != 1 or (current.meta["onnx_op"] not in ("Add", "Mul") and current.args[0] is not varying[0]):
            return None  # a residual Add mixes two sources; c - v flips every sign; data comes first
        if not _keeps_signs(module, current):
            break  # a scale that may be negative: the weighted op, if any, is this one
        chain.append(current)
        current = varying[0]
    if not (isinstance(current, fx.Node) and current.op == "call_module" and len(current.users) == 1
            and current.meta.get("onnx_op") in WEIGHTED and not current.kwargs):
        return None
    head = current
    weight = _weight_of(module, head, variable)
    if weight is None:
        return None
    nodes = [head, *reversed(chain)]
    inside = set(nodes)
    graph, mapping, external = fx.Graph(), {}, []
    for n in nodes:
        for a in n.args:
            if isinstance(a, fx.Node) and a not in inside and a not in mapping:
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
