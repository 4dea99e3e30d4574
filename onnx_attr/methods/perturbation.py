"""Perturbation methods: FeatureAblation and Occlusion, on the imported module or on onnxruntime.

One mechanism serves both: a list of boolean masks over an input's non-batch axes (single
elements, groups from a feature mask, or sliding windows). Each mask is set to the baseline, the
drop in the explained output is credited to the elements it covers, and every element's credit is
averaged over the masks covering it. With `backend="onnxruntime"` the forward passes run the
ONNX graph itself (the same stripped graph `verify` uses), so no import is trusted at all.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..engine import Targets
from ..errors import InputError
from .gradient import _GradientMethod

BACKENDS = ("torch", "onnxruntime")


class _Perturbation(_GradientMethod):
    def __init__(self, model, backend: str = "torch", **kwargs: Any):
        super().__init__(model, **kwargs)
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
        self.backend = backend

    def _value(self, tensors, targets, index) -> Tensor:
        if self.backend == "torch":
            return super()._value(tensors, targets, index)
        from ..verify import run_onnxruntime

        n = len(targets.rows)
        feeds = {spec.name: (t.expand(n, *t.shape[1:]) if t.shape[0] == 1 and n > 1 else t).cpu().numpy()
                 for spec, t in zip(self.model.inputs, tensors)}
        name = self.model.outputs[index].name
        out = torch.from_numpy(np.asarray(run_onnxruntime(self.model.reference_model, feeds, [name])[0]))
        return targets.select(out)

    def _ablate(self, prepared, masks: list[list[Tensor]], targets: Targets, index: int,
                perturbations_per_eval: int, show_progress: bool = False) -> list[Optional[Tensor]]:
        """For each attributed input, the output drop of each mask averaged over the masks covering
        each element; `masks[i]` are boolean tensors shaped like input i without its batch axis.
        `show_progress` (Captum's keyword) counts the perturbed passes on stderr."""
        from ..progress import progress

        n = len(targets.rows)
        passes = sum(math.ceil(len(m) / max(1, int(perturbations_per_eval))) for m in masks)
        bar = progress(passes, "pass", type(self).__name__, quiet=not show_progress)
        original = self._value(prepared.tensors, targets, index)
        result: list[Optional[Tensor]] = []
        for i, (x, b) in enumerate(zip(prepared.tensors, prepared.baselines)):
            if not prepared.attributed[i]:
                result.append(None)
                continue
            total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            count = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
            baseline = b.expand_as(x)
            for group in _chunks(masks[i], perturbations_per_eval):
                batch = [torch.where(m.to(x.device), baseline, x) for m in group]
                inputs = [torch.cat(batch) if j == i else t.repeat(len(group), *[1] * (t.dim() - 1))
                          for j, t in enumerate(prepared.tensors)]
                rows = Targets.__new__(Targets)
                rows.rows = targets.rows * len(group)
                drop = (original.double().repeat(len(group)) - self._value(inputs, rows, index).double())
                bar.update(1)
                for k, m in enumerate(group):
                    covered = m.to(x.device)
                    total += drop[k * n:(k + 1) * n].reshape(n, *[1] * (x.dim() - 1)) * covered
                    count += covered
            result.append((total / count.clamp_min(1)).to(x.dtype))
        bar.close()
        return result


def _chunks(items: Sequence, size: int):
    size = max(1, int(size))
    for start in range(0, len(items), size):
        yield items[start:start + size]


class FeatureAblation(_Perturbation):
    """Each feature (an element, or a group of a `feature_mask`) set to the baseline in turn."""

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, perturbations_per_eval: int = 1, *,
                  output: Union[str, int, None] = None, show_progress: bool = False):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        masks_given = _per_input(feature_mask, prepared)
        masks = []
        for x, a, given in zip(prepared.tensors, prepared.attributed, masks_given):
            if not a:
                masks.append([])
            elif given is None:
                size = math.prod(x.shape[1:])
                eye = torch.eye(size, dtype=torch.bool)
                masks.append([eye[k].reshape(x.shape[1:]) for k in range(size)])
            else:
                groups = torch.as_tensor(np.asarray(given)).expand(1, *x.shape[1:])[0]
                masks.append([groups == g for g in torch.unique(groups)])
        attributions = self._ablate(prepared, masks, Targets(target, n), self._output_index(output),
                                    perturbations_per_eval, show_progress)
        return prepared.repack(attributions)


class Occlusion(_Perturbation):
    """A sliding window (`sliding_window_shapes`, `strides`) set to the baseline at each position,
    placed as Captum places it; each element's value is averaged over the windows covering it."""

    def attribute(self, inputs: Any, sliding_window_shapes: Any, strides: Any = None, baselines: Any = None,
                  target: Any = None, additional_forward_args: Any = None, perturbations_per_eval: int = 1, *,
                  output: Union[str, int, None] = None, show_progress: bool = False):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        shapes = _per_input_tuple(sliding_window_shapes, prepared)
        steps = _per_input_tuple(strides, prepared) if strides is not None else [None] * len(shapes)
        masks = []
        for x, a, window, stride in zip(prepared.tensors, prepared.attributed, shapes, steps):
            masks.append(_windows(tuple(x.shape[1:]), window, stride) if a else [])
        attributions = self._ablate(prepared, masks, Targets(target, n), self._output_index(output),
                                    perturbations_per_eval, show_progress)
        return prepared.repack(attributions)


def _windows(shape: tuple[int, ...], window, stride) -> list[Tensor]:
    window = tuple(window)
    if len(window) != len(shape):
        raise InputError(f"sliding window {window} does not match the input's non-batch shape {shape}")
    stride = (1,) * len(shape) if stride is None else (tuple(stride) if not isinstance(stride, int)
                                                        else (stride,) * len(shape))
    offsets = [range(0, (math.ceil(max(s - w, 0) / st) + 1) * st, st) for s, w, st in zip(shape, window, stride)]
    masks = []
    for start in itertools.product(*offsets):
        m = torch.zeros(shape, dtype=torch.bool)
        m[tuple(slice(o, o + w) for o, w in zip(start, window))] = True
        masks.append(m)
    return masks


def _per_input(value: Any, prepared) -> list:
    attributed = [i for i, a in enumerate(prepared.attributed) if a]
    if value is None:
        return [None] * len(prepared.tensors)
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    out: list = [None] * len(prepared.tensors)
    for i, item in zip(attributed, items):
        out[i] = item
    return out


def _per_input_tuple(value: Any, prepared) -> list:
    """One shape tuple per input: a tuple of ints is shared, a tuple of tuples is per input."""
    if value is not None and len(value) and isinstance(value[0], (tuple, list)):
        return _per_input(list(value), prepared)
    return [value] * len(prepared.tensors)

