"""Gradient methods on a dynamically quantized model: the rounding taken straight through.

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
(`QuantizedWeight.exact`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx

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


def straight_through_view(model):
    """The model with each dynamically quantized block as a `StraightThroughBlock` (the model itself
    where it has none); found once per model."""
    from onnx_attr.deeplift.rewrite import inline_expansions

    found = model.__dict__.get("_straight_through_view")
    if found is None:
        found = model
        if any(n.op_type in _QUANTIZED_PRODUCTS for n in model.onnx_model.graph.node):  # the file's: no copy else
            module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
            inline_expansions(module, recompile=False)  # com.microsoft DynamicQuantizeMatMul: its steps
            if fuse_quantized_blocks(module, StraightThroughBlock):
                found = model.with_module(module, notes=(
                    "gradient methods pass the rounding of its dynamically quantized blocks straight through",))
        model.__dict__["_straight_through_view"] = found
    return found
