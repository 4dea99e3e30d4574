"""Integrated gradients with the steps placed where they matter.

- SplitIntegratedGradients (Miglani et al. 2020, "Investigating Saturation Effects in Integrated
  Gradients"): along the straight path the output often reaches most of its change early and then
  saturates, where small, noisy gradients still add up. A forward scan finds the split point α*
  where the output first reaches `split_fraction` of its change; only [0, α*] is integrated, so
  Σ attributions = f(x_α*) − f(x0), and α* and the saturated remainder are reported.
- AdaptiveIntegratedGradients: the path is cut into intervals, each integrated by 2-point
  Gauss-Legendre; on every interval [a, b] completeness gives an exact check, Σ (x−x0)·∫ ∇f =
  f(x_b) − f(x_a), from two forward values. Intervals whose check fails most are halved until the
  summed |local delta| is within `tolerance` of |f(x) − f(x0)| or `n_steps` gradient points per
  example are spent: steps go where the integrand changes (ReLU kinks, saturation edges).

Both evaluate gradients at arbitrary (example, α) points in one batch per round, chunked by
`internal_batch_size`, on the imported module (token ids at their embeddings, as IG).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..engine import Targets
from ..errors import InputError
from .deeplift import method_report
from .gradient import IntegratedGradients, integration_rule

RULE_POINTS = 2  # Gauss-Legendre points per interval of AdaptiveIntegratedGradients


class _PathPoints(IntegratedGradients):
    """Gradients and outputs at points x0 + α(x − x0) of each example's path, any α per row
    (IntegratedGradients' options, `multiply_by_inputs`, its own `attribute`)."""

    def _start(self, inputs, baselines, target, additional_forward_args, output, internal_batch_size):
        self.prepared, self.n = self._prepare(inputs, baselines, additional_forward_args)
        self.targets, self.index = Targets(target, self.n), self._output_index(output)
        if internal_batch_size is not None and (not isinstance(internal_batch_size, (int, np.integer))
                                                or internal_batch_size < 1):
            raise InputError(f"internal_batch_size must be a positive int, got {internal_batch_size!r}")
        self.rows_per_pass = internal_batch_size
        p = self.prepared
        self.diffs = [None if not a else t - b for t, b, a in zip(p.tensors, p.baselines, p.attributed)]
        self.f = self._value(p.tensors, self.targets, self.index).double().cpu()
        self.f0 = self._value(p.baselines, self.targets, self.index).double().cpu()

    def _points(self, examples: Tensor, alphas: Tensor) -> tuple[list, Targets]:
        p = self.prepared
        tensors = []
        for t, b, d, a in zip(p.tensors, p.baselines, self.diffs, p.attributed):
            if not a:
                tensors.append(t[examples] if t.dim() and t.shape[0] == self.n else t)
                continue
            shape = (-1, *[1] * (t.dim() - 1))
            base = b[examples] if b.shape[0] == self.n else b.expand(len(examples), *b.shape[1:])
            tensors.append(base + alphas.to(t.dtype).reshape(shape).to(t.device) * d[examples])
        return tensors, self.targets._of([self.targets.rows[int(e)] for e in examples])

    def _chunks(self, count: int):
        size = self.rows_per_pass or count
        return [(s, min(count, s + size)) for s in range(0, count, size)]

    def _values_at(self, examples: Tensor, alphas: Tensor) -> Tensor:
        """f at the points, [R] (forward only)."""
        out = []
        for s, e in self._chunks(len(examples)):
            tensors, targets = self._points(examples[s:e], alphas[s:e])
            out.append(self._value(tensors, targets, self.index).double())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def _weighted_gradients(self, examples: Tensor, alphas: Tensor, weights: Tensor, slots: Tensor, count: int
                            ) -> tuple[list, Tensor]:
        """Σ weight·∇f over the rows of each slot (per attributed input, [count, *shape]) and each
        row's path derivative (∇f · (x − x0)), [R]."""
        p = self.prepared
        sums = [None if not a else torch.zeros((count, *t.shape[1:]), dtype=torch.float64, device=t.device)
                for t, a in zip(p.tensors, p.attributed)]
        slopes = []
        for s, e in self._chunks(len(examples)):
            tensors, targets = self._points(examples[s:e], alphas[s:e])
            grads, _ = self._gradients(tensors, p.attributed, targets, self.index)
            slope = torch.zeros(e - s, dtype=torch.float64)
            for i, g in enumerate(grads):
                if g is None:
                    continue
                g = g.double()
                w = weights[s:e].reshape(-1, *[1] * (g.dim() - 1)).to(g.device)
                sums[i].index_add_(0, slots[s:e].to(g.device), w * g)
                slope += (g * self.diffs[i][examples[s:e]].double()).reshape(e - s, -1).sum(1).cpu()
            slopes.append(slope)
        return sums, torch.cat(slopes) if slopes else torch.zeros(0, dtype=torch.float64)

    def _finish(self, per_example: list, covered: Tensor, name: str, extra: dict, return_convergence_delta: bool):
        """Attributions from Σ w∇f per example; the delta against the output change `covered`."""
        p = self.prepared
        contributions = [None if s is None else s * d.double() for s, d in zip(per_example, self.diffs)]
        total = sum(c.reshape(self.n, -1).sum(1).cpu() for c in contributions if c is not None)
        delta = total - covered
        self.last_report = {**method_report(self.model, name, delta, covered, self.index), **extra,
                            "embedding_lookups": self._used_lookups(p)}
        attributions = [None if s is None else (c if self._multiply_by_inputs else s).to(t.dtype)
                        for s, c, t in zip(per_example, contributions, p.tensors)]
        out = p.repack(attributions)
        return (out, delta) if return_convergence_delta else out


class SplitIntegratedGradients(_PathPoints):
    """IG over the unsaturated part of the path only: [0, α*], α* the first point where
    f(x_α) − f(x0) reaches `split_fraction` of f(x) − f(x0) (a forward scan of `scan_steps`
    points, linearly interpolated). The split points are in `last_report["split_points"]` and
    `split_points`; the delta is against f(x_α*) − f(x0), the change integrated."""

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", split_fraction: float = 0.9,
                  scan_steps: int = 32, internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, *, output: Union[str, int, None] = None):
        if not 0 < split_fraction <= 1:
            raise InputError(f"split_fraction must be in (0, 1], got {split_fraction!r}")
        if not isinstance(scan_steps, (int, np.integer)) or scan_steps < 1:
            raise InputError(f"scan_steps must be a positive int, got {scan_steps!r}")
        points, weights = integration_rule(method, n_steps)
        self._start(inputs, baselines, target, additional_forward_args, output, internal_batch_size)
        n = self.n
        grid = torch.linspace(0, 1, scan_steps + 1, dtype=torch.float64)
        inner = grid[1:-1]
        examples = torch.arange(n).repeat_interleave(len(inner))
        scanned = self._values_at(examples, inner.repeat(n)).reshape(n, len(inner))
        path = torch.cat([self.f0.unsqueeze(1), scanned, self.f.unsqueeze(1)], 1)  # [N, scan+1]
        split = _first_reaching(path - self.f0.unsqueeze(1), split_fraction * (self.f - self.f0), grid)
        rows = torch.arange(n).repeat_interleave(n_steps)
        alphas = split.repeat_interleave(n_steps) * torch.as_tensor(points).repeat(n)
        row_weights = split.repeat_interleave(n_steps) * torch.as_tensor(weights).repeat(n)
        sums, _ = self._weighted_gradients(rows, alphas, row_weights, rows, n)
        at_split = self._values_at(torch.arange(n), split)
        self.split_points = split
        extra = {"n_steps": n_steps, "rule": method, "split_fraction": split_fraction,
                 "split_points": split.tolist(), "integrated_change": (at_split - self.f0).tolist(),
                 "saturated_change": (self.f - at_split).tolist()}
        return self._finish(sums, at_split - self.f0, "SplitIntegratedGradients", extra, return_convergence_delta)


