"""NoiseTunnel: smoothgrad, smoothgrad_sq and vargrad around any attribution method.

The noise is drawn as Captum draws it (per input, in order, one `torch.normal` over the inputs
repeated `nt_samples` times each, one draw per batch of `nt_samples_batch_size` samples), so
under the same torch seed the two agree exactly. Whatever rides along per example (per-example
baselines, targets, additional forward args, feature masks) is repeated with its example.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.errors import InputError
from onnx_attr.importing.rows import rows_back, rows_first
from onnx_attr.methods._inputs import _as_list, as_tensor, batched_inputs, is_held

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")

#: Keyword arguments of the wrapped method that hold per-example values to repeat with the inputs.
PER_EXAMPLE = ("baselines", "additional_forward_args", "feature_mask")


class NoiseTunnel:
    def __init__(self, method):
        self.method = method
        self.model = method.model

    @property
    def multiplies_by_inputs(self) -> bool:
        return getattr(self.method, "multiplies_by_inputs", False)

    def attribute(self, inputs: Any, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: Optional[int] = None, stdevs: Union[float, Sequence[float]] = 1.0,
                  draw_baseline_from_distrib: bool = False, **kwargs: Any):
        """Captum's call. With `return_convergence_delta=True` the result is (attributions, delta),
        the delta of every noisy sample (N × nt_samples, example-major within each batch of samples,
        batches in order), as Captum gives it."""
        if nt_type not in NT_TYPES:
            raise InputError(f"unknown nt_type {nt_type!r}; use one of {list(NT_TYPES)}")
        if not isinstance(nt_samples, (int, np.integer)) or nt_samples < 1:
            raise InputError(f"nt_samples must be a positive int, got {nt_samples!r}")
        batch = nt_samples if nt_samples_batch_size is None else nt_samples_batch_size
        if not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InputError(f"nt_samples_batch_size must be a positive int, got {nt_samples_batch_size!r}")
        batch = min(int(batch), int(nt_samples))
        wants_delta = bool(kwargs.get("return_convergence_delta"))
        if wants_delta and "return_convergence_delta" not in inspect.signature(self.method.attribute).parameters:
            raise InputError(f"{type(self.method).__name__} has no convergence delta; call without "
                             "return_convergence_delta")
        axes = self._sample_axes(inputs, kwargs.get("additional_forward_args"))
        tensors, repack, as_numpy, n = batched_inputs(inputs, "NoiseTunnel", self.model)
        tensors = [t if is_held(t) else rows_first(t, a) for t, a in zip(tensors, axes)]  # noise drawn batch-first
        n = next((t.shape[0] for t in tensors if not is_held(t)), n)
        spread = [stdevs] * len(tensors) if isinstance(stdevs, (int, float)) else list(stdevs)
        if len(spread) != len(tensors) or not all(isinstance(s, (int, float)) and s >= 0 for s in spread):
            raise InputError(f"stdevs {stdevs!r} must be one non-negative number, or one per input ({len(tensors)})")
        sums: Optional[list[Tensor]] = None
        squares: Optional[list[Tensor]] = None
        deltas = []
        for start in range(0, nt_samples, batch):
            k = min(batch, nt_samples - start)
            noisy = [t if is_held(t) else rows_back(_add_noise(t, s, k) if t.is_floating_point()
                                                     else t.repeat_interleave(k, 0), a)
                     for t, s, a in zip(tensors, spread, axes)]
            call = {key: _repeat_per_example(value, n, k, key) for key, value in kwargs.items()}
            if isinstance(kwargs.get("additional_forward_args"), Mapping):  # by name: each on its batch axis
                call["additional_forward_args"] = _repeat_by_axis(self.model, kwargs["additional_forward_args"], n, k)
            if "target" in kwargs:
                call["target"] = _repeat_target(kwargs["target"], n, k)
            if draw_baseline_from_distrib:
                call["baselines"] = _drawn_baselines(kwargs.get("baselines"), n * k)
            out = self.method.attribute(repack(noisy), **call)
            if wants_delta:
                out, delta = out
                deltas.append(torch.as_tensor(np.asarray(delta) if not isinstance(delta, Tensor) else delta))
            parts = [rows_first(as_tensor(a, "attribution").double(), x) if a is not None and np.ndim(a) else
                     as_tensor(a, "attribution").double() for a, x in zip(_as_list(out)[0], axes)]
            parts = [a.reshape(n, k, *a.shape[1:]) if a.dim() else a.expand(1, k) for a in parts]  # held: 0-d
            total, square = [a.sum(1) for a in parts], [(a * a).sum(1) for a in parts]
            sums = total if sums is None else [s + t for s, t in zip(sums, total)]
            squares = square if squares is None else [s + t for s, t in zip(squares, square)]
        smoothed = []
        for total, square, x, axis in zip(sums, squares, _as_list(out)[0], axes):
            mean, mean_sq = total / nt_samples, square / nt_samples
            value = {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean * mean}[nt_type]
            value = rows_back(value, axis) if np.ndim(x) else value
            dtype = x.dtype if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x)).dtype
            smoothed.append(value.to(dtype).reshape(()) if np.ndim(x) == 0 else value.to(dtype))
        if as_numpy:
            smoothed = [s.numpy() for s in smoothed]
        result = repack(smoothed)
        return (result, torch.cat(deltas)) if wants_delta else result


    def _sample_axes(self, inputs: Any, additional_forward_args: Any) -> list[Optional[int]]:
        """Each of the user's inputs' batch axis (found from the graph, as every method reads it):
        the noisy samples of an example are stacked there."""
        from onnx_attr.methods._inputs import prepare
        from onnx_attr.methods.deeplift import baseline_axes

        every = {s.name for s in self.model.inputs}
        prepared = prepare(self.model, inputs, None, additional_forward_args, embedded=every)
        if not prepared.stackable:
            raise InputError("NoiseTunnel stacks its noisy samples on the batch axis, but the model's rows mix (the "
                             "inputs are one whole example, batch.probe): call the method on noisy copies one at a "
                             "time instead")
        axes = baseline_axes(prepared, inputs, self.model)
        return [*axes, *[0] * (len(_as_list(inputs)[0]) - len(axes))]


def _add_noise(t: Tensor, stdev: float, samples: int) -> Tensor:
    expanded = (t.shape[0] * samples, *t.shape[1:])
    noise = torch.normal(0, torch.tensor(float(stdev), device=t.device).repeat(expanded))
    return t.repeat_interleave(samples, 0) + noise.to(t.dtype)


def _repeat_per_example(value: Any, n: int, samples: int, key: str) -> Any:
    """Arrays with one row per example are repeated with their examples (Captum's repeat_interleave);
    shared values (batch 1, scalars, non-arrays) stay as they are. Tuples, lists and dicts per item."""
    if key not in PER_EXAMPLE or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: _repeat_per_example(v, n, samples, key) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat_per_example(v, n, samples, key) for v in value)
    if isinstance(value, (Tensor, np.ndarray)) and value.ndim > 0 and value.shape[0] == n and n > 1:
        if isinstance(value, np.ndarray):
            return np.repeat(value, samples, axis=0)
        return value.repeat_interleave(samples, 0)
    if isinstance(value, (Tensor, np.ndarray)) and value.ndim > 0 and value.shape[0] == n == 1 and key != "baselines":
        return np.repeat(value, samples, axis=0) if isinstance(value, np.ndarray) else value.repeat_interleave(
            samples, 0)
    return value


def _repeat_by_axis(model, values: Mapping, n: int, samples: int) -> dict:
    """Forward args by input name, each repeated with its examples along its own batch axis
    (a state batched on axis 1 too); those without a batch stay as they are."""
    from onnx_attr.importing.batch import batch_axes

    axes = dict(zip((s.name for s in model.inputs), batch_axes(model.inputs)))
    out = {}
    for name, value in values.items():
        axis = axes.get(name)
        t = as_tensor(value, "forward arg") if isinstance(value, (Tensor, np.ndarray)) else None
        if t is None or axis is None or t.dim() <= axis or t.shape[axis] != n:
            out[name] = value
            continue
        grown = t.repeat_interleave(samples, dim=axis)
        out[name] = grown.numpy() if isinstance(value, np.ndarray) else grown
    return out


def _drawn_baselines(baselines: Any, rows: int) -> Any:
    """Captum's draw_baseline_from_distrib: one baseline row drawn at random per noisy example."""
    if baselines is None:
        raise InputError("draw_baseline_from_distrib needs baselines to draw from")
    if isinstance(baselines, Mapping):
        return {k: _drawn_baselines(v, rows) for k, v in baselines.items()}
    if isinstance(baselines, (tuple, list)):
        return type(baselines)(_drawn_baselines(b, rows) for b in baselines)
    if isinstance(baselines, (int, float)):
        return baselines
    b = as_tensor(baselines, "baseline distribution")
    if b.dim() == 0 or len(b) == 0:
        raise InputError("draw_baseline_from_distrib needs baselines with rows on axis 0 to draw from")
    return b[np.random.choice(len(b), rows).tolist()]


def _repeat_target(target: Any, n: int, samples: int) -> Any:
    """Per-example targets follow their examples' repeats; a shared target stays as it is."""
    from onnx_attr.deeplift.targets import Target, as_weights

    target = as_weights(target) or target
    if isinstance(target, Target):
        return target.repeat_each(samples)
    if target is None or callable(target) or isinstance(target, (int, tuple)) or (
            hasattr(target, "ndim") and target.ndim == 0):
        return target
    try:
        items = target.tolist() if hasattr(target, "tolist") else list(target)
    except TypeError:
        return target  # the method reports what is wrong with it
    if len(items) != n:
        return target  # the method reports the mismatch
    return [t for t in items for _ in range(samples)]
