"""Max or min over windows (MaxPool, GlobalMaxPool, ReduceMax/Min): the cross-max rule.

For a window with y = max(x), y0 = max(x0) and m = max(y, y0), the rule credits m - y0 to the
element where x peaks and y - m to the element where x0 peaks; the two sum to y - y0, so it is
exact, and it is the rule Captum uses for max pooling. The credits are spread onto the inputs by
the op's own backward (which routes a window's gradient to its peak, accumulating where windows
overlap), run once at x (on the graph its forward kept) and once at x0; the multiplier is the
spread divided by Δx. Where Δx = 0 the credit is 0 too, and the plain gradient is used. Min is
the same with m = min(y, y0).
"""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import Rule, rule
from onnx_attr.deeplift.rules.paired import fill_nan, sync_free


#: ops that pool each example on its own, so a batch-1 reference can be pooled once
_PER_EXAMPLE = frozenset({"MaxPool", "GlobalMaxPool"})
#: below this many input elements vmap's fixed cost (~0.1 ms) exceeds pooling the batch
_VMAP_WORTH_IT = 1 << 16


def _vjp_shared(call, x0, rest, grad):
    """The op's backward at a batch-1 reference for a whole batch of output gradients: one
    pooling of the reference, its backward mapped over the batch (not a pooling of B copies)."""
    _, back = torch.func.vjp(lambda t: call(t, *rest), x0.detach())
    (g,) = torch.func.vmap(back)(grad.unsqueeze(1))
    return g.squeeze(1)


@rule("MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin")
class CrossExtremum(Rule):
    keeps_graph = True

    def check(self, info):
        if info.n_outputs > 1:
            raise NotImplementedError(f"{info.op_type} with its Indices output is not supported; "
                                      "re-export without the indices")

    def backward(self, info, call, grad, args, out, refs, ref_out, graph=None):
        x, rest = args[0], args[1:]
        shared = (info.op_type in _PER_EXAMPLE and refs[0].shape[0] == 1 and x.shape[0] > 1
                  and x.numel() >= _VMAP_WORTH_IT)
        x0 = refs[0].expand_as(x)
        y, y0 = out, ref_out.expand_as(out)
        m = torch.minimum(y, y0) if info.op_type == "ReduceMin" else torch.maximum(y, y0)
        if graph is None:
            with torch.enable_grad():
                z = x.detach().requires_grad_(True)
                graph = ([z], call(z, *rest))
        (z,), out_z = graph
        if shared:
            (at_x,) = torch.autograd.grad(out_z, z, (m - y0) * grad, retain_graph=True)
            at_x0 = _vjp_shared(call, refs[0], rest, (y - m) * grad)
        else:  # both backwards in one call of the autograd engine (its fixed cost counts on small ops)
            with torch.enable_grad():
                z0 = x0.detach().requires_grad_(True)
                out_z0 = call(z0, *rest)
            at_x, at_x0 = torch.autograd.grad((out_z, out_z0), (z, z0), ((m - y0) * grad, (y - m) * grad),
                                              retain_graph=True)
        # Each credit is at most |Δx| of the element it lands on, so there is no blow-up as Δx
        # shrinks, and it is exactly 0 where Δx = 0: those elements alone come out NaN (0 / 0),
        # found by one sum (or filled unconditionally, see sync_free), and take the plain gradient.
        multiplier = at_x.add_(at_x0).div_(x - x0)
        if sync_free(multiplier) or bool(torch.isnan(multiplier.sum())):
            (plain,) = torch.autograd.grad(out_z, z, grad)
            multiplier = fill_nan(multiplier, plain)
        return [multiplier] + [None] * (len(args) - 1)
