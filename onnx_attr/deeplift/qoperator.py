"""Static quantization in QOperator format, for DeepLift: the integers carried in float tensors.

onnxruntime's static quantizer in QOperator format computes between the QuantizeLinear at the input
and the DequantizeLinear at the output in integers (QLinearConv, QLinearMatMul, QGemm, com.microsoft
QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearAveragePool,
QLinearGlobalAveragePool, QLinearConcat), so no gradient or multiplier reached the input. Each of
those kernels is a map that is linear in the centred integers (or a float op on them: a sigmoid, a
product) followed by a rounding to the output's integer grid, and that rounding is a staircase of the
value before it, as a QDQ pair's is (quant_fusion.py).

`expand_qoperator` carries every integer tensor of such a region as a float tensor holding the same
integers, and writes each op as the steps its kernel takes, each an ordinary node the rewrite has a
rule for: the zero point subtracted (Sub); the linear map (a Conv or MatMul of the centred integers
with the centred integer weights, exact as the converter sums them, then the requantizing factor: one
Conv, Gemm or MatMul node with its weight); `RoundClamp`, the rounding and saturation in the units of
the value before it, a FakeQuant node, which the rewrite fuses with the linear op before it for the
staircase split (rules/staircase.py); the zero point added back (Add). The arithmetic is the
converters' own, step for step (they share the functions), so every integer is the one onnxruntime
computes and the forward is unchanged, bit for bit. MaxPool and the ops that only move elements carry
the floats as they carried the integers. A region is expanded whole or not at all: an integer tensor
read by anything else (a graph output, an op with no such rule) leaves it refused, naming why.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.opkinds import QOPERATOR_OPS
from onnx_attr.deeplift.quant_fusion import FAKE_QUANT
from onnx_attr.deeplift.unary_fusion import FUSED_DOMAIN, _attribute

#: ops that carry an integer tensor's values unchanged when they are floats (data first; the others'
#: operands are shapes, indices or constants); a Resize only in nearest mode
CARRIERS = frozenset({"MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                      "Identity", "Concat", "Split", "Slice", "DepthToSpace", "SpaceToDepth", "Tile", "Expand",
                      "Pad", "Resize", "Gather"})

#: per QOperator op, the positions of its quantized data inputs (QLinearConcat's: from 2, every third)
_DATA = {"QLinearConv": (0,), "QLinearMatMul": (0, 3), "QGemm": (0, 3), "QLinearAdd": (0, 3), "QLinearMul": (0, 3),
         "QLinearSigmoid": (0,), "QLinearLeakyRelu": (0,), "QLinearAveragePool": (0,),
         "QLinearGlobalAveragePool": (0,), "QLinearSoftmax": (0,)}
#: per QOperator op, the positions of its output's zero point and of its (first) input's: the output's type
#: is its zero point's, else its input's (whose type is its zero point's), else uint8
_ZEROS = {"QLinearConv": (7, 2), "QLinearMatMul": (7, 2), "QGemm": (8, 2), "QLinearAdd": (7, 2), "QLinearMul": (7, 2),
          "QLinearSigmoid": (4, 2), "QLinearLeakyRelu": (4, 2), "QLinearAveragePool": (4, 2),
          "QLinearGlobalAveragePool": (4, 2), "QLinearConcat": (1, 4), "QLinearSoftmax": (None, 2)}
#: ops that read an integer tensor and compute on its floats what they did on it, without carrying values on
READERS = frozenset({"ArgMax", "ArgMin", "Shape", "Size"})
_OPSET = 13  # of the ONNX ops the steps are written as (ai.onnx's Mul from 7 broadcasts as torch.mul)


class RoundClamp(nn.Module):
    """clamp(round(v), low, high), as float32: a requantization's rounding (half to even) and saturation,
    in the units of the value it rounds, so that it is close to the identity inside its range, as a
    QDQ pair is (the staircase split reads its range at ±1e30). `rounding`: torch.trunc for an integer
    Resize's cast, which saturates first."""

    def __init__(self, low: float, high: float, rounding: Callable[[Tensor], Tensor] = torch.round):
        super().__init__()
        self.low, self.high, self.rounding = float(low), float(high), rounding

    def ends(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Its range, as scalars of `like`'s type (quant_fusion.staircase_range)."""
        return tuple(torch.tensor(v, dtype=like.dtype, device=like.device) for v in (self.low, self.high))

    def forward(self, v: Tensor) -> Tensor:
        if self.rounding is torch.trunc:
            return torch.trunc(v.clamp(self.low, self.high)).float()
        return torch.round(v).clamp(self.low, self.high).float()


class Widened(nn.Module):
    """An integer Resize's interpolation, on integers carried as floats: in float64, as on integers."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, x: Tensor, *rest: Any, **options: Any) -> Tensor:
        return self.op(x.double(), *rest, **options)


class Shift(nn.Module):
    """x - zero point, in float32 (exact for integers of 16 bits and their zero points)."""

    def forward(self, x: Tensor, zero: Tensor) -> Tensor:
        return x.float() - zero.float()


class Unshift(nn.Module):
    """A rounded value + its zero point, in float32 (exact)."""

    def forward(self, q: Tensor, zero: Tensor) -> Tensor:
        return q + zero.float()


class Scale(nn.Module):
    """x · scale in float32, as the kernels dequantize."""

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return x * scale.float()


class Divide(nn.Module):
    """x / scale in float32 (float64 where either is), as QuantizeLinear and the requantizations divide."""

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        wide = torch.float64 if torch.float64 in (x.dtype, scale.dtype) else torch.float32
        return x.to(wide) / scale.to(wide)


class Product(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class Sigmoid(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


class LeakyRelu(nn.Module):
    """QLinearLeakyRelu's float op, as its converter computes it."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, x * self.alpha)


class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *parts: Tensor) -> Tensor:
        return torch.cat(parts, self.axis)


