"""The RBF kernel's squared distance (converters/svm.SquaredDistance): d_s(x) = Σ_f (x_f − sv_sf)².

Each term is a square of one input feature, so the rescale rule per term is exact and closed form:
((x − sv)² − (x0 − sv)²) / (x − x0) = x + x0 − 2·sv. The multiplier of x_f through every d_s is
then Σ_s g_s (x_f + x0_f − 2 sv_sf) = (x_f + x0_f) Σ_s g_s − 2 (g · SV)_f: two reductions, no
[rows, vectors, features] tensor, and no division (x = x0 needs no special case). Σ_f m_f Δx_f =
Σ_s g_s Δd_s exactly; the two terms cancel where x and the support vectors are large and close,
so they are formed in float64.
"""

from __future__ import annotations

import torch

from onnx_attr.deeplift.rules.base import Rule, rule


@rule("SquaredDistance")
class SquaredDistanceRule(Rule):
    kind = "composite"

    def check(self, info):
        if info.variable_positions() != (0,):
            raise NotImplementedError("SquaredDistance whose input does not vary with the attributed inputs")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        x, x0 = args[0], refs[0]
        support = call.module.support.to(device=x.device, dtype=torch.float64)
        g = grad.double()
        m = (x.double() + x0.double()) * g.sum(-1, keepdim=True) - 2 * (g @ support)
        return [m.to(x.dtype)]
