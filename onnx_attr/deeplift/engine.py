"""The two-pass DeepLift engine: a reference pass without gradients, then the main pass.

Input and baseline are never stacked on the batch axis (Captum's way, which breaks on exports
that bake the batch size into reshapes or move it off dim 0). A shared baseline runs at batch 1
and broadcasts; when the graph merges the batch into another axis (the broadcast would be
wrong), the reference is re-run at the inputs' batch size. Exports whose batch size is fixed
get their inputs in chunks of that size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from onnx_attr.errors import BaselineForwardError, ForwardError, InputError, ValueShapedError, is_out_of_memory
from onnx_attr.importing.model import _explain_failure
from onnx_attr.deeplift.differences import contribution, difference
from onnx_attr.deeplift.reference_cache import ReferenceCache
from onnx_attr.deeplift.ops import ReferenceShapeMismatch
from onnx_attr.deeplift.rewrite import RewriteResult, rewrite_for_deeplift
from onnx_attr.importing.rows import padded_rows as _rows, pass_batch, pick_output as _pick
from onnx_attr.deeplift.target_grad import target_gradients
from onnx_attr.deeplift.targets import Target, as_weights


@dataclass
class PassResult:
    multipliers: list[Optional[Tensor]]  # one per input, None for those not attributed; for integer
    # inputs (token ids) their contributions per token, measured at the embedding lookup
    value: Tensor  # the explained output per example, f(x)
    reference_value: Tensor  # f(x0) per example
    layers: list[tuple[Tensor, Tensor]] = None  # per layer tap: (multiplier, h - h0)


class Targets:
    """Captum's target conventions, normalized to one row of indices per example.

    None (a scalar output per example), an int, a tuple (for outputs of rank > 2), a list with
    one int/tuple per example, or a tensor/array of shape [N]; a callable (summed per example);
    a `Target` (an index on another batch axis, or a mask: Σ weights·output), and a boolean or
    floating tensor as a shared mask.
    """

    def __init__(self, target, n: int, axis: Optional[int] = 0):
        self.selector = None  # a neuron selector with slices, or a callable: summed per example
        self.weights: Optional[Tensor] = None  # a mask: Σ weights·output (rows index it when per example)
        # the output's batch axis, moved to 0 before anything is picked: a `Target`'s own, else the
        # one the graph has (`axis`, from batch.probe); None: the output is one example, without a batch
        self.batch_axis: Optional[int] = axis
        # target=None as Captum's perturbation methods read it: every value of each example's output
        # ([N, *S] from `select`), set by a method that takes that form (`_Perturbation.every_value`)
        self.every_value = False
        target = as_weights(target) or target
        if isinstance(target, Target):
            self.batch_axis = axis if target.batch_axis is None else int(target.batch_axis)
            if target.weights is not None:
                self.weights = _weight_tensor(target.weights)
                if target.per_example and (self.weights.dim() == 0 or self.weights.shape[0] != n):
                    raise InputError(f"per-example target weights need {n} mask(s) on axis 0, got shape "
                                     f"{list(self.weights.shape)}")
                self.rows = [(i,) for i in range(n)] if target.per_example else [()] * n
                self.per_example = target.per_example
                return
            target = target.index
        self.per_example = False
        if callable(target) and not isinstance(target, Tensor):
            self.selector = target
            rows: list[tuple[int, ...]] = [()] * n
        elif isinstance(target, tuple) and any(isinstance(t, slice) for t in target):
            self.selector = _slicer(target)
            rows = [()] * n
        elif target is None:
            rows = [()] * n
        elif isinstance(target, str):
            raise InputError(f"target {target!r} is a name: a target is indices, a callable or a Target; for the "
                             f"CLI's named forms pass target=onnx_attr.named_target(model, inputs, {target!r})")
        elif isinstance(target, (bool, float)):
            raise InputError(f"a target must be integer indices, got {target!r}")
        elif isinstance(target, (int,)) or (hasattr(target, "ndim") and getattr(target, "ndim") == 0):
            rows = [(int(target),)] * n
        elif isinstance(target, (Tensor, np.ndarray)) and target.ndim == 1 and len(target) == 1 \
                and not (target.dtype == torch.bool or target.dtype == np.bool_):
            rows = [(int(target[0]),)] * n  # one index for the whole batch, as Captum reads it (`.item()`)
        elif isinstance(target, tuple):
            if not all(isinstance(t, (int, np.integer)) for t in target):
                raise InputError(f"a tuple target must hold ints (or slices, for a neuron), got {target!r}")
            rows = [tuple(int(t) for t in target)] * n
        else:
            try:
                items = target.tolist() if hasattr(target, "tolist") else list(target)
            except TypeError:
                raise InputError(f"cannot read target {target!r}: give an int, a tuple, or one per example") from None
            if len(items) != n:
                raise InputError(f"target has {len(items)} entries for {n} example(s); give one per example or one int")
            try:
                rows = [tuple(int(t) for t in (i if isinstance(i, (tuple, list)) else (i,))) for i in items]
            except (TypeError, ValueError):
                raise InputError(f"cannot read target {target!r}: each example's target must be ints") from None
        if len({len(r) for r in rows}) > 1:
            raise InputError("every example's target must index the same number of output axes")
        self.rows = rows

    def chunk(self, start: int, stop: int) -> "Targets":
        return self._of(self.rows[start:stop])

    def repeat(self, times: int) -> "Targets":
        """The same targets for the batch repeated `times` times along axis 0."""
        return self._of(self.rows * times)

    def _of(self, rows: list) -> "Targets":
        out = Targets.__new__(Targets)
        out.rows, out.selector, out.weights = rows, self.selector, self.weights
        out.per_example, out.batch_axis, out.every_value = self.per_example, self.batch_axis, self.every_value
        return out

    def select(self, output: Tensor) -> Tensor:
        """output[i, *target_i] for each example i: one scalar per example."""
        n = len(self.rows)
        depth = len(self.rows[0]) if self.rows else 0
        if output.dim() == 0 and n != 1:
            raise InputError("the output is a single value (0-d), not one per example: export the model with "
                             "a batch axis on its output (shape [N] or [N, ...])")
        # a 0-d output of one example is its value: exports that squeeze every axis (speechmos's
        # PLCMOS, Squeeze() of [N, 1]) drop the batch axis exactly when N is 1
        if self.batch_axis is None or output.dim() == 0:
            output = output.unsqueeze(0)
        elif self.batch_axis:
            output = _batch_first(output, self.batch_axis)
        if self.weights is not None:
            return self._weighted(output, n)
        if self.selector is not None:
            return self._selected(output, n)
        if output.dim() == 1 and depth == 0:
            self._check_rows(output, n)
            return output
        if self.every_value and depth == 0:
            self._check_rows(output, n)
            return output
        if depth == 0 and output.dim() > 1 and math.prod(output.shape[1:]) == 1:  # [N, 1, 1, ...]: no choice
            return output.reshape(n, -1)[:, 0]
        if 0 < depth < output.dim() - 1 and all(size == 1 for size in output.shape[depth + 1:]):
            output = output.reshape(output.shape[:depth + 1])  # [N, C, 1]: the class picks one value (Captum's)
        if output.dim() - 1 != depth:
            whole = self.batch_axis is None  # the rows mix (or there is no batch): the output is one example
            # per example, N for the rows: a method's pass may hold more rows than the call (IG's steps)
            shape = str(list(output.shape[1:])) if whole else "[N, " + ", ".join(map(str, output.shape[1:])) + "]"
            raise InputError(
                f"the output has shape {shape}"
                + (", read as one example (the model combines its input rows, or its output has no batch axis)"
                   if whole else "")
                + f": a target must pick one value per example ({output.dim() - 1} index(es)"
                + (" into the whole output" if whole else " after the batch axis") + f"), got {depth}"
            )
        self._check_rows(output, n)
        for axis in range(depth):
            size = output.shape[axis + 1]
            bad = next((row[axis] for row in self.rows if not 0 <= row[axis] < size), None)
            if bad is not None:  # named as the output's own axis, not the batch-first view's
                own = axis if self.batch_axis is None or axis < self.batch_axis else axis + 1
                raise InputError(f"target {bad} is out of range for output axis {own} of size {size} "
                                 f"(valid: 0 to {size - 1})")
        first = self.rows[0]
        if all(row == first for row in self.rows):  # one target for all: a plain slice, no index tensors
            return output[(slice(None), *first)]
        index = torch.tensor(self.rows, dtype=torch.long, device=output.device).reshape(n, depth)
        return output[(torch.arange(n, device=output.device), *index.unbind(1))]


    def _check_rows(self, output: Tensor, n: int) -> None:
        if output.shape[0] != n:
            raise InputError(
                f"the output has {output.shape[0]} row(s) on axis {self.batch_axis} for {n} example(s): that axis "
                "is not the batch, so per-example targets cannot be picked; name the output's batch axis "
                "(onnx_attr.Target(index=..., batch_axis=K); CLI: --batch-axis K) or attribute one example at a time"
            )

    def reference(self, reference: Tensor, output: Tensor, keep: Optional[int]) -> Tensor:
        """The targets of the reference pass: a batch-1 reference (a shared baseline) serves every
        row of `output`; rows past `keep` (padding for a fixed-batch export) are dropped."""
        axis = self.batch_axis
        if axis == 0 and reference.dim() == 0 and output.dim() == 1:  # a batch of 1 squeezed to 0-d
            reference = reference.reshape(1)
        if axis is not None and reference.dim() > axis and reference.shape[axis] == 1 and output.dim() > axis:
            reference = reference.expand(*reference.shape[:axis], output.shape[axis], *reference.shape[axis + 1:])
        return self.select(self.first_rows(reference, keep))

    def first_rows(self, output: Tensor, count: Optional[int], fed: Optional[int] = None) -> Tensor:
        """The first `count` examples of an output along the target's batch axis (the rows padded in
        for a fixed-batch export dropped; None: nothing padded). An axis that has not the `fed` rows
        is not the batch: cutting it would silently explain its first entries (a time-major output's
        first step)."""
        axis = self.batch_axis
        if count is None or axis is None or output.dim() <= axis or output.shape[axis] <= count:
            return output
        if fed is not None and output.shape[axis] != fed:
            raise InputError(f"the output has shape {list(output.shape)}: its axis {axis} has not the {fed} row(s) "
                             "fed, so it is not the batch; name the output's batch axis: "
                             "onnx_attr.Target(index=..., batch_axis=K) (CLI: --batch-axis K)")
        return output.narrow(axis, 0, count)

    def seed_scale(self) -> float:
        """The power of two near √(Σ|weights|) of a mask target (1 for indices): what the backward's
        seed is divided by so that gradients pooled over the whole mask stay in float16's range,
        while one element's stays well above its subnormals (`target_gradients`)."""
        if self.weights is None:
            return 1.0
        w = self.weights.abs().double()
        total = float(w.reshape(w.shape[0], -1).sum(1).max()) if self.per_example else float(w.sum())
        return 2.0 ** round(math.log2(math.sqrt(total))) if total > 4 else 1.0

    def _weighted(self, output: Tensor, n: int) -> Tensor:
        """Σ weights·output per example: the mask of each example (or the shared one) over its output."""
        weights = self.weights.to(device=output.device)
        if self.per_example:
            weights = weights[torch.tensor([r[0] for r in self.rows], dtype=torch.long, device=output.device)]
        shape = tuple(weights.shape[1:] if self.per_example else weights.shape)
        if shape != tuple(output.shape[1:]) or output.shape[0] != n:
            moved = len(shape) == output.dim() - 1 and output.shape[0] == n  # same rank, other sizes: an output
            # whose size follows the values (what a threshold filter kept) met at another input than the mask's
            raise InputError(f"target weights of shape {list(shape)} (one example's output) do not match the output "
                             f"{list(output.shape)} ({n} example(s) on axis {self.batch_axis}): " + (
                                 "if this output's size follows the input's values (what a filter or a "
                                 "NonMaxSuppression kept, a TTS model's frames), no mask means one thing at every "
                                 "input: explain the scores it was selected by (`onnx-attr inspect` names them)"
                                 if moved else
                                 "give a mask the shape of one example's output"))
        # a half-precision output summed in float32 (as onnxruntime's CPU provider computes it): a float16
        # segmentation map's class score over 64k pixels sums past float16's 65504 (hunt 37)
        dtype = torch.float32 if output.dtype in (torch.float16, torch.bfloat16) else \
            output.dtype if output.is_floating_point() else torch.float64
        return (output.to(dtype) * weights.to(dtype)).reshape(n, -1).sum(1)

    def _selected(self, output: Tensor, n: int) -> Tensor:
        """A neuron selector's value per example: the selected elements (or the callable's result) summed."""
        try:
            picked = self.selector(output)
        except (IndexError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"the neuron selector failed on an output of shape {list(output.shape)}: {err}") from None
        if isinstance(picked, Tensor) and picked.dim() == 0:
            # Captum's selectors may sum over the batch: applied to each example alone, that is its value
            try:
                picked = picked.reshape(1) if n == 1 else torch.stack(
                    [self.selector(output[i:i + 1]).reshape(()) for i in range(n)])
            except (IndexError, TypeError, ValueError, RuntimeError, AttributeError) as err:
                raise InputError(f"the neuron selector gave one value for the whole batch and failed on a single "
                                 f"example: {err}") from None
        if not isinstance(picked, Tensor) or picked.dim() == 0 or picked.shape[0] != n:
            raise InputError(f"a neuron selector must give one value (or a block of values) per example, i.e. a "
                             f"tensor with {n} row(s) on axis 0; got "
                             f"{list(picked.shape) if isinstance(picked, Tensor) else type(picked).__name__}")
        return picked.reshape(n, -1).sum(1)


