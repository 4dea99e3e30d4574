"""LRP rules: relevance propagation as the backward of a rewritten node (see docs/architecture.md, "LRP").

The gradient that flows backwards through an LRP-rewritten module *is* the relevance: a rule
turns the relevance of a node's output into the relevance of its varying inputs. The rules share
the DeepLift rules' interface (`Rule.backward`), so the same autograd plumbing runs them.

Every propagation rule is one pattern: run the op on modified inputs with modified parameters
(a "term"), divide the output relevance by a stabilised sum of terms, and send it back through
each term's own linear map, times that term's input. The rules differ only in their terms, which
follow the usual definitions (Bach et al. 2015, Montavon et al. 2019), in zennit's generalised
form for negative inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import NodeInfo, Rule, reduce_to

#: Ops whose weight decides the rule: they get the composite's rule for their kind.
WEIGHTED_KINDS = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "dense", "MatMul": "dense", "Einsum": "dense"}
#: Linear ops that only move, copy or drop elements: relevance follows the plain gradient (the epsilon
#: rule's limit for them, as each output element is one input element).
ROUTING = frozenset({
    "Identity", "Dropout", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat",
    "Split", "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "DepthToSpace",
    "SpaceToDepth", "Compress", "Trilu", "ReverseSequence", "CenterCropPad", "Where", "Imputer", "ScatterND",
    "ScatterElements", "Scatter", "MaxUnpool",
})
#: Elementwise activations (ReLU-like or monotone): relevance passes through unchanged.
ACTIVATIONS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "Tanh",
    "Softplus", "Softsign", "Clip", "HardSwish", "Gelu", "Mish", "Swish", "Erf", "Atan", "Asinh",
})
#: Max pooling: winner-take-all follows the plain gradient; "proportional" (MaxPool only) takes the
#: epsilon rule of the window sum.
MAX_POOLS = frozenset({"MaxPool", "GlobalMaxPool", "ReduceMax"})
MAXPOOL_MODES = ("winner", "proportional")


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """z + ε·sign(z), with sign(0) = +1: the denominator of every rule (zennit's and Captum's form).
    At ε = 0 (LRP-0) a zero denominator becomes 1, not 0/0: its unit's inputs sum to 0 anyway."""
    return z + ((z == 0).to(z) + z.sign()) * epsilon if epsilon else z + (z == 0).to(z)


class LRPRule(Rule):
    """An LRP rule: `relevance` maps the output relevance to each varying input's relevance."""

    kind = "lrp"
    weighted_only = False  # the rule modifies weights: only for Conv/Gemm/MatMul/Einsum

    def check(self, info: NodeInfo) -> None:
        if self.weighted_only and len(info.variable_positions()) != 1:
            raise NotImplementedError(f"{type(self).__name__} needs one varying input and a constant weight")

    def backward(self, info, call, grad, args, out, refs, ref_out, graph=None):
        relevance = self.relevance(info, call, grad, list(args), out, graph)
        grads: list[Tensor | None] = [None] * len(args)
        for pos, r in zip(info.variable_positions(), relevance):
            grads[pos] = reduce_to(r, args[pos].shape)
        return grads

    def relevance(self, info: NodeInfo, call: Callable, grad: Tensor, args: list[Any], out: Tensor,
                  graph: Optional[tuple[list[Tensor], Tensor]] = None) -> list[Tensor]:
        """`graph` (rules with `keeps_graph`): the op's own autograd graph at x, (varying inputs, output)."""
        raise NotImplementedError


class Pass(LRPRule):
    """Elementwise activations: the relevance of the output is the relevance of the input."""

    def check(self, info: NodeInfo) -> None:
        if len(info.variable_positions()) != 1:
            raise NotImplementedError(f"{info.op_type} with several varying inputs is not an activation")

    def relevance(self, info, call, grad, args, out, graph=None):
        return [grad]


class Identity(Pass):
    """Captum's IdentityRule, for any node with one varying input of its output's shape (a square
    Linear, a BatchNormalization): the output's relevance is the input's, element by element."""

    def relevance(self, info, call, grad, args, out, graph=None):
        (position,) = info.variable_positions()
        if tuple(args[position].shape) != tuple(grad.shape):
            from onnx_attr.errors import InputError

            raise InputError(f"the identity rule passes relevance through unchanged, so node {info.name!r} needs its "
                             f"input's shape {list(args[position].shape)} at its output {list(grad.shape)}; give "
                             "it another rule")
        return [grad]


