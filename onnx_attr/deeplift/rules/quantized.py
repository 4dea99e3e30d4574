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
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen or n is stop:
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
    float64, Casts passed over: the float op with the dequantized weights, plus a constant."""

    def __init__(self, sub: fx.GraphModule):
        super().__init__()
        self.sub = sub

    def forward(self, x: Tensor) -> Tensor:
        return self.sub(x)

    def linear(self, v: Tensor, at: Tensor) -> Tensor:
        return _StraightThrough(self.sub, at).run(v).to(at.dtype)


class _StraightThrough(fx.Interpreter):
    """The block with rounding passed straight through, in x's own floating type: the map only
    gives the multipliers Wᵀg; completeness does not rest on its rounding, since the residual's
    share is what Δy leaves of through·Δx (`residual_share`). float64 here cost 3-5x the convolution."""

    def __init__(self, sub: fx.GraphModule, at: Tensor):
        super().__init__(sub)
        self.at = at
        self.dtype = at.dtype if at.is_floating_point() else torch.float64

    def run_node(self, n: fx.Node) -> Any:
        op = _op(n)
        if op not in ("DynamicQuantizeLinear", "Cast", *_INTEGER_OPS):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        module = self.fetch_attr(n.target)
        if op == "Cast":
            return args[0]
        dtype = self.dtype
        if op == "DynamicQuantizeLinear":
            # the scale and zero point come from at's range alone: quantize just its two ends
            _, scale, zero = module(torch.stack(torch.aminmax(self.at.detach())) if self.at.numel() else self.at)
            return args[0].to(dtype) / scale.to(dtype) + zero.to(dtype), scale, zero
        from onnx_attr.deeplift.ops import BoundOp, signature_names

        values = BoundOp(module, signature_names(module)).full(args, kwargs)
        if op == "ConvInteger":
            return _conv(module, dtype, *values)
        a, b, a_zero, b_zero = values + [None] * (4 - len(values))
        return _centred(a, a_zero, None, dtype) @ _centred(b, b_zero, -1, dtype)


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


def _conv(module: nn.Module, dtype: torch.dtype, x: Tensor, w: Tensor, x_zero=None, w_zero=None) -> Tensor:
    """ConvInteger's sum of centred products (converters/quantize.IntegerConv) in `dtype`."""
    from onnx_attr.importing.converters.convolution import _CONV, _spatial_rank
    from onnx_attr.importing.converters.pooling import window_padding

    rank = _spatial_rank(w, "ConvInteger")
    xs, ws = _centred(x, x_zero, None, dtype), _centred(w, w_zero, 0, dtype)
    plan = window_padding({**module.attrs, "kernel_shape": list(w.shape[2:])}, tuple(x.shape[2:]))
    padded = F.pad(xs, plan.pads) if any(plan.pads) else xs
    return _CONV[rank](padded, ws, None, plan.strides, 0, plan.dilations, module.group)


def fuse_quantized_blocks(module: fx.GraphModule) -> int:
    """Replace each dynamically quantized block by one `QuantizedBlock` node (op "QuantizedBlock",
    named after its integer op), so that DeepLift sees x → y; returns how many were fused."""
    count = 0
    for integer in [n for n in module.graph.nodes if _op(n) in _INTEGER_OPS]:
        source = integer.args[0] if integer.args else None
        quantize = source.args[0] if isinstance(source, fx.Node) and source.op == "call_function" and source.args \
            else None
        if not isinstance(quantize, fx.Node) or _op(quantize) != "DynamicQuantizeLinear":
            continue
        x = quantize.args[0]
        out = _block_output(integer)
        inner = _ancestors(out, x) if out is not None and isinstance(x, fx.Node) else None
        if inner is None:
            continue
        graph = fx.Graph()
        env = {x: graph.placeholder("x")}
        for n in module.graph.nodes:
            if n in inner:
                env[n] = graph.node_copy(n, lambda a: env[a])
        graph.output(env[out])
        name = f"quantized_block_{count}"
        module.add_submodule(name, QuantizedBlock(fx.GraphModule(module, graph)))
        with module.graph.inserting_after(out):
            fused = module.graph.call_module(name, (x,))
        fused.meta.update(onnx_op="QuantizedBlock", onnx_domain=QUANTIZED_DOMAIN, onnx_opset=1,
                          onnx_node=f"{integer.meta.get('onnx_node', integer.name)} (dynamically quantized)",
                          onnx_tensor=out.meta.get("onnx_tensor"), onnx_attrs={})
        out.replace_all_uses_with(fused)
        count += 1
    if count:
        module.graph.eliminate_dead_code()
        module.graph.lint()
        module.recompile()
    return count


QUANTIZED_DOMAIN = "onnx_attr.quantized"


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
        """`decompose`'s multipliers in closed form: one linear map at x, autograd only through it.

        The residual's share needs only g·r per example, and g·r = g·Δy − g·W·Δx = g·Δy − (Wᵀg)·Δx:
        the outputs at x and at the reference are the ones the two passes computed, and Wᵀg is the
        part through the map, so the map is not run at the reference (see `residual_share`)."""
        block, x = call.module, args[0].detach()
        x0 = refs[0].expand_as(x)  # a shared (batch-1) reference, as `decompose` sees it
        with torch.enable_grad():
            live = x.detach().requires_grad_(True)
            z = block.linear(live, x)
            (through,) = torch.autograd.grad(z, live, grad)
        with torch.no_grad():
            return [(through + residual_share(grad, out - ref_out, through, x, x0, 0)).to(x.dtype)]


def residual_share(grad: Tensor, dy: Tensor, through: Tensor, x: Tensor, x0: Tensor, batch_axis: int) -> Tensor:
    """`credit_share` from g·r = g·Δy − through·Δx (through = Wᵀg, the map's part of the multipliers):
    Δx·(g·r)/‖Δx‖² per example, its sums in float64 (g·Δy and through·Δx nearly cancel where the
    rounding residual is small), so Σ m·Δx = through·Δx + g·r = g·Δy per example."""
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    out_axes = tuple(a for a in range(dy.dim()) if a != batch_axis % dy.dim())
    dx = x - x0
    wide = torch.float64 if x.device.type != "mps" else x.dtype
    norm2 = torch.sum(dx * dx, axes, keepdim=True, dtype=wide)
    g_dy = torch.sum(grad * dy, out_axes, dtype=wide) if out_axes else (grad * dy).to(wide)
    g_r = g_dy.reshape(norm2.shape) - torch.sum(through * dx, axes, keepdim=True, dtype=wide)
    per_example = g_r / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    return per_example.to(dx.dtype).expand_as(dx) * dx


def credit_share(grad: Tensor, residual: Tensor, x: Tensor, x0: Tensor, batch_axis: int) -> Tensor:
    """The residual's part of `credited`'s multipliers: Δx·(g·r)/‖Δx‖² per example (0 where Δx is 0),
    summed in the order autograd sums `credited`'s graph."""
    axes = tuple(a for a in range(x.dim()) if a != batch_axis % x.dim())
    dx = x - x0
    norm2 = (dx * dx).sum(axes, keepdim=True)
    per_example = (grad * residual).sum_to_size(norm2.shape) / torch.where(norm2 > 0, norm2, torch.ones_like(norm2))
    return per_example.expand_as(dx) * dx
