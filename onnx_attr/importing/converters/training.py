"""Training-time ops, for graphs exported in training mode: BatchNormalization with batch
statistics, and one update step of the ai.onnx.preview.training optimizers (Adagrad, Adam,
Momentum), each as its ONNX pseudo code states it. DeepLift refuses them by name (their kind
is unknown): batch statistics mix the examples of a batch, and an optimizer step has no output
worth explaining.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.normalization import inference_batch_norm
from onnx_attr.importing.converters.registry import register

TRAINING = "ai.onnx.preview.training"


class TrainingBatchNorm(nn.Module):
    """Y from the batch's own mean and population variance; the running statistics updated."""

    def __init__(self, epsilon: float, momentum: float):
        super().__init__()
        self.epsilon, self.momentum = epsilon, momentum

    def forward(self, x, scale, bias, mean, var):
        axes = [0, *range(2, x.dim())]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # ONNX: statistics in float
        batch_mean = wide.mean(axes)
        batch_var = wide.var(axes, unbiased=False)
        y = (wide - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + self.epsilon)
        y = (y * scale.reshape(shape) + bias.reshape(shape)).to(x.dtype)
        m = self.momentum
        return y, (mean * m + batch_mean * (1 - m)).to(mean.dtype), (var * m + batch_var * (1 - m)).to(var.dtype)


@register("BatchNormalization", 14, 15)
def convert_batch_norm(node, graph):
    if not node.attributes.get("training_mode", 0):
        return inference_batch_norm(node, graph)
    return result(node, TrainingBatchNorm(node.attributes.get("epsilon", 1e-5), node.attributes.get("momentum", 0.9)))


class Optimizer(nn.Module):
    """One step of an optimizer over n tensors. Inputs: R, T, then n of each per-tensor input
    (X, G, and the optimizer's state); outputs: n new X, then n of each new state."""

    def __init__(self, step, n_state: int, attrs: dict):
        super().__init__()
        self.step, self.n_state, self.attrs = step, n_state, attrs

    def forward(self, rate: torch.Tensor, count: torch.Tensor, *tensors: torch.Tensor):
        n = len(tensors) // (2 + self.n_state)
        groups = [tensors[i::n] for i in range(n)]  # (X, G, state...) of each optimized tensor
        steps = [self.step(rate, count, *group, **self.attrs) for group in groups]
        outputs = [out for k in range(1 + self.n_state) for out in (s[k] for s in steps)]
        return tuple(outputs) if len(outputs) > 1 else outputs[0]


def adagrad_step(r, t, x, g, h, norm_coefficient=0.0, decay_factor=0.0, epsilon=1e-6):
    rate = r / (1 + t * decay_factor)
    g = norm_coefficient * x + g
    h_new = h + g * g
    return x - rate * g / (torch.sqrt(h_new) + epsilon), h_new


def momentum_step(r, t, x, g, v, norm_coefficient=0.0, alpha=0.0, beta=0.0, mode="standard"):
    g = norm_coefficient * x + g
    v_new = alpha * v + (beta if int(t) > 0 else 1.0) * g
    direction = g + alpha * v_new if mode == "nesterov" else v_new
    return x - r * direction, v_new


def adam_step(r, t, x, g, v, h, alpha=0.9, beta=0.999, epsilon=1e-6, norm_coefficient=0.0,
              norm_coefficient_post=0.0):
    g = norm_coefficient * x + g
    v_new = alpha * v + (1 - alpha) * g
    h_new = beta * h + (1 - beta) * g * g
    steps = int(t)
    rate = r * (1 - beta ** steps) ** 0.5 / (1 - alpha ** steps) if steps > 0 else r
    x_new = x - rate * (v_new / (torch.sqrt(h_new) + epsilon))
    return (1 - norm_coefficient_post) * x_new, v_new, h_new


_FLOAT_ATTRS = {"Adagrad": ("norm_coefficient", "decay_factor", "epsilon"),
                "Momentum": ("norm_coefficient", "alpha", "beta"),
                "Adam": ("alpha", "beta", "epsilon", "norm_coefficient", "norm_coefficient_post")}


@register("Adagrad", 1, domain=TRAINING)
@register("Momentum", 1, domain=TRAINING)
@register("Adam", 1, domain=TRAINING)
def convert_optimizer(node, graph):
    op = node.operation_type
    step, n_state = {"Adagrad": (adagrad_step, 1), "Momentum": (momentum_step, 1), "Adam": (adam_step, 2)}[op]
    attrs = {k: float(node.attributes[k]) for k in _FLOAT_ATTRS[op] if k in node.attributes}
    if op == "Momentum":
        attrs["mode"] = text_attribute(node, "mode", "standard")
    return result(node, Optimizer(step, n_state, attrs))