def _vjp(fn: Callable[..., Tensor], inputs: Sequence[Tensor], seed: Callable[[Tensor], Tensor]
         ) -> list[Tensor]:
    """fn's linear map transposed, applied to seed(fn(inputs)): one gradient per input."""
    with torch.enable_grad():
        live = [x.detach().requires_grad_(True) for x in inputs]
        z = fn(*live)
        found = torch.autograd.grad(z, live, seed(z.detach()), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, found)]


@dataclass(frozen=True)
class Epsilon(LRPRule):
    """R_i = x_i · Σ_j w_ij R_j / (z_j + ε·sign z_j); any linear op, any number of varying inputs.
    ε = 0 is LRP-0; the bias (and any constant operand) absorbs its share of the relevance."""

    epsilon: float = 1e-9
    keeps_graph = True  # the op's forward graph at x serves the backward: the op is not run twice

    def relevance(self, info, call, grad, args, out, graph=None):
        positions = info.variable_positions()
        denominator = stabilize(out, self.epsilon)
        if graph is not None:
            live, z = graph
            found = torch.autograd.grad(z, live, grad / denominator, allow_unused=True)
            return [x * (torch.zeros_like(x) if g is None else g) for x, g in zip(live, found)]

        def fn(*xs):
            values = list(args)
            for p, x in zip(positions, xs):
                values[p] = x
            return call(*values)

        grads = _vjp(fn, [args[p] for p in positions], lambda z: grad / denominator)
        return [args[p] * g for p, g in zip(positions, grads)]


class Layer:
    """A weighted op at its node, runnable with modified parameters and input (what the rules vary)."""

    #: the input holding the bias, where the op takes it as an input rather than owning it
    BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}

    def __init__(self, info: NodeInfo, call, args: list[Any]):
        (self.position,) = info.variable_positions()
        self.call, self.args = call, args
        module = call.module
        self.own = {n: t for n, t in (*module.named_parameters(), *module.named_buffers())
                    if t is not None and t.is_floating_point()}
        bias_input = self.BIAS_INPUT.get(info.op_type)
        self.operands = {i: a for i, a in enumerate(args) if i != self.position and isinstance(a, Tensor)
                         and a.is_floating_point()}
        self.bias = {("own", n) for n in self.own if n.split(".")[-1] == "bias"} | (
            {("operand", bias_input)} if bias_input in self.operands else set())

    def __call__(self, x: Tensor, modify: Callable[[Tensor], Tensor], bias: bool = True) -> Tensor:
        """The op at input x, every parameter p replaced by modify(p) (the bias by 0 if not `bias`)."""
        def changed(key: tuple, p: Tensor) -> Tensor:
            return torch.zeros_like(p) if key in self.bias and not bias else modify(p)

        values = list(self.args)
        values[self.position] = x
        for i, a in self.operands.items():
            values[i] = changed(("operand", i), a)
        own = {n: changed(("own", n), p.detach()) for n, p in self.own.items()}
        args, kwargs = self.call.split(values)
        return torch.func.functional_call(self.call.module, own, tuple(args), kwargs)


def _positive(p: Tensor) -> Tensor:
    return p.clamp(min=0)


def _negative(p: Tensor) -> Tensor:
    return p.clamp(max=0)


#: A term: (the input it sees, its parameter modifier, whether it keeps the bias).
Term = tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], bool]


class _Terms(LRPRule):
    """A rule made of groups of terms: each group's output relevance share is R · mask / stab(Σ terms),
    sent back through every term of the group and multiplied by the term's input, with a weight."""

    weighted_only = True
    stabilizer: float = 1e-9

    def groups(self, layer: Layer, x: Tensor, out: Tensor) -> list[tuple[float, Optional[Tensor], list[Term]]]:
        raise NotImplementedError

    def relevance(self, info, call, grad, args, out, graph=None):
        layer = Layer(info, call, args)
        x = args[layer.position]
        total = torch.zeros_like(x)
        for weight, mask, terms in self.groups(layer, x, out):
            inputs = [given(x) for given, _, _ in terms]
            zs = [layer(i, modify, keep) for i, (_, modify, keep) in zip(inputs, terms)]
            share = grad / stabilize(sum(zs), self.stabilizer)
            if mask is not None:
                share = share * mask
            for i, (_, modify, keep) in zip(inputs, terms):
                (g,) = _vjp(lambda t: layer(t, modify, keep), [i], lambda z: share)
                total = total + weight * self.reduce(i, g)
        return [total]

    @staticmethod
    def reduce(term_input: Tensor, gradient: Tensor) -> Tensor:
        return term_input * gradient


