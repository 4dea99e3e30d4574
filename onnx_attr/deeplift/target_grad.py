"""Gradients of a chosen output value, refused clearly when the value cannot depend on the inputs."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from onnx_attr.errors import NoGradientPathError


NO_GRADIENT_PATH = (
    "the chosen output does not depend on the attributed inputs through any differentiable path (it is a "
    "constant, or computed from their shape or from integer/boolean steps), so every attribution would be 0; "
    "pick another output (`output=` / `--output-name`) or other inputs to attribute, or a perturbation method "
    "(FeatureAblation; the CLI's --method featureablation)")


def target_gradients(value: Tensor, wanted: Sequence[Tensor], scale: float = 1.0) -> tuple[Optional[Tensor], ...]:
    """d value.sum() / d each of `wanted` (None where one is unused).

    `scale` (a power of two, so exact): the backward runs on value / scale and its results are
    scaled back. A mask over tens of thousands of output values (a segment, a region) seeds a
    backward whose pooled gradients overflow float16 (65504) in a graph that computes in half
    precision: the attributions came back NaN (`Targets.seed_scale`).

    An output computed from constants, or from the inputs only through shapes, casts to integers
    or comparisons, has no gradient path at all: autograd would raise a bare RuntimeError
    ("element 0 of tensors does not require grad"), as Captum does. Every attribution of such an
    output would be 0 by construction, which explains nothing, so it is an `InputError` that says
    which choices to change (`NoGradientPathError`, an `InputError`).
    """
    if not value.requires_grad:
        raise NoGradientPathError(NO_GRADIENT_PATH)
    found = torch.autograd.grad(value.sum() / scale if scale != 1 else value.sum(), list(wanted), allow_unused=True)
    return found if scale == 1 else tuple(None if g is None else g * scale for g in found)
