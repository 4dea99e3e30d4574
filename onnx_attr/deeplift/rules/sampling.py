"""GridSample with a grid that varies: the Shapley values of the image and of each grid coordinate.

At a fixed grid GridSample is linear in the image X (the rewrite treats it as linear then). When the
grid G also varies (a document unwarper's predicted grid, a deformable detector's sampling
locations), each output element is a function of the image and of its own location's k coordinates,
linear in X and piecewise (bilinear within a cell, a jump per cell crossed) in G. The rule takes the
k + 1 players (X and each coordinate) of every output element and gives each its exact Shapley
value over the 2^(k+1) hybrids (each player at its value or its reference), which sum to
f(X, G) − f(X0, G0) exactly:
- a coordinate's multiplier is its values over ΔG, summed over the channels that share the location;
- X's value is Σ_S w_S·(f(X, G_S) − f(X0, G_S)) over the grids G_S of the other players' subsets,
  linear in ΔX, so its multipliers are Σ_S w_S·J(G_S)ᵀ·g, one backward through those samplings.
The hybrids are sampled in float64, where the grids' differences are not lost to rounding.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from onnx_attr.deeplift.rules.base import Rule, _expanded_refs, _substitute, rule


@rule("GridSample")
class GridSampleRule(Rule):
    kind = "composite"

    def check(self, info) -> None:
        if len(info.variable) < 2 or not info.variable[1]:
            raise NotImplementedError("GridSample whose grid does not vary is linear in X (no rule needed)")

    def backward(self, info, call, grad, args, out, refs, ref_out):
        refs = _expanded_refs(info.variable_positions(), args, refs)
        image_varies = info.variable[0]
        x, x0 = args[0], refs[0] if image_varies else args[0]
        g, g0 = args[1], refs[1]
        wide = torch.float64 if x.device.type != "mps" else x.dtype
        x, x0, g, g0 = (t.detach().to(wide) for t in (x, x0, g, g0))
        k = g.shape[-1]
        players = k + 1 if image_varies else k  # the coordinates 0..k-1, then X
        sample = lambda image, grid: call(*_substitute(args, {0: image, 1: grid}))  # noqa: E731

        def grid_of(coordinates: tuple[int, ...]) -> Tensor:
            moved = torch.zeros(k, dtype=torch.bool, device=g.device)
            moved[list(coordinates)] = True
            return torch.where(moved, g, g0)

        def weight(size: int) -> float:
            return math.factorial(size) * math.factorial(players - size - 1) / math.factorial(players)

        values: dict[tuple[int, ...], Tensor] = {}

        def value(subset: tuple[int, ...]) -> Tensor:
            if subset not in values:
                coordinates = tuple(p for p in subset if p < k)
                with torch.no_grad():
                    values[subset] = sample(x if k in subset else x0, grid_of(coordinates))
            return values[subset]

        grad = grad.to(wide)
        found = torch.zeros_like(g)
        for p in range(k):
            others = [q for q in range(players) if q != p]
            phi = sum(weight(len(s)) * (value(tuple(sorted((*s, p)))) - value(s))
                      for size in range(len(others) + 1) for s in itertools.combinations(others, size))
            per_location = (phi * grad).sum(1)  # [N, *spatial out]: the channels share the location's coordinate
            delta = g[..., p] - g0[..., p]
            found[..., p] = torch.where(delta != 0, per_location / torch.where(delta != 0, delta, 1.0), 0.0)
        grads = [None] * len(args)
        grads[1] = found.to(args[1].dtype)
        if image_varies:
            live = x.detach().requires_grad_(True)
            with torch.enable_grad():
                total = sum(weight(len(s)) * sample(live, grid_of(s))
                            for size in range(k + 1) for s in itertools.combinations(range(k), size))
                (multiplier,) = torch.autograd.grad(total, live, grad)
            grads[0] = multiplier.to(args[0].dtype)
        return grads