def _weight_tensor(weights) -> Tensor:
    """A mask as a tensor: booleans as 0/1, numbers as they are."""
    try:
        w = weights if isinstance(weights, Tensor) else torch.as_tensor(np.asarray(weights))
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the target weights as an array: {err}") from None
    if w.dtype == torch.bool or not (w.is_floating_point() or w.dtype.is_complex):
        w = w.to(torch.float32) if w.dtype == torch.bool else w.to(torch.float64)
    return w.detach()


def _batch_first(output: Tensor, axis: int) -> Tensor:
    """The output with its batch axis moved to 0 (a time-major [T, N, C] output as [N, T, C])."""
    if output.dim() <= axis:
        raise InputError(f"the target's batch_axis is {axis}, but the output has shape {list(output.shape)}")
    return output.movedim(axis, 0)


def _slicer(index: tuple):
    """A selector picking `index` (ints and slices, batch axis excluded) from each example."""

    def select(output: Tensor) -> Tensor:
        if len(index) != output.dim() - 1:
            raise IndexError(f"{len(index)} index(es) for {output.dim() - 1} non-batch axes")
        for axis, i in enumerate(index):
            if isinstance(i, int) and not -output.shape[axis + 1] <= i < output.shape[axis + 1]:
                raise IndexError(f"index {i} is out of range for axis {axis + 1} of size {output.shape[axis + 1]}")
        return output[(slice(None), *index)]

    return select


