"""x − x0 where an element may sit at an infinity at the input and the reference alike.

An additive mask looked up by id (a padding row of −inf, added to attention scores) gives the
same −inf at the input and at the reference wherever the id did not change, and −inf − (−inf) is
NaN. Such an element has not moved: its difference is exactly 0, and so is its contribution,
whatever its multiplier (a gradient through a masked position may be NaN as well).

A NaN at the input against a number at the reference, or a number against a NaN there, is a
missing value (an input the graph reads NaN from as one: `importing.missing_values`): its
difference is one unit, so that its multiplier, which the rules reading it give as (what it
changed) / 1, is its whole contribution; missing at both, it has not moved.
"""

from __future__ import annotations

import torch
from torch import Tensor


def difference(x: Tensor, x0: Tensor) -> Tensor:
    """x − x0, exactly 0 where the two are equal (equal infinities included, missing at both), 1 where
    one of them is missing (NaN) and the other is not."""
    d = x - x0
    if d.is_floating_point() and not bool(torch.isfinite(d).all()):  # the where only when there is a NaN
        gap, gap0 = torch.isnan(x), torch.isnan(x0)
        d = torch.where((x == x0) | (gap & gap0), torch.zeros((), dtype=d.dtype, device=d.device), d)
        d = torch.where(gap ^ gap0, torch.ones((), dtype=d.dtype, device=d.device), d)
    return d


def contribution(multiplier: Tensor, x: Tensor, x0: Tensor) -> Tensor:
    """multiplier · (x − x0), exactly 0 where x equals x0 whatever the multiplier there."""
    d = difference(x, x0)
    c = multiplier * d
    if c.is_floating_point() and not bool(torch.isfinite(c).all()):
        c = torch.where(d == 0, torch.zeros((), dtype=c.dtype, device=c.device), c)
    return c
