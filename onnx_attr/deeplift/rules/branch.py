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

import math

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import Rule, _expanded_refs, reduce_to, rule
from onnx_attr.errors import InputError, UnsupportedOpError

#: the fused Where of select_fusion.py
STEP_SELECT = "StepSelect"


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


@rule(STEP_SELECT)
class StepSelectRule(Rule):
    """Where(condition, A, B) elementwise (select_fusion.py; a Cast of the condition to a float is
    Where(c, 1, 0)), the condition a tree of carriers and logic over k comparisons: per element, the
    exact Shapley values of the game whose players are the k comparisons (each at its input's or its
    reference's mask), A and B, v = Where(condition, A, B).
    One comparison gives the split above, s̄ the element's mean step. A's multiplier is the weighted
    mean of the condition over the comparisons' coalitions (B's, of its negation); each comparison's
    share goes back along the tree to its own elements (autograd through a linear stand-in: carriers
    move elements, logic sums them), then as a rescale through d = u − v, which moved wherever the
    comparison flipped (Δs ≠ 0 implies Δd ≠ 0: two distinct floats never subtract to 0). In float64."""

    def backward(self, info, call, grad, args, out, refs, ref_out):
        module, varying = call.module, info.variable
        refs = _expanded_refs(info.variable_positions(), args, refs)  # traced at the input's shapes
        at_x = module.trace(*args)
        at_r = module.trace(*[r if i < len(varying) and varying[i] else a for i, (a, r) in enumerate(zip(args, refs))])
        wide = torch.float64 if grad.device.type != "mps" else grad.dtype
        g = grad.to(wide)
        n_in, steps = module.n_inputs, module.compares
        k, n = len(steps), len(steps) + 2  # players: the comparisons, then A and B
        weight = [math.factorial(m) * math.factorial(n - m - 1) / math.factorial(n) for m in range(n)]
        masks = {}  # coalition of comparisons (a bit each) -> the condition

        def condition(coalition: int) -> Tensor:
            if coalition not in masks:
                masks[coalition] = module.condition(at_x, {step: (at_x if coalition >> j & 1 else at_r)[n_in + step]
                                                           for j, step in enumerate(steps)})
            return masks[coalition]

        cond, a, b, to_a, to_b = module.selection(at_x)
        _, a0, b0, _, _ = module.selection(at_r)
        a, a0, b, b0 = (torch.as_tensor(t, device=g.device).to(wide) for t in (a, a0, b, b0))
        found: dict[int, Tensor] = {}

        def add(index, value, shape):
            if index is not None and index < len(varying) and varying[index]:
                value = reduce_to(value, shape)
                found[index] = found[index] + value if index in found else value

        on = sum(condition(c).to(wide) * (weight[c.bit_count()] + weight[c.bit_count() + 1]) for c in range(2 ** k))
        add(to_a, g * on, a.shape)
        add(to_b, g * (1 - on), b.shape)
        # A's value minus B's with A and B each at the input (1) or the reference (0); equal infinities select alike
        gaps = {(in_a, in_b): torch.where(va == vb, 0.0, va - vb)
                for (in_a, in_b), (va, vb) in {(0, 0): (a0, b0), (1, 0): (a, b0), (0, 1): (a0, b), (1, 1): (a, b)}.items()}
        shares = []
        for j in range(k):
            share = torch.zeros(out.shape, dtype=wide, device=g.device)
            for others in range(2 ** k):
                if others >> j & 1:
                    continue
                without, with_j = condition(others), condition(others | 1 << j)
                flipped = with_j != without
                if not bool(flipped.any()):
                    continue
                for (in_a, in_b), gap in gaps.items():
                    change = torch.where(flipped, torch.where(with_j, gap, -gap), 0.0)
                    share = share + weight[others.bit_count() + in_a + in_b] * change
            if not bool(torch.isfinite(share).all()):
                self._refuse_infinite(info, module.comparisons[j])
            shares.append(share)
        if not k or not any(bool(s.any()) for s in shares):
            return [found[i].to(args[i].dtype) if i in found else None for i in range(len(args))]
        with torch.enable_grad():
            stand_ins = {step: torch.zeros(at_x[n_in + step].shape, dtype=wide, device=g.device, requires_grad=True)
                         for step in steps}
            linear = module.condition(at_x, stand_ins, linear=True)
            for j, step in enumerate(steps):
                per_condition = reduce_to(g * shares[j], cond.shape)
                (routed,) = torch.autograd.grad(linear, stand_ins[step], per_condition, retain_graph=True,
                                                allow_unused=True)
                if routed is None:
                    continue
                (u, v), (u0, v0) = module.operands_of(step, at_x), module.operands_of(step, at_r)
                u, v, u0, v0 = (torch.as_tensor(t, device=g.device).to(wide) for t in (u, v, u0, v0))
                moved = at_x[n_in + step] != at_r[n_in + step]
                d = (u - v) - (u0 - v0)
                per_d = torch.where(moved, routed / torch.where(moved, d, 1.0), 0.0)
                to_u, to_v = module.inputs_of(step)
                add(to_u, per_d, u.shape)
                add(to_v, -per_d, v.shape)
        return [found[i].to(args[i].dtype) if i in found else None for i in range(len(args))]

    @staticmethod
    def _refuse_infinite(info, comparison):
        from onnx_attr.deeplift.rewrite import STEP_HINT, STEP_REASON  # (the rewrite imports the rules)

        raise UnsupportedOpError(
            [(*comparison, STEP_REASON)], action="DeepLift is not complete on this call: it has",
            hint=f"Where node {info.name!r} selects an infinite or undefined value (a -inf mask before a softmax, "
                 "a 0/0 at the baseline) on one side of this comparison, so the output's change where it flips is "
                 "not finite. " + STEP_HINT)