class IntegerConvLinear(nn.Module):
    """QLinearConv before its rounding, on centred inputs: the exact convolution with the centred
    integer weights (`weight`, float32), plus the int32 bias, rescaled in float32 by
    x_scale·w_scale/y_scale (`converters.quantize.conv_rescaled`). Linear in its input."""

    def __init__(self, attrs: dict, weight: Tensor, bias: Optional[Tensor], multiplier: Tensor, bound: float):
        super().__init__()
        from onnx_attr.importing.converters.quantize import IntegerConv

        self.conv, self.bound = IntegerConv(attrs), bound
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("multiplier", multiplier, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        from onnx_attr.importing.converters.quantize import conv_rescaled

        acc = self.conv.accumulate(x, self.weight, bound=self.bound)
        return conv_rescaled(acc, self.bias, self.multiplier)


class IntegerMatMulLinear(nn.Module):
    """QLinearMatMul or QGemm before its rounding, on centred inputs, with a constant B: the exact
    product with the centred integer B (`weight`, float32, transposed as QGemm's transB says), plus
    QGemm's int32 C, times the scale ratio plus the zero point in float64
    (`converters.matrix.product_rescaled`); a QGemm without an output scale: its float output."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], ratio: Tensor, zero: Optional[Tensor],
                 requantized: bool, trans_a: bool, bound: float):
        super().__init__()
        self.requantized, self.trans_a, self.bound, self.plans = requantized, trans_a, bound, {}
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("ratio", ratio, persistent=False)
        self.register_buffer("zero", zero, persistent=False)

    def forward(self, a: Tensor) -> Tensor:
        from onnx_attr.importing.converters.matrix import integer_product, product_rescaled

        a = a.transpose(0, 1) if self.trans_a else a
        product = integer_product(a, self.weight, plans=self.plans, bound=self.bound).double()
        if self.bias is not None:
            product = product + self.bias.double()
        if not self.requantized:
            return (product * self.ratio.double()).float()
        return product_rescaled(product, self.ratio, self.zero)


class IntegerProduct(nn.Module):
    """QLinearMatMul's exact product of two varying centred operands (float64): bilinear."""

    def __init__(self, bound: float):
        super().__init__()
        self.bound, self.plans = bound, {}

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        from onnx_attr.importing.converters.matrix import integer_product

        return integer_product(a, b, plans=self.plans, bound=self.bound).double()


class ProductRescale(nn.Module):
    """An exact product times QLinearMatMul's scale ratio plus its zero point, in float64."""

    def __init__(self, ratio: Tensor, zero: Optional[Tensor]):
        super().__init__()
        self.register_buffer("ratio", ratio, persistent=False)
        self.register_buffer("zero", zero, persistent=False)

    def forward(self, product: Tensor) -> Tensor:
        from onnx_attr.importing.converters.matrix import product_rescaled

        return product_rescaled(product, self.ratio, self.zero)


class AddValue(nn.Module):
    """QLinearAdd before its rounding: a·a_scale/c_scale + b·b_scale/c_scale + a fixed term holding the
    zero points, in the kernel's order (`converters.quantize.qlinear_add_value`). Linear, with
    coefficients ≥ 0."""

    def __init__(self, constants: list[Optional[Tensor]]):
        super().__init__()
        self.names = ["a_scale", "a_zero", "b_scale", "b_zero", "c_scale", "c_zero"]
        for name, value in zip(self.names, constants):
            self.register_buffer(name, value, persistent=False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        from onnx_attr.importing.converters.quantize import qlinear_add_value

        sa, za, sb, zb, sc, zc = (getattr(self, n) for n in self.names)
        return qlinear_add_value(a, sa, za, b, sb, zb, sc, zc)


class PoolValue(nn.Module):
    """QLinearAveragePool or QLinearGlobalAveragePool before its rounding (the converter's `value`)."""

    def __init__(self, op: nn.Module, x_scale: Tensor, x_zero: Optional[Tensor], y_scale: Tensor):
        super().__init__()
        self.op = op
        self.register_buffer("x_scale", x_scale, persistent=False)
        self.register_buffer("x_zero", x_zero, persistent=False)
        self.register_buffer("y_scale", y_scale, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.op.value(x, self.x_scale, self.x_zero, self.y_scale)


class FloatCoded(nn.Module):
    """QLinearSoftmax run on integers carried as floats: cast to its type, run, cast back (its rounding
    is the kernel's own; DeepLift explains it with rules/composite.QuantizedSoftmax). Its gradient, for
    the gradient methods, passes the rounding straight through: that of softmax(x·x_scale)·floor(1/y_scale),
    the value the kernel rounds."""

    def __init__(self, op: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.op, self.dtype = op, dtype

    def forward(self, x: Tensor, *rest: Any) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _SoftmaxThrough.apply(x, self, *rest)
        return self.op(x.to(self.dtype), *rest).float()

    def unrounded(self, x: Tensor, x_scale: Tensor, y_scale: Tensor) -> Tensor:
        """softmax(x·x_scale)·floor(1/y_scale) over the kernel's axis (or the flattened axes from it)."""
        axis = self.op.axis % x.dim()
        z = x * x_scale.to(x.dtype)
        if self.op.opset < 13:
            p = torch.softmax(z.flatten(axis), -1).reshape(x.shape)
        else:
            p = torch.softmax(z, axis)
        return p * torch.floor(1.0 / y_scale.float()).to(x.dtype)


class _SoftmaxThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coded: FloatCoded, *rest: Any) -> Tensor:  # noqa: D102
        ctx.coded, ctx.scales, ctx.n_rest = coded, (rest[0], rest[2]), len(rest)
        ctx.save_for_backward(x)
        return coded.op(x.to(coded.dtype), *rest).float()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            live = x.detach().requires_grad_(True)
            (found,) = torch.autograd.grad(ctx.coded.unrounded(live, *ctx.scales), live, grad)
        return (found, None, *([None] * ctx.n_rest))


class Abandon(Exception):
    """The region cannot be carried as floats: why, in a phrase."""


def expand_qoperator(module: fx.GraphModule, variable: set[fx.Node]) -> tuple[list[str], str]:
    """Carry each QOperator region that varies with the attributed inputs as floats, in place (see the
    module docstring). Returns the expanded ops' ONNX names, and why nothing was expanded where a
    region could not be (empty when there was none). The caller recomputes which nodes vary and
    recompiles."""
    try:
        integer, exits = _region(module, variable)
    except Abandon as why:
        return [], str(why)
    if not integer:
        return [], ""
    expanded = []
    nodes = [node for node in module.graph.nodes if node in exits or node in integer
             and (_op(node) in QOPERATOR_OPS or _op(node) == "QuantizeLinear" or _rounds(node))]
    # a rounding carrier's range is its input's type
    types = {node: integer.get(node.args[0]) if _rounds(node) else integer.get(node) for node in nodes}
    try:
        for node in nodes:  # every node checked before the graph changes
            _steps(module, node, types[node])
    except Abandon as why:
        return [], str(why)
    for node in nodes:
        build = _steps(module, node, types[node])  # reads the node's inputs as the nodes before it left them
        with module.graph.inserting_before(node):
            final = build(_Writer(module, node))
        if "onnx_tensor" in node.meta:
            final.meta.setdefault("onnx_tensor", node.meta["onnx_tensor"])
        node.replace_all_uses_with(final)
        module.graph.erase_node(node)
        expanded.append(node.meta.get("onnx_node", node.name))
    _cancel_zero_points(module)
    return expanded, ""


def _cancel_zero_points(module: fx.GraphModule) -> None:
    """A zero point added back after a rounding and taken off again by the next op ((q + z) - z = q,
    exact for these integers): the next op reads the rounded value itself, so two feature maps fewer
    per layer are made and kept (DeepLift keeps what each of its passes reads)."""
    def step(node: Any, kind: type) -> bool:
        return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(
            module.get_submodule(node.target), kind)

    for node in list(module.graph.nodes):
        if step(node, Shift) and step(node.args[0], Unshift):
            zero, added = (_value(module, n) for n in (node.args[1], node.args[0].args[1]))
            if zero.dtype == added.dtype and torch.equal(zero, added):
                node.replace_all_uses_with(node.args[0].args[0])
                module.graph.erase_node(node)
    for node in list(module.graph.nodes):
        if step(node, Unshift) and not node.users:
            module.graph.erase_node(node)


def _region(module: fx.GraphModule, variable: set[fx.Node]) -> tuple[dict[fx.Node, torch.dtype], set[fx.Node]]:
    """The varying integer tensors, each with its type (from the QuantizeLinears of varying floats that
    feed anything but DequantizeLinears), and the nodes leaving them (DequantizeLinear, a float-output
    QGemm)."""
    from onnx_attr.deeplift.taps import LayerTap
    from onnx_attr.importing.convert import select_output

    integer: dict[fx.Node, torch.dtype] = {}
    exits: set[fx.Node] = set()
    stack = [(n, _quantized_dtype(module.get_submodule(n.target), _constant_arg(module, n, 2)))
             for n in module.graph.nodes if _op(n) == "QuantizeLinear" and n in variable and not n.kwargs
             and isinstance(n.args[0], fx.Node) and n.args[0] in variable
             and any(_op(u) != "DequantizeLinear" for u in n.users)]
    while stack:
        node, dtype = stack.pop()
        if node in integer:
            continue
        integer[node] = dtype
        for user in node.users:
            op = _op(user)
            where = [i for i, a in enumerate(user.args) if a is node]
            if user.op == "output":
                raise Abandon(f"the integer tensor {_name(node)} is an output of the graph")
            if user.kwargs and node in user.kwargs.values():
                raise Abandon(f"{_name(user)} ({op}) reads an integer tensor as an option")
            if op in QOPERATOR_OPS:
                data = _data_positions(op, len(user.args))
                if data is None:
                    raise Abandon(f"{_name(user)} ({op}) has no rule for its integer arithmetic")
                if not set(where) <= set(data):
                    raise Abandon(f"{_name(user)} ({op}) reads a varying integer tensor as its scale or zero point")
                if op == "QGemm" and _arg(user, 7) is None:
                    exits.add(user)
                else:
                    out, into = _ZEROS[op]
                    zero = _constant_arg(module, user, out) if out is not None else None
                    stack.append((user, _type_of(zero, _constant_arg(module, user, into))))
            elif op == "DequantizeLinear" and where == [0]:
                exits.add(user)
            elif op in CARRIERS and (op == "Concat" or where == [0]):
                stack.append((user, dtype))
            elif user.op == "call_function" and user.target in (operator.getitem, select_output) \
                    and _op(node) == "Split":  # one of its outputs
                stack.append((user, dtype))
            elif op in READERS and where == [0]:
                continue
            elif user.op == "call_module" and isinstance(module.get_submodule(user.target), LayerTap):
                stack.append((user, dtype))  # a layer asked for: attributed in the integers' units
            else:
                raise Abandon(f"the integer tensor {_name(node)} is read by {_name(user)} ({op or user.op}), "
                              "which does not carry integers as floats")
    return integer, exits


def _constant_arg(module: fx.GraphModule, node: fx.Node, i: int) -> Optional[Tensor]:
    """A node's input `i` where it is a constant the graph reads (None where absent or computed)."""
    arg = _arg(node, i)
    return _value(module, arg) if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _rounds(node: fx.Node) -> bool:
    """Whether a carrier rounds what it computes on integers: a Resize other than nearest (linear,
    cubic) interpolates in float64 and truncates (converters/resize.py), written as those two steps."""
    return _op(node) == "Resize" and (node.meta.get("onnx_attrs") or {}).get("mode", "nearest") != "nearest"


def _data_positions(op: str, n_args: int) -> Optional[tuple[int, ...]]:
    if op == "QLinearConcat":
        return tuple(range(2, n_args, 3))
    return _DATA.get(op)


class _Writer:
    """Writes the steps of one node before it, each a call_module node with the meta the rewrite reads."""

    def __init__(self, module: fx.GraphModule, node: fx.Node):
        self.module, self.node, self.count = module, node, 0

    def call(self, op: str, sub: nn.Module, args: tuple, attrs: Optional[dict] = None, fused: bool = False,
             opset: int = _OPSET, kwargs: Optional[dict] = None) -> fx.Node:
        """A step: an ONNX op (ai.onnx) or, `fused`, one of ours (FakeQuant is)."""
        self.count += 1
        name = f"{self.node.target}__q{self.count}"
        self.module.add_submodule(name, sub)
        new = self.module.graph.call_module(name, args, dict(kwargs or {}))
        onnx_name = self.node.meta.get("onnx_node", self.node.name)
        fused = fused or op == FAKE_QUANT
        new.meta.update(onnx_op=op, onnx_domain=FUSED_DOMAIN if fused else "", onnx_opset=1 if op == FAKE_QUANT else opset,
                        onnx_attrs=dict(attrs or {}), onnx_node=f"{onnx_name}/{op}")
        return new

    def constant(self, value: Tensor) -> fx.Node:
        self.count += 1
        name = f"{self.node.target}__q{self.count}_constant".replace(".", "_")
        self.module.register_buffer(name, value, persistent=False)
        return self.module.graph.get_attr(name)

    def shift(self, x: Any, zero: Optional[fx.Node]) -> Any:
        return x if zero is None else self.call("Sub", Shift(), (x, zero))

    def requantize(self, value: fx.Node, zero: Optional[fx.Node], dtype: torch.dtype, shifted: bool) -> fx.Node:
        """Rounding and saturation to `dtype`: of a value that holds the zero point already (`shifted`:
        QLinearAdd's, QLinearMatMul's), or one it is added to after rounding (the others)."""
        info = torch.iinfo(dtype)
        offset = 0.0 if shifted or zero is None else float(_value(self.module, zero))
        rounded = self.call(FAKE_QUANT, RoundClamp(info.min - offset, info.max - offset), (value,))
        return rounded if shifted or zero is None else self.call("Add", Unshift(), (rounded, zero))


def _steps(module: fx.GraphModule, node: fx.Node, dtype: Optional[torch.dtype]) -> Callable[[_Writer], fx.Node]:
    """How to write `node` as steps (raises Abandon where it cannot be); `dtype`: the integer type of its
    output (of its input, for a rounding carrier)."""
    op = _op(node)
    sub = module.get_submodule(node.target)
    if op == "Resize":  # interpolated in float64, then truncated to the type's range (converters/resize.py)
        info = torch.iinfo(dtype)

        def resize(w: _Writer) -> fx.Node:
            value = w.call("Resize", Widened(sub), tuple(node.args), node.meta.get("onnx_attrs"), kwargs=node.kwargs)
            return w.call(FAKE_QUANT, RoundClamp(info.min, info.max, torch.trunc), (value,))
        return resize
    args = [_arg(node, i) for i in range(len(node.args))]
    data = set(_data_positions(op, len(args)) or ()) | ({0} if op in ("QuantizeLinear", "DequantizeLinear") else set())
    for i, a in enumerate(args):
        if i not in data and a is not None and not (isinstance(a, fx.Node) and a.op == "get_attr"):
            raise Abandon(f"{_name(node)} ({op}) computes its scale or zero point in the graph")
    const = lambda i: None if i >= len(args) or args[i] is None else _value(module, args[i])  # noqa: E731
    for i in range(len(args)):
        if i not in data and const(i) is not None and const(i).numel() > 1 and not _per_channel_ok(op, i):
            raise Abandon(f"{_name(node)} ({op}) has a per-axis scale or zero point on an activation")
    if op == "QuantizeLinear":
        if const(1).dtype != torch.float32 or getattr(sub, "block_size", 0):
            raise Abandon(f"{_name(node)} (QuantizeLinear) quantizes from {const(1).dtype}")
        return lambda w: w.requantize(w.call("Div", Divide(), (args[0], args[1])), _arg(node, 2), dtype, False)
    if op == "DequantizeLinear":
        if const(1).dtype != torch.float32 or getattr(sub, "output", None) not in (None, torch.float32):
            raise Abandon(f"{_name(node)} (DequantizeLinear) dequantizes to another type than float32")
        return lambda w: w.call("Mul", Scale(), (w.shift(args[0], _arg(node, 2)), args[1]))
    if op == "QLinearConv":
        return _conv_steps(node, sub, args, const, dtype)
    if op in ("QLinearMatMul", "QGemm"):
        return _matmul_steps(node, sub, args, const, dtype)
    if op == "QLinearAdd":

        def add(w: _Writer) -> fx.Node:
            value = w.call("Add", AddValue([const(i) for i in (1, 2, 4, 5, 6, 7)]), (args[0], args[3]))
            return w.requantize(value, None, dtype, True)
        return add
    if op == "QLinearMul":
        ratio = const(1).float() * const(4).float() / const(6).float()

        def mul(w: _Writer) -> fx.Node:
            product = w.call("Mul", Product(), (w.shift(args[0], args[2]), w.shift(args[3], args[5])))
            return w.requantize(w.call("Mul", Scale(), (product, w.constant(ratio))), _arg(node, 7), dtype, False)
        return mul
    if op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        unary = (Sigmoid(), {}) if op == "QLinearSigmoid" else (LeakyRelu(sub.alpha), {"alpha": sub.alpha})

        def elementwise(w: _Writer) -> fx.Node:
            value = w.call("Mul", Scale(), (w.shift(args[0], args[2]), args[1]))
            value = w.call(op[len("QLinear"):], unary[0], (value,), unary[1])
            return w.requantize(w.call("Div", Divide(), (value, args[3])), _arg(node, 4), dtype, False)
        return elementwise
    if op in ("QLinearAveragePool", "QLinearGlobalAveragePool"):
        pool = PoolValue(sub, const(1), const(2), const(3))
        return lambda w: w.requantize(w.call(op[len("QLinear"):], pool, (args[0],)), _arg(node, 4), dtype, False)
    if op == "QLinearSoftmax":
        coded = FloatCoded(sub, dtype)
        return lambda w: w.call("QuantizedSoftmax", coded, tuple(args), {"axis": sub.axis}, fused=True, opset=sub.opset)
    if op == "QLinearConcat":

        def concat(w: _Writer) -> fx.Node:
            parts = []
            for i in range(2, len(args), 3):
                value = w.call("Mul", Scale(), (w.shift(args[i], args[i + 2]), args[i + 1]))
                parts.append(w.requantize(w.call("Div", Divide(), (value, args[0])), args[1], dtype, False))
            return w.call("Concat", Concat(sub.axis), tuple(parts), {"axis": sub.axis})
        return concat
    raise Abandon(f"{_name(node)} ({op}) has no rule for its integer arithmetic")


def _conv_steps(node, sub, args, const, dtype) -> Callable[[_Writer], fx.Node]:
    from onnx_attr.importing.converters.quantize import _centred_per_channel, _magnitude, conv_multiplier

    x_zero, weight = const(2), const(3)
    if weight is None or weight.dim() < 3:
        raise Abandon(f"{_name(node)} (QLinearConv) has no constant weight")
    centred = _centred_per_channel(weight, const(5), 0, torch.float32)
    multiplier = conv_multiplier(const(1), const(4), const(6), weight.dim())
    bound = _magnitude(torch.empty(0, dtype=_type_of(x_zero, None)), x_zero)
    linear = IntegerConvLinear(dict(sub.attrs), centred, const(8), multiplier, bound)
    return lambda w: w.requantize(w.call("Conv", linear, (w.shift(args[0], args[2]),)), _arg(node, 7), dtype, False)


def _matmul_steps(node, sub, args, const, dtype) -> Callable[[_Writer], fx.Node]:
    from onnx_attr.importing.converters.matrix import _centred
    from onnx_attr.importing.converters.quantize import _magnitude

    op = _op(node)
    gemm = op == "QGemm"
    y_scale, y_zero = (const(7), const(8)) if gemm else (const(6), const(7))
    # the scale ratio in the scales' type, as each converter computes it
    ratio = sub.alpha * const(1).float() * const(4).float() if gemm else const(1) * const(4)
    requantized = y_scale is not None
    if requantized:
        ratio = ratio / (y_scale.float() if gemm else y_scale)
    bound = _magnitude(torch.empty(0, dtype=_type_of(const(2), None)), const(2))
    if args[3].op != "get_attr":
        if gemm:
            raise Abandon(f"{_name(node)} (QGemm) multiplies two varying operands")

        def product(w: _Writer) -> fx.Node:  # two varying operands (attention's scores)
            value = w.call("MatMul", IntegerProduct(bound), (w.shift(args[0], args[2]), w.shift(args[3], args[5])))
            return w.requantize(w.call("Mul", ProductRescale(ratio, y_zero), (value,)), None, dtype, True)
        return product
    b = const(3).transpose(0, 1) if gemm and sub.trans_b else const(3)
    centred = _centred(b, const(5), False, torch.float32).contiguous()
    linear = IntegerMatMulLinear(centred, const(6) if gemm else None, ratio, y_zero, requantized,
                                 gemm and sub.trans_a, bound)

    def matmul(w: _Writer) -> fx.Node:
        value = w.call("Gemm" if gemm else "MatMul", linear, (w.shift(args[0], args[2]),))
        return w.requantize(value, None, dtype, True) if requantized else value
    return matmul


def _per_channel_ok(op: str, position: int) -> bool:
    """A weight's own per-channel scale or zero point (QLinearConv's, a constant B's), or QGemm's bias."""
    return (op == "QLinearConv" and position in (3, 4, 5, 8)) or (op in ("QLinearMatMul", "QGemm")
                                                                  and position in (3, 4, 5, 6))


def _quantized_dtype(quantize: nn.Module, zero: Optional[Tensor]) -> torch.dtype:
    from onnx_attr.importing.converters.quantize import _INT_RANGES, _TORCH_TO_ONNX

    from onnx import TensorProto

    kind = getattr(quantize, "output_type", None) or (_TORCH_TO_ONNX.get(zero.dtype) if zero is not None
                                                      else TensorProto.UINT8)
    if kind not in _INT_RANGES:
        raise Abandon(f"QuantizeLinear to type {kind}")
    return _INT_RANGES[kind][0]


def _type_of(zero: Optional[Tensor], input_zero: Optional[Tensor]) -> torch.dtype:
    """An integer output's type, by the kernels' rule: its zero point's, else its input's (which is the
    input's zero point's), else uint8."""
    if zero is not None:
        return zero.dtype
    return input_zero.dtype if input_zero is not None else torch.uint8


def _value(module: fx.GraphModule, node: fx.Node) -> Tensor:
    return _attribute(module, node.target)


def _arg(node: fx.Node, i: int) -> Any:
    return node.args[i] if i < len(node.args) else None


def _op(node: Any) -> str:
    return node.meta.get("onnx_op", "") if isinstance(node, fx.Node) and node.op == "call_module" else ""


def _name(node: fx.Node) -> str:
    return repr(node.meta.get("onnx_node", node.name))
