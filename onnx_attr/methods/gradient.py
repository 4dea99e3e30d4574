"""Gradient methods on the imported module as it is: Saliency, InputXGradient, IntegratedGradients.

They share DeepLift's `attribute()` contract and input handling (`_inputs.prepare`), with
Captum's conventions for targets, baselines and the convergence delta. Integer inputs are not
attributed by these methods; pass them as `additional_forward_args`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.errors import BaselineForwardError, ForwardError, InputError
from onnx_attr.importing.rows import pass_batch
from onnx_attr.importing.rows import example_sums, rows_back, rows_first
from onnx_attr.deeplift.differences import contribution, difference
from onnx_attr.deeplift.layers import tensor_node, tensor_values, tensors_as_inputs
from onnx_attr.deeplift.taps import check_paired, id_path
from onnx_attr.methods._inputs import Prepared, _as_list, as_tensor, batched_inputs, check_batched, is_held, prepare
from onnx_attr.methods.base import AttributionMethod, budget_rows, check_batch_size, target_values  # noqa: F401  (target_values: kept importable here)
from onnx_attr.methods.deeplift import method_report


#: The base under its former name, for code that subclassed it.
_GradientMethod = AttributionMethod


@dataclass
class EmbeddedPrepared(Prepared):
    """Inputs for a model whose embedding lookups are fed from outside: the lookups' outputs come
    first (attributed), then the original inputs (token ids unattributed, as masks and positions
    still read them). `repack` sums each lookup's attributions over its embedding axis and over the
    lookups of the same ids, giving one value per token, as DeepLift does."""

    original: Optional[Prepared] = None
    lookups: dict = field(default_factory=dict)  # input name -> tensor names, in the order fed
    names: list = field(default_factory=list)  # the model's input names
    id_paths: dict = field(default_factory=dict)  # lookup tensor -> taps.IdPath (ids selected from the input)
    per_element: set = field(default_factory=set)  # lookup tensors that are a measured input's cast: no embedding axis

    def model_input(self, position: int) -> Tensor:
        return self.original.tensors[position]  # `tensors` starts with the lookups' outputs

    def fold(self, per_input: list) -> list:
        k = sum(len(v) for v in self.lookups.values())
        own = list(per_input[k:])
        index = 0
        for name, tensors in self.lookups.items():
            position = self.names.index(name)
            parts = per_input[index:index + len(tensors)]
            index += len(tensors)
            token_shape = tuple(self.original.tensors[position].shape[1:])
            total = None
            for tensor, part in zip(tensors, parts):
                if part is None:
                    continue
                if self.id_paths.get(tensor) is not None:  # ids selected or rearranged from the input: back along the path
                    scores = part if tensor in self.per_element else part.sum(-1)
                    folded = self.id_paths[tensor].fold(scores, self.original.tensors[position].shape)
                    total = folded if total is None else total + folded
                    continue
                if tuple(part.shape[1:]) == token_shape:  # one value per element (a cast of pixels): no axis to sum
                    total = part if total is None else total + part
                    continue
                if tuple(part.shape[1:-1]) != token_shape:
                    raise InputError(f"the embedding lookup {tensor!r} of {name!r} has shape {list(part.shape)}, "
                                     f"not the ids' shape {list(self.original.tensors[position].shape)} plus an "
                                     "embedding axis: its attributions cannot be given per token")
                total = part.sum(-1) if total is None else total + part.sum(-1)
            own[position] = total
        return own


def at_embeddings(model, lookups: dict[str, list[str]], prepared: Prepared, n: int,
                  at_baseline: bool = True) -> tuple[Any, Prepared]:
    """The model with the lookups of the attributed token-id inputs fed from outside, and the
    inputs for it: the lookups' outputs for the ids (attributed) and for the baseline ids. A local
    method (a gradient at the input) reads no baseline (`at_baseline` False): the model is not run
    at the baseline ids, where it may not run at all (ids 0, a TTS model's zero durations: no frame)."""
    ids = [i for i, (t, a) in enumerate(zip(prepared.tensors, prepared.attributed))
           if a and not t.is_floating_point()]
    names = [s.name for s in model.inputs]
    chosen = {names[i]: lookups[names[i]] for i in ids}
    tensors = [t for ts in chosen.values() for t in ts]
    reference = [b.expand(n, *b.shape[1:]) if a and b.shape[0] == 1 and n > 1 else b
                 for b, a in zip(prepared.baselines, prepared.attributed)]
    paths = {t: id_path(model.module, tensor_node(model.module, t)) for t in tensors}
    runtime = _runtime_operands(model, paths, prepared.tensors)
    found = tensor_values(model, [*tensors, *runtime], prepared.tensors)  # the run-time operands in the same pass
    h = found[:len(tensors)]
    for path in filter(None, paths.values()):
        path.recorded = [found[len(tensors) + runtime.index(node.meta["onnx_tensor"])] for node in path.runtime]
    h0 = tensor_values(model, tensors, reference) if at_baseline else [torch.zeros_like(v) for v in h]
    owner = {t: name for name, ts in chosen.items() for t in ts}
    for tensor, at_input, at_baseline in zip(tensors, h, h0):
        check_paired(tensor, owner[tensor], at_input.shape, at_baseline.shape)
    axes = [lookup_axis(paths[t], prepared.tensors[names.index(owner[t])], prepared.axis(names.index(owner[t])),
                        value.shape) for t, value in zip(tensors, h)]
    view = tensors_as_inputs(model, tensors, h, axes)
    floats = [a and t.is_floating_point() for t, a in zip(prepared.tensors, prepared.attributed)]
    embedded = EmbeddedPrepared(
        tensors=[*h, *prepared.tensors], attributed=[True] * len(h) + floats,
        baselines=[*h0, *[b if f else t for t, b, f in zip(prepared.tensors, prepared.baselines, floats)]],
        positions=prepared.positions, repack_user=prepared.repack_user, as_numpy=prepared.as_numpy,
        layout=prepared.layout,  # the model's outputs, as the call's probe found them (one example's: no batch)
        axes=None if prepared.axes is None and not any(axes) else
        [*axes, *(prepared.axes if prepared.axes is not None else [0 if t.dim() else None for t in prepared.tensors])],
        original=prepared, lookups=chosen, names=names,
        id_paths=paths,
        per_element={t for t in tensors if tensor_node(model.module, t).meta.get("measured_tap")})
    return view, embedded


def lookup_axis(path, ids: Tensor, axis: Optional[int], shape: Sequence[int]) -> Optional[int]:
    """The batch axis of a lookup's output: where the ids' batch axis lands through the selecting ops
    between them and the lookup (`IdPath`: PyTorch's nn.Transformer transposes the ids to time-major
    [T, N] first, so its embedding is [T, N, D], not batch first). Read off the path run on element
    positions with a batch of 3; where the path cannot take that, the one axis of the batch's size."""
    if path is None or axis is None or ids.dim() <= axis:
        return axis
    probe = list(ids.shape)
    probe[axis] = 3
    try:
        positions = path.positions(torch.Size(probe), ids.device)
        rows = (positions // math.prod(probe[axis + 1:])) % 3  # the example each looked-up id comes from
        varying = [a for a in range(rows.dim()) if rows.shape[a] == 3 and
                   bool((rows.narrow(a, 1, rows.shape[a] - 1) != rows.narrow(a, 0, rows.shape[a] - 1)).any())]
        if len(varying) == 1:
            return varying[0]
    except Exception:  # a path of fixed sizes (a Reshape to [1, T]), or one read at run time: by size
        pass
    sized = [a for a in range(len(shape) - 1) if shape[a] == ids.shape[axis]]
    return sized[0] if len(sized) == 1 else axis


def _runtime_operands(model, paths: dict, tensors: Sequence[Tensor]) -> list[str]:
    """The ONNX names of the values the id paths read at run time (a TopK's order of the lengths),
    taken in the lookups' own forward. Where the export's fixed batch splits the rows into several
    passes, each pass orders its own rows, and one fold over all rows would mix them: refused."""
    from onnx_attr.importing.batch import batch_axes
    from onnx_attr.importing.rows import pass_batch

    nodes = [node for path in paths.values() if path is not None for node in path.runtime]
    if not nodes:
        return []
    fixed = pass_batch(model)
    n = next((t.shape[a] for t, a in zip(tensors, batch_axes(model.inputs, tensors)) if a is not None), 0)
    unnamed = [node for node in nodes if "onnx_tensor" not in node.meta]
    if unnamed or (fixed and n != fixed):
        raise InputError(
            "the ids reach their embedding lookup through a selection computed at run time (a reorder by "
            + ("a value with no ONNX name" if unnamed else f"the lengths, in passes of the export's {fixed} row(s)")
            + "), which the gradient methods cannot fold back onto the ids here: pass "
            + (f"{fixed} row(s) per call, " if not unnamed else "") + "or use DeepLift, which folds it per pass")
    return list(dict.fromkeys(node.meta["onnx_tensor"] for node in nodes))


def _at_the_baseline(method, prepared, targets, index: int, axes, cause: Optional[Exception] = None) -> Tensor:
    """The explained value at the baseline. Where that forward fails (a zero speed predicting no frames),
    BaselineForwardError names the baseline as the cause (the CLI's --baseline auto then takes the
    blurred input), as DeepLift's reference pass does."""
    try:
        return method._value(prepared.baselines, targets, index, axes=axes)
    except ForwardError as err:
        raise BaselineForwardError(
            f"at the baseline (where the path starts), {err}; the baseline lies outside what the model "
            "computes: pick one inside its domain (the CLI's --baseline blur, or your own reference)") from cause or err


class Saliency(AttributionMethod):
    """|d out / d x| (or the signed gradient with abs=False)."""

    multiplies_by_inputs = False  # Captum's flag: a local attribution, not scaled by the input

    def attribute(self, inputs: Any, target: Any = None, abs: bool = True, additional_forward_args: Any = None, *,
                  output: Union[str, int, None] = None):
        prepared, grads = self._input_gradients(inputs, target, additional_forward_args, output)
        return prepared.repack([None if g is None else (g.abs() if abs else g) for g in grads])


class InputXGradient(AttributionMethod):
    """x * d out / d x."""

    multiplies_by_inputs = True  # Captum's flag: a global attribution

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None, *,
                  output: Union[str, int, None] = None):
        prepared, grads = self._input_gradients(inputs, target, additional_forward_args, output)
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


class IntegratedGradients(AttributionMethod):
    """(x - x0) * ∫ d out / d x along the straight path from the baseline, by a quadrature rule.

    The steps run as batches of n_steps * N rows, as many at once as `base.PASS_INPUT_ELEMENTS`
    allows, or in chunks of `internal_batch_size` rows; an export with a fixed batch size gets
    chunks of that size.
    """

    _multiply_by_inputs = True  # Captum's default; multiply_by_inputs=False gives the averaged gradients

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, *, output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        check_batched(self.model, prepared, n)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        points, weights = integration_rule(method, n_steps)
        axes = prepared.row_axes()
        # steps stack along the batch axes only where the graph keeps rows apart (batch.probe): a
        # time-major model would otherwise run them as one longer sequence
        stack = prepared.stackable and all(x is not None for x, a in zip(axes, prepared.attributed) if a)
        binding = prepared.layout is None or not prepared.layout.doubles  # the probe ran two rows right
        fixed = pass_batch(self.active) if stack and binding else None
        rows = (check_batch_size(internal_batch_size) or max(n, budget_rows(prepared.tensors, axes, n * n_steps, self.active))
                ) if stack else n
        if rows < n and fixed is None:  # as Captum: one step of every example at least, said once
            warnings.warn(f"internal_batch_size {rows} is below the batch of {n} examples: using {n} (one step of "
                          "every example per pass)", stacklevel=2)
            rows = n
        steps_per_pass = max(1, rows // n)
        totals = [None if not a else torch.zeros_like(t, dtype=torch.float64)
                  for t, a in zip(prepared.tensors, prepared.attributed)]
        diffs = [None if not a else difference(t, b) for t, b, a in
                 zip(prepared.tensors, prepared.baselines, prepared.attributed)]
        for start in range(0, n_steps, steps_per_pass):
            chunk = range(start, min(n_steps, start + steps_per_pass))
            scaled = [(t if x is None else _repeat_rows(t, len(chunk), n, x)) if not a else torch.cat(
                [b + float(points[k]) * d for k in chunk], dim=x or 0) for t, b, d, a, x in
                zip(prepared.tensors, prepared.baselines, diffs, prepared.attributed, axes)]
            try:
                grads, _ = self._gradients(scaled, prepared.attributed, targets.repeat(len(chunk)), index, axes=axes,
                                           single_pass=fixed is None)
            except ForwardError as err:  # where the forward at the baseline fails too, that is the cause
                _at_the_baseline(self, prepared, targets, index, axes, err)
                raise
            for i, g in enumerate(grads):
                if g is not None:
                    for j, k in enumerate(chunk):
                        step = g if axes[i] is None else g.narrow(axes[i], j * n, n)
                        totals[i] += float(weights[k]) * step.double()
        average = [None if t is None else t.to(prepared.tensors[i].dtype) for i, t in enumerate(totals)]
        contributions = [None if a is None else contribution(a, t, b)
                         for a, t, b in zip(average, prepared.tensors, prepared.baselines)]
        attributions = contributions if self._multiply_by_inputs else average
        value = self._value(prepared.tensors, targets, index, axes=axes)
        reference = _at_the_baseline(self, prepared, targets, index, axes)
        change = value.double() - reference.double()
        delta = example_sums(contributions, axes, n).to(change.device) - change
        self._report({**method_report(self.model, "IntegratedGradients", delta, value - reference, index,
                                                   torch.maximum(value.abs(), reference.abs())),
                      "n_steps": n_steps, "rule": method, "embedding_lookups": self._used_lookups(prepared),
                      **prepared.report(self.model), "steps_stacked": stack})
        out = prepared.repack(attributions)
        return (out, delta) if return_convergence_delta else out


def _distribution(b: Any) -> Tensor:
    """A baseline distribution: rows on axis 0 to draw from."""
    if isinstance(b, (bool, int, float, np.number)) or getattr(b, "ndim", 1) == 0:
        raise InputError("GradientShap draws baselines from a distribution: give an array with the baseline rows on "
                         "axis 0 (or a callable returning one), not a scalar")
    b = as_tensor(b, "baseline distribution")
    if len(b) == 0:
        raise InputError("the baseline distribution is empty: give at least one row")
    return b


def _repeat_rows(t: Tensor, times: int, n: int, axis: int = 0) -> Tensor:
    """A per-example tensor (n rows on `axis`) repeated `times` times along it; shared ones (0-d,
    batch 1 when n > 1) stay as they are."""
    if not t.dim() or t.shape[axis] != n:
        return t
    return t.repeat(*[times if i == axis else 1 for i in range(t.dim())])


def with_samples(prepared: Prepared, n: int, samples: int) -> None:
    """Unattributed inputs with the n examples on their batch axis, repeated like the attributed
    rows (each example `samples` times in a row), so that a state batched on axis 1 follows."""
    if samples == 1:
        return
    for i, (t, a) in enumerate(zip(prepared.tensors, prepared.attributed)):
        axis = prepared.axis(i)
        if not a and axis is not None and t.shape[axis] == n:
            prepared.tensors[i] = prepared.baselines[i] = t.repeat_interleave(samples, dim=axis)


def sample_axes(method, inputs: Any, additional_forward_args: Any) -> list[Optional[int]]:
    """The batch axis of each of the user's inputs, for methods that draw samples per example and
    stack them there (GradientShap's); a clear error where the probe finds one whole example."""
    from onnx_attr.methods.deeplift import baseline_axes

    every = {s.name for s in method.model.inputs}
    prepared = prepare(method.model, inputs, None, additional_forward_args, embedded=every)
    if not prepared.stackable:
        raise InputError(f"{type(method).__name__} stacks its samples on the batch axis, but the model's rows mix "
                         "(the inputs are one whole example, batch.probe): use IntegratedGradients or DeepLiftShap, "
                         "which run such inputs one point at a time")
    return baseline_axes(prepared, inputs, method.model)


def along(alpha: Tensor, t: Tensor, axis: Optional[int]) -> Tensor:
    """One value per row (on `axis`, t's batch axis) shaped to broadcast over t."""
    axis = axis or 0
    return alpha.reshape(*[1] * axis, -1, *[1] * (t.dim() - axis - 1))


def draw_shap_samples(inputs: Any, baselines: Any, n_samples: int, stdevs: Union[float, Sequence[float]],
                      method: str, axes: Optional[Sequence[Optional[int]]] = None, model=None
                      ) -> tuple[list[Tensor], list[Tensor], Tensor, int, Any, bool]:
    """GradientShap's draws, in Captum's order (baseline rows with numpy, Gaussian noise with torch,
    path points with numpy), so that under the same seeds the two agree: the noisy inputs and the
    drawn baselines (n_samples per example, example-major), one path point per row (float64), the
    examples, how to pack per-input values back, and numpy-in."""
    from onnx_attr.methods.deeplift import call_baseline
    from onnx_attr.methods.noise_tunnel import _add_noise

    tensors, repack, as_numpy, n = batched_inputs(inputs, method, model)
    baselines = call_baseline(baselines, inputs)
    if isinstance(baselines, Mapping) and isinstance(inputs, Mapping):
        missing = [k for k in inputs if k not in baselines]
        if missing:
            raise InputError(f"baselines name no distribution for input(s) {missing}")
        pool = [baselines[k] for k in inputs]
    else:
        pool, _ = _as_list(baselines)
    if len(pool) != len(tensors):
        raise InputError(f"{len(pool)} baseline distribution(s) for {len(tensors)} input(s)")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
    # drawn with each input's examples (and each distribution's rows) on axis 0, put back on its batch axis
    if axes is not None:
        names = list(inputs) if isinstance(inputs, Mapping) else [f"#{i}" for i in range(len(tensors))]
        whole = [f"{name!r} (shape {list(t.shape)})" for name, t, a in zip(names, tensors, axes)
                 if a is None and not is_held(t)]
        if whole:
            raise InputError(f"{method} draws its samples on each attributed input's batch axis, but input(s) "
                             f"{', '.join(whole)} have none (held inputs, such as a state without a batch): pass "
                             "them as additional_forward_args (held at their values), or attribute them with "
                             "IntegratedGradients or DeepLiftShap")
    axes = [0] * len(tensors) if axes is None else [a or 0 for a in axes]
    if len(pool) == len(tensors):
        pool = [b if is_held(t) else rows_first(as_tensor(b, "baseline distribution"), a) if getattr(b, "ndim", 0)
                else b for t, b, a in zip(tensors, pool, axes)]
    tensors = [t if is_held(t) else rows_first(t, a) for t, a in zip(tensors, axes)]
    n = next((t.shape[0] for t in tensors if not is_held(t)), n)
    drawn = [t if is_held(t) else _distribution(b)[np.random.choice(len(b), n_samples * n).tolist()]
             for t, b in zip(tensors, pool)]
    spread = [stdevs] * len(tensors) if isinstance(stdevs, (int, float)) else list(stdevs)
    if len(spread) != len(tensors):
        raise InputError(f"{len(spread)} stdevs for {len(tensors)} input(s)")
    # token ids and flags are not noised (their embedding is what gets attributed)
    noisy = [t if is_held(t) else _add_noise(t, s, n_samples) if t.is_floating_point()
             else t.repeat_interleave(n_samples, 0) for t, s in zip(tensors, spread)]
    alpha = torch.from_numpy(np.random.uniform(0.0, 1.0, n * n_samples))
    noisy = [t if is_held(t) else rows_back(t, a) for t, a in zip(noisy, axes)]
    drawn = [t if is_held(t) else rows_back(t, a) for t, a in zip(drawn, axes)]
    return noisy, drawn, alpha, n, repack, as_numpy


class GradientShap(AttributionMethod):
    """Expected gradients: each of `n_samples` draws per example picks a baseline from the
    distribution, adds Gaussian noise (`stdevs`) to the input and a random point on the path.

    Draws in Captum's order (baseline rows with numpy, noise with torch, path points with numpy),
    so under the same numpy and torch seeds the two agree.
    """

    _multiply_by_inputs = True  # Captum's default; multiply_by_inputs=False gives the averaged gradients

    def attribute(self, inputs: Any, baselines: Any, n_samples: int = 5, stdevs: Union[float, Sequence[float]] = 0.0,
                  target: Any = None, additional_forward_args: Any = None, return_convergence_delta: bool = False, *,
                  output: Union[str, int, None] = None):
        from onnx_attr.methods.noise_tunnel import _repeat_target

        noisy, drawn, alpha, n, repack, as_numpy = draw_shap_samples(
            inputs, baselines, n_samples, stdevs, "GradientShap", sample_axes(self, inputs, additional_forward_args),
            self.model)
        prepared, rows = self._prepare(repack(noisy), repack(drawn), additional_forward_args, samples=(n, n_samples))
        prepared.as_numpy = as_numpy
        dtype = next(t.dtype for t, a in zip(prepared.tensors, prepared.attributed) if a)
        alpha = alpha.to(dtype)
        axes = prepared.row_axes()
        scaled = [t if not a else b + along(alpha, t, x).to(t.device) * difference(t, b)
                  for t, b, a, x in zip(prepared.tensors, prepared.baselines, prepared.attributed, axes)]
        index = self._output_index(output)
        targets = self._targets(_repeat_target(target, n, n_samples), rows, prepared, index)
        grads, _ = self._gradients(scaled, prepared.attributed, targets, index, axes=axes)
        products = [None if g is None else contribution(g, t, b)
                    for g, t, b in zip(grads, prepared.tensors, prepared.baselines)]
        per_row = products if self._multiply_by_inputs else grads
        change = (self._value(prepared.tensors, targets, index, axes=axes).double()
                  - self._value(prepared.baselines, targets, index, axes=axes).double())
        delta = example_sums(products, axes, rows).to(change.device) - change
        # one random path point per row: the delta measures that estimate, not a quadrature error
        self._report({**method_report(self.model, "GradientShap", delta, change, index),
                      "n_samples": n_samples, "warnings": []})  # its delta is not expected to vanish
        folded = prepared.fold([None if a is None or not a.dim() else rows_first(a, x) for a, x in zip(per_row, axes)])
        model_axes = getattr(prepared, "original", None) or prepared  # token ids: the ids' own axes
        averaged = [None if a is None or a.dim() == 0 else rows_back(a.reshape(n, n_samples, *a.shape[1:]).mean(1), x)
                    for a, x in zip(folded, model_axes.row_axes())]
        out = prepared.pack(averaged)
        return (out, delta) if return_convergence_delta else out
