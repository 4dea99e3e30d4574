"""Gradient methods on the imported module as it is: Saliency, InputXGradient, IntegratedGradients.

They share DeepLift's `attribute()` contract and input handling (`_inputs.prepare`), with
Captum's conventions for targets, baselines and the convergence delta. Integer inputs are not
attributed by these methods; pass them as `additional_forward_args`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..engine import Targets
from ..errors import InputError
from ._inputs import _as_list, prepare
from .deeplift import method_report, output_index


class _GradientMethod:
    def __init__(self, model, **_: Any):
        self.model = model
        self.last_report: dict = {}

    def _output_index(self, output: Union[str, int, None]) -> int:
        return output_index(self.model, output)

    def _prepare(self, inputs, baselines, additional_forward_args):
        prepared = prepare(self.model, inputs, baselines, additional_forward_args, embedded=set())
        n = next(t.shape[0] for t, a in zip(prepared.tensors, prepared.attributed) if a)
        return prepared, n

    def _gradients(self, tensors: list[Tensor], attributed: list[bool], targets: Targets, output: int
                   ) -> tuple[list[Optional[Tensor]], Tensor]:
        """d out[target] / d input for each attributed input, and the selected outputs."""
        live = [t.detach().requires_grad_(True) if a else t for t, a in zip(tensors, attributed)]
        with torch.enable_grad():
            out = self.model(*live)
            out = out[output] if isinstance(out, (tuple, list)) else out
            value = targets.select(out)
            wanted = [t for t, a in zip(live, attributed) if a]
            grads = iter(torch.autograd.grad(value.sum(), wanted, allow_unused=True))
        result = []
        for t, a in zip(live, attributed):
            g = next(grads) if a else None
            result.append(None if not a else (torch.zeros_like(t) if g is None else g))
        return result, value.detach()

    def _value(self, tensors, targets, index) -> Tensor:
        return target_values(self.model, tensors, targets, index)


def target_values(model, tensors: list[Tensor], targets: Targets, index: int) -> Tensor:
    """out[target] per example without gradients, fed in the export's fixed batch size if it has one."""
    n = len(targets.rows)
    expanded = [t.expand(n, *t.shape[1:]) if t.shape[0] == 1 and n > 1 else t for t in tensors]
    fixed = model.inputs[0].shape[0] if model.inputs[0].shape and isinstance(model.inputs[0].shape[0], int) else None
    size = fixed or n
    values = []
    with torch.no_grad():
        for start in range(0, n, size):
            stop = min(start + size, n)
            out = model(*[_pad_rows(t[start:stop], size) for t in expanded])
            out = out[index] if isinstance(out, (tuple, list)) else out
            values.append(targets.chunk(start, stop).select(out[:stop - start]))
    return torch.cat(values)


class Saliency(_GradientMethod):
    """|d out / d x| (or the signed gradient with abs=False)."""

    def attribute(self, inputs: Any, target: Any = None, abs: bool = True, additional_forward_args: Any = None, *,
                  output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, None, additional_forward_args)
        grads, _ = self._gradients(prepared.tensors, prepared.attributed, Targets(target, n),
                                   self._output_index(output))
        return prepared.repack([None if g is None else (g.abs() if abs else g) for g in grads])


class InputXGradient(_GradientMethod):
    """x * d out / d x."""

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None, *,
                  output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, None, additional_forward_args)
        grads, _ = self._gradients(prepared.tensors, prepared.attributed, Targets(target, n),
                                   self._output_index(output))
        return prepared.repack([None if g is None else g * t for g, t in zip(grads, prepared.tensors)])


