"""Gradient methods on a quantized model: the rounding taken straight through.

onnxruntime's `quantize_dynamic` writes each Conv and MatMul as DynamicQuantizeLinear (x rounded to
8 bits at a scale read off x's own range) -> ConvInteger or MatMulInteger -> a Mul by the two scales.
A rounded value has gradient zero almost everywhere, and an integer tensor carries none: autograd
reached the input only through the scales (a function of x's two extremes), so Saliency,
IntegratedGradients and every other gradient method measured next to nothing (IG's relative delta
about 1 on such models). The methods run on a view of the model whose blocks compute the same
forward, bit for bit, and whose backward is the float op's with the dequantized weights at the scale
the input got: the straight-through estimator, the same map DeepLift's rule takes its multipliers
through (`QuantizedBlock.straight_through`). com.microsoft DynamicQuantizeLSTM quantizes inside one
node: its products pass the rounding straight through in the converter itself
(`QuantizedWeight.exact`). A statically quantized (QDQ) graph rounds each activation through a
QuantizeLinear → DequantizeLinear pair: the view passes it straight through inside the integer range
(`StraightThroughFakeQuant`); before, every gradient method was refused on such a graph.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.rules.quantized import _INTEGER_OPS, QuantizedBlock, fuse_quantized_blocks

#: the ops whose blocks the view fuses (DynamicQuantizeMatMul is one, expanded)
_QUANTIZED_PRODUCTS = frozenset({*_INTEGER_OPS, "DynamicQuantizeMatMul"})


class StraightThroughBlock(QuantizedBlock):
    """A dynamically quantized block whose input gradient passes the rounding straight through."""

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.sub(x)
        return _PassedThrough.apply(x, self)


class _PassedThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, block: StraightThroughBlock) -> Tensor:  # noqa: D102
        ctx.block = block
        ctx.save_for_backward(x)
        return block.sub(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (x,) = ctx.saved_tensors
        return ctx.block.straight_through(grad, x).to(x.dtype), None


class StraightThroughFakeQuant(nn.Module):
    """A static quantization's QuantizeLinear → DequantizeLinear pair (`quant_fusion`'s fused node),
    its forward the pair's, bit for bit; its gradient 1 where x lies within the range the integer type
    holds and 0 where it saturates (the clipped straight-through estimator, as quantization-aware
    training differentiates the pair)."""

    def __init__(self, pair: nn.Module):
        super().__init__()
        self.pair = pair
        self._ranges: dict = {}  # per input shape: an IG's steps, a batch's chunks, all of one shape

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.pair(x)
        return _Clipped.apply(x, self.pair, self.range_at(x))

    def range_at(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The dequantized ends of the integer range, per element (`staircase_range`)."""
        from onnx_attr.deeplift.quant_fusion import staircase_range

        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self._ranges:
            self._ranges = {key: staircase_range(self.pair, x)}
        return self._ranges[key]


class _Clipped(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, pair: nn.Module, ends: tuple[Tensor, Tensor]) -> Tensor:  # noqa: D102
        with torch.no_grad():
            y = pair(x)
        low, high = ends
        ctx.save_for_backward((x >= low) & (x <= high))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


#: Elementwise ops whose derivative is unbounded: where a saturating pair after one clamps an infinity
#: (tf2onnx's LayerNorm: 1 / Sqrt(variance) of a variance rounded to 0), the pair sends gradient 0 and
#: the op's own backward makes 0·∞ = NaN of it.
_UNBOUNDED_SLOPE = frozenset({"Reciprocal", "Sqrt", "Log", "Pow", "Div"})


class ZeroStaysZero(nn.Module):
    """An elementwise op, its forward the op's bit for bit, whose backward keeps a zero gradient zero
    where the op's slope is infinite: the output there is flat (a saturated pair after it), so its
    contribution is 0, not NaN."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, *args):
        live = [isinstance(a, Tensor) and a.requires_grad for a in args]
        if not (torch.is_grad_enabled() and any(live)):
            return self.op(*args)
        return _ZeroStaysZero.apply(self.op, live, *args)


class _ZeroStaysZero(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op: nn.Module, live: list, *args):  # noqa: D102
        ctx.op, ctx.live = op, live
        ctx.save_for_backward(*(a for a in args if isinstance(a, Tensor)))
        ctx.template = [None if isinstance(a, Tensor) else a for a in args]
        return op(*args)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        from onnx_attr.deeplift.rules.paired import reduce_to

        saved = iter(ctx.saved_tensors)
        args = [next(saved) if t is None else t for t in ctx.template]
        with torch.enable_grad():
            # each varying input expanded to the output's shape: the zeros are kept per output element,
            # before a broadcast input's gradient sums over them
            spread = [a.detach().expand(grad.shape).requires_grad_(True) if live else a
                      for a, live in zip(args, ctx.live)]
            found = torch.autograd.grad(ctx.op(*spread), [a for a, live in zip(spread, ctx.live) if live], grad)
        found = iter(found)
        return (None, None, *(reduce_to(torch.where(grad == 0, 0.0, next(found)), a.shape) if live else None
                              for a, live in zip(args, ctx.live)))


def straight_through_view(model):
    """The model with each dynamically quantized block as a `StraightThroughBlock`, and each static
    quantization's QDQ pair on an activation as a `StraightThroughFakeQuant` (the model itself where
    it has neither); found once per model."""
    from onnx_attr.deeplift.qoperator import expand_qoperator
    from onnx_attr.deeplift.quant_fusion import FAKE_QUANT, fold_constant_dequantize, fuse_fake_quant
    from onnx_attr.deeplift.rewrite import inline_expansions
    from onnx_attr.importing.verify import statically_quantized

    found = model.__dict__.get("_straight_through_view")
    if found is None:
        found = model
        dynamic = any(n.op_type in _QUANTIZED_PRODUCTS for n in model.onnx_model.graph.node)
        static = statically_quantized(model.onnx_model)
        if dynamic or static:  # the file's: no copy else
            module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
            inline_expansions(module, recompile=False)  # com.microsoft DynamicQuantizeMatMul: its steps
            notes = []
            if dynamic and fuse_quantized_blocks(module, StraightThroughBlock):
                notes.append("gradient methods pass the rounding of its dynamically quantized blocks straight through")
            # every pair, those after an integer input's lookup too (a quantized one-hot): a pair on a constant
            # is never differentiated, so none needs telling apart
            # QOperator's integer ops carried as floats, their roundings pairs like QDQ's (deeplift/qoperator.py)
            carried = static and expand_qoperator(module, set(module.graph.nodes))[0]
            if static:
                fold_constant_dequantize(module, set())  # the weights' dequantization once, not per forward
            if static and (fuse_fake_quant(module, set(module.graph.nodes)) or carried):
                for node in module.graph.nodes:
                    if node.meta.get("onnx_op") == FAKE_QUANT:
                        module.add_submodule(node.target, StraightThroughFakeQuant(module.get_submodule(node.target)))
                    elif node.op == "call_module" and node.meta.get("onnx_op") in _UNBOUNDED_SLOPE and not node.kwargs:
                        module.add_submodule(node.target, ZeroStaysZero(module.get_submodule(node.target)))
                module.recompile()
                notes.append("gradient methods pass the rounding of its QuantizeLinear → DequantizeLinear pairs straight "
                             "through where the value is within the integer range (0 where it saturates)")
            if notes:
                found = model.with_module(module, notes=tuple(notes))
        model.__dict__["_straight_through_view"] = found
    return found
