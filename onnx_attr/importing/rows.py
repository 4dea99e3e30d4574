"""Rows as every pass feeds them: the examples counted, cut on their batch axis into the batch a
fixed-batch export takes (the last chunk padded by repeating its last row), and the explained
output picked. One home for what the engine and every method share (the batch axes themselves
come from `batch`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from onnx_attr.importing.batch import fixed_batch, pass_batch  # noqa: F401  (one home)


def pick_output(out: Any, index: int) -> Tensor:
    """Output `index` of a module's result (a single tensor is output 0)."""
    return out[index] if isinstance(out, (tuple, list)) else out


def example_rows(tensors: Sequence[Tensor], attributed: Sequence[bool]) -> int:
    """The examples on axis 0 of the first attributed tensor."""
    return next(t.shape[0] for t, a in zip(tensors, attributed) if a)


def padded_rows(t: Tensor, start: int, stop: int, size: int, axis: int = 0) -> Tensor:
    """Rows [start, stop) on `axis` (the tensor's batch axis), padded to `size` by repeating the
    last (for fixed-batch exports)."""
    part = t.narrow(axis, start, stop - start)
    if part.shape[axis] < size:
        last = part.narrow(axis, part.shape[axis] - 1, 1)
        part = torch.cat([part, last.expand(*part.shape[:axis], size - part.shape[axis], *part.shape[axis + 1:])],
                         dim=axis)
    return part


def rows_first(t: Tensor, axis: Optional[int]) -> Tensor:
    """`t` with its examples on axis 0: its batch axis moved there, or (axis None: one whole
    example) a batch of 1 put in front. Methods that index rows work in this layout."""
    return t.unsqueeze(0) if axis is None else t.movedim(axis, 0) if axis else t


def rows_back(t: Tensor, axis: Optional[int]) -> Tensor:
    """`rows_first` undone: the examples back on the tensor's own batch axis."""
    return t.squeeze(0) if axis is None else t.movedim(0, axis) if axis else t


def path_runs(tensors: Sequence[Tensor], baselines: Sequence[Tensor], attributed: Sequence[bool],
              axes: Sequence[Optional[int]], n: int, alphas: Sequence[float]) -> list[list[Tensor]]:
    """The inputs at points b + α(x − b) of the straight path, as runs the model takes: one run
    with every step stacked on each input's batch axis (step-major), or, where an attributed
    input has no batch axis (one whole example, rows that mix), one run per step."""
    stack = all(a is not None for a, chosen in zip(axes, attributed) if chosen)
    groups = [list(alphas)] if stack else [[a] for a in alphas]
    runs = []
    for group in groups:
        runs.append([torch.cat([b + float(a) * (t - b) for a in group], dim=x or 0) if chosen and t.is_floating_point()
                     else t if x is None or t.dim() <= x or t.shape[x] != n
                     else t.repeat(*[len(group) if i == x else 1 for i in range(t.dim())])
                     for t, b, chosen, x in zip(tensors, baselines, attributed, axes)])
    return runs
