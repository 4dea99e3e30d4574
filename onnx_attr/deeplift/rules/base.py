"""Rule classes and the one registry that maps an ONNX op type to its DeepLift rule.

A rule turns (the incoming gradient, the node's inputs and output, and their recorded
references) into the gradient for each input: the DeepLift multipliers. Three shapes cover
every op: `UnaryRule` (rescale), `ProductRule` (Shapley), and `DecomposedRule`, whose
subclasses write the op with the paired primitives and let autograd do the rest.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from onnx_attr.importing.inputs import all_finite
from onnx_attr.deeplift.rules.paired import product, product_multipliers, reduce_to, rescale_multiplier  # noqa: F401

RULES: dict[str, "Rule"] = {}


def rule(*op_types: str) -> Callable[[type], type]:
    """Register one instance of the decorated rule class for each ONNX op type."""

    def deco(cls: type) -> type:
        for op in op_types:
            if op in RULES:
                raise ValueError(f"duplicate DeepLift rule for {op}: {cls.__name__} and {type(RULES[op]).__name__}")
            RULES[op] = cls()
        return cls

    return deco


class NodeInfo:
    """What a rule may read about its node: ONNX op, attributes, opset, and which inputs vary."""

    def __init__(self, op_type: str, attrs: dict, opset: int, variable: Sequence[bool], name: str,
                 n_outputs: int = 1):
        self.op_type, self.attrs, self.opset, self.variable, self.name = op_type, attrs, opset, tuple(variable), name
        self.n_outputs = n_outputs
        self._positions = tuple(i for i, v in enumerate(self.variable) if v)

    def variable_positions(self) -> tuple[int, ...]:
        return self._positions


class Rule:
    kind = "composite"
    #: the rule differentiates the op at x: the forward keeps the op's graph and the backward
    #: gets it as `graph=(variable inputs, output)`, so the op is not run at x a second time
    keeps_graph = False
    #: the backward gets `memo=`, a dict for what it derives from the reference alone: it lives as
    #: long as the recorded reference, so a baseline reused over many batches computes it once
    memoizes = False
    #: where the reference's input has a shape that does not broadcast to the input's, the plain op
    #: runs (its own gradient, judged by the call's delta) rather than the call being refused
    plain_where_shapes_differ = False

    def forward_with_graph(self, info: NodeInfo, call: Callable, live: Sequence[Any], refs: Sequence[Any],
                           memo: dict | None = None):
        """The op's output at x with autograd recording, for `keeps_graph`: the op itself by default
        (`memo`: see `memoizes`, kept with the reference)."""
        return call(*live)

    def check(self, info: NodeInfo) -> None:
        """Raise NotImplementedError (with a sentence) for configurations the rule cannot make exact."""

    def backward(self, info: NodeInfo, call: Callable, grad: Tensor, args: Sequence[Any], out: Tensor,
                 refs: Sequence[Any], ref_out: Tensor) -> list[Tensor | None]:
        raise NotImplementedError


def _substitute(args: Sequence[Any], values: dict[int, Any]) -> list[Any]:
    return [values.get(i, a) for i, a in enumerate(args)]


def _require_varying(info: NodeInfo, count: int, why: str) -> None:
    found = len(info.variable_positions())
    if found != count:
        raise NotImplementedError(f"{info.op_type} with {found} input(s) varying with the attributed inputs {why}")


def _has_parameters(call: Callable) -> bool:
    """A converted module holding tensor state (PRelu's slope, per channel) cannot run on a subset."""
    return getattr(call, "holds_tensors", False)  # the rewrite passes a BoundOp


class UnaryRule(Rule):
    """Any elementwise op of one varying input (other inputs constant: PRelu slope, Clip bounds)."""

    kind = "unary"
    #: slopes 0 and 1 only (Relu, Clip): the secant is exact in floating point (see rescale_multiplier)
    exact_secant = False
    memoizes = True  # the gradient at the reference, for the exact secant's holes
    #: the op may read NaN as a missing value (an Imputer, or a fused chain starting at one): such an
    #: entry's multiplier is (f(NaN) − f(x0)) / 1, as `differences.difference` counts its move
    reads_missing = False

    def check(self, info: NodeInfo) -> None:
        _require_varying(info, 1, "is not elementwise-unary")

    def multiplier_in_forward(self, info: NodeInfo) -> bool:
        """Whether this node's multiplier is computed in the forward (see `multiplier`): where the
        backward is this class's, which is the multiplier times the incoming gradient, and only that."""
        return type(self).backward is UnaryRule.backward

    def multiplier(self, info: NodeInfo, call: Callable, args: Sequence[Any], out: Tensor, refs: Sequence[Any],
                   ref_out: Tensor, memo: dict | None = None) -> Tensor:
        """The rescale multiplier, shaped like the output (the input's broadcast with the op's other
        inputs'). Computed in the forward, from x, x0, f(x) and f(x0): the backward then holds this
        one map where it would hold x and f(x), and the reference pass need not keep f(x0) (it is
        computed again here, bit for bit the reference pass's)."""
        (pos,) = info.variable_positions()
        x, x0 = args[pos], refs[pos]
        if self.reads_missing and x.is_floating_point() and out.shape == x.shape and \
                not (all_finite(x) and all_finite(x0)):  # one float pass each where nothing is missing
            gap = torch.isnan(x) | torch.isnan(x0)
            if bool(gap.any()):
                return self._with_missing(info, call, args, out, refs, ref_out, pos, gap)
        f = lambda t: call(*_substitute(args, {pos: t}))  # noqa: E731
        # only the tolerance path takes gradients on a subset of elements (not on the exact secant's hot path)
        elementwise = not self.exact_secant and not _has_parameters(call) and all(
            not isinstance(a, Tensor) or a.numel() == 1 for i, a in enumerate(args) if i != pos)
        return rescale_multiplier(f, x, x0, out, ref_out, elementwise=elementwise, exact_secant=self.exact_secant,
                                  memo=memo)

    def backward(self, info, call, grad, args, out, refs, ref_out, memo=None):
        (pos,) = info.variable_positions()
        m = self.multiplier(info, call, args, out, refs, ref_out, memo)
        grads: list[Tensor | None] = [None] * len(args)
        grads[pos] = reduce_to(m.mul_(grad) if m.shape == grad.shape else grad * m, args[pos].shape)
        return grads

    def _with_missing(self, info, call, args, out, refs, ref_out, pos, gap):
        """The multipliers where x or x0 holds missing values (NaN): elsewhere the rule's own, with those
        entries set to 0 at both ends (the op being elementwise, its outputs there are then equal), and
        at them their whole change, f(x) − f(x0), over the one unit `difference` gives a move to or from
        a missing value (0 where both are missing: it has not moved)."""
        x, x0 = args[pos], refs[pos]
        zero = torch.zeros((), dtype=x.dtype)
        y, y0 = out.expand(x.shape), ref_out.expand(x.shape)
        m = self.multiplier(info, call, _substitute(args, {pos: torch.where(gap, zero, x)}),
                            torch.where(gap, y0.nan_to_num(), y),
                            _substitute(refs, {pos: torch.where(gap, zero, x0.expand(x.shape))}),
                            torch.where(gap, y0.nan_to_num(), y0))
        change = torch.where(torch.isnan(x) & torch.isnan(x0), zero, y - y0)
        return torch.where(gap, change, m)


class DecomposedRule(Rule):
    """The op written with paired primitives; autograd through the decomposition gives the multipliers."""

    #: the decomposition's split has terms that cancel by orders of magnitude (a shift carried in and
    #: out of a log-sum-exp, a normalisation's 1/σ at a near-constant reference): its multipliers are
    #: computed in float64 from float32 or narrower inputs (see `_widened`), then rounded back once
    wide = False

    def decompose(self, info: NodeInfo, call: Callable, args: list[Any], refs: list[Any]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def backward(self, info, call, grad, args, out, refs, ref_out, graph=None):
        positions = info.variable_positions()
        if graph is not None:  # decomposed in the forward (`keeps_graph`, `forward_with_graph`)
            return self._through_graph(positions, graph, grad, args)
        refs = _expanded_refs(positions, args, refs)
        wide = self.wide and _widened(args[positions[0]]) if positions else False
        with torch.enable_grad():
            live = list(args)
            for i in positions:
                live[i] = args[i].detach().to(torch.float64 if wide else args[i].dtype).requires_grad_(True)
                refs[i] = refs[i].double() if wide else refs[i]
            y, _ = self.decompose(info, call, live, refs)
            found = torch.autograd.grad(y, [live[i] for i in positions], grad.double() if wide else grad,
                                        allow_unused=True)
        grads: list[Tensor | None] = [None] * len(args)
        for i, g in zip(positions, found):
            grads[i] = g.to(args[i].dtype) if g is not None else torch.zeros_like(args[i])
        return grads


class DecomposedInForward(DecomposedRule):
    """A decomposition whose value at x is the op's own bit for bit (its pairs' first halves are the
    op's forward, op for op): it runs once, in the forward, recording autograd's graph, and its value
    goes on downstream; the backward only differentiates that graph. A `DecomposedRule` runs the op,
    then its decomposition again in the backward: for a recurrence, every step twice at x. Its
    `decompose` takes `memo=` (what it keeps of the reference's side, see `Rule.memoizes`)."""

    keeps_graph = True

    def forward_with_graph(self, info, call, live, refs, memo=None):
        y, _ = self.decompose(info, call, list(live), _expanded_refs(info.variable_positions(), live, refs),
                              memo=memo)
        return y

    @staticmethod
    def _through_graph(positions, graph, grad, args) -> list:
        inputs, y = graph
        pairs = [(o, g) for o, g in (zip(y, grad) if isinstance(y, tuple) else [(y, grad)])
                 if g is not None and o.requires_grad]  # an output made without the varying inputs has none
        found = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(inputs)
        result: list[Tensor | None] = [None] * len(args)
        for i, g in zip(positions, found):
            result[i] = g if g is not None else torch.zeros_like(args[i])
        return result


def _expanded_refs(positions, args, refs) -> list:
    """A shared (batch-1) reference, expanded as a view: composites see equal shapes."""
    refs = list(refs)
    for i in positions:
        if refs[i].shape != args[i].shape:
            refs[i] = refs[i].expand_as(args[i])
    return refs


def _widened(x: Tensor) -> bool:
    """Whether a wide rule computes in float64: for float32 and narrower, where the device has it."""
    return x.is_floating_point() and x.dtype != torch.float64 and x.device.type != "mps"


class ProductRule(DecomposedRule):
    """Two varying operands of an op bilinear in them (constants may add or scale)."""

    kind = "bilinear"

    def check(self, info: NodeInfo) -> None:
        _require_varying(info, 2, "is not a product of two: the Shapley product rule is exact for two")

    def decompose(self, info, call, args, refs):
        i, j = info.variable_positions()
        return product(self._bilinear(info, call, args), args[i], refs[i], args[j], refs[j])

    def backward(self, info, call, grad, args, out, refs, ref_out):
        """The product rule's multipliers straight from its closed form: no forward run again at x or
        at the reference, no graph around it (what `decompose` gives, autograd's bookkeeping aside)."""
        i, j = info.variable_positions()
        found = product_multipliers(self._bilinear(info, call, args), args[i], refs[i], args[j], refs[j], grad)
        grads: list[Tensor | None] = [None] * len(args)
        for k, g in zip((i, j), found):
            grads[k] = g.to(args[k].dtype)
        return grads

    @staticmethod
    def _bilinear(info: NodeInfo, call: Callable, args: Sequence[Any]) -> Callable[[Tensor, Tensor], Tensor]:
        """The op as a function of its two varying operands; ONNX's Mul (numpy broadcasting from
        opset 7) is `torch.mul`, whose multipliers have a closed form (see `product_multipliers`)."""
        if info.op_type == "Mul" and info.opset >= 7:
            return torch.mul
        i, j = info.variable_positions()
        return lambda a, b: call(*_substitute(args, {i: a, j: b}))
