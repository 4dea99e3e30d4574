"""Rows on axis 0, as every pass feeds them: the examples counted, cut into the batch a
fixed-batch export takes (the last chunk padded by repeating its last row), and the explained
output picked. One home for what the engine and every method share."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor


def pick_output(out: Any, index: int) -> Tensor:
    """Output `index` of a module's result (a single tensor is output 0)."""
    return out[index] if isinstance(out, (tuple, list)) else out


def fixed_batch(specs: Sequence[Any]) -> Optional[int]:
    """The batch size an export fixes on its first input's axis 0, or None when it is free."""
    shape = specs[0].shape if specs and specs[0].shape else None
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def example_rows(tensors: Sequence[Tensor], attributed: Sequence[bool]) -> int:
    """The examples on axis 0 of the first attributed tensor."""
    return next(t.shape[0] for t, a in zip(tensors, attributed) if a)


def padded_rows(t: Tensor, start: int, stop: int, size: int) -> Tensor:
    """Rows [start, stop), padded to `size` by repeating the last (for fixed-batch exports)."""
    part = t[start:stop]
    if part.shape[0] < size:
        part = torch.cat([part, part[-1:].expand(size - part.shape[0], *part.shape[1:])])
    return part
