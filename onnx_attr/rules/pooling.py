"""Max or min over windows (MaxPool, GlobalMaxPool, ReduceMax/Min): the cross-max rule.

For a window with y = max(x), y0 = max(x0) and m = max(y, y0), the rule credits m - y0 to the
element where x peaks and y - m to the element where x0 peaks; the two sum to y - y0, so it is
exact, and it is the rule Captum uses for max pooling. The credits are spread onto the inputs by
the op's own backward (which routes a window's gradient to its peak, accumulating where windows
overlap), run once at x and once at x0; the multiplier is the spread divided by Δx. Where Δx is
~0 the credit is ~0 too, and the plain gradient is used. Min is the same with m = min(y, y0).
"""

from __future__ import annotations

import torch

from .base import Rule, rule
from .paired import secant_tolerance


def _vjp(call, x, rest, grad):
    with torch.enable_grad():
        z = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(call(z, *rest), z, grad)
    return g


@rule("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin")
class CrossExtremum(Rule):
    def check(self, info):
        if info.n_outputs > 1:
            raise NotImplementedError(f"{info.op_type} with its Indices output is not supported; "
                                      "re-export without the indices")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        x, rest = args[0], args[1:]
        x0 = refs[0].expand_as(x)
        y, y0 = out, ref_out.expand_as(out)
        m = torch.minimum(y, y0) if info.op_type == "ReduceMin" else torch.maximum(y, y0)
        dx = x - x0
        close = dx.abs() <= secant_tolerance(x, x0)
        needs_plain = bool(close.any())
        with torch.enable_grad():  # one forward at x serves the credit and, where needed, the gradient
            z = x.detach().requires_grad_(True)
            out_z = call(z, *rest)
            (at_x,) = torch.autograd.grad(out_z, z, (m - y0) * grad, retain_graph=needs_plain)
            plain = torch.autograd.grad(out_z, z, grad)[0] if needs_plain else None
        multiplier = (at_x + _vjp(call, x0, rest, (y - m) * grad)) / dx.masked_fill(close, 1.0)
        if needs_plain:
            multiplier = torch.where(close, plain, multiplier)
        return [multiplier] + [None] * (len(args) - 1)