def integration_rule(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1] and their weights for the path integral (Captum's names)."""
    if n_steps < 1:
        raise InputError(f"n_steps must be at least 1, got {n_steps}")
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n_steps)
        return (points + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise InputError("riemann_trapezoid needs n_steps >= 2")
        points = np.linspace(0, 1, n_steps)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[0] = weights[-1] = 0.5 / (n_steps - 1)
        return points, weights
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in offsets:
        raise InputError(f"unknown integration method {method!r}; use gausslegendre or riemann_"
                         "{left,right,middle,trapezoid}")
    points = (np.arange(n_steps) + offsets[method]) / n_steps
    return points, np.full(n_steps, 1.0 / n_steps)


class IntegratedGradients(_GradientMethod):
    """(x - x0) * ∫ d out / d x along the straight path from the baseline, by a quadrature rule.

    All steps run as one batch of n_steps * N rows, or in chunks of `internal_batch_size` rows;
    an export with a fixed batch size gets chunks of that size.
    """

    def __init__(self, model, multiply_by_inputs: bool = True, **kwargs: Any):
        super().__init__(model, **kwargs)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, *, output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        index = self._output_index(output)
        targets = Targets(target, n)
        points, weights = integration_rule(method, n_steps)
        fixed = self.model.inputs[0].shape[0] if self.model.inputs[0].shape and isinstance(
            self.model.inputs[0].shape[0], int) else None
        rows = fixed or internal_batch_size or n * n_steps
        if rows < n and fixed is None:
            raise InputError(f"internal_batch_size {rows} is below the batch of {n}")
        steps_per_chunk = max(1, rows // n) if fixed is None else None
        totals = [None if not a else torch.zeros_like(t, dtype=torch.float64)
                  for t, a in zip(prepared.tensors, prepared.attributed)]
        diffs = [None if not a else t - b for t, b, a in
                 zip(prepared.tensors, prepared.baselines, prepared.attributed)]
        for start in range(0, n_steps, steps_per_chunk or 1):
            chunk = range(start, min(n_steps, start + (steps_per_chunk or 1)))
            scaled = [t.repeat(len(chunk), *([1] * (t.dim() - 1))) if not a else torch.cat(
                [b + float(points[k]) * d for k in chunk]) for t, b, d, a in
                zip(prepared.tensors, prepared.baselines, diffs, prepared.attributed)]
            step_targets = Targets.__new__(Targets)
            step_targets.rows = targets.rows * len(chunk)
            grads = self._chunked_gradients(scaled, prepared.attributed, step_targets, index, fixed)
            for i, g in enumerate(grads):
                if g is not None:
                    for j, k in enumerate(chunk):
                        totals[i] += float(weights[k]) * g[j * n:(j + 1) * n].double()
        average = [None if t is None else t.to(prepared.tensors[i].dtype) for i, t in enumerate(totals)]
        attributions = [None if a is None else (a * d if self._multiply_by_inputs else a)
                        for a, d in zip(average, diffs)]
        contributions = [None if a is None else a * d for a, d in zip(average, diffs)]
        value = self._value(prepared.tensors, targets, index)
        reference = self._value(prepared.baselines, targets, index)
        delta = sum(c.reshape(n, -1).double().sum(1) for c in contributions if c is not None) - (
            value.double() - reference.double())
        self.last_report = {**method_report(self.model, "IntegratedGradients", delta, value - reference, index),
                            "n_steps": n_steps, "rule": method}
        out = prepared.repack(attributions)
        return (out, delta) if return_convergence_delta else out

    def _chunked_gradients(self, tensors, attributed, targets, index, fixed):
        if fixed is None:
            return self._gradients(tensors, attributed, targets, index)[0]
        total = tensors[0].shape[0]
        parts = []
        for start in range(0, total, fixed):
            stop = min(start + fixed, total)
            chunk = [_pad_rows(t[start:stop], fixed) for t in tensors]
            sub = Targets.__new__(Targets)
            sub.rows = targets.rows[start:stop] + [targets.rows[stop - 1]] * (fixed - (stop - start))
            grads, _ = self._gradients(chunk, attributed, sub, index)
            parts.append([None if g is None else g[:stop - start] for g in grads])
        return [None if parts[0][i] is None else torch.cat([p[i] for p in parts]) for i in range(len(tensors))]

def _pad_rows(t: Tensor, size: int) -> Tensor:
    return t if t.shape[0] == size else torch.cat([t, t[-1:].expand(size - t.shape[0], *t.shape[1:])])


class GradientShap(_GradientMethod):
    """Expected gradients: each of `n_samples` draws per example picks a baseline from the
    distribution, adds Gaussian noise (`stdevs`) to the input and a random point on the path.

    Draws in Captum's order (baseline rows with numpy, noise with torch, path points with numpy),
    so under the same numpy and torch seeds the two agree.
    """

    def __init__(self, model, multiply_by_inputs: bool = True, **kwargs: Any):
        super().__init__(model, **kwargs)
        self._multiply_by_inputs = multiply_by_inputs

    def attribute(self, inputs: Any, baselines: Any, n_samples: int = 5, stdevs: Union[float, Sequence[float]] = 0.0,
                  target: Any = None, additional_forward_args: Any = None, return_convergence_delta: bool = False, *,
                  output: Union[str, int, None] = None):
        from .noise_tunnel import _add_noise, _repeat_target

        values, repack = _as_list(inputs)
        pool, _ = _as_list(baselines)
        if len(pool) != len(values):
            raise InputError(f"{len(pool)} baseline distribution(s) for {len(values)} input(s)")
        n = len(values[0])
        drawn = [torch.as_tensor(np.asarray(b))[np.random.choice(len(b), n_samples * n).tolist()] for b in pool]
        spread = [stdevs] * len(values) if isinstance(stdevs, (int, float)) else list(stdevs)
        noisy = [_add_noise(torch.as_tensor(np.asarray(v)), s, n_samples) for v, s in zip(values, spread)]
        prepared, rows = self._prepare(repack(noisy), repack(drawn), additional_forward_args)
        alpha = torch.tensor(np.random.uniform(0.0, 1.0, rows), dtype=prepared.tensors[0].dtype)
        scaled = [t if not a else b + alpha.reshape(-1, *[1] * (t.dim() - 1)).to(t.device) * (t - b)
                  for t, b, a in zip(prepared.tensors, prepared.baselines, prepared.attributed)]
        targets = Targets(_repeat_target(target, n, n_samples), rows)
        index = self._output_index(output)
        grads, _ = self._gradients(scaled, prepared.attributed, targets, index)
        diffs = [None if g is None else t - b for g, t, b in zip(grads, prepared.tensors, prepared.baselines)]
        per_row = [None if g is None else (g * d if self._multiply_by_inputs else g) for g, d in zip(grads, diffs)]
        change = (self._value(prepared.tensors, targets, index).double()
                  - self._value(prepared.baselines, targets, index).double())
        delta = sum((g * d).reshape(rows, -1).double().sum(1) for g, d in zip(grads, diffs) if g is not None) - change
        # one random path point per row: the delta measures that estimate, not a quadrature error
        self.last_report = {**method_report(self.model, "GradientShap", delta, change, index),
                            "n_samples": n_samples, "warnings": []}  # its delta is not expected to vanish
        averaged = [None if a is None else a.reshape(n, n_samples, *a.shape[1:]).mean(1) for a in per_row]
        out = prepared.repack(averaged)
        return (out, delta) if return_convergence_delta else out
