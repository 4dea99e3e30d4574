"""ScatterElements with a max or min reduction: the cross-max rule per output element.

A graph network's global max pooling (PyG's `global_max_pool`, exported as ScatterElements with
reduction="max" over the nodes' batch index) makes each output element the maximum of a segment:
its `data` element and every update the indices send there. With constant indices, that is a max
over a set, and the rule is MaxPool's (rules/pooling.py, paired.pair_amax): with c = the segment's
max at x, c0 at the reference and m = max(c, c0), m − c0 goes to the elements where x peaks and
c − m to those where the reference peaks (split evenly over ties), so the credits sum to c − c0 and
each multiplier lies in [0, 1]. A min is the max of the negated values. An element unchanged
between x and the reference takes its peak share as the gradient; a segment whose max did not
change (an empty one left at its fill value, −inf, included) credits nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import Rule, _expanded_refs, rule


@rule("ScatterElements")
class ScatterMaxRule(Rule):
    kind = "composite"

    def check(self, info) -> None:
        if _reduction(info) not in ("max", "min"):
            raise NotImplementedError(f"ScatterElements with reduction {_reduction(info)!r} has no rule "
                                      "(none and add are linear; max and min take the cross-max rule)")
        if len(info.variable) > 1 and info.variable[1]:
            raise NotImplementedError("ScatterElements whose indices follow the attributed inputs")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        refs = _expanded_refs(info.variable_positions(), args, refs)
        data, indices, updates = args[0], args[1], args[2]
        data0 = refs[0] if info.variable[0] else data
        updates0 = refs[2] if len(info.variable) > 2 and info.variable[2] else updates
        sign = 1.0 if _reduction(info) == "max" else -1.0
        axis = info.attrs.get("axis", 0) % data.dim()
        index = torch.where(indices < 0, indices + data.shape[axis], indices).long()
        c, c0 = sign * out, sign * ref_out.expand_as(out)
        changed = c != c0  # an unchanged segment credits nothing (also where both are -inf)
        m = torch.maximum(c, c0)
        up = torch.where(changed, m - c0, 0.0)  # to where x peaks
        down = torch.where(changed, c - m, 0.0)  # to where the reference peaks

        def shares(d: Tensor, u: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
            peak_d, peak_u = (sign * d == top).to(grad.dtype), (sign * u == top.gather(axis, index)).to(grad.dtype)
            count = peak_d.scatter_add(axis, index, peak_u).clamp(min=1)
            return peak_d / count, peak_u / count.gather(axis, index)

        share_d, share_u = shares(data, updates, c)
        share0_d, share0_u = shares(data0, updates0, c0)
        grads: list[Tensor | None] = [None] * len(args)
        for position, value, value0, share, share0, credit_up, credit_down, g in (
                (0, data, data0, share_d, share0_d, up, down, grad),
                (2, updates, updates0, share_u, share0_u, up.gather(axis, index), down.gather(axis, index),
                 grad.gather(axis, index))):
            if position >= len(info.variable) or not info.variable[position]:
                continue
            credit = sign * (share * credit_up + share0 * credit_down)
            delta = value - value0
            multiplier = torch.where(delta == 0, share, credit / torch.where(delta == 0, 1.0, delta))
            grads[position] = g * multiplier
        return grads


def _reduction(info) -> str:
    value = info.attrs.get("reduction", "none")
    return value.decode() if isinstance(value, bytes) else str(value)