class DeepLiftEngine:
    """Rewrites the model once; each `run` is one reference pass and one main pass per chunk."""

    def __init__(self, model, *, gradient_fallback: bool = False, layers: Sequence[str] = (),
                 reveal_cancel: bool = False, held: frozenset = frozenset()):
        self.model = model
        self.rewrite: RewriteResult = rewrite_for_deeplift(model.module, model.inputs,
                                                           gradient_fallback=gradient_fallback, layers=layers,
                                                           reveal_cancel=reveal_cancel, held=held)
        # Shared baselines (batch 1) reused over many batches run their reference pass once (see
        # reference_cache). Changing the module's weights afterwards needs a new DeepLift object
        # (or cache_reference = False, or references.clear()).
        self.references = ReferenceCache()
        self.cache_reference = True

    @property
    def fixed_batch(self) -> Optional[int]:
        """The rows one pass holds (`batch.pass_batch`), read at each call: the batch probe may find it
        after this engine was made (a batch of 1 baked into reshapes under a batch symbol)."""
        return pass_batch(self.model)

    def run(self, inputs: Sequence[Tensor], baselines: Sequence[Tensor], attributed: Sequence[bool],
            targets: Targets, output: int, axes: Optional[Sequence[Optional[int]]] = None) -> PassResult:
        """Both passes over the rows of `targets`, each input's rows on its batch axis in `axes`
        (default 0; None: no batch, fed as given), in chunks of an export's fixed batch (the last
        padded by repeating its last row)."""
        self.rewrite.check_output(output)
        self.moved_steps: list[tuple] = []  # comparisons that flipped in this call's passes (rewrite.StepGuard)
        n = len(targets.rows)
        axes = [0 if x.dim() else None for x in inputs] if axes is None else list(axes)
        size = self.fixed_batch or n
        parts = []
        for start in range(0, n, size):
            stop = min(start + size, n)
            whole = start == 0 and stop == n and size == n
            xs = [x if whole or not _batched(x, n, a) else _rows(x, start, stop, size, a) for x, a in zip(inputs, axes)]
            bs = [b if not _batched(x, n, a) else _baseline_rows(b, start, stop, size, self.fixed_batch, a)
                  for x, b, a in zip(inputs, baselines, axes)]
            padded = stop - start if stop - start < size else None  # rows to keep when the chunk was padded
            parts.append(self._two_pass(xs, bs, attributed, targets.chunk(start, stop), output, padded, axes))
        if len(parts) == 1:
            return parts[0]
        cuts = self._layer_axes()
        layers = [(torch.cat([p.layers[i][0] for p in parts], dim=cuts[i] or 0),
                   torch.cat([p.layers[i][1] for p in parts], dim=cuts[i] or 0)) for i in range(len(self.rewrite.layers))]
        return PassResult(
            [None if parts[0].multipliers[i] is None else torch.cat([p.multipliers[i] for p in parts], dim=axes[i] or 0)
             for i in range(len(inputs))],
            torch.cat([p.value for p in parts]), torch.cat([p.reference_value for p in parts]), layers)

    def _layer_axes(self) -> list[Optional[int]]:
        """Each tapped layer's batch axis (where a padded fixed batch is cut), found once."""
        if getattr(self, "_layer_axes_found", None) is None:
            from onnx_attr.deeplift.layers import hidden_axis

            self._layer_axes_found = [hidden_axis(self.model, t.tensor) for t in self.rewrite.layers]
        return self._layer_axes_found

    def _two_pass(self, xs, bs, attributed, targets, output, keep, axes) -> PassResult:
        try:
            return self._passes(xs, bs, attributed, targets, output, keep, axes)
        except ReferenceShapeMismatch:
            pass
        except ForwardError:
            if all(b.dim() == 0 or a is None or b.shape[a] == x.shape[a] for b, x, a in zip(bs, xs, axes)):
                raise
        # The batch-1 reference could not broadcast (or run): redo it at the inputs' batch size.
        full = [b.expand_as(x).contiguous() if a is not None and b.dim() > a and b.shape[a] == 1 and
                b.dim() == x.dim() else b for b, x, a in zip(bs, xs, axes)]
        try:
            return self._passes(xs, full, attributed, targets, output, keep, axes)
        except ReferenceShapeMismatch as err:  # not the batch: a size that follows the values
            raise ValueShapedError(
                f"DeepLift's reference pass computes node {str(err)!r} in another shape than the input's pass: a "
                "size there follows the input's values (NonZero, Compress, Unique, a count of boxes above a "
                "threshold), so no reference value pairs with each element. Use a baseline that keeps those sizes "
                "(a blurred or scaled copy of the input), or a gradient or perturbation method "
                "(IntegratedGradients, FeatureAblation)") from None

    def _passes(self, xs, bs, attributed, targets, output, keep, axes) -> PassResult:
        module, state = self.rewrite.module, self.rewrite.state
        integer = [not x.is_floating_point() for x in xs]
        taps = [t for t in self.rewrite.taps if any(a and i and s.name == t.input_name for a, i, s in
                                                     zip(attributed, integer, self.model.inputs))]
        try:
            state.clear()
            state.active_taps = {id(t) for t in taps}
            reference_args = bs
            if taps:  # embeddings of the baseline ids; everything else computed from the input's ids
                state.mode = "tap_baseline"
                with torch.no_grad():
                    self._at_baseline(module, bs)
                # the float inputs' baselines at the rows fed (on each one's batch axis; one without
                # a batch, a photo [H, W, 3] beside per-face keypoints, is fed as given)
                n = next((x.shape[a] for x, a in zip(xs, axes) if a is not None and x.dim() > a), None)
                reference_args = [x if i else grown(b, a, n) for x, b, i, a in zip(xs, bs, integer, axes)]
            layer_taps = self.rewrite.layers
            cacheable = self.cache_reference and not taps and not layer_taps
            # the ops the explained output is not computed from run plain in both passes: no reference
            # is kept for them, so a reference is cached per output
            if 0 <= output < len(self.rewrite.off_path):
                state.off_path = self.rewrite.off_path[output]
            cached = self.references.find(reference_args, output) if cacheable else None
            if cached is not None:
                state.refs, full_out = cached
            else:
                state.mode = "reference"
                with torch.no_grad():
                    full_out = self._at_baseline(module, reference_args)
                # a shared baseline: batch 1, or repeated (stride 0) to an export's fixed batch
                if cacheable and all(b.dim() == 0 or b.shape[0] == 1 or b.stride(0) == 0 for b in reference_args):
                    self.references.add(reference_args, state.refs, full_out, output)
            ref_out = _pick(full_out, output)
            state.mode = "deeplift"
            differentiate = not layer_taps  # layer attribution differentiates against the layers alone
            live = [x.detach().requires_grad_(True) if a and not i and differentiate else x
                    for x, a, i in zip(xs, attributed, integer)]
            with torch.enable_grad():
                out = _pick(self._forward(module, live), output)
                self.moved_steps.extend(self.rewrite.moved_steps(output))
                if out.dim() == 0:
                    targets.select(out)  # raises: no value per example
                if ref_out.dim() != out.dim() or any(r not in (1, o) for r, o in zip(ref_out.shape, out.shape)):
                    raise ReferenceShapeMismatch("output")
                value = targets.select(targets.first_rows(out, keep, _fed(xs, attributed, axes)))
                if layer_taps:
                    leaves = [state.tap_leaves[id(t)] for t in layer_taps]
                    found = target_gradients(value, leaves, targets.seed_scale())
                    layers = [(_kept(torch.zeros_like(h) if g is None else g, keep, a), _kept(
                        difference(h.detach(), state.tap_baselines[id(t)].expand_as(h)), keep, a))
                        for t, g, h, a in zip(layer_taps, found, leaves, self._layer_axes())]
                    return PassResult([None] * len(xs), value.detach(), targets.reference(ref_out, out, keep).detach(),
                                      layers)
                leaves = [state.tap_leaves[id(t)] for t in taps]
                wanted = [x for x, a, i in zip(live, attributed, integer) if a and not i] + leaves
                grads = list(target_gradients(value, wanted, targets.seed_scale()))
            tap_baselines = [state.tap_baselines[id(t)] for t in taps]
        finally:
            state.clear()  # a cached reference keeps its own dict of references
        tap_grads = grads[len(grads) - len(taps):]
        grads = iter(grads[:len(grads) - len(taps)])
        multipliers = []
        for x, a, i, spec, axis in zip(live, attributed, integer, self.model.inputs, axes):
            if not a:
                multipliers.append(None)
            elif i:  # per-token contributions, summed over the embedding axis and over its lookups
                parts = [(t, contribution(g if g is not None else torch.zeros_like(leaf), leaf.detach(), base))
                         for t, g, leaf, base in zip(taps, tap_grads, leaves, tap_baselines)
                         if t.input_name == spec.name]
                per_token = sum(_per_id(t, _per_element(t, p, x.shape), x.shape) for t, p in parts).detach()
                parts = [p for _, p in parts]
                if tuple(per_token.shape) != tuple(x.shape):
                    raise InputError(f"the embedding of {spec.name!r} has shape {list(parts[0].shape)}, not the ids' "
                                     f"shape {list(x.shape)} plus an embedding axis: its attributions cannot be given "
                                     "per token; attribute the embedding itself (LayerDeepLift)")
                multipliers.append(_kept(per_token, keep, axis))
            else:
                g = next(grads)
                g = torch.zeros_like(x) if g is None else g
                multipliers.append(_kept(g, keep, axis))  # drop the rows padded in
        return PassResult(multipliers, value.detach(), targets.reference(ref_out, out, keep).detach(), [])

    def _at_baseline(self, module, args):
        """A forward at the baseline (the reference pass, or the one that looks up the baseline ids'
        embeddings): its failure is the baseline's, which the CLI's --baseline auto answers with the blur."""
        try:
            return self._forward(module, args)
        except ForwardError as err:
            raise BaselineForwardError(
                f"at the baseline (DeepLift's reference pass), {err}; the baseline lies outside what the model "
                "computes: pick one inside its domain (the CLI's --baseline blur, or your own reference)") from err

    def _forward(self, module, args):
        try:
            return module(*args)
        except (ReferenceShapeMismatch, InputError, torch.OutOfMemoryError):
            raise
        except Exception as err:
            if is_out_of_memory(err):  # the CPU allocator's: fewer rows mend it, a node-by-node re-run would not
                raise
            raise ForwardError(_explain_failure(module, args, err)) from err


