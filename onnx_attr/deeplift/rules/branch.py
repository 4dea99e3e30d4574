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
    """Where(carriers(compare(u, v)), A, B) elementwise (select_fusion.py): per element the split
    above, with s̄ the element's mean step, and each flipped element's jump (Ā − B̄)·Δs carried back
    through the carriers to the comparison's element, then as a rescale through d = u − v, which
    moved wherever the comparison flipped. In float64: 1/Δd is large where d barely crosses 0."""

    def backward(self, info, call, grad, args, out, refs, ref_out):
        module, varying = call.module, info.variable
        refs = _expanded_refs(info.variable_positions(), args, refs)  # traced at the input's shapes
        at_x = module.trace(*args)
        at_r = module.trace(*[r if i < len(varying) and varying[i] else a for i, (a, r) in enumerate(zip(args, refs))])
        wide = torch.float64 if grad.device.type != "mps" else grad.dtype
        g = grad.to(wide)
        (cond, a, b), (cond0, a0, b0) = module.operands_of(-1, at_x), module.operands_of(-1, at_r)
        moved = cond != cond0
        mean = (cond.to(wide) + cond0.to(wide)) / 2
        found: dict[int, Tensor] = {}

        def add(index, value, shape):
            if index is not None and index < len(varying) and varying[index]:
                value = reduce_to(value, shape)
                found[index] = found[index] + value if index in found else value

        _, to_a, to_b = module.inputs_of(-1)
        add(to_a, g * mean, torch.as_tensor(a).shape)
        add(to_b, g * (1 - mean), torch.as_tensor(b).shape)
        if bool(moved.any()):
            a, a0, b, b0 = (torch.as_tensor(t, device=g.device).to(wide) for t in (a, a0, b, b0))
            gap = torch.broadcast_to((a + a0) / 2 - (b + b0) / 2, out.shape)
            # an infinite gap is refused even where the gradient coming back is 0: past a softmax that 0
            # is the rule's secant from -inf, not an output that ignores the element
            if not bool(torch.isfinite(gap[torch.broadcast_to(moved, out.shape)]).all()):
                from onnx_attr.deeplift.rewrite import STEP_HINT, STEP_REASON  # (the rewrite imports the rules)

                raise UnsupportedOpError(
                    [(*module.comparison, STEP_REASON)], action="DeepLift is not complete on this call: it has",
                    hint=f"Where node {info.name!r} selects an infinite value (a -inf mask before a softmax, say) "
                         "on one side of this comparison, so the output's change where it flips is infinite. "
                         + STEP_HINT)
            jump = torch.where(moved, g * torch.where(moved, gap, 0.0), 0.0)
            per_condition = reduce_to(jump, cond.shape)
            with torch.enable_grad():
                mask = torch.zeros(at_x[module.n_inputs].shape, dtype=wide, device=g.device, requires_grad=True)
                (per_compare,) = torch.autograd.grad(module.carry(mask, at_x), mask, per_condition)
            (u, v), (u0, v0) = module.operands_of(0, at_x), module.operands_of(0, at_r)
            u, v, u0, v0 = (torch.as_tensor(t, device=g.device).to(wide) for t in (u, v, u0, v0))
            step = at_x[module.n_inputs].to(wide) - at_r[module.n_inputs].to(wide)
            d = (u - v) - (u0 - v0)
            flip = step != 0
            per_d = torch.where(flip, per_compare * step / torch.where(flip, d, 1.0), 0.0)
            to_u, to_v = module.inputs_of(0)
            add(to_u, per_d, u.shape)
            add(to_v, -per_d, v.shape)
        return [found[i].to(args[i].dtype) if i in found else None for i in range(len(args))]
