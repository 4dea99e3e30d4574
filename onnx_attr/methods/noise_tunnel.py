"""NoiseTunnel: smoothgrad, smoothgrad_sq and vargrad around any attribution method.

The noise is drawn as Captum draws it (per input, in order, one `torch.normal` over the inputs
repeated `nt_samples` times each), so under the same torch seed the two agree exactly.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ._inputs import _as_list

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel:
    def __init__(self, method):
        self.method = method
        self.model = method.model

    def attribute(self, inputs: Any, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  stdevs: Union[float, Sequence[float]] = 1.0, target: Any = None, **kwargs: Any):
        if nt_type not in NT_TYPES:
            raise InputError(f"unknown nt_type {nt_type!r}; use one of {list(NT_TYPES)}")
        if nt_samples < 1:
            raise InputError(f"nt_samples must be at least 1, got {nt_samples}")
        values, repack = _as_list(inputs)
        as_numpy = all(isinstance(v, np.ndarray) for v in values)
        tensors = [torch.as_tensor(v) for v in values]
        spread = [stdevs] * len(tensors) if isinstance(stdevs, (int, float)) else list(stdevs)
        if len(spread) != len(tensors):
            raise InputError(f"{len(spread)} stdevs for {len(tensors)} input(s)")
        n = tensors[0].shape[0]
        noisy = [_add_noise(t, s, nt_samples) if t.is_floating_point() else t.repeat_interleave(nt_samples, 0)
                 for t, s in zip(tensors, spread)]
        if isinstance(kwargs.get("baselines"), (Tensor, np.ndarray)) and len(kwargs["baselines"]) == n > 1:
            kwargs["baselines"] = torch.as_tensor(kwargs["baselines"]).repeat_interleave(nt_samples, 0)
        out = self.method.attribute(repack(noisy), target=_repeat_target(target, n, nt_samples), **kwargs)
        attributions, _ = _as_list(out[0] if kwargs.get("return_convergence_delta") else out)
        smoothed = []
        for a in attributions:
            a = torch.as_tensor(a).reshape(n, nt_samples, *a.shape[1:])
            mean, mean_sq = a.mean(1), (a * a).mean(1)
            smoothed.append({"smoothgrad": mean, "smoothgrad_sq": mean_sq,
                             "vargrad": mean_sq - mean * mean}[nt_type])
        if as_numpy:
            smoothed = [s.numpy() for s in smoothed]
        return repack(smoothed)


def _add_noise(t: Tensor, stdev: float, samples: int) -> Tensor:
    expanded = (t.shape[0] * samples, *t.shape[1:])
    noise = torch.normal(0, torch.tensor(float(stdev), device=t.device).repeat(expanded))
    return t.repeat_interleave(samples, 0) + noise.to(t.dtype)


def _repeat_target(target: Any, n: int, samples: int) -> Any:
    """Per-example targets follow their examples' repeats; a shared target stays as it is."""
    if target is None or isinstance(target, (int, tuple)) or (hasattr(target, "ndim") and target.ndim == 0):
        return target
    items = target.tolist() if hasattr(target, "tolist") else list(target)
    if len(items) != n:
        return target  # the method reports the mismatch
    return [t for t in items for _ in range(samples)]