@dataclass(frozen=True)
class AlphaBeta(_Terms):
    """α·(positive contributions' share) − β·(negative contributions' share), α − β = 1.
    (1, 0) is z⁺; (2, 1) the usual choice for lower layers."""

    alpha: float = 1.0
    beta: float = 0.0
    stabilizer: float = 1e-9

    def __post_init__(self) -> None:
        from onnx_attr.errors import InputError

        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise InputError(f"alpha-beta LRP needs alpha, beta >= 0 and alpha - beta = 1 (relevance is conserved); "
                             f"got alpha={self.alpha}, beta={self.beta}")

    def groups(self, layer, x, out):
        positive = [(_positive, _positive, True), (_negative, _negative, False)]
        negative = [(_positive, _negative, True), (_negative, _positive, False)]
        return [(self.alpha, None, positive)] + ([(-self.beta, None, negative)] if self.beta else [])


def ZPlus(stabilizer: float = 1e-9) -> AlphaBeta:
    """z⁺: only positive contributions carry relevance (α = 1, β = 0)."""
    return AlphaBeta(1.0, 0.0, stabilizer)


@dataclass(frozen=True)
class Gamma(_Terms):
    """Weights w + γ·w⁺ favour positive contributions (w + γ·w⁻ where the output is negative)."""

    gamma: float = 0.25
    stabilizer: float = 1e-9

    def groups(self, layer, x, out):
        up = lambda p: p + self.gamma * p.clamp(min=0)  # noqa: E731
        down = lambda p: p + self.gamma * p.clamp(max=0)  # noqa: E731
        return [(1.0, (out > 0).to(out), [(_positive, up, True), (_negative, down, False)]),
                (1.0, (out < 0).to(out), [(_positive, down, True), (_negative, up, False)])]


@dataclass(frozen=True)
class ZBox(_Terms):
    """z^B for inputs bounded by [low, high] (pixels): for the first layer."""

    low: Any = 0.0
    high: Any = 255.0
    stabilizer: float = 1e-9

    def relevance(self, info, call, grad, args, out, graph=None):
        layer = Layer(info, call, args)
        x = args[layer.position]
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        terms = [(x, lambda p: p, 1.0), (low, _positive, -1.0), (high, _negative, -1.0)]
        denominator = stabilize(sum(s * layer(i, m) for i, m, s in terms), self.stabilizer)
        total = torch.zeros_like(x)
        for i, modify, sign in terms:
            (g,) = _vjp(lambda t: layer(t, modify), [i], lambda z: grad / denominator)
            total = total + sign * i * g
        return [total]


@dataclass(frozen=True)
class Flat(_Terms):
    """Every input of a unit's receptive field gets an equal share (weights and inputs set to 1)."""

    stabilizer: float = 1e-9

    def groups(self, layer, x, out):
        return [(1.0, None, [(torch.ones_like, torch.ones_like, False)])]

    @staticmethod
    def reduce(term_input, gradient):
        return gradient


@dataclass(frozen=True)
class ProportionalMax(LRPRule):
    """A max pooling window's relevance split over its inputs by their shares of the window's sum
    (the epsilon rule of sum pooling over the same windows: kernel, strides, pads, dilations)."""

    epsilon: float = 1e-9

    def check(self, info: NodeInfo) -> None:
        if info.op_type != "MaxPool" or info.n_outputs != 1 or len(info.variable_positions()) != 1:
            raise NotImplementedError("proportional max pooling covers MaxPool without its indices output; use "
                                      "maxpool='winner'")

    def relevance(self, info, call, grad, args, out, graph=None):
        from onnx_attr.deeplift.smooth import LogSumExpPool

        pool = call.module
        window_sum = lambda t: LogSumExpPool.windows(pool, t).sum(-1)  # noqa: E731  (the same windows, 0-padded)
        x = args[info.variable_positions()[0]]
        (g,) = _vjp(window_sum, [x], lambda z: grad / stabilize(z, self.epsilon))
        return [x * g]


#: Rules by name (the CLI's `--lrp-rule` and the composites' strings).
RULE_NAMES: dict[str, Callable[..., LRPRule]] = {
    "epsilon": lambda epsilon, **_: Epsilon(epsilon),
    "zero": lambda **_: Epsilon(0.0),
    "gamma": lambda gamma, epsilon, **_: Gamma(gamma, epsilon),
    "alpha1beta0": lambda epsilon, **_: AlphaBeta(1.0, 0.0, epsilon),
    "alpha2beta1": lambda epsilon, **_: AlphaBeta(2.0, 1.0, epsilon),
    "z_plus": lambda epsilon, **_: ZPlus(epsilon),
    "z_B": lambda epsilon, bounds, **_: ZBox(*_bounds(bounds), epsilon),
    "flat": lambda epsilon, **_: Flat(epsilon),
    "identity": lambda **_: Identity(),
}


