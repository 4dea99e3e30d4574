"""Dynamically quantized blocks: quantize the input over its own range, an integer op with
integer weights, dequantize. DeepLift treats the block as the float op it approximates (the
dequantized weights give the multipliers) and credits the rounding residual back exactly:
for each example, r = Δy − W·Δx (what quantization changed of the block's difference) is spread
over that example's inputs in proportion to Δx, m = Wᵀg + Δx·(g·r)/‖Δx‖², so
Σ m·Δx = g·W·Δx + g·r = g·Δy, as exact as the secant of a unary op.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from onnx_attr.deeplift.rules.base import DecomposedRule, NodeInfo, rule
from onnx_attr.importing.interpreter import Interpreter


def credited(exact: Callable[[Tensor], Tensor], linear: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor,
             batch_axis: int) -> tuple[Tensor, Tensor]:
    """(y, y0) = (exact(x), exact(x0)) carrying the multipliers of `linear` plus the residual's share.

    The value is the quantized block's own; only the backward differs. An example whose Δx is 0 gets
    no share (its residual is then 0 unless the block's range is shared with other examples)."""
    y, y0 = exact(x.detach()), exact(x0)
    z = linear(x)
    residual = ((y - y0) - (z.detach() - linear(x0))).detach()
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    dx = (x - x0).detach()
    norm2 = (dx * dx).sum(axes, keepdim=True)
    share = ((x - x0) * dx).sum(axes, keepdim=True) / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    # x and y have the same rank and batch axis (the map acts on the last axis): share broadcasts
    return y.detach() + (z - z.detach()) + residual * (share - share.detach()), y0


class _CreditedProduct(torch.autograd.Function):
    """y = exact(x), whose backward is `credited`'s multipliers in closed form for a product x @ W:
    Wᵀg through the float product, plus the residual's share from g·r = g·Δy − (Wᵀg)·Δx
    (`residual_share`). No graph is built around the product, and W is never applied at the
    reference nor run forward at x for autograd's sake."""

    @staticmethod
    def forward(ctx, x: Tensor, x0: Tensor, y: Tensor, y0: Tensor, weight: Tensor, batch_axis: int) -> Tensor:
        ctx.batch_axis = batch_axis
        ctx.save_for_backward(x, x0, y - y0, weight)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, x0, dy, weight = ctx.saved_tensors
        through = grad @ weight.T
        share = residual_share(grad, dy, through, x.detach(), x0.expand_as(x), ctx.batch_axis)
        return (through + share).to(x.dtype), None, None, None, None, None


def credited_product(weight, x: Tensor, x0: Tensor, batch_axis: int, y0: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
    """`credited` for a dynamically quantized product (a `QuantizedWeight`: `exact` the quantized
    product, `weight` the dequantized matrix), its backward in closed form (`_CreditedProduct`);
    `y0`: the product at the reference where the caller has it."""
    with torch.no_grad():
        y = weight.exact(x.detach())
        y0 = weight.exact(x0.detach()) if y0 is None else y0
    return _CreditedProduct.apply(x, x0.detach(), y, y0, weight.weight, batch_axis), y0


# --- DynamicQuantizeLinear → ConvInteger/MatMulInteger (→ Add) → Cast → Mul, as one node ---------

_INTEGER_OPS = ("ConvInteger", "MatMulInteger")


def _op(node: fx.Node) -> str:
    return node.meta.get("onnx_op", "") if node.op == "call_module" else ""


def _block_output(integer: fx.Node) -> fx.Node | None:
    """The Mul that dequantizes an integer op's result: through integer Adds (the quantized bias)
    to a Cast, then its one Mul; None when the graph does not have that shape."""
    node = integer
    while len(node.users) == 1 and _op(next(iter(node.users))) == "Add":
        node = next(iter(node.users))
    users = list(node.users)
    if len(users) != 1 or _op(users[0]) != "Cast" or len(users[0].users) != 1:
        return None
    mul = next(iter(users[0].users))
    return mul if _op(mul) == "Mul" else None


def _ancestors(node: fx.Node, stop: fx.Node) -> set[fx.Node] | None:
    """The nodes `node` is computed from, not looking past `stop`; None if a graph input is among
    them (the block then reads more than `stop`)."""
    return _ancestors_within(node, {stop})


def _ancestors_within(node: fx.Node, stops: set[fx.Node]) -> set[fx.Node] | None:
    """`_ancestors` with several stops (a product's two factors)."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen or n in stops:
            continue
        if n.op == "placeholder":
            return None
        seen.add(n)
        stack.extend(a for a in (*n.args, *n.kwargs.values()) if isinstance(a, fx.Node))
        stack.extend(a for v in (*n.args, *n.kwargs.values()) if isinstance(v, (list, tuple))
                     for a in v if isinstance(a, fx.Node))
    return seen


class QuantizedBlock(nn.Module):
    """The nodes from a DynamicQuantizeLinear's input x to the Mul that dequantizes the integer
    op's result, replayed as they are (`forward`, bit for bit) or straight through (`linear`):
    x/s + zp for the quantized x at the scale and zero point of `at`, the integer op summed in
    x's floating type, Casts passed over: the float op with the dequantized weights, plus a constant.
    `transpose` gives that map's Wᵀg without running it."""

    def __init__(self, sub: fx.GraphModule):
        super().__init__()
        self.sub = sub
        self.centred: dict = {}  # the integer weights less their zero points, per weight and type

    def forward(self, x: Tensor) -> Tensor:
        return self.sub(x)

    def linear(self, v: Tensor, at: Tensor) -> Tensor:
        return _StraightThrough(self, at).run(v).to(at.dtype)

    def transpose(self, grad: Tensor, at: Tensor) -> Tensor | None:
        """`linear`'s input gradient for `grad` in closed form: back along the dequantizing chain
        (Mul, Div by values of the scales alone, Add, Sub, Cast), the integer op's transpose (one
        transposed convolution or matmul), then 1/s of the quantizer. Running `linear` under autograd
        costs its forward convolution and an fx interpretation per node besides: 6 ms of a block's
        7 on a captcha net. None where the block is not such a chain (the caller then does that)."""
        found = self.__dict__.get("chain", False)  # the sub-graph's shape, read once
        if found is False:
            found = self.__dict__["chain"] = _dequantizing_chain(self.sub.graph)
        if found is None:
            return None
        quantize, integer, chain, unread = found
        side = _StraightThrough(self, at, skip=unread)
        side.run(at)
        env = side.env
        module, values = side.inputs_of(integer)
        width, dtype = at.shape, side.dtype
        transposed = _conv_transpose if _op(integer) == "ConvInteger" else _matmul_transpose
        linears = [integer, *chain[:-1]]  # each chain node's operand computed from x
        shapes = [transposed(self, module, dtype, None, width, *values[1:])]
        if shapes[0] is None:
            return None
        for node, linear in zip(chain[:-1], linears):
            shapes.append(_chain_shape(node, linear, shapes[-1], env))
        g = grad.to(dtype)
        for node, linear, shape in zip(reversed(chain), reversed(linears), reversed(shapes)):
            g = _chain_back(node, linear, g, shape, env)
        g = transposed(self, module, dtype, g, width, *values[1:])
        return g / env[quantize][1].to(dtype)

    def straight_through(self, grad: Tensor, at: Tensor) -> Tensor:
        """Wᵀg of `linear` at `at`: in closed form (`transpose`), else by autograd through the map."""
        through = self.transpose(grad, at)
        if through is None:
            with torch.enable_grad():
                live = at.detach().requires_grad_(True)
                (through,) = torch.autograd.grad(self.linear(live, at), live, grad)
        return through

    def centred_weight(self, t: Tensor, zero: Tensor | None, axis: int | None, dtype: torch.dtype) -> Tensor:
        """`_centred` of a weight, kept per weight tensor and type: the graph's constants, read whole
        on every call otherwise."""
        from onnx_attr.importing.converters.quantize import tensor_identity

        key = (tensor_identity(t), tensor_identity(zero), axis, dtype)
        found = self.centred.get(key)
        if found is None:
            if len(self.centred) > 4:
                self.centred.clear()
            found = self.centred[key] = _centred(t, zero, axis, dtype)
        return found


class _StraightThrough(Interpreter):
    """The block with rounding passed straight through, in x's own floating type: the map only
    gives the multipliers Wᵀg; completeness does not rest on its rounding, since the residual's
    share is what Δy leaves of through·Δx (`residual_share`). float64 here cost 3-5x the convolution.
    With `skip`, only the values beside those nodes (the scales, zero points, quantized biases), kept."""

    def __init__(self, block: QuantizedBlock, at: Tensor, skip: set | None = None):
        super().__init__(block.sub, garbage_collect_values=not skip)
        self.block, self.at, self.skip = block, at, skip or set()
        self.dtype = at.dtype if at.is_floating_point() else torch.float64

    def inputs_of(self, n: fx.Node) -> tuple[nn.Module, list]:
        """A node's module and its inputs in signature order (skipped optional ones None)."""
        from onnx_attr.deeplift.ops import BoundOp, signature_names

        args, kwargs = self.fetch_args_kwargs_from_env(n)
        module = self.fetch_attr(n.target)
        return module, BoundOp(module, signature_names(module)).full(args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        if n in self.skip:
            return None
        op = _op(n)
        if op not in ("DynamicQuantizeLinear", "Cast", *_INTEGER_OPS) or (
                op == "DynamicQuantizeLinear" and not (n.args and getattr(n.args[0], "op", None) == "placeholder")):
            # a weight the quantizer quantizes in the graph (a Constant node's, which it takes for an
            # activation) is a constant: its integers as the forward computes them
            return super().run_node(n)
        module, values = self.inputs_of(n)
        if op == "Cast":
            return values[0]
        dtype = self.dtype
        if op == "DynamicQuantizeLinear":
            # the scale and zero point come from at's range alone: quantize just its two ends
            _, scale, zero = module(torch.stack(torch.aminmax(self.at.detach())) if self.at.numel() else self.at)
            q = None if self.skip else values[0].to(dtype) / scale.to(dtype) + zero.to(dtype)
            return q, scale, zero
        if op == "ConvInteger":
            return _conv(self.block, module, dtype, *values)
        a, b, a_zero, b_zero = values + [None] * (4 - len(values))
        return _centred(a, a_zero, None, dtype) @ self.block.centred_weight(b, b_zero, -1, dtype)


def _centred(t: Tensor, zero: Tensor | None, axis: int | None, dtype: torch.dtype) -> Tensor:
    """t − zero point in `dtype`; a zero point with more than one element runs along `axis`."""
    value = t.to(dtype)
    if zero is None:
        return value
    zero = zero.to(dtype)
    if zero.numel() > 1 and axis is not None:
        shape = [1] * t.dim()
        shape[axis] = zero.numel()
        zero = zero.reshape(shape)
    return value - (zero.reshape(()) if zero.numel() == 1 else zero)


def _conv_geometry(module: nn.Module, w: Tensor, width: tuple[int, ...]):
    from onnx_attr.importing.converters.convolution import _CONV, _spatial_rank
    from onnx_attr.importing.converters.pooling import window_padding

    rank = _spatial_rank(w, "ConvInteger")
    return rank, _CONV[rank], window_padding({**module.attrs, "kernel_shape": list(w.shape[2:])}, tuple(width[2:]))


def _conv(block: QuantizedBlock, module: nn.Module, dtype: torch.dtype, x: Tensor, w: Tensor, x_zero=None,
          w_zero=None) -> Tensor:
    """ConvInteger's sum of centred products (converters/quantize.IntegerConv) in `dtype`."""
    _, conv, plan = _conv_geometry(module, w, tuple(x.shape))
    xs, ws = _centred(x, x_zero, None, dtype), block.centred_weight(w, w_zero, 0, dtype)
    padded = F.pad(xs, plan.pads) if any(plan.pads) else xs
    return conv(padded, ws, None, plan.strides, 0, plan.dilations, module.group)


def _conv_transpose(block: QuantizedBlock, module: nn.Module, dtype: torch.dtype, g: Tensor | None,
                    width: torch.Size, w: Tensor, x_zero=None, w_zero=None):
    """`_conv`'s input gradient for g (its output's shape when g is None), without its forward."""
    rank, conv, plan = _conv_geometry(module, w, tuple(width))
    padded = list(width[:2]) + [n + plan.pads[2 * (rank - 1 - i)] + plan.pads[2 * (rank - 1 - i) + 1]
                                for i, n in enumerate(width[2:])]
    if g is None:
        meta = torch.empty(padded, device="meta")
        return conv(meta, w.to("meta", torch.float32), None, plan.strides, 0, plan.dilations, module.group).shape
    ws = block.centred_weight(w, w_zero, 0, dtype)
    placeholder = g.new_empty(1).expand(padded)
    grad, _, _ = torch.ops.aten.convolution_backward(
        g, placeholder, ws, None, plan.strides, [0] * rank, plan.dilations, False, [0] * rank, module.group,
        [True, False, False])
    return F.pad(grad, [-p for p in plan.pads]) if any(plan.pads) else grad


def _matmul_transpose(block: QuantizedBlock, module: nn.Module, dtype: torch.dtype, g: Tensor | None,
                      width: torch.Size, b: Tensor, a_zero=None, b_zero=None):
    """(A − a_zero) @ (B − b_zero)'s gradient in A for g (its output's shape when g is None)."""
    if len(width) < 2 or b.dim() < 2:
        return None
    if g is None:
        return torch.matmul(torch.empty(width, device="meta"), b.to("meta", torch.float32)).shape
    bs = block.centred_weight(b, b_zero, -1, dtype)
    return (g @ bs.transpose(-1, -2)).sum_to_size(width)


_CHAIN_OPS = ("Add", "Sub", "Mul", "Div", "Cast")


def _dequantizing_chain(graph: fx.Graph) -> tuple[fx.Node, fx.Node, list[fx.Node], set[fx.Node]] | None:
    """(the quantizer, the integer op, the chain from it to the output, the nodes the transpose
    does not read) where x reaches the output
    only through quantizer → integer op → a chain of Add/Sub/Mul/Div/Cast whose other operands are
    the scales' values (Div only by them), each node used once; None otherwise."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    integers = [n for n in nodes if _op(n) in _INTEGER_OPS]
    if len(placeholders) != 1 or len(placeholders[0].users) != 1 or len(integers) != 1:
        return None
    x = placeholders[0]
    quantize, integer = next(iter(x.users)), integers[0]
    source = integer.args[0] if integer.args else None
    if _op(quantize) != "DynamicQuantizeLinear" or not isinstance(source, fx.Node) \
            or source.op != "call_function" or source.args != (quantize, 0) or len(source.users) != 1:
        return None
    chain, node = [], integer
    output = next(n for n in reversed(nodes) if n.op == "output")
    while output.args[0] is not node:
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if _op(user) not in _CHAIN_OPS or user.kwargs or (_op(user) == "Cast") != (len(user.args) == 1) \
                or list(user.args).count(node) != 1 or (_op(user) == "Div" and user.args[0] is not node):
            return None
        chain.append(user)
        node = user
    # what the transpose reads: the integer op's weights and zero points, the Mul/Div operands, the
    # scale; the rest (the chain itself, the quantized bias an Add brings in) is never computed
    read = [a for a in integer.args[1:] if isinstance(a, fx.Node)] + [
        _operand_node(n, linear) for n, linear in zip(chain, [integer, *chain]) if _op(n) in ("Mul", "Div")]
    wanted = set().union(*(_ancestors(n, x) or set() for n in read if isinstance(n, fx.Node))) | {quantize}
    unread = {n for n in nodes if n.op not in ("placeholder", "output") and n not in wanted}
    return quantize, integer, chain, unread


def _operand_node(node: fx.Node, linear: fx.Node):
    """What a chain node combines with the chain's value `linear` (a scale, a bias)."""
    return node.args[1] if node.args[0] is linear else node.args[0]


def _operand(node: fx.Node, linear: fx.Node, env: dict):
    other = _operand_node(node, linear)
    return env[other] if isinstance(other, fx.Node) else other


def _chain_shape(node: fx.Node, linear: fx.Node, shape: torch.Size, env: dict) -> torch.Size:
    if _op(node) == "Cast":
        return shape
    return torch.broadcast_shapes(shape, tuple(getattr(_operand(node, linear, env), "shape", ())))


def _chain_back(node: fx.Node, linear: fx.Node, g: Tensor, shape: torch.Size, env: dict) -> Tensor:
    """g through one chain node, back to its chain operand's `shape`."""
    op = _op(node)
    if op in ("Mul", "Div"):
        other = _operand(node, linear, env)
        g = g * other if op == "Mul" else g / other
    elif op == "Sub" and node.args[1] is linear:
        g = -g
    return g if g.shape == shape else g.sum_to_size(shape)


def fuse_quantized_blocks(module: fx.GraphModule, block: type[QuantizedBlock] = QuantizedBlock) -> int:
    """Replace each dynamically quantized block by one `block` node (op "QuantizedBlock", named
    after its integer op), so that DeepLift sees x → y; returns how many were fused."""
    count = 0
    for integer in [n for n in module.graph.nodes if _op(n) in _INTEGER_OPS]:
        x = _quantized_operand(integer, 0)
        out = _block_output(integer) if x is not None else None
        inner = _ancestors(out, x) if out is not None else None
        if inner is None:
            continue
        _splice(module, {x: "x"}, inner, out, integer, block, f"quantized_block_{count}", "QuantizedBlock")
        count += 1
    return _tidied(module, count)


def _tidied(module: fx.GraphModule, count: int) -> int:
    """`count`, after the spliced-out nodes are dropped and the module recompiled (where any were)."""
    if count:
        module.graph.eliminate_dead_code()
        module.graph.lint()
        module.recompile()
    return count


def _splice(module: fx.GraphModule, inputs: dict[fx.Node, str], inner: set[fx.Node], out: fx.Node,
            integer: fx.Node, wrapper: type[nn.Module], name: str, op: str) -> None:
    """Move the nodes `inner` (read from `inputs`, ending at `out`) into a sub-graph wrapped as `name`,
    and call it in their place as one node of op `op`, named after its integer op."""
    graph = fx.Graph()
    env = {node: graph.placeholder(placeholder) for node, placeholder in inputs.items()}
    for n in module.graph.nodes:
        if n in inner:
            env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[out])
    module.add_submodule(name, wrapper(fx.GraphModule(module, graph)))
    with module.graph.inserting_after(out):
        fused = module.graph.call_module(name, tuple(inputs))
    fused.meta.update(onnx_op=op, onnx_domain=QUANTIZED_DOMAIN, onnx_opset=1,
                      onnx_node=f"{integer.meta.get('onnx_node', integer.name)} (dynamically quantized)",
                      onnx_tensor=out.meta.get("onnx_tensor"), onnx_attrs={})
    out.replace_all_uses_with(fused)


QUANTIZED_DOMAIN = "onnx_attr.quantized"


# --- two activations, each quantized over its own range, multiplied: MatMulInteger(Q(a), Q(b)) → Cast → Mul --

def _quantized_operand(integer: fx.Node, position: int) -> fx.Node | None:
    """The float tensor whose DynamicQuantizeLinear feeds the integer op's operand `position`."""
    source = integer.args[position] if len(integer.args) > position else None
    quantize = source.args[0] if isinstance(source, fx.Node) and source.op == "call_function" and source.args \
        else None
    if not isinstance(quantize, fx.Node) or _op(quantize) != "DynamicQuantizeLinear":
        return None
    x = quantize.args[0] if quantize.args else None
    return x if isinstance(x, fx.Node) else None


class QuantizedProduct(nn.Module):
    """The nodes from two DynamicQuantizeLinear inputs a and b to the Mul that dequantizes their
    MatMulInteger (attention's Q·Kᵀ and weights·V after onnxruntime's quantize_dynamic), replayed as
    they are: the product a @ b with both factors rounded on their own ranges."""

    def __init__(self, sub: fx.GraphModule):
        super().__init__()
        self.sub = sub

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.sub(a, b)


def fuse_quantized_products(module: fx.GraphModule) -> int:
    """Replace each MatMulInteger of two dynamically quantized activations, with its dequantizing
    Cast → Mul, by one `QuantizedProduct` node (op "QuantizedProduct"); returns how many."""
    count = 0
    for integer in [n for n in module.graph.nodes if _op(n) == "MatMulInteger"]:
        a, b = _quantized_operand(integer, 0), _quantized_operand(integer, 1)
        out = _block_output(integer) if a is not None and b is not None and a is not b else None
        inner = _ancestors_within(out, {a, b}) if out is not None else None
        if inner is None:
            continue
        _splice(module, {a: "a", b: "b"}, inner, out, integer, QuantizedProduct, f"quantized_product_{count}",
                "QuantizedProduct")
        count += 1
    return _tidied(module, count)


@rule("QuantizedProduct")
class QuantizedProductRule(DecomposedRule):
    """The block as the float product a @ b, whose differences split exactly by the product rule,
    ab − a0b0 = Δa·b̄ + ā·Δb (ā, b̄ the means of input and reference), and the rounding residual
    r = Δy − (ab − a0b0) credited over both factors in proportion to their differences:
    m_a = g·b̄ᵀ + Δa·(g·r)/(‖Δa‖² + ‖Δb‖²), m_b likewise, per example, so Σ m·Δ = g·Δy."""

    def check(self, info: NodeInfo) -> None:
        if not info.variable_positions():
            raise NotImplementedError("a quantized product of constants")

    def decompose(self, info, call, args, refs):
        a, b = args[0], args[1]
        a0, b0 = refs[0].expand_as(a) if refs[0].dim() == a.dim() else refs[0], \
            refs[1].expand_as(b) if refs[1].dim() == b.dim() else refs[1]
        with torch.no_grad():
            y, y0 = call.module(a.detach(), b.detach()), call.module(refs[0], refs[1])
            wide = torch.float64 if a.device.type != "mps" else a.dtype
            float_change = a.detach().to(wide) @ b.detach().to(wide) - a0.to(wide) @ b0.to(wide)
            residual = ((y - y0).to(wide) - float_change).to(a.dtype)
        mean_a, mean_b = ((a.detach() + a0) / 2), ((b.detach() + b0) / 2)
        split = a @ mean_b + mean_a @ b  # the product rule's multipliers, b̄ᵀ g and āᵀ g
        # the residual goes to the factors that carry the output's rows on axis 0, per row (a factor
        # broadcast over the rows, DeBERTa's relative positions [D, 2k], gets the product rule's part);
        # where none does, the whole output is one row
        rows = [(t, t0) for t, t0 in ((a, a0), (b, b0)) if t.dim() == y.dim() and y.dim() and t.shape[0] == y.shape[0]]
        if not rows:
            rows, flat = [(a, a0), (b, b0)], True
        else:
            flat = False
        norm2, moved = 0, 0
        for t, t0 in rows:
            dt = t - t0
            axes = tuple(range(t.dim())) if flat else tuple(range(1, t.dim()))
            norm2 = norm2 + (dt.detach() ** 2).sum(axes)
            moved = moved + (dt * dt.detach()).sum(axes)
        share = moved / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
        if flat:
            return y + (split - split.detach()) + residual * (share - share.detach()), y0
        share = share.reshape((-1,) + (1,) * (y.dim() - 1))
        # a row that did not move can still have a residual where the ranges span rows (heads merged
        # into axis 0, quantized over all of them): it goes over all the rows' Δ, as `residual_share` does
        still = (norm2 == 0).reshape(share.shape)
        spread = moved.sum() / torch.where(norm2.sum() > 0, norm2.sum(), torch.ones_like(norm2.sum()))
        return y + (split - split.detach()) + residual * (share - share.detach()) \
            + (residual * still) * (spread - spread.detach()), y0


@rule("QuantizedBlock")
class QuantizedBlockRule(DecomposedRule):
    """The block as its float op, the rounding residual credited over Δx (see `credited`)."""

    def check(self, info: NodeInfo) -> None:
        if info.variable_positions() != (0,):
            raise NotImplementedError("a quantized block whose weights vary with the input")

    def decompose(self, info, call, args, refs):
        block = call.module
        x = args[0]
        return credited(block, lambda v: block.linear(v, x.detach()), x, refs[0], 0)

    def backward(self, info, call, grad, args, out, refs, ref_out):
        """`decompose`'s multipliers in closed form: the linear map's transpose at x (autograd
        through the map where the block is not a plain dequantizing chain).

        The residual's share needs only g·r per example, and g·r = g·Δy − g·W·Δx = g·Δy − (Wᵀg)·Δx:
        the outputs at x and at the reference are the ones the two passes computed, and Wᵀg is the
        part through the map, so the map is not run at the reference (see `residual_share`)."""
        block, x = call.module, args[0].detach()
        x0 = refs[0].expand_as(x)  # a shared (batch-1) reference, as `decompose` sees it
        through = block.straight_through(grad, x)
        with torch.no_grad():
            return [(through + residual_share(grad, out - ref_out, through, x, x0, 0)).to(x.dtype)]


def residual_share(grad: Tensor, dy: Tensor, through: Tensor, x: Tensor, x0: Tensor, batch_axis: int) -> Tensor:
    """`credit_share` from g·r = g·Δy − through·Δx (through = Wᵀg, the map's part of the multipliers):
    Δx·(g·r)/‖Δx‖² per example, its sums in float64 (g·Δy and through·Δx nearly cancel where the
    rounding residual is small), so Σ m·Δx = through·Δx + g·r = g·Δy per example (per pass where an
    example that did not move has a residual)."""
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    out_axes = tuple(a for a in range(dy.dim()) if a != batch_axis % dy.dim())
    dx = x - x0
    wide = torch.float64 if x.device.type != "mps" else x.dtype
    norm2 = torch.sum(dx * dx, axes, keepdim=True, dtype=wide)
    g_dy = torch.sum(grad * dy, out_axes, dtype=wide) if out_axes else (grad * dy).to(wide)
    g_r = g_dy.reshape(norm2.shape) - torch.sum(through * dx, axes, keepdim=True, dtype=wide)
    moved = norm2 > 0
    per_example = g_r / torch.where(moved, norm2, torch.ones_like(norm2))
    # a slice that did not move can still have a residual: the scale is read off the whole tensor, so
    # it moves with the others (a ViT's class token, the same at x and at the reference, in torch's
    # time-major attention [T, N, D], whose slices on axis 0 are tokens); that residual is spread over
    # the whole tensor's Δx, so the sum stays exact
    stranded = torch.where(moved, torch.zeros_like(g_r), g_r).sum()
    per_example = per_example + torch.where(moved, stranded / norm2.sum(), torch.zeros_like(norm2))  # no sync
    return per_example.to(dx.dtype).expand_as(dx) * dx


def credit_share(grad: Tensor, residual: Tensor, x: Tensor, x0: Tensor, batch_axis: int) -> Tensor:
    """The residual's part of `credited`'s multipliers: Δx·(g·r)/‖Δx‖² per example (0 where Δx is 0),
    summed in the order autograd sums `credited`'s graph."""
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    dx = x - x0
    norm2 = (dx * dx).sum(axes, keepdim=True)
    per_example = (grad * residual).sum_to_size(norm2.shape) / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    return per_example.expand_as(dx) * dx
