"""Rows as every pass feeds them: the examples counted, cut on their batch axis into the batch a
fixed-batch export takes (the last chunk padded by repeating its last row), and the explained
output picked. One home for what the engine and every method share (the batch axes themselves
come from `batch`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from onnx_attr.importing.batch import fixed_batch  # noqa: F401  (the batch an export fixes, on its batch axis: one home)


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
