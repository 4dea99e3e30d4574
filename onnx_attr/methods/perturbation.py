"""Perturbation methods: FeatureAblation and Occlusion, on the imported module or on onnxruntime.

One mechanism serves both: a list of boolean masks over an input's non-batch axes (single
elements, groups from a feature mask, or sliding windows). Each mask is set to the baseline, the
drop in the explained output is credited to the elements it covers, and every element's credit is
averaged over the masks covering it. With `backend="onnxruntime"` the forward passes run the
ONNX graph itself (the same stripped graph `verify` uses), so no import is trusted at all.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.engine import Targets
from onnx_attr.errors import InputError
from onnx_attr.importing.missing_values import check_outputs_finite
from onnx_attr.methods._inputs import BatchFirst, batch_first, check_batched, example_count, prepare
from onnx_attr.methods.gradient import _GradientMethod
from onnx_attr.methods.masked_eval import DEFAULT_BUDGET_BYTES, MaskedEvaluator, check_per_eval

BACKENDS = ("torch", "onnxruntime")


class _Perturbation(_GradientMethod):
    """Forward passes only, on the imported module (`backend="torch"`) or on the ONNX graph
    itself (`"onnxruntime"`); masked copies are built by `MaskedEvaluator` within `budget_bytes`."""

    _multiply_by_inputs = True  # Captum's flag for perturbation methods: an output change, a global attribution
    #: Captum's reading of target=None on an output with several values per example: every value
    #: explained at once from the same passes, the attributions shaped "flat" ([N·K, *input shape],
    #: FeatureAblation's family) or "nested" ([N, *output shape, *input shape], Shapley's); None:
    #: one value per example only (KernelShap, Lime: Captum refuses more)
    every_value: Optional[str] = "flat"
    missing_values = "any"  # only the model runs: NaN as a missing value wherever its outputs stay finite

    def __init__(self, model, backend: str = "torch", budget_bytes: int = DEFAULT_BUDGET_BYTES, **kwargs: Any):
        super().__init__(model, **kwargs)
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes < 1:
            raise InputError(f"budget_bytes must be a positive int (bytes of perturbed copies per forward), got "
                             f"{budget_bytes!r}")
        self.backend = backend
        self.budget_bytes = int(budget_bytes)

    def _prepare(self, inputs, baselines, additional_forward_args):
        """Any dtype may be ablated (ids, flags): no gradient is taken. The copies are built with
        every batch on axis 0 (`BatchFirst`) and fed back in the model's layout by `_value`."""
        prepared = prepare(self.model, inputs, baselines, additional_forward_args,
                           embedded={s.name for s in self.model.inputs}, missing=self.missing_values)
        check_outputs_finite(self.model, prepared.tensors, prepared.attributed)
        check_outputs_finite(self.model, prepared.baselines, prepared.attributed, "baseline")
        n = example_count(self.model, prepared)
        check_batched(self.model, prepared, n)
        self.last_report = prepared.report(self.model)  # each input's batch axis and those held, as they came
        prepared = batch_first(prepared)
        prepared.input_names = [s.name for s in self.model.inputs]
        self._fed = prepared
        return prepared, n

    def _value(self, tensors, targets, index) -> Tensor:
        """out[target] of batch-first rows (see `_prepare`), fed in the model's layout: all rows at
        once, or one at a time where an attributed input is a whole example without a batch."""
        fed = getattr(self, "_fed", None)
        if not isinstance(fed, BatchFirst):
            return self._run(tensors, targets, index, None)
        rows = len(targets.rows)
        runs = fed.feed(tensors, rows)
        if len(runs) == 1:
            return self._run(runs[0], targets, index, fed.fed_axes())
        return torch.cat([self._run(run, targets.chunk(r, r + 1), index, fed.fed_axes())
                          for r, run in enumerate(runs)])

    def _run(self, tensors, targets, index, axes) -> Tensor:
        """out[target] of rows in the model's layout, on the module or on onnxruntime."""
        if self.backend == "torch":
            return super()._value(tensors, targets, index, axes=axes)
        from onnx_attr.importing.verify import run_onnxruntime

        n = len(targets.rows)
        axes = axes or [0] * len(tensors)
        feeds = {spec.name: (t.expand(*t.shape[:a], n, *t.shape[a + 1:]) if a is not None and t.dim() > a
                             and t.shape[a] == 1 and n > 1 else t).cpu().numpy()
                 for spec, t, a in zip(self.model.inputs, tensors, axes)}
        name = self.model.outputs[index].name
        out = torch.from_numpy(np.asarray(run_onnxruntime(self.model.reference_model, feeds, [name])[0]))
        return targets.select(out)

    def _targets(self, target: Any, n: int, prepared=None, index: int = 0) -> Targets:
        targets = super()._targets(target, n, prepared, index)
        targets.every_value = target is None and self.every_value is not None
        return targets

    def _shaped(self, prepared, attributions: list, original: Tensor) -> Any:
        """Attributions [N, K, *input shape] per input (K values of each example's output, 1 but
        under `every_value`; `original` is the unperturbed [N, *S]) in Captum's shape, repacked."""
        n, values = original.shape[0], tuple(original.shape[1:])
        if values and any(f not in (0, None) for f, a in zip(prepared.fed, prepared.attributed) if a):
            if math.prod(values) == 1:  # one value per example all the same (an output [1] of the one example)
                return prepared.repack([None if a is None else a[:, 0] for a in attributions])
            raise InputError(f"the output has {list(values)} values per example and target is None, which Captum's "
                             "perturbation methods read as \"explain every value\"; that form needs every attributed "
                             "input batched on axis 0: give a target (one value per example)")
        shape = (n * math.prod(values),) if self.every_value == "flat" else (n, *values)
        return prepared.repack([None if a is None else a.reshape(*shape, *a.shape[2:]) for a in attributions])

    def _evaluator(self, prepared, targets: Targets, index: int, perturbations_per_eval: int) -> MaskedEvaluator:
        return MaskedEvaluator(lambda tensors, rows: self._value(tensors, rows, index), prepared.tensors,
                               prepared.baselines, prepared.attributed, targets, check_per_eval(perturbations_per_eval),
                               self.budget_bytes, batched=[f is not None for f in prepared.fed])

    def _bar(self, evaluator: MaskedEvaluator, counts: Sequence[int], show_progress: bool, extra: int = 0):
        """The Captum `show_progress` bar on stderr, counting forward passes; set on the evaluator."""
        from onnx_attr.progress import progress

        evaluator.bar = progress(extra + sum(evaluator.passes(c) for c in counts), "pass", type(self).__name__,
                                 quiet=not show_progress)
        return evaluator.bar

    def _ablate(self, prepared, masks: list[list[Tensor]], targets: Targets, index: int,
                perturbations_per_eval: int, show_progress: bool = False,
                original: Optional[Tensor] = None) -> tuple[list[Optional[Tensor]], Tensor]:
        """For each attributed input, the output drop of each mask averaged over the masks covering
        each element ([N, K, *shape]: K values per example), and the unperturbed output (`original`
        where the caller ran it already). `masks[i]` are boolean tensors shaped like input i with a
        batch axis of 1 (the same features in every example) or of N (per-example features).
        `show_progress` (Captum's keyword) counts the perturbed passes on stderr."""
        evaluator = self._evaluator(prepared, targets, index, perturbations_per_eval)
        # a mask over elements already at their baseline in every example changes nothing (padding ids, a
        # digit's black background under zeros): its drop is 0, and no forward pass is run for it
        moving = [_moving(m, x, b) if a else [] for m, x, b, a in
                  zip(masks, prepared.tensors, prepared.baselines, prepared.attributed)]
        bar = self._bar(evaluator, [len(m) for m in moving], show_progress)
        n = len(targets.rows)
        original = self._value(prepared.tensors, targets, index) if original is None else original
        k = original[0].numel() if n else 1  # values per example
        result: list[Optional[Tensor]] = []
        for i, x in enumerate(prepared.tensors):
            if not prepared.attributed[i]:
                result.append(None)
                continue
            own, picked = masks[i], moving[i]
            values, _ = evaluator.evaluate(len(picked), lambda start, stop, i=i, picked=picked: [
                torch.stack([own[p] for p in picked[start:stop]]) if j == i else None
                for j in range(len(prepared.tensors))])
            drops = torch.zeros((len(own), n, k), dtype=torch.float64, device=values.device)  # [masks, N, K]
            drops[picked] = original.double().reshape(1, n, k) - values.double()
            if isinstance(own, (ElementMasks, BlockMasks)):  # a partition: each element's credit is its own mask's drop
                result.append(own.credit(drops.to(x.device), n).to(_attribution_dtype(x, original)))
                continue
            total = torch.zeros((n, k, *x.shape[1:]), dtype=torch.float64, device=x.device)
            count = torch.zeros((max((m.shape[0] for m in own), default=1), 1, *x.shape[1:]),
                                dtype=torch.float64, device=x.device)
            for drop, m in zip(drops, own):
                covered = m.to(x.device).unsqueeze(1)
                total += drop.to(x.device).reshape(n, k, *[1] * (x.dim() - 1)) * covered
                count += covered
            result.append((total / count.clamp_min(1)).to(_attribution_dtype(x, original)))
        bar.close()
        return result, original