def grown(t: Tensor, axis: Optional[int], n: Optional[int]) -> Tensor:
    """A shared tensor (batch 1 on its batch axis: a baseline) broadcast to the n examples, as a view."""
    if n is None or axis is None or n == 1 or t.dim() <= axis or t.shape[axis] != 1:
        return t
    return t.expand(*t.shape[:axis], n, *t.shape[axis + 1:])


def _fed(xs: Sequence[Tensor], attributed: Sequence[bool], axes: Sequence[Optional[int]]) -> Optional[int]:
    """The rows fed (the first attributed input's, on its batch axis), padding included."""
    return next((x.shape[a] for x, c, a in zip(xs, attributed, axes) if c and a is not None and x.dim() > a), None)


def _batched(t: Tensor, n: int, axis: Optional[int] = 0) -> bool:
    """Has the batch of n on its batch axis (a 0-d input, a flag, or one without a batch never
    has: it is fed as given)."""
    return axis is not None and t.dim() > axis and t.shape[axis] == n


def _kept(g: Tensor, keep: Optional[int], axis: Optional[int]) -> Tensor:
    """The first `keep` rows on the batch axis (those padding a fixed batch dropped)."""
    if keep is None or axis is None or g.dim() <= axis or g.shape[axis] <= keep:
        return g
    return g.narrow(axis, 0, keep)


def _baseline_rows(b: Tensor, start: int, stop: int, size: int, fixed: Optional[int], axis: int = 0) -> Tensor:
    """A shared baseline stays at batch 1 (broadcast) unless the export fixes a larger batch."""
    if b.shape[axis] == 1:
        return b if fixed in (None, 1) else b.expand(*b.shape[:axis], size, *b.shape[axis + 1:])
    return _rows(b, start, stop, size, axis)


def _per_element(tap, part: Tensor, shape: torch.Size) -> Tensor:
    """A tap's contributions summed over its embedding axis; a tap of the input's own shape (a lookup
    in a table of scalars) or a measured input's cast (transposed first or not) has none: one value
    per element already."""
    return part if tap.per_element or tuple(part.shape) == tuple(shape) else part.sum(-1)


def _per_id(tap, scores: Tensor, shape: torch.Size) -> Tensor:
    """A lookup's per-id contributions on its ids input: as they are when the lookup reads the input
    itself, else folded back along the selection between them (taps.IdPath)."""
    return scores if tap.id_path is None else tap.id_path.fold(scores, shape)
