"""`ArgMaxOneHot` (argmax_fusion.py): y = onehot(g(argmax(z))), a jump wherever the pick changes.

No local derivative explains a jump, but any m with Σ m·Δz = Σ grad·Δy is a complete DeepLift
multiplier; the secant along Δz, m = (Σ grad·Δy) Δz / |Δz|² per example, is the one that credits
each score by how far it moved. Where the pick does not change, Δy = 0 and so is m.
"""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import Rule, rule


@rule("ArgMaxOneHot")
class ArgMaxOneHotRule(Rule):
    kind = "composite"

    def check(self, info) -> None:
        if info.variable_positions() != (0,):
            raise NotImplementedError("a one-hot of an ArgMax whose other operands vary")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        z, z0 = args[0], refs[0]
        dz = (z - z0).double()
        dz = dz.expand(z.shape) if dz.shape != z.shape else dz
        dy = (out.double() - ref_out.double()).expand(out.shape)
        per_example = z.dim() > 0 and out.dim() > 0 and z.shape[0] == out.shape[0]
        rows = z.shape[0] if per_example else 1
        total = (grad.double() * dy).reshape(rows, -1).sum(1)
        norm = dz.reshape(rows, -1).square().sum(1)
        scale = torch.where(norm > 0, total / torch.where(norm > 0, norm, 1.0), 0.0)
        m = dz.reshape(rows, -1) * scale[:, None]
        return [m.reshape(z.shape).to(z.dtype), *([None] * (len(args) - 1))]


@rule("TopK")
class TopKCross(Rule):
    """TopK's values: the cross-max rule (rules/pooling.py) per selected slot. Slot k takes y = x[i]
    (i: x's k-th pick) and y0 = x0[j] (j: the reference's); with c = max(y, y0) (min for the
    smallest) it credits c − y0 to element i and y − c to element j, which sum to y − y0, and each
    multiplier is the credits an element got over its Δx. Where i = j that is the plain selection.
    For the first pick no credit lands on an element with Δx = 0 (the credit is bounded by |Δx|
    there); for a later pick one may, and that credit is spread over the row along Δx (a secant),
    so the sum still holds. The indices output is a step: its flips are guarded (`guard_steps`)."""

    kind = "composite"
    #: where the reference's scores have another shape (the candidates a threshold kept before a
    #: TopK: table_obj_det_q's PicoDet), no pick pairs with another: the plain selection, a gather
    #: whose completeness the call's delta judges, as before this rule
    plain_where_shapes_differ = True

    def check(self, info) -> None:
        if info.variable_positions() != (0,):
            raise NotImplementedError("a TopK whose K varies with the attributed inputs")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        x, x0 = args[0], refs[0].expand_as(args[0])
        g = grad[0] if isinstance(grad, tuple) else grad
        if g is None:  # only the indices are used downstream: no gradient reaches the values
            return [torch.zeros_like(x), *([None] * (len(args) - 1))]
        (y, picks), (y0, picks0) = out, ref_out
        y0, picks0 = y0.expand_as(y), picks0.expand_as(picks)
        axis = int(info.attrs.get("axis", -1)) % x.dim()
        c = torch.maximum(y, y0) if int(info.attrs.get("largest", 1)) else torch.minimum(y, y0)
        credit = torch.zeros_like(x).scatter_add_(axis, picks, (c - y0) * g).scatter_add_(axis, picks0, (y - c) * g)
        dx = x - x0
        still = dx == 0
        multiplier = credit / torch.where(still, torch.ones_like(dx), dx)
        plain = torch.zeros_like(x).scatter_add_(axis, picks, g)  # the selection's own gradient where Δx = 0
        multiplier = torch.where(still, plain, multiplier)
        lost = torch.where(still, credit, torch.zeros_like(credit)).sum(axis, keepdim=True)
        if bool(lost.ne(0).any()):  # a later pick's credit on an unmoved element: spread along the row's Δx
            norm = dx.square().sum(axis, keepdim=True)
            multiplier = multiplier + torch.where(norm > 0, lost / torch.where(norm > 0, norm, 1.0), 0.0) * dx
        return [multiplier, *([None] * (len(args) - 1))]
