"""Evaluate many masked copies of a batch: the one engine under every perturbation method.

A perturbation method asks for the explained output (one value per example) on P copies of the
batch, each with some elements of the attributed inputs replaced (by the baseline, or by another
row for a permutation). The copies are built chunk by chunk, never more than
`perturbations_per_eval` copies (Captum's knob) nor more than a memory budget of copied bytes at
once, and run through whatever forward the method holds: the imported module or onnxruntime.

Two ways to say what is replaced:
- `masks(start, stop)`: per input a boolean tensor [k, 1 or N, *shape], True where replaced
  (FeatureAblation, Occlusion, FeaturePermutation: arbitrary, possibly overlapping masks);
- `patterns(start, stop)` with feature ids: a boolean tensor [k, 1 or N, F], True where the
  feature is present (kept at the input); features absent are replaced (Shapley, KernelShap,
  Lime). `present_to_masks` turns one into the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.engine import Targets
from onnx_attr.errors import InputError

#: Bytes of perturbed copies built for one forward at most (the copies of every input together);
#: `perturbations_per_eval` is lowered to fit, never below one copy of the batch.
DEFAULT_BUDGET_BYTES = 512 * 2**20

Masks = Callable[[int, int], list]  # (start, stop) -> per input: None or bool [k, 1 or N, *shape]
Measure = Callable[[list], Tensor]  # copies per input ([k*N, *shape] each) -> one value per row


def check_per_eval(perturbations_per_eval: Any) -> int:
    if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, (int, np.integer)) \
            or perturbations_per_eval < 1:
        raise InputError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
    return int(perturbations_per_eval)


@dataclass
class MaskedEvaluator:
    """The explained output of masked copies of one batch, chunked to fit a memory budget.

    `value(tensors, targets)` is the method's forward (torch module or onnxruntime) returning one
    value per row; `tensors`/`baselines` are every model input (baselines of batch 1 or N), and
    only the attributed ones are ever masked. `bar` counts forward passes.
    """

    value: Callable[[list, Targets], Tensor]
    tensors: list
    baselines: list
    attributed: list
    targets: Targets
    per_eval: int = 1
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    bar: Any = None
    batched: Optional[list] = None  # which inputs hold the rows on axis 0 (default: those with N rows there)
    values_shape: tuple = ()  # the shape of one example's values (() for one value; Targets.every_value)

    @property
    def n(self) -> int:
        return len(self.targets.rows)

    def chunk_size(self) -> int:
        """Copies per forward: `per_eval`, lowered so that the copies fit the byte budget."""
        copy_bytes = sum(t.numel() * t.element_size() * (self.n if t.dim() and t.shape[0] == 1 else 1)
                         for t, a in zip(self.tensors, self.attributed) if a)
        return max(1, min(self.per_eval, self.budget_bytes // max(1, copy_bytes)))

    def passes(self, count: int) -> int:
        return math.ceil(count / self.chunk_size())

    def evaluate(self, count: int, masks: Masks, replacements: Optional[Masks] = None,
                 measure: Optional[Measure] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Values [count, N, K] of the `count` masked copies (K values per example: 1, or every value
        of the output under Captum's multi-output form, `Targets.every_value`); with `measure`, its
        values [count, N] too. `replacements(start, stop)` gives per input what replaces the masked elements
        ([k, N, *shape] or None for the baseline)."""
        size = self.chunk_size()
        values, measured = [], []
        for start in range(0, count, size):
            stop = min(count, start + size)
            k = stop - start
            chunk_masks = masks(start, stop)
            chunk_repl = replacements(start, stop) if replacements is not None else [None] * len(self.tensors)
            copies = [self._copies(i, k, m, r) for i, (m, r) in enumerate(zip(chunk_masks, chunk_repl))]
            value = self.value(copies, self.targets.repeat(k))
            self.values_shape = tuple(value.shape[1:])
            values.append(value.reshape(k, self.n, -1))
            if measure is not None:
                measured.append(measure([c for c, a in zip(copies, self.attributed) if a]).reshape(k, self.n))
            if self.bar is not None:
                self.bar.update(1)
        out = torch.cat(values) if values else torch.zeros(0, self.n, 1)
        return out, (torch.cat(measured) if measure is not None and measured else None)

    def evaluate_patterns(self, count: int, patterns: Callable[[int, int], Tensor], groups: Sequence,
                          measure: Optional[Measure] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Values [count, N, K] for feature patterns ([k, 1 or N, F], True = present)."""
        def masks(start: int, stop: int) -> list:
            present = patterns(start, stop)
            return [None if g is None else present_to_masks(present, g) for g in groups]
        return self.evaluate(count, masks, measure=measure)

    def _copies(self, i: int, k: int, mask: Optional[Tensor], replacement: Optional[Tensor]) -> Tensor:
        x = self.tensors[i]
        n = self.n
        if mask is None:  # not perturbed here: repeated per copy when it has the batch, else shared
            rows = x.dim() and x.shape[0] == n if self.batched is None else self.batched[i] and x.shape[0] == n
            return x.repeat(k, *[1] * (x.dim() - 1)) if rows else x
        source = self.baselines[i].unsqueeze(0) if replacement is None else replacement
        mixed = torch.where(mask.to(x.device), source.to(x.device, x.dtype), x.expand(n, *x.shape[1:]).unsqueeze(0))
        return mixed.expand(k, n, *x.shape[1:]).reshape(k * n, *x.shape[1:])


def present_to_masks(present: Tensor, groups: Tensor) -> Tensor:
    """Patterns [k, R, F] (True = present) and feature ids [G, *shape] -> bool [k, max(R, G),
    *shape], True where an element's feature is absent (the element is replaced)."""
    k, r, f = present.shape
    g = groups.shape[0]
    rows = max(r, g)
    index = groups.reshape(1, g, -1).expand(k, rows, -1).to(present.device)
    return ~torch.gather(present.expand(k, rows, f), 2, index).reshape(k, rows, *groups.shape[1:])


def spread(per_feature: Tensor, groups: Tensor, n: int) -> Tensor:
    """Values per feature [N, F] (or [N, K, F]: K values per example) onto the elements of an
    input: [N, *shape] (or [N, K, *shape]), each element holding its feature's value (ids per
    example when `groups` has N rows)."""
    g = groups.shape[0]
    lead = per_feature.shape[:-1]
    index = groups.reshape(g, *[1] * (len(lead) - 1), -1).expand(*lead, -1).to(per_feature.device)
    return torch.gather(per_feature, -1, index).reshape(*lead, *groups.shape[1:])


def feature_ids(feature_mask: Any, prepared, by_name: Callable[[Mapping, Any], list]) -> tuple[list, int]:
    """Feature ids shared across the attributed inputs (Captum's Shapley/Lime convention: the same
    id in two inputs is one feature), each [1 or N, *shape], and the feature count (max id + 1).
    Without a mask every element is its own feature, numbered on across the inputs in order."""
    from onnx_attr.methods.perturbation import _feature_groups, _per_input

    chosen = [i for i, a in enumerate(prepared.attributed) if a]
    groups: list = [None] * len(prepared.tensors)
    named = feature_mask is None or isinstance(feature_mask, Mapping)
    given = [None] * len(prepared.tensors) if feature_mask is None else \
        by_name(feature_mask, prepared) if named else _per_input(feature_mask, prepared)
    for i in chosen:
        name = prepared.input_names[i]
        if given[i] is None:
            if named:  # no mask, or left out of one by name (the CLI's blocks skip a state batched on axis 1):
                continue  # its elements are features of their own, numbered after the mask's
            raise InputError(f"the feature mask names no features for the attributed input {name!r}: give one "
                             "per attributed input")
        groups[i] = _feature_groups(given[i], prepared.tensors[i], name).long()
        if groups[i].numel() and int(groups[i].min()) < 0:
            raise InputError(f"the feature mask for {name!r} holds negative ids; feature ids are 0, 1, 2, ...")
    count = 1 + max((int(groups[i].max()) for i in chosen if groups[i] is not None and groups[i].numel()), default=-1)
    for i in (i for i in chosen if groups[i] is None):
        size = math.prod(prepared.tensors[i].shape[1:])
        groups[i] = (count + torch.arange(size, device=prepared.tensors[i].device)).reshape(
            1, *prepared.tensors[i].shape[1:])
        count += size
    return groups, count
