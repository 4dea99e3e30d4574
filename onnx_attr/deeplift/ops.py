"""DeepLift-aware ops: a converted op wrapped so that its forward is the plain op's, bit for bit,
and its backward, while the engine runs DeepLift, is its rule's multipliers.

`DeepLiftState` is shared by every wrapped op of one rewritten module: the engine's mode and the
references recorded in the reference pass.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from onnx_attr.deeplift.rules import NodeInfo, Rule, UnaryRule
from onnx_attr.deeplift.rules.paired import reduce_to
from onnx_attr.importing.inputs import all_finite


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
        self.active_taps: set[int] = set()  # the taps of the integer inputs attributed in this call
        self.steps_moved: set[str] = set()  # comparisons of the attributed inputs that differ from the reference's
        #: the ops the explained output is not computed from (`RewriteResult.off_path`): plain in this call
        self.off_path: frozenset[int] = frozenset()
        #: set to a list to record, in the backward pass, the first node whose rule turns finite
        #: incoming multipliers into non-finite ones (`methods.deeplift.first_nonfinite`'s last resort)
        self.watch: list | None = None

    def clear(self) -> None:
        self.mode, self.refs, self.tap_baselines, self.tap_leaves = "off", {}, {}, {}
        self.active_taps, self.steps_moved, self.off_path = set(), set(), frozenset()


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


class DeepLiftCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: "DeepLiftOp", refs: list, ref_out, memo: dict, *args):
        ctx.graph, ctx.memo, ctx.multiplied = None, memo, None
        if op.rule.keeps_graph:  # the op's own graph at x, for a rule that differentiates it there
            positions = op.info.variable_positions()
            with torch.enable_grad():
                live = [a.detach().requires_grad_(True) if i in positions and a.is_floating_point() else a
                        for i, a in enumerate(args)]
                out = op.rule.forward_with_graph(op.info, op.bound, live, refs, memo)
            ctx.graph = ([live[i] for i in positions], out)
            out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
        else:
            out = op.bound(*args)
        ctx.op, ctx.refs, ctx.ref_out = op, refs, ref_out
        ctx.template = [None if isinstance(a, Tensor) else a for a in args]
        ctx.is_tensor = [isinstance(a, Tensor) for a in args]
        outs = out if isinstance(out, tuple) else (out,)
        ctx.n_out = len(outs)
        if getattr(op, "forward_multiplier", False) and any(ctx.needs_input_grad[4:]):  # (not LRP's ops)
            # the multiplier now (an elementwise rescale): the backward keeps it alone, not x and f(x)
            (pos,) = op.info.variable_positions()
            ctx.multiplied = (pos, args[pos].shape, len(args))
            ctx.save_for_backward(op.rule.multiplier(op.info, op.bound, args, out, refs,
                                                     _reference_output(op, refs, ref_out, memo), memo))
            return out
        ctx.save_for_backward(*outs, *(a for a in args if isinstance(a, Tensor)))
        return out

    @staticmethod
    def backward(ctx, *grads: Tensor):
        if ctx.multiplied is not None:
            (multiplier,), (pos, shape, count) = ctx.saved_tensors, ctx.multiplied
            grads_in = [None] * count
            grads_in[pos] = reduce_to(grads[0] * multiplier, shape)
        else:
            saved = ctx.saved_tensors
            outs, it = saved[:ctx.n_out], iter(saved[ctx.n_out:])
            args = [next(it) if t else v for t, v in zip(ctx.is_tensor, ctx.template)]
            out, grad = (outs[0], grads[0]) if ctx.n_out == 1 else (outs, grads)
            extra = {"graph": ctx.graph} if ctx.graph is not None else {}
            if ctx.op.rule.memoizes:
                extra["memo"] = ctx.memo
            grads_in = ctx.op.rule.backward(ctx.op.info, ctx.op.bound, grad, args, out, ctx.refs, ctx.ref_out,
                                            **extra)
            ctx.graph = None
        watch = getattr(ctx.op._state, "watch", None)  # DeepLift's state (LRP's pass has its own)
        if watch is not None and not watch and _finite(grads) and not _finite(grads_in):
            watch.append(f"{ctx.op.info.name} ({ctx.op.info.op_type})")
        return (None, None, None, None, *grads_in)


def _reference_output(op: "DeepLiftOp", refs: list, ref_out, memo: dict):
    """f(x0), which the reference pass did not keep: computed again (the same op on the same
    tensors: bit for bit the value it passed on), and kept from the reference's second use (a
    shared baseline's, reused over calls), as the rules keep what they derive from it."""
    if ref_out is not None:
        return ref_out
    found = memo.get("reference output")
    if found is None:
        found = op.bound(*refs)
        if memo.get("reference met"):
            memo["reference output"] = found
        memo["reference met"] = True
    return found


