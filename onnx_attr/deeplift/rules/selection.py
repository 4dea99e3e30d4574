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