def _bounds(bounds: Optional[Sequence[Any]]) -> tuple[Any, Any]:
    from onnx_attr.errors import InputError

    if bounds is None:
        raise InputError("the z_B rule needs the input's bounds: pass bounds=(low, high) (CLI: --lrp-bounds LOW,HIGH), "
                         "e.g. (0, 255) for raw pixels")
    low, high = bounds
    return low, high


@dataclass
class Composite:
    """Which rule each weighted node gets: by ONNX node name first, then the first weighted layer (fed
    by the attributed input), then by kind ("conv": Conv/ConvTranspose, "dense": Gemm/MatMul/Einsum),
    else `default`. Other linear ops (pooling, Add, BatchNormalization...) take the epsilon rule."""

    default: Any = "epsilon"
    conv: Any = None
    dense: Any = None
    first: Any = None
    names: Mapping[str, Any] = None
    epsilon: float = 1e-9
    gamma: float = 0.25
    bounds: Optional[Sequence[Any]] = None
    maxpool: str = "winner"

    def __post_init__(self) -> None:
        from onnx_attr.errors import InputError

        if self.maxpool not in MAXPOOL_MODES:
            raise InputError(f"unknown max pooling mode {self.maxpool!r}; use one of {list(MAXPOOL_MODES)}")
        self.names = dict(self.names or {})
        self.resolve(self.default)
        for value in (self.conv, self.dense, self.first, *self.names.values()):
            if value is not None:
                self.resolve(value)

    def resolve(self, rule: Any) -> LRPRule:
        from onnx_attr.errors import InputError

        if isinstance(rule, LRPRule):
            return rule
        if isinstance(rule, str) and rule in RULE_NAMES:
            return RULE_NAMES[rule](epsilon=self.epsilon, gamma=self.gamma, bounds=self.bounds)
        raise InputError(f"unknown LRP rule {rule!r}; use one of {sorted(RULE_NAMES)} or an onnx_attr LRP rule "
                         "object (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Flat, Identity)")

    def rule_for(self, node: str, kind: str, first: bool) -> LRPRule:
        for value in (self.names.get(node), self.first if first else None, getattr(self, kind)):
            if value is not None:
                return self.resolve(value)
        return self.resolve(self.default)

    def epsilon_rule(self) -> LRPRule:
        return Epsilon(self.epsilon)

    def max_rule(self) -> Optional[LRPRule]:
        """None for winner-take-all (the plain gradient of a max routes to the winner)."""
        return ProportionalMax(self.epsilon) if self.maxpool == "proportional" else None


#: Named composites, after zennit's (BatchNormalization takes epsilon here: no canonizer merges it).
COMPOSITES: dict[str, dict[str, str]] = {
    "epsilon": {},
    "epsilon_gamma_box": {"conv": "gamma", "dense": "epsilon", "first": "z_B"},
    "epsilon_plus": {"conv": "z_plus", "dense": "epsilon"},
    "epsilon_plus_flat": {"conv": "z_plus", "dense": "epsilon", "first": "flat"},
    "epsilon_alpha2_beta1": {"conv": "alpha2beta1", "dense": "epsilon"},
    "epsilon_alpha2_beta1_flat": {"conv": "alpha2beta1", "dense": "epsilon", "first": "flat"},
}


def composite_of(rule: Any = "epsilon", composite: Any = None, *, rules: Optional[Mapping[str, Any]] = None,
                 epsilon: float = 1e-9, gamma: float = 0.25, bounds: Optional[Sequence[Any]] = None,
                 maxpool: str = "winner") -> Composite:
    """One `Composite` from the user's forms: a rule for every weighted node, a named composite or
    a Composite, plus per-node `rules` (Captum's per-layer `rule` attribute, by ONNX node name)."""
    from onnx_attr.errors import InputError

    if isinstance(composite, Composite):
        found = composite
    elif composite is None:
        found = Composite(rule, epsilon=epsilon, gamma=gamma, bounds=bounds, maxpool=maxpool)
    elif isinstance(composite, str) and composite in COMPOSITES:
        found = Composite(rule, **COMPOSITES[composite], epsilon=epsilon, gamma=gamma, bounds=bounds, maxpool=maxpool)
    else:
        raise InputError(f"unknown LRP composite {composite!r}; use one of {sorted(COMPOSITES)} or an "
                         "onnx_attr.Composite(default=..., conv=..., dense=..., first=..., names={...})")
    if rules:
        found = Composite(found.default, found.conv, found.dense, found.first, {**found.names, **rules},
                          found.epsilon, found.gamma, found.bounds, found.maxpool)
    return found
