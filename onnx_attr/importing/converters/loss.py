"""Losses that exported training graphs carry: NegativeLogLikelihoodLoss and
SoftmaxCrossEntropyLoss (which is log_softmax over axis 1, then the same NLL).

Class weights, ignore_index (those targets weigh 0) and the three reductions follow the spec:
"mean" divides by the summed weights of the targets not ignored.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register


def negative_log_likelihood(log_prob: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                            ignore_index: Optional[int], reduction: str) -> torch.Tensor:
    t = target.long()
    ignored = t == ignore_index if ignore_index is not None else torch.zeros_like(t, dtype=torch.bool)
    safe = torch.where(ignored, torch.zeros_like(t), t)
    picked = -log_prob.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = weight.to(log_prob.dtype)[safe] if weight is not None else torch.ones_like(picked)
    w = torch.where(ignored, torch.zeros_like(w), w)
    loss = picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


class NegativeLogLikelihoodLoss(nn.Module):
    def __init__(self, ignore_index: Optional[int], reduction: str):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, log_prob: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None):
        return negative_log_likelihood(log_prob, target, weight, self.ignore_index, self.reduction)


class SoftmaxCrossEntropyLoss(nn.Module):
    def __init__(self, ignore_index: Optional[int], reduction: str, with_log_prob: bool):
        super().__init__()
        self.ignore_index, self.reduction, self.with_log_prob = ignore_index, reduction, with_log_prob

    def forward(self, scores: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None):
        log_prob = torch.log_softmax(scores, dim=1)
        loss = negative_log_likelihood(log_prob, labels, weights, self.ignore_index, self.reduction)
        return (loss, log_prob) if self.with_log_prob else loss


def _options(node) -> tuple[Optional[int], str]:
    reduction = text_attribute(node, "reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise NotImplementedError(f"{node.operation_type} reduction {reduction!r}")
    ignore = node.attributes.get("ignore_index")
    return (None if ignore is None else int(ignore)), reduction


@register("NegativeLogLikelihoodLoss", 12, 13, 22)
def convert_nll_loss(node, graph):
    return result(node, NegativeLogLikelihoodLoss(*_options(node)))


@register("SoftmaxCrossEntropyLoss", 12, 13)
def convert_softmax_cross_entropy_loss(node, graph):
    with_log_prob = len(node.output_values) > 1 and bool(node.output_values[1])
    return result(node, SoftmaxCrossEntropyLoss(*_options(node), with_log_prob))
