"""`Target`: what to explain on an output, when Captum's index forms are not enough.

Captum's `target` picks one element per example by index. Dense outputs (maps, sequences,
detector heads, time-major outputs) need more: a weighted sum over a region of the output, or
an index on an output whose batch is not on axis 0. A `Target` says both; every method reads it
through the same `engine.Targets`, so one target has one meaning across DeepLift, IG, the
gradient and perturbation methods, the layer methods and the metrics.

    Target(weights=mask)                           # Σ mask·output, one mask for every example
    Target(weights=masks, per_example=True)        # masks[i] for example i
    Target(index=(5, 12), batch_axis=1)            # output[5, i, 12] of a [T, N, C] output

A bare boolean or floating tensor/array given as `target=` is `Target(weights=it)`. A callable
(output -> one value per example) is also a target; it sees the raw output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from onnx_attr.errors import InputError


@dataclass(frozen=True)
class Target:
    """An index or a weight mask over one example's output, along the output's batch axis.

    index: anything Captum's `target` takes (int, tuple, one per example, or None).
    weights: a boolean or weight tensor/array the shape of one example's output (the batch axis
      left out); the target is Σ weights·output per example, a linear function of the output,
      so DeepLift's and IG's completeness holds for it. With `per_example`, one mask per example
      stacked on axis 0.
    batch_axis: the output's batch axis (1 for a time-major [T, N, C] output); indices and masks
      address the other axes in their order. None (the default): the axis the methods find for
      that output (`batch.probe`: 0 for most, 1 for a time-major one; none when the rows mix and
      the whole output is one example, whose mask then covers every axis).
    """

    index: Any = None
    weights: Any = None
    per_example: bool = False
    batch_axis: Optional[int] = None

    def __post_init__(self) -> None:
        if self.index is not None and self.weights is not None:
            raise InputError("a Target takes an index or weights, not both")
        if self.batch_axis is not None and (not isinstance(self.batch_axis, (int, np.integer))
                                            or isinstance(self.batch_axis, bool) or self.batch_axis < 0):
            raise InputError(f"a Target's batch_axis must be an int >= 0 (or None: the output's own), got "
                             f"{self.batch_axis!r}")
        if self.per_example and self.weights is None:
            raise InputError("per_example applies to weights: give one mask per example on axis 0")

    def __getitem__(self, examples: slice) -> "Target":
        """The target of a run of examples (for passes over part of a batch)."""
        if self.per_example:
            return Target(weights=self.weights[examples], per_example=True, batch_axis=self.batch_axis)
        if isinstance(self.index, list):
            return Target(index=self.index[examples], batch_axis=self.batch_axis)
        return self

    def repeat_each(self, times: int) -> "Target":
        """Each example's target repeated `times` times in a row (NoiseTunnel, the metrics)."""
        if self.per_example:
            import torch

            weights = self.weights if isinstance(self.weights, torch.Tensor) else torch.as_tensor(
                np.asarray(self.weights))
            return Target(weights=weights.repeat_interleave(times, 0), per_example=True, batch_axis=self.batch_axis)
        if isinstance(self.index, list):
            return Target(index=[t for t in self.index for _ in range(times)], batch_axis=self.batch_axis)
        return self

    def describe(self) -> dict:
        """What a report records: the form, the batch axis, the mask's size."""
        out: dict[str, Any] = {"batch_axis": None if self.batch_axis is None else int(self.batch_axis)}
        if self.weights is None:
            index = self.index
            out["index"] = index.tolist() if hasattr(index, "tolist") else index
            return out
        w = np.asarray(self.weights.detach().cpu() if hasattr(self.weights, "detach") else self.weights)
        nonzero = (w != 0).reshape(len(w), -1).sum(1) if self.per_example else np.array([(w != 0).sum()])
        out.update(weights="per example" if self.per_example else "shared",
                   mask_shape=list(w.shape[1:] if self.per_example else w.shape),
                   mask_size=[int(v) for v in nonzero])
        return out


def as_weights(target: Any) -> Optional[Target]:
    """A bare boolean or floating tensor/array read as a shared mask; None for anything else."""
    import torch

    if isinstance(target, torch.Tensor) and (target.is_floating_point() or target.dtype == torch.bool):
        return Target(weights=target)
    if isinstance(target, np.ndarray) and target.dtype.kind in "fb":
        return Target(weights=target)
    return None


__all__ = ["Target"]
