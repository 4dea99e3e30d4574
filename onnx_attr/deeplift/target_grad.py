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


def target_gradients(value: Tensor, wanted: Sequence[Tensor]) -> tuple[Optional[Tensor], ...]:
    """d value.sum() / d each of `wanted` (None where one is unused).

    An output computed from constants, or from the inputs only through shapes, casts to integers
    or comparisons, has no gradient path at all: autograd would raise a bare RuntimeError
    ("element 0 of tensors does not require grad"), as Captum does. Every attribution of such an
    output would be 0 by construction, which explains nothing, so it is an `InputError` that says
    which choices to change (`NoGradientPathError`, an `InputError`).
    """
    if not value.requires_grad:
        raise NoGradientPathError(NO_GRADIENT_PATH)
    return torch.autograd.grad(value.sum(), list(wanted), allow_unused=True)