class DeepLiftOp(nn.Module):
    """Wraps a converted op: plain forward always; the rule's multipliers as backward under DeepLift."""

    def __init__(self, original: nn.Module, rule: Rule, info: NodeInfo, state: DeepLiftState):
        super().__init__()
        self.original = original
        self.rule, self.info = rule, info
        self._state = state
        self.bound = BoundOp(original, signature_names(original))
        #: an elementwise rescale's multiplier is computed in the forward (`UnaryRule.multiplier`)
        self.forward_multiplier = isinstance(rule, UnaryRule) and rule.multiplier_in_forward(info)

    def forward(self, *args, **kwargs):
        state = self._state
        if state.mode in ("off", "tap_baseline"):
            return self.original(*args, **kwargs)
        if id(self) in state.off_path:  # no gradient will come back through it (nor through what it feeds)
            with torch.no_grad():
                return self.original(*args, **kwargs)
        values = self.bound.full(args, kwargs)
        if state.mode == "reference":
            out = self.bound(*values)
            # an elementwise rescale's f(x0) is computed again with its multiplier (`DeepLiftCall`)
            detached = None if self.forward_multiplier else \
                tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
            state.refs[id(self)] = ([a.detach() if isinstance(a, Tensor) else a for a in values], detached, {})
            return out
        refs, ref_out, memo = state.refs[id(self)]
        for pos in self.info.variable_positions():
            if not _broadcasts(refs[pos].shape, values[pos].shape):
                if self.rule.plain_where_shapes_differ:
                    return self.original(*args, **kwargs)
                raise ReferenceShapeMismatch(self.info.name)
        return DeepLiftCall.apply(self, refs, ref_out, memo, *values)


def signature_names(module: nn.Module) -> list[str]:
    """The names of the module's positional parameters, read once per class's forward (the
    rewrite asks for every node: inspect.signature per node is seconds on an unrolled Loop)."""
    forward = module.forward
    function = getattr(forward, "__func__", None)
    if function is None or getattr(type(module), "forward", None) is not function:
        return _positional_names(forward)  # a forward set on the instance: not shared, not cached
    names = _FORWARD_NAMES.get(function)
    if names is None:
        names = _FORWARD_NAMES[function] = tuple(_positional_names(function)[1:])  # without self
    return list(names)


#: class forward -> its positional names; weak, so a GraphModule's generated class can go
_FORWARD_NAMES: "weakref.WeakKeyDictionary[Any, tuple[str, ...]]" = weakref.WeakKeyDictionary()


def _positional_names(function) -> list[str]:
    return [n for n, p in inspect.signature(function).parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _finite(tensors) -> bool:
    return all(all_finite(t) for t in tensors if isinstance(t, Tensor) and t.is_floating_point())


def _broadcasts(ref: torch.Size, actual: torch.Size) -> bool:
    return len(ref) == len(actual) and all(r in (1, a) for r, a in zip(ref, actual))


class StepGuard(nn.Module):
    """A comparison (Less, Equal, IsNaN, ...) of values that vary with the attributed inputs, or a
    selection (TopK, whose values are linear while its indices stay): its output is a step of them,
    which no multiplier carries. Where it is the same at the input and
    at the reference, everything computed from it is a constant of the two passes, and DeepLift is
    exact; where it differs, the jump it makes is lost. So the forward is the op's, and in the main
    pass a differing output is recorded (`DeepLiftState.steps_moved`) for the engine to refuse
    the call when the explained output is computed from it."""

    def __init__(self, original: nn.Module, name: str, state: DeepLiftState):
        super().__init__()
        self.original, self.name = original, name
        self._state = state

    def forward(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        state = self._state
        if state.mode == "reference":
            state.refs[id(self)] = ([], out.detach() if isinstance(out, Tensor) else out, {})
        elif state.mode == "deeplift" and id(self) in state.refs and _differs(out, state.refs[id(self)][1]):
            state.steps_moved.add(self.name)
        return out


def _differs(out: Any, ref: Any) -> bool:
    """Whether a step's output at the input differs from its output at the reference anywhere (of
    a selection's outputs, the indices: its values follow the inputs)."""
    if isinstance(out, tuple) and isinstance(ref, tuple):
        return any(_differs(o, r) for o, r in zip(out, ref) if isinstance(o, Tensor) and not o.is_floating_point())
    if not isinstance(out, Tensor) or not isinstance(ref, Tensor):
        return False
    try:
        return not bool(torch.eq(out, ref).all())
    except RuntimeError:  # shapes that do not broadcast: not the same step
        return True
