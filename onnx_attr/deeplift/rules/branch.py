"""An If whose condition follows an attributed input, as `BranchSelect(u, v, A, B)`.

`specialize.selectable_ifs` replaces such an If by both its branches, A (then) and B (else), and
a node that returns A where compare(u, v) holds and B elsewhere: y = s·A + (1 − s)·B with the step
s = [compare(u, v)] ∈ {0, 1}. Between the input and its baseline, Shapley's split of the two
products is exact:

    Δy = s̄·ΔA + (1 − s̄)·ΔB + (Ā − B̄)·Δs,    s̄, Ā, B̄ the means over input and baseline,

and the step's change is a rescale through d = u − v, which moved whenever s did: Δs = (Δs/Δd)·Δd.
When both points take the same branch, s̄ is 0 or 1 and Δs = 0: the taken branch alone is
explained, as an If specialised to it would be. Otherwise each branch gets half of its own change
and the comparison's operands carry the jump from one branch to the other at the midpoint.
"""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import Rule, reduce_to, rule
from onnx_attr.errors import InputError


@rule("BranchSelect")
class BranchSelectRule(Rule):
    def check(self, info) -> None:
        if not any(info.variable[2:4]) and not any(info.variable[:2]):
            raise NotImplementedError("BranchSelect with nothing varying")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        u, v, then, other = args[:4]
        u0, v0, then0, other0 = refs[:4]
        taken, taken0 = call.module.taken(u, v), call.module.taken(u0, v0)
        grads = [None] * len(args)
        if taken == taken0:
            grads[2 if taken else 3] = reduce_to(grad, (then if taken else other).shape)
            return _only_varying(info, grads, args)
        if then.shape != other.shape:
            raise InputError(f"If node {info.name!r}: the input and its baseline take different branches, whose "
                             f"outputs have different shapes ({tuple(then.shape)} and {tuple(other.shape)}), so "
                             "nothing lies between them; pick a baseline that takes the input's branch")
        if not (info.variable[0] or info.variable[1]):
            raise InputError(f"If node {info.name!r}: the input and its baseline take different branches, but the "
                             "condition's operands do not vary in floating point with the attributed inputs, so the "
                             "jump has nowhere to go; pick a baseline that takes the input's branch")
        grads[2], grads[3] = reduce_to(grad / 2, then.shape), reduce_to(grad / 2, other.shape)
        mean_then = (then + then0.expand_as(then)) / 2
        mean_other = (other + other0.expand_as(other)) / 2
        jump = (grad * (mean_then - mean_other)).double().sum() * (float(taken) - float(taken0))
        d = (u - v).reshape(-1)[0].double()
        d0 = (u0 - v0).reshape(-1)[0].double()
        share = jump / (d - d0)
        for i, sign, operand in ((0, 1.0, u), (1, -1.0, v)):
            if info.variable[i]:
                g = torch.zeros_like(operand).reshape(-1)
                g[0] = sign * share
                grads[i] = g.view_as(operand)
        return _only_varying(info, grads, args)


def _only_varying(info, grads, args):
    return [g if i < len(info.variable) and info.variable[i] else None for i, g in enumerate(grads)]