def _moving(masks, x: Tensor, baseline: Tensor) -> list[int]:
    """The indices of the masks that cover an element differing from its baseline in some example
    (a NaN differs from everything): the others replace every value by itself."""
    differs = x != baseline.to(x.device, x.dtype) if baseline.dim() == x.dim() else x != baseline
    if isinstance(masks, ElementMasks):
        return differs.reshape(len(x), -1).any(0).nonzero().flatten().tolist()
    if isinstance(masks, BlockMasks):
        moved = set(torch.unique(masks.ids.expand_as(differs)[differs]).tolist())
        return [j for j in range(len(masks)) if j in moved]
    return [j for j, m in enumerate(masks) if bool((m.to(differs.device) & differs).any())]


def block_groups(shape: tuple[int, ...], limit: int) -> Tensor:
    """Feature ids [1, *shape] cutting an example into at most `limit` contiguous blocks: every axis
    longer than 4 into equal runs (about limit^(1/axes) of them), the short ones (colour channels)
    kept whole in each block, so a block of an image is a square patch through all its channels."""
    long = [i for i, n in enumerate(shape) if n > 4] or [max(range(len(shape)), key=lambda i: shape[i])]
    per_axis = max(1, int(math.floor(limit ** (1 / len(long)) + 1e-9)))
    ids = torch.zeros(shape, dtype=torch.long)
    stride = 1
    for axis in reversed(long):
        run = -(-shape[axis] // per_axis)  # elements per block along this axis
        count = -(-shape[axis] // run)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        ids += (torch.arange(shape[axis]) // run).reshape(view) * stride
        stride *= count
    return ids.unsqueeze(0)


class ElementMasks:
    """One mask per element of an example of `shape` (each [1, *shape], True at that element alone),
    made when asked for: an identity matrix over a 3 x 224 x 224 image would be 22 GB."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.size = shape, math.prod(shape)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self[k] for k in range(*key.indices(self.size))]
        if not -self.size <= key < self.size:
            raise IndexError(key)
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[key] = True
        return mask.reshape(1, *self.shape)

    def credit(self, drops: Tensor, n: int) -> Tensor:
        """Drops [masks, N, K] -> each element's [N, K, *shape]: its own mask's."""
        return drops.permute(1, 2, 0).reshape(n, drops.shape[2], *self.shape)


class BlockMasks:
    """One mask per block of a partition given as feature ids [1, *shape] (0 .. blocks - 1), made when
    asked for (a few hundred full-size masks of a large image are hundreds of MB)."""

    def __init__(self, ids: Tensor):
        self.ids, self.count = ids, int(ids.max()) + 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self[k] for k in range(*key.indices(self.count))]
        if not 0 <= key < self.count:
            raise IndexError(key)
        return self.ids == key

    def credit(self, drops: Tensor, n: int) -> Tensor:
        return drops.permute(1, 2, 0)[:, :, self.ids.reshape(-1)].reshape(n, drops.shape[2], *self.ids.shape[1:])


def _attribution_dtype(x: Tensor, original: Tensor) -> torch.dtype:
    """The input's float dtype; for ablated ids or flags, the output's (its drop is what is credited)."""
    return x.dtype if x.is_floating_point() else original.dtype if original.is_floating_point() \
        else torch.get_default_dtype()


class FeatureAblation(_Perturbation):
    """Each feature (an element, or a group of a `feature_mask`) set to the baseline in turn.

    `max_features` (not Captum's): without a mask, an input with more elements than that per example
    is ablated in contiguous blocks, at most that many (`block_groups`), not one forward per element.
    `time_budget_s` (not Captum's; with `max_features`): fewer blocks where their forward passes would
    take longer, as many as fit after timing the unperturbed pass (never under `MIN_BLOCKS`). The
    count is fitted on the first call and kept (`fitted_features`) for every later one, so the
    examples of a run are cut alike; set `fitted_features` to repeat an earlier run's cut."""

    #: the fewest blocks a time budget cuts an input into (a 4 x 4 grid of an image)
    MIN_BLOCKS = 16

    def __init__(self, model, *args: Any, max_features: Optional[int] = None, time_budget_s: Optional[float] = None,
                 **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        if max_features is not None and (isinstance(max_features, bool) or not isinstance(max_features, int)
                                         or max_features < 1):
            raise InputError(f"max_features must be a positive int, got {max_features!r}")
        if time_budget_s is not None and (isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float))
                                          or not time_budget_s > 0 or max_features is None):
            raise InputError(f"time_budget_s must be a positive number of seconds, given with max_features; got "
                             f"{time_budget_s!r}")
        self.max_features = max_features
        self.time_budget_s = time_budget_s
        self.fitted_features: Optional[int] = None

    def _block_limit(self, prepared, targets: Targets, index: int, blocked: int) -> tuple[int, Optional[Tensor]]:
        """Blocks per input cut into blocks (`blocked` of them), and the unperturbed output where it
        was run here to time it (the time budget's fit, on the first call only)."""
        if self.time_budget_s is None or self.fitted_features is not None:
            return self.fitted_features or self.max_features, None
        start = time.perf_counter()
        original = self._value(prepared.tensors, targets, index)
        took = max(time.perf_counter() - start, 1e-6)
        fit = int(self.time_budget_s / took / max(1, blocked))
        self.fitted_features = max(min(self.MIN_BLOCKS, self.max_features), min(self.max_features, fit))
        return self.fitted_features, original

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        masks_given = _per_input(feature_mask, prepared)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        # with a time budget, an input of no more elements than max_features is cut too where one pass per
        # element would not fit (a DeBERTa's 256 token ids, each pass 0.7 s: hunt 29's fallback ran past 300 s)
        least = self.max_features if self.time_budget_s is None or self.max_features is None else \
            min(self.max_features, self.MIN_BLOCKS)
        blocked = [a and given is None and self.max_features is not None and math.prod(x.shape[1:]) > least
                   for x, a, given in zip(prepared.tensors, prepared.attributed, masks_given)]
        limit, original = self._block_limit(prepared, targets, index, sum(blocked)) if any(blocked) else (None, None)
        blocked = [b and math.prod(x.shape[1:]) > limit for b, x in zip(blocked, prepared.tensors)]
        limit = limit if any(blocked) else None
        masks = []
        for x, a, given, block in zip(prepared.tensors, prepared.attributed, masks_given, blocked):
            if not a:
                masks.append([])
            elif block:
                masks.append(BlockMasks(block_groups(tuple(x.shape[1:]), limit).to(x.device)))
            elif given is None:
                masks.append(ElementMasks(tuple(x.shape[1:])))
            else:
                groups = _feature_groups(given, x, self.model.inputs[len(masks)].name)
                masks.append([groups == g for g in torch.unique(groups)])
        attributions, original = self._ablate(prepared, masks, targets, index, perturbations_per_eval, show_progress,
                                              original)
        if limit is not None:
            self.last_report["blocks_per_input"] = {prepared.input_names[i]: len(m) for i, m in enumerate(masks)
                                                    if blocked[i]}
            if self.time_budget_s is not None:  # the cut a resumed run repeats (attribute_job)
                self.last_report["fitted_features"] = self.fitted_features
        return self._shaped(prepared, attributions, original)


class Occlusion(_Perturbation):
    """A sliding window (`sliding_window_shapes`, `strides`) set to the baseline at each position,
    placed as Captum places it; each element's value is averaged over the windows covering it."""

    def attribute(self, inputs: Any, sliding_window_shapes: Any, strides: Any = None, baselines: Any = None,
                  target: Any = None, additional_forward_args: Any = None, perturbations_per_eval: int = 1,
                  show_progress: bool = False, *, output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        chosen = [i for i, a in enumerate(prepared.attributed) if a]
        shapes = _per_input_windows(sliding_window_shapes, len(chosen))
        steps = _per_input_strides(strides, len(chosen))
        masks: list[list[Tensor]] = [[] for _ in prepared.tensors]
        for i, window, stride in zip(chosen, shapes, steps):
            masks[i] = _windows(tuple(prepared.tensors[i].shape[1:]), window, stride)
        index = self._output_index(output)
        attributions, original = self._ablate(prepared, masks, self._targets(target, n, prepared, index), index,
                                              perturbations_per_eval, show_progress)
        return self._shaped(prepared, attributions, original)


def _windows(shape: tuple[int, ...], window, stride) -> list[Tensor]:
    """Captum's window placements: `ceil((size - window) / stride) + 1` per axis, the last one cut
    off at the input's edge; each a boolean mask with a batch axis of 1."""
    window = tuple(window)
    if len(window) != len(shape) or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in window):
        raise InputError(f"sliding window {window} does not match the input's non-batch shape {shape}: give one "
                         "positive int per axis")
    if any(w > s for w, s in zip(window, shape)):
        raise InputError(f"sliding window {window} is larger than the input's non-batch shape {shape}")
    stride = (stride,) * len(shape) if isinstance(stride, (int, np.integer)) else tuple(stride)
    if len(stride) != len(shape) or not all(isinstance(t, (int, np.integer)) and t >= 1 for t in stride):
        raise InputError(f"stride {stride} does not fit the input's non-batch shape {shape}: give an int or one "
                         "positive int per axis")
    if any(t > w for t, w, s in zip(stride, window, shape) if w < s):
        raise InputError(f"stride {stride} is larger than the sliding window {window}: some elements would never "
                         "be occluded")
    offsets = [range(0, (math.ceil(max(s - w, 0) / st) + 1) * st, st) for s, w, st in zip(shape, window, stride)]
    masks = []
    for start in itertools.product(*offsets):
        m = torch.zeros((1, *shape), dtype=torch.bool)
        m[(slice(None), *(slice(o, o + w) for o, w in zip(start, window)))] = True
        masks.append(m)
    return masks


def _feature_groups(given: Any, x: Tensor, name: str) -> Tensor:
    """A feature mask as integer ids shaped [1 or N, *input shape]: broadcast as Captum does, one
    mask for all examples or one per example."""
    try:
        groups = torch.as_tensor(np.asarray(given) if not isinstance(given, Tensor) else given).to(x.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the feature mask for {name!r} as an array: {err}") from None
    if groups.is_floating_point() or groups.is_complex():
        raise InputError(f"the feature mask for {name!r} must hold integer feature ids, got {groups.dtype}")
    if groups.dim() < x.dim():
        groups = groups.reshape(*[1] * (x.dim() - groups.dim()), *groups.shape)
    if groups.dim() != x.dim() or any(g not in (1, s) for g, s in zip(groups.shape, x.shape)):
        raise InputError(f"the feature mask for {name!r} has shape {list(groups.shape)}; it must broadcast to the "
                         f"input's shape {list(x.shape)} (a batch of 1 or {x.shape[0]})")
    return groups.expand(groups.shape[0], *x.shape[1:])


def _per_input(value: Any, prepared) -> list:
    attributed = [i for i, a in enumerate(prepared.attributed) if a]
    if value is None:
        return [None] * len(prepared.tensors)
    if isinstance(value, Mapping):  # keyed by ONNX input name, like dict inputs
        return _by_name(value, prepared)
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(items) != len(attributed):
        raise InputError(f"{len(items)} feature mask(s) for {len(attributed)} attributed input(s): give one per "
                         "input, in the inputs' order")
    out: list = [None] * len(prepared.tensors)
    for i, item in zip(attributed, items):
        out[i] = _moved(prepared, i, item)
    return out


def _by_name(value: Mapping, prepared) -> list:
    out: list = [None] * len(prepared.tensors)
    for key, item in value.items():
        if key not in prepared.input_names:
            raise InputError(f"feature mask for unknown input {key!r}; the model's inputs are {prepared.input_names}")
        i = prepared.input_names.index(key)
        out[i] = _moved(prepared, i, item)
    return out


def _moved(prepared, i: int, value: Any) -> Any:
    """A per-input array (a feature mask) given in the input's own layout, as the batch-first
    copies are laid out."""
    return prepared.moved(i, value) if isinstance(prepared, BatchFirst) else value


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value)


def _per_input_windows(value: Any, count: int) -> list:
    """Captum's form: one window shape (a tuple of ints) for a single input, else one per input."""
    if _is_shape(value) and count == 1:
        return [tuple(value)]
    if isinstance(value, (tuple, list)) and all(_is_shape(v) for v in value) and len(value) == count:
        return [tuple(v) for v in value]
    return _mismatch("sliding window shapes", value, count)


def _per_input_strides(value: Any, count: int) -> list:
    """Captum's form: None (1), an int for every input, or one stride per input (an int or a tuple);
    a single input may also take its tuple directly."""
    if value is None or isinstance(value, (int, np.integer)):
        return [1 if value is None else int(value)] * count
    if count == 1 and _is_shape(value):
        return [tuple(value) if len(value) != 1 else int(value[0])]
    if isinstance(value, (tuple, list)) and len(value) == count and all(
            isinstance(v, (int, np.integer)) or _is_shape(v) for v in value):
        return list(value)
    return _mismatch("strides", value, count)


def _mismatch(what: str, value: Any, count: int):
    raise InputError(f"{what} {value!r} do not fit {count} attributed input(s): give one tuple per input (a tuple "
                     "of tuples), or a single tuple for a single input")


class FeaturePermutation(_Perturbation):
    """Permutation importance: each feature's values shuffled across the batch (a fresh random
    permutation that is not the identity), credited with the output drop it causes per example.

    Features follow Captum's FeaturePermutation: ids shared across inputs (one id in two inputs is
    one feature), every element its own feature by default; permutations are drawn with
    `torch.randperm` in Captum's order (per chunk of `perturbations_per_eval` features, per input,
    per feature), so under the same torch seed the two shuffle alike. Needs a batch of 2 or more.
    """

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None, feature_mask: Any = None,
                  perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        from onnx_attr.methods.masked_eval import feature_ids, spread

        prepared, n = self._prepare(inputs, None, additional_forward_args)
        if n < 2:
            raise InputError(f"FeaturePermutation shuffles features across the batch, and the batch has {n} example: "
                             "give 2 or more examples")
        groups, count = feature_ids(feature_mask, prepared, _by_name)
        order, inputs_of = _appearance(groups)
        per_eval = check_per_eval(perturbations_per_eval)
        perms = _permutations(order, inputs_of, len(groups), n, per_eval)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        evaluator = self._evaluator(prepared, targets, index, per_eval)
        bar = self._bar(evaluator, [len(order)], show_progress, extra=1)
        original = self._value(prepared.tensors, targets, index).double()
        bar.update(1)

        def masks(start: int, stop: int) -> list:
            return [None if g is None else torch.stack([g == f for f in order[start:stop]]) for g in groups]

        def shuffled(start: int, stop: int) -> list:
            return [None if g is None else torch.stack([x[perms.get((f, i), slice(None))] for f in order[start:stop]])
                    for i, (x, g) in enumerate(zip(prepared.tensors, groups))]

        values, _ = evaluator.evaluate(len(order), masks, shuffled)
        bar.close()
        k = values.shape[2]
        drops = torch.zeros(n, k, count, dtype=torch.float64)
        drops[:, :, order] = (original.reshape(1, n, k) - values.double()).permute(1, 2, 0)
        return self._shaped(prepared, [None if g is None else spread(drops, g, n).to(_attribution_dtype(x, original))
                                       for x, g in zip(prepared.tensors, groups)], original)


def _appearance(groups: list) -> tuple[list[int], dict[int, list[int]]]:
    """Feature ids in order of first appearance (each input's ids ascending, inputs in order) and
    the inputs each appears in."""
    inputs_of: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            for f in torch.unique(g).tolist():
                inputs_of.setdefault(f, []).append(i)
    return list(inputs_of), inputs_of


def _permutations(order: list[int], inputs_of: dict[int, list[int]], inputs: int, n: int,
                  per_eval: int) -> dict[tuple[int, int], Tensor]:
    """A non-identity permutation of the batch per (feature, input), drawn in Captum's sequence:
    per chunk of features, per input any of them touches, per feature of the chunk."""
    identity = torch.arange(n)
    perms: dict[tuple[int, int], Tensor] = {}
    for start in range(0, len(order), per_eval):
        chunk = order[start:start + per_eval]
        for i in range(inputs):
            if not any(i in inputs_of[f] for f in chunk):
                continue
            for f in chunk:
                perm = torch.randperm(n)
                while bool((perm == identity).all()):
                    perm = torch.randperm(n)
                perms[(f, i)] = perm
    return perms