def _first_reaching(change: Tensor, goal: Tensor, grid: Tensor) -> Tensor:
    """Per row, the first α on `grid` (interpolated linearly between scan points) where `change`
    reaches `goal` in the goal's direction; 1 where the goal is 0 (no change to split)."""
    sign = torch.where(goal < 0, -1.0, 1.0).double().unsqueeze(1)
    reached = (change * sign) >= (goal.abs().unsqueeze(1) - 1e-300)
    split = torch.ones(change.shape[0], dtype=torch.float64)
    for e in range(change.shape[0]):
        if goal[e] == 0:
            continue
        k = int(torch.nonzero(reached[e])[0])  # exists: the last point is the whole change
        if k == 0:
            split[e] = 0.0
            continue
        lo, hi = float(change[e, k - 1] * sign[e]), float(change[e, k] * sign[e])
        share = (float(goal[e].abs()) - lo) / (hi - lo) if hi != lo else 1.0
        split[e] = float(grid[k - 1] + share * (grid[k] - grid[k - 1]))
    return split


class AdaptiveIntegratedGradients(_PathPoints):
    """IG with steps placed by the convergence delta: intervals halved where their own
    completeness check Σ(x−x0)·∫∇f = f(x_b) − f(x_a) fails most, until Σ|local delta| ≤
    `tolerance`·|f(x) − f(x0)| or `n_steps` gradient points per example are spent (`initial`
    equal intervals to start). `last_report` has the points used and the intervals per example."""

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 64, tolerance: float = 1e-3, initial: int = 4,
                  internal_batch_size: Optional[int] = None, return_convergence_delta: bool = False, *,
                  output: Union[str, int, None] = None):
        if not isinstance(n_steps, (int, np.integer)) or not isinstance(initial, (int, np.integer)) or \
                initial < 1 or n_steps < RULE_POINTS * initial:
            raise InputError(f"n_steps ({n_steps!r}) must be an int of at least {RULE_POINTS} × initial ({initial!r})")
        if not tolerance > 0:
            raise InputError(f"tolerance must be > 0, got {tolerance!r}")
        self._start(inputs, baselines, target, additional_forward_args, output, internal_batch_size)
        n = self.n
        nodes, node_weights = (torch.as_tensor(a) for a in integration_rule("gausslegendre", RULE_POINTS))
        # per example: the intervals [a, b], f at their ends, their vector sums and scalar checks
        intervals = [[(k / initial, (k + 1) / initial) for k in range(initial)] for _ in range(n)]
        ends = {}
        for e in range(n):
            ends[(e, 0.0)], ends[(e, 1.0)] = float(self.f0[e]), float(self.f[e])
        kept: list = [{} for _ in range(n)]  # (a, b) -> (sums per input, quadrature of the path derivative)
        spent = [0] * n
        todo = [list(ivs) for ivs in intervals]
        rounds = 0
        while any(todo):
            rounds += 1
            self._measure(todo, ends, kept, spent, nodes, node_weights)
            todo = [[] for _ in range(n)]
            change = (self.f - self.f0).abs()
            for e in range(n):
                local = {iv: q - (ends[(e, iv[1])] - ends[(e, iv[0])]) for iv, (_, q) in kept[e].items()}
                worst = sorted(local, key=lambda iv: -abs(local[iv]))
                total = sum(abs(v) for v in local.values())
                if total <= tolerance * max(float(change[e]), 1e-30):
                    continue
                share, planned = 0.0, spent[e]
                for iv in worst:  # halve the worst until they hold half the summed |local delta|
                    if planned + 2 * RULE_POINTS > n_steps or share >= total / 2:
                        break
                    share += abs(local[iv])
                    planned += 2 * RULE_POINTS  # the two halves are evaluated anew
                    mid = (iv[0] + iv[1]) / 2
                    del kept[e][iv]
                    todo[e] += [(iv[0], mid), (mid, iv[1])]
        per_example = [None if not a else torch.stack([sum(kept[e][iv][0][i] for iv in kept[e]) for e in range(n)])
                       for i, a in enumerate(self.prepared.attributed)]
        extra = {"n_steps": n_steps, "tolerance": tolerance, "gradient_points": spent, "rounds": rounds,
                 "intervals": [sorted(kept[e]) for e in range(n)]}
        return self._finish(per_example, self.f - self.f0, "AdaptiveIntegratedGradients", extra,
                            return_convergence_delta)

    def _measure(self, todo: list, ends: dict, kept: list, spent: list, nodes: Tensor, node_weights: Tensor) -> None:
        """Gradients at every new interval's Gauss points and f at its new ends, in one batch."""
        owners = [(e, iv) for e, ivs in enumerate(todo) for iv in ivs]
        new_ends = sorted({(e, x) for e, iv in owners for x in iv if (e, x) not in ends})
        if new_ends:
            values = self._values_at(torch.tensor([e for e, _ in new_ends]),
                                     torch.tensor([x for _, x in new_ends], dtype=torch.float64))
            ends.update({key: float(v) for key, v in zip(new_ends, values)})
        examples = torch.tensor([e for e, _ in owners]).repeat_interleave(RULE_POINTS)
        lengths = torch.tensor([iv[1] - iv[0] for _, iv in owners], dtype=torch.float64)
        starts = torch.tensor([iv[0] for _, iv in owners], dtype=torch.float64)
        alphas = (starts.unsqueeze(1) + lengths.unsqueeze(1) * nodes.unsqueeze(0)).reshape(-1)
        weights = (lengths.unsqueeze(1) * node_weights.unsqueeze(0)).reshape(-1)
        slots = torch.arange(len(owners)).repeat_interleave(RULE_POINTS)
        sums, slopes = self._weighted_gradients(examples, alphas, weights, slots, len(owners))
        quadrature = torch.zeros(len(owners), dtype=torch.float64).index_add_(0, slots, weights * slopes)
        for k, (e, iv) in enumerate(owners):
            kept[e][iv] = ([None if s is None else s[k] for s in sums], float(quadrature[k]))
            spent[e] += RULE_POINTS
