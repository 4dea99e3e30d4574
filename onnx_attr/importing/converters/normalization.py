"""Normalizations: BatchNormalization at any rank, and those that keep scale and bias as inputs.

onnx2torch folds LayerNorm/InstanceNorm parameters into `nn.LayerNorm`/`nn.InstanceNorm`, which
hides from the DeepLift rewrite which inputs are constants; here they stay visible graph inputs.
Its BatchNormalization picks a torch class by the input rank shape inference reports, and
refuses the node when that rank was lost; ours does not need the rank.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


def contiguous_both_ways(kernel, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """`kernel(x, ...)` with x and the gradient coming back to its output both contiguous: torch
    2.14's CPU backward of batch_norm (and of instance_norm, built on it) reads the incoming gradient
    as if laid out like its input, so a Transpose after it (PP-OCRv5's SVTR neck: BN, Reshape,
    Transpose) gave wrong input gradients and wrong attributions from every method, while the forward,
    and so verify, was right. Same values, so the forward is unchanged."""
    out = kernel(x.contiguous(), *args, **kwargs)
    if out.requires_grad:
        out.register_hook(lambda grad: grad.contiguous())
    return out


class _ConstantBatchNorm(torch.autograd.Function):
    """torch's batch_norm forward, and the gradient of an affine map by constants: the incoming one
    times weight / sqrt(var + eps) per channel. torch's backward keeps the input for the statistics'
    and the weight's gradients, which constants do not have: a conv-BN-activation net's saved feature
    maps shrink by a fifth for every gradient method (layout_cdla's plain forward: 861 to 692 MB)."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps: float):
        ctx.scale = (weight * torch.rsqrt(var + eps)).reshape(1, -1, *[1] * (x.dim() - 2))
        return F.batch_norm(x.contiguous(), mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None, None, None, None, None


class AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Inference-mode batch normalization with constant statistics over (N, C, ...) inputs of any
    rank >= 2. A torch `_BatchNorm` (RevealCancel reads its `weight` and `running_var` to see
    whether it keeps signs) whose forward always uses the running statistics, as ONNX does."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"BatchNormalization needs an (N, C, ...) input, got rank {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if torch.is_grad_enabled() and x.requires_grad and not any(
                t is not None and t.requires_grad for t in (self.weight, self.bias, self.running_mean, self.running_var)):
            return _ConstantBatchNorm.apply(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        return contiguous_both_ways(F.batch_norm, x, self.running_mean, self.running_var, self.weight, self.bias, False,
                                    0.0, self.eps)


class BatchNormalization(nn.Module):
    """Inference-mode batch normalization whose scale, bias or statistics are computed in the graph."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor) -> torch.Tensor:
        if mean.requires_grad or var.requires_grad:  # torch's kernel takes no gradient to its statistics
            shape = (1, -1, *[1] * (x.dim() - 2))
            return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.epsilon) * scale.reshape(shape) \
                + bias.reshape(shape)
        return contiguous_both_ways(F.batch_norm, x, mean, var, scale, bias, False, 0.0, self.epsilon)


def inference_batch_norm(node, graph) -> OperationConverterResult:
    """BatchNormalization with running statistics (training_mode 0), whatever the input's rank."""
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    names = node.input_values
    mapping = OnnxMapping(inputs=names, outputs=node.output_values[:1])
    if not all(n in graph.initializers for n in names[1:5]):
        return OperationConverterResult(torch_module=BatchNormalization(epsilon), onnx_mapping=mapping)
    scale, bias, mean, var = (graph.initializers[n].to_torch() for n in names[1:5])
    module = AnyRankBatchNorm(scale.shape[0], eps=epsilon, device="meta")
    # constants of the graph: no gradient of theirs is asked for (so none keeps the input, `_ConstantBatchNorm`)
    module.weight, module.bias = nn.Parameter(scale, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    module.running_mean, module.running_var = mean, var
    module.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    return OperationConverterResult(torch_module=module,
                                    onnx_mapping=OnnxMapping(inputs=names[:1], outputs=node.output_values[:1]))


class ElementwiseBatchNorm(nn.Module):
    """BatchNormalization with spatial=0 (opsets 7-8): statistics, scale and bias per element of one
    example ([C, D1, ...], as onnxruntime requires), shared over the batch."""

    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                var: torch.Tensor) -> torch.Tensor:
        if any(tuple(p.shape) != tuple(x.shape[1:]) for p in (scale, bias, mean, var)):
            raise ValueError(f"BatchNormalization with spatial=0 needs scale, bias, mean and var of the shape of one "
                             f"example, {list(x.shape[1:])}; got {[list(p.shape) for p in (scale, bias, mean, var)]}")
        return (x - mean) / torch.sqrt(var + self.epsilon) * scale + bias


@register("BatchNormalization", 7, 9)
def convert_batch_normalization(node, graph):
    if not node.attributes.get("spatial", 1):
        return OperationConverterResult(torch_module=ElementwiseBatchNorm(float(node.attributes.get("epsilon", 1e-5))),
                                        onnx_mapping=OnnxMapping(inputs=node.input_values[:5],
                                                                 outputs=node.output_values[:1]))
    return inference_batch_norm(node, graph)


class LayerNormalization(nn.Module):
    """Y, and the Mean and InvStdDev outputs (kept dims) when the node declares them."""

    def __init__(self, axis: int, epsilon: float, n_outputs: int = 1):
        super().__init__()
        self.axis, self.epsilon, self.n_outputs = axis, epsilon, n_outputs

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor] = None):
        axis = self.axis % x.dim()
        shape = x.shape[axis:]
        if scale.shape == shape and (bias is None or bias.shape == shape):
            out = F.layer_norm(x, shape, scale, bias, self.epsilon)
        else:
            out = F.layer_norm(x, shape, None, None, self.epsilon) * scale
            out = out if bias is None else out + bias
        if self.n_outputs == 1:
            return out
        dims = tuple(range(axis, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv_std = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + self.epsilon)
        return (out, mean, inv_std)[:self.n_outputs]


# since 1 too: below opset 17 the node comes only from fusions.py, which fuses a written-out LayerNorm
@register("LayerNormalization", 1, 17)
def convert_layer_normalization(node, graph):
    attrs = node.attributes
    if attrs.get("stash_type", 1) != 1:
        raise NotImplementedError("LayerNormalization with stash_type other than float32 is not supported")
    return result(node, LayerNormalization(attrs.get("axis", -1), attrs.get("epsilon", 1e-5),
                                           len(node.output_values)))


class InstanceNormalization(nn.Module):
    def __init__(self, epsilon: float):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return contiguous_both_ways(F.instance_norm, x, weight=scale, bias=bias, eps=self.epsilon)


@register("InstanceNormalization", 1, 6)
def convert_instance_normalization(node, graph):
    return result(node, InstanceNormalization(node.attributes.get("epsilon", 1e-5)))


class RMSNormalization(nn.Module):
    """x / sqrt(mean(x², axes) + epsilon) · scale, over the axes from `axis` on (opset 23).

    As the ONNX function body: normalised in the stash type (float32 by default), cast back to
    the input's type, then scaled.
    """

    def __init__(self, axis: int, epsilon: float, stash: torch.dtype):
        super().__init__()
        self.axis, self.epsilon, self.stash = axis, epsilon, stash

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        stashed = x.to(self.stash)
        dims = tuple(range(self.axis % x.dim(), x.dim()))
        normalized = stashed * torch.rsqrt(stashed.pow(2).mean(dims, keepdim=True) + self.epsilon)
        return normalized.to(x.dtype) * scale


@register("RMSNormalization", 23)
def convert_rms_normalization(node, graph):
    attrs = node.attributes
    stash = {1: torch.float32, 11: torch.float64}.get(attrs.get("stash_type", 1))
    if stash is None:
        raise NotImplementedError(f"RMSNormalization with stash_type {attrs['stash_type']} is not supported")
    return result(node, RMSNormalization(attrs.get("axis", -1), attrs.get("epsilon", 1e-5), stash))


class GroupNormalization(nn.Module):
    """Normalise each group of channels over its channels and spatial axes, then scale and shift
    per channel. (GroupNormalization-18, scaled per group, is deprecated: the ONNX checker refuses
    it, so it never reaches a converter.)"""

    def __init__(self, groups: int, epsilon: float):
        super().__init__()
        self.groups, self.epsilon = groups, epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        stashed = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # as the function body's stash
        y = F.group_norm(stashed, self.groups, eps=self.epsilon).to(x.dtype)
        view = (1, -1) + (1,) * (x.dim() - 2)
        return y * scale.reshape(view) + bias.reshape(view)


@register("GroupNormalization", 21)
def convert_group_normalization(node, graph):
    attrs = node.attributes
    return result(node, GroupNormalization(int(attrs["num_groups"]), attrs.get("epsilon", 1e-5)))


class MeanVarianceNormalization(nn.Module):
    """(x - mean) / (sqrt(var) + 1e-9) over `axes` (ONNX's function body: the epsilon is added
    to the standard deviation, not the variance)."""

    EPSILON = 1e-9

    def __init__(self, axes: list[int]):
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(a % x.dim() for a in self.axes)
        centred = x - x.mean(dims, keepdim=True)
        return centred / ((centred * centred).mean(dims, keepdim=True).sqrt() + self.EPSILON)


@register("MeanVarianceNormalization", 9, 13)
def convert_mean_variance_normalization(node, graph):
    return result(node, MeanVarianceNormalization(list(node.attributes.get("axes", [0, 2, 3]))))


class LpNormalization(nn.Module):
    """x / ||x||_p along `axis` (p = 1 or 2); 0 where the norm is 0, as ONNX's reference."""

    def __init__(self, axis: int, p: int):
        super().__init__()
        self.axis, self.p = axis, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.abs().sum(self.axis, keepdim=True) if self.p == 1 else (x * x).sum(self.axis, keepdim=True).sqrt()
        return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@register("LpNormalization", 1, 22)
def convert_lp_normalization(node, graph):
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise NotImplementedError(f"LpNormalization with p={p} (ONNX defines 1 and 2)")
    return result(node, LpNormalization(node.attributes.get("axis", -1), p))


def channel_window_sum(t: torch.Tensor, size: int) -> torch.Tensor:
    """Σ of t over LRN's window of `size` channels around each (floor((size-1)/2) before, the rest after),
    clipped to the channels. The window is cut to the channels first: past them it sums only the zero
    padding, so a `size` of any value (an attribute: a file could give 2^30) never sizes a tensor."""
    channels = t.shape[1]
    before = min((size - 1) // 2, channels - 1)
    after = min(size - 1 - (size - 1) // 2, channels - 1)
    padded = F.pad(t.movedim(1, -1), (before, after))
    return padded.unfold(-1, before + after + 1, 1).sum(-1).movedim(-1, 1)


class LocalResponseNorm(nn.Module):
    """x / (bias + alpha/size · Σ_window x²)^beta over channels (`channel_window_sum`); torch's own
    LocalResponseNorm pads the channels by `size`, whatever their number."""

    def __init__(self, size: int, alpha: float, beta: float, bias: float):
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (self.bias + self.alpha / self.size * channel_window_sum(x * x, self.size)) ** self.beta


@register("LRN", 1, 13)
def convert_lrn(node, graph):
    a = node.attributes
    return result(node, LocalResponseNorm(int(a["size"]), a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)))
