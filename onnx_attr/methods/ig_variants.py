"""Integrated gradients with the steps placed where they matter.

- SplitIntegratedGradients (Miglani et al. 2020, "Investigating Saturation Effects in Integrated
  Gradients"): along the straight path the output often reaches most of its change early and then
  saturates, where small, noisy gradients still add up. A forward scan finds the split point α*
  where the output first reaches `split_fraction` of its change; only [0, α*] is integrated, so
  Σ attributions = f(x_α*) − f(x0), and α* and the saturated remainder are reported.
- AdaptiveIntegratedGradients: the path is cut into intervals, each integrated by Simpson's rule
  (its ends and midpoint). On every interval [a, b] completeness gives an exact check,
  Σ (x−x0)·∫ ∇f = f(x_b) − f(x_a), and the gradient passes at a and b already computed f there.
  Intervals whose check fails most are halved (reusing every point: a halving costs two new
  gradient points) until the summed |local delta| is within `tolerance` of |f(x) − f(x0)| or
  `n_steps` gradient points per example are spent: steps go where the integrand changes (ReLU
  kinks, saturation edges).

Both evaluate gradients at arbitrary (example, α) points in one batch per round, chunked by
`internal_batch_size`, on the imported module (token ids at their embeddings, as IG).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.differences import difference
from onnx_attr.deeplift.engine import Targets
from onnx_attr.errors import InputError
from onnx_attr.importing.rows import example_sums
from onnx_attr.methods._inputs import check_batched
from onnx_attr.methods.deeplift import method_report
from onnx_attr.methods.gradient import IntegratedGradients, integration_rule



class _PathPoints(IntegratedGradients):
    """Gradients and outputs at points x0 + α(x − x0) of each example's path, any α per row
    (IntegratedGradients' options, `multiply_by_inputs`, its own `attribute`)."""

    def _start(self, inputs, baselines, target, additional_forward_args, output, internal_batch_size,
               ends: bool = True):
        self.prepared, self.n = self._prepare(inputs, baselines, additional_forward_args)
        self.index = self._output_index(output)
        self.targets = self._targets(target, self.n, self.prepared, self.index)
        if internal_batch_size is not None and (not isinstance(internal_batch_size, (int, np.integer))
                                                or internal_batch_size < 1):
            raise InputError(f"internal_batch_size must be a positive int, got {internal_batch_size!r}")
        p = self.prepared
        check_batched(self.model, p, self.n)
        # each input's batch axis; rows stack there unless an attributed input has none (the rows
        # of a model that mixes them, or a state without a batch): then each row runs alone
        self.axes = p.row_axes()
        alone = any(x is None for x, a in zip(self.axes, p.attributed) if a)
        self.rows_per_pass = 1 if alone else internal_batch_size
        # a declared fixed batch the probe ran doubled is not binding: the rows go in large passes (as IG's)
        self.single_pass = not alone and p.layout is not None and p.layout.doubles
        self.diffs = [None if not a else difference(t, b) for t, b, a in zip(p.tensors, p.baselines, p.attributed)]
        if ends:
            self.f = self._value(p.tensors, self.targets, self.index, axes=self.axes).double().cpu()
            self.f0 = self._value(p.baselines, self.targets, self.index, axes=self.axes).double().cpu()

    def _points(self, examples: Tensor, alphas: Tensor) -> tuple[list, Targets]:
        """The inputs at (example, α) rows, each on its own batch axis (rows kept batch-first here)."""
        p = self.prepared
        tensors = []
        for t, b, d, a, x in zip(p.tensors, p.baselines, self.diffs, p.attributed, self.axes):
            if not a:
                tensors.append(_unbf(_bf(t, x)[examples.to(t.device)], x) if x is not None and t.shape[x] == self.n
                               else t)
                continue
            base, step = _bf(b, x), _bf(d, x)[examples.to(t.device)]
            base = base[examples.to(t.device)] if base.shape[0] == self.n else base.expand(len(examples), *base.shape[1:])
            shape = (-1, *[1] * (step.dim() - 1))
            tensors.append(_unbf(base + alphas.to(t.dtype).reshape(shape).to(t.device) * step, x))
        return tensors, self.targets._of([self.targets.rows[int(e)] for e in examples])

    def _chunks(self, count: int):
        size = self.rows_per_pass or count
        return [(s, min(count, s + size)) for s in range(0, count, size)]

    def _values_at(self, examples: Tensor, alphas: Tensor) -> Tensor:
        """f at the points, [R] (forward only)."""
        out = []
        for s, e in self._chunks(len(examples)):
            tensors, targets = self._points(examples[s:e], alphas[s:e])
            out.append(self._value(tensors, targets, self.index, axes=self.axes).double())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def _row_gradients(self, examples: Tensor, alphas: Tensor):
        """Per chunk of rows: (start, stop, ∇f per input (None if not attributed; rows on axis 0), f,
        path derivative ∇f · (x − x0)), the derivative and f as float64 on the CPU."""
        p = self.prepared
        for s, e in self._chunks(len(examples)):
            tensors, targets = self._points(examples[s:e], alphas[s:e])
            grads, values = self._gradients(tensors, p.attributed, targets, self.index, axes=self.axes,
                                            single_pass=self.single_pass)
            grads = [None if g is None else _bf(g, x) for g, x in zip(grads, self.axes)]
            slope = torch.zeros(e - s, dtype=torch.float64)
            for i, g in enumerate(grads):
                if g is not None:
                    diff = _bf(self.diffs[i], self.axes[i])[examples[s:e].to(g.device)]
                    slope += (g.double() * diff.double()).reshape(e - s, -1).sum(1).cpu()
            yield s, e, grads, values.double().cpu(), slope

    def _weighted_gradients(self, examples: Tensor, alphas: Tensor, weights: Tensor, count: int) -> list:
        """Σ weight·∇f over each example's rows, per attributed input [count, *shape]."""
        p = self.prepared
        sums = [None if not a else torch.zeros((count, *_bf(t, x).shape[1:]), dtype=torch.float64, device=t.device)
                for t, a, x in zip(p.tensors, p.attributed, self.axes)]
        for s, e, grads, _, _ in self._row_gradients(examples, alphas):
            for i, g in enumerate(grads):
                if g is not None:
                    w = weights[s:e].reshape(-1, *[1] * (g.dim() - 1)).to(g.device)
                    sums[i].index_add_(0, examples[s:e].to(g.device), w * g.double())
        return sums

    def _finish(self, per_example: list, covered: Tensor, name: str, extra: dict, return_convergence_delta: bool):
        """Attributions from Σ w∇f per example; the delta against the output change `covered`."""
        p = self.prepared
        contributions = [None if s is None else s * _bf(d, x).double()
                         for s, d, x in zip(per_example, self.diffs, self.axes)]
        delta = example_sums(contributions, self.axes, self.n).cpu() - covered
        self.last_report = {**method_report(self.model, name, delta, covered, self.index), **extra,
                            "embedding_lookups": self._used_lookups(p)}
        attributions = [None if s is None else _unbf(c if self._multiply_by_inputs else s, x).to(t.dtype)
                        for s, c, t, x in zip(per_example, contributions, p.tensors, self.axes)]
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
        self._start(inputs, baselines, target, additional_forward_args, output, internal_batch_size, ends=False)
        n = self.n
        grid = torch.linspace(0, 1, scan_steps + 1, dtype=torch.float64)
        examples = torch.arange(n).repeat_interleave(len(grid))
        path = self._values_at(examples, grid.repeat(n)).reshape(n, len(grid))  # the ends too, in the same pass
        self.f0, self.f = path[:, 0], path[:, -1]
        split = _first_reaching(path - self.f0.unsqueeze(1), split_fraction * (self.f - self.f0), grid)
        rows = torch.arange(n).repeat_interleave(n_steps)
        alphas = split.repeat_interleave(n_steps) * torch.as_tensor(points).repeat(n)
        row_weights = split.repeat_interleave(n_steps) * torch.as_tensor(weights).repeat(n)
        sums = self._weighted_gradients(rows, alphas, row_weights, n)
        at_split = self._values_at(torch.arange(n), split)
        self.split_points = split
        extra = {"n_steps": n_steps, "rule": method, "split_fraction": split_fraction,
                 "split_points": split.tolist(), "integrated_change": (at_split - self.f0).tolist(),
                 "saturated_change": (self.f - at_split).tolist()}
        return self._finish(sums, at_split - self.f0, "SplitIntegratedGradients", extra, return_convergence_delta)


def _bf(t: Tensor, axis: Optional[int]) -> Tensor:
    """Rows on axis 0: the batch axis moved there, or a whole example given a batch of 1."""
    return t.unsqueeze(0) if axis is None else t.movedim(axis, 0)


def _unbf(t: Tensor, axis: Optional[int]) -> Tensor:
    """`_bf` undone (a whole example: its one row)."""
    return t.squeeze(0) if axis is None else t.movedim(0, axis)


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
    """IG with steps placed by the convergence delta: Simpson intervals halved where their own
    completeness check Σ(x−x0)·∫∇f = f(x_b) − f(x_a) fails most, until Σ|local delta| ≤
    `tolerance`·|f(x) − f(x0)| or `n_steps` gradient points per example are spent (`initial`
    equal intervals to start, fewer when their 2·initial + 1 points exceed `n_steps`, so any budget
    of 3 or more runs). `last_report` has the points used, the intervals and the error bound
    Σ|local delta| / |f(x) − f(x0)| per example (the delta itself can be smaller by cancellation:
    on a rough path, a step function of many ReLU switches, a small delta at few points is luck,
    and the bound says so)."""

    #: each round halves the worst intervals until they hold this share of Σ|local delta|: higher
    #: means fewer rounds (larger batches), lower means points spent more selectively
    SPLIT_SHARE = 0.5

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 64, tolerance: float = 1e-3, initial: int = 4,
                  internal_batch_size: Optional[int] = None, return_convergence_delta: bool = False, *,
                  output: Union[str, int, None] = None):
        if not isinstance(n_steps, (int, np.integer)) or not isinstance(initial, (int, np.integer)) or \
                initial < 1 or n_steps < 3:
            raise InputError(f"n_steps ({n_steps!r}) must be an int of at least 3 (the ends and midpoint of one "
                             f"interval) and initial ({initial!r}) an int of at least 1")
        initial = min(int(initial), (int(n_steps) - 1) // 2)  # a small budget starts with fewer intervals
        if not tolerance > 0:
            raise InputError(f"tolerance must be > 0, got {tolerance!r}")
        self._start(inputs, baselines, target, additional_forward_args, output, internal_batch_size, ends=False)
        n = self.n
        points: list = [{} for _ in range(n)]  # α -> (∇f per input, f, path derivative)
        intervals = [[(k / initial, (k + 1) / initial) for k in range(initial)] for _ in range(n)]
        todo = [[k / initial for k in range(initial + 1)] + [(a + b) / 2 for a, b in intervals[0]] for _ in range(n)]
        rounds, bound = 0, [0.0] * n
        while any(todo):
            rounds += 1
            self._measure(todo, points)
            todo = [[] for _ in range(n)]
            for e in range(n):
                pts = points[e]
                local = {iv: _simpson(iv, pts, 2) - (pts[iv[1]][1] - pts[iv[0]][1]) for iv in intervals[e]}
                total = sum(abs(v) for v in local.values())
                change = max(abs(pts[1.0][1] - pts[0.0][1]), 1e-30)
                bound[e] = total / change
                if total <= tolerance * change:
                    continue
                share, planned = 0.0, len(pts)
                for iv in sorted(local, key=lambda iv: -abs(local[iv])):  # halve the worst first
                    if planned + 2 > n_steps or share >= self.SPLIT_SHARE * total:
                        break
                    share += abs(local[iv])
                    planned += 2
                    a, b = iv
                    m = (a + b) / 2
                    intervals[e].remove(iv)
                    intervals[e] += [(a, m), (m, b)]
                    todo[e] += [(a + m) / 2, (m + b) / 2]
        self.f = torch.tensor([points[e][1.0][1] for e in range(n)], dtype=torch.float64)
        self.f0 = torch.tensor([points[e][0.0][1] for e in range(n)], dtype=torch.float64)
        per_example = [None if not a else torch.stack([sum(_simpson(iv, points[e], 0, i) for iv in intervals[e])
                                                       for e in range(n)])
                       for i, a in enumerate(self.prepared.attributed)]
        extra = {"n_steps": n_steps, "tolerance": tolerance, "initial": initial, "gradient_points": [len(p) for p in points],
                 "rounds": rounds, "intervals": [sorted(ivs) for ivs in intervals], "error_bound": bound}
        return self._finish(per_example, self.f - self.f0, "AdaptiveIntegratedGradients", extra,
                            return_convergence_delta)

    def _measure(self, todo: list, points: list) -> None:
        """∇f, f and the path derivative at every new point of every example, in one batch."""
        owners = [(e, a) for e, alphas in enumerate(todo) for a in alphas]
        examples = torch.tensor([e for e, _ in owners])
        alphas = torch.tensor([a for _, a in owners], dtype=torch.float64)
        for s, e, grads, values, slopes in self._row_gradients(examples, alphas):
            for k in range(s, e):
                ex, a = owners[k]
                points[ex][a] = ([None if g is None else g[k - s].double() for g in grads], float(values[k - s]),
                                 float(slopes[k - s]))


def _simpson(interval: tuple, points: dict, slot: int, index: int = 0):
    """Simpson's rule on [a, b] over the stored value `slot` (0: the gradient of input `index`,
    2: the path derivative) at a, the midpoint and b."""
    a, b = interval
    ends = [points[a], points[(a + b) / 2], points[b]]
    pick = (lambda p: p[0][index]) if slot == 0 else (lambda p: p[slot])
    return (b - a) / 6 * (pick(ends[0]) + 4 * pick(ends[1]) + pick(ends[2]))
