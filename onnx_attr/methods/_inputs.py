"""Inputs, baselines and forward args in any of the forms users pass, and back in the same form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from onnx_attr.importing.batch import Layout, batch_axes, probe
from onnx_attr.errors import InputError
from onnx_attr.importing.inputs import as_ids, check_inputs
from onnx_attr.importing.missing_values import READ_AS_MISSING, missing_hint, missing_value_inputs


@dataclass
class Prepared:
    tensors: list[Tensor]  # every model input, in ONNX order, on the model's device
    attributed: list[bool]  # which of them get attributions
    baselines: list[Tensor]  # one per model input (unattributed ones: the input itself)
    positions: list[int]  # the attributed inputs' ONNX positions, in the user's order
    repack_user: Callable[[list], Any]  # per-value results back into the user's structure
    as_numpy: bool  # numpy in, numpy out
    axes: Optional[list] = None  # each input's batch axis (None: no batch); None here: axis 0 (legacy)
    layout: Optional[Layout] = None  # whether rows stack, and each output's batch axis (batch.probe)

    def output_axis(self, index: int) -> Optional[int]:
        """Output `index`'s batch axis as the probe found it (None: the output is one example)."""
        return 0 if self.layout is None else self.layout.outputs[index] if index < len(self.layout.outputs) else 0

    def row_axes(self) -> list[Optional[int]]:
        """Each input's batch axis (see `axis`), as the method base's passes take them."""
        return [self.axis(i) for i in range(len(self.tensors))]

    @property
    def stackable(self) -> bool:
        """Whether rows (IG's steps, noise samples) may be stacked along the batch axes."""
        return self.layout is None or self.layout.stackable

    def axis(self, i: int) -> Optional[int]:
        """Input i's batch axis, None when it has none (held, or a whole example)."""
        if self.layout is not None and not self.layout.stackable:
            return None
        if self.axes is None:
            return 0 if self.tensors[i].dim() else None
        return self.axes[i]

    def report(self, model) -> dict:
        """What the report says about the batch: each input's axis, and the inputs held at their values."""
        return {"batch_axes": {s.name: self.axis(i) for i, s in enumerate(model.inputs)},
                "held_inputs": [s.name for s, a in zip(model.inputs, self.attributed) if not a]}

    def repack(self, per_input: list[Tensor]) -> Any:
        """Attributions (one per input fed) back into the user's structure and array kind."""
        return self.pack(self.fold(per_input))

    def fold(self, per_input: list) -> list:
        """Attributions per input fed -> per model input (the same here; see EmbeddedPrepared)."""
        return per_input

    def model_input(self, position: int) -> Tensor:
        """The tensor fed for the model's input at `position`."""
        return self.tensors[position]

    def pack(self, per_input: list) -> Any:
        """Attributions per model input back into the user's structure and array kind."""
        items = [per_input[p] if per_input[p] is not None else _held(self.model_input(p)) for p in self.positions]
        if self.as_numpy:
            items = [t.detach().cpu().numpy() for t in items]
        return self.repack_user(items)


#: In `BatchFirst.fed`: an attributed input without a batch axis (the one example, whole): it gets
#: a batch of 1 in front, and each of its rows is fed alone.
WHOLE = "whole"


@dataclass
class BatchFirst(Prepared):
    """The prepared call with every batch on axis 0, for methods that build copies row by row (the
    perturbation family): an input batched on axis k has it moved to 0, an attributed input
    without a batch (one whole example) gets a batch of 1 in front, a held input stays as given.
    `feed` puts rows back in the model's layout; `fold` moves attributions back."""

    fed: list = field(default_factory=list)  # per input: its batch axis, WHOLE, or None (held: as given)

    def fold(self, per_input: list) -> list:
        return [None if a is None else _restored(a, f) for a, f in zip(per_input, self.fed)]

    def moved(self, i: int, value: Any) -> Any:
        """A per-input array in the input's own layout (a feature mask, batch 1 or N on its batch
        axis) in the batch-first layout; other shapes (broadcast from the right) as given."""
        f, rank = self.fed[i], self.tensors[i].dim()
        if value is None or not hasattr(value, "shape"):
            return value
        v = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
        if f == WHOLE and v.dim() == rank - 1:
            return v.unsqueeze(0)
        if isinstance(f, int) and f and v.dim() == rank:
            return v.movedim(f, 0)
        return value

    def rows_alone(self) -> bool:
        """Whether rows must run one at a time (an attributed input without a batch axis)."""
        return WHOLE in self.fed

    def feed(self, tensors: Sequence[Tensor], rows: int) -> list[list[Tensor]]:
        """Batch-first tensors of `rows` rows as the model takes them: one list for all rows, or
        one per row when rows must run alone (`rows_alone`)."""
        grown = [t if f is None or t.shape[0] == rows else t.expand(rows, *t.shape[1:])
                 for t, f in zip(tensors, self.fed)]
        if not self.rows_alone():
            return [[t if f is None else t.movedim(0, f) for t, f in zip(grown, self.fed)]]
        return [[t if f is None else t[r] if f == WHOLE else t.narrow(0, r, 1).movedim(0, f)
                 for t, f in zip(grown, self.fed)] for r in range(rows)]

    def fed_axes(self) -> list[Optional[int]]:
        """Each input's batch axis in the model's layout as fed (None: held, or a whole row alone)."""
        return [f if isinstance(f, int) else None for f in self.fed]


def batch_first(prepared: Prepared) -> BatchFirst:
    """`prepared` with every batch on axis 0 (see BatchFirst)."""
    fed: list = []
    rows = next((t.shape[prepared.axis(i)] for i, (t, a) in enumerate(zip(prepared.tensors, prepared.attributed))
                 if a and prepared.axis(i) is not None), None)
    for i, a in enumerate(prepared.attributed):
        axis = prepared.axis(i)
        if not a and axis is not None and prepared.tensors[i].shape[axis] not in (1, rows):
            axis = None  # held, and not one row per example (boxes [9, 5, 2] beside one picture): as given
        fed.append(axis if axis is not None else WHOLE if a else None)

    def move(t: Tensor, f) -> Tensor:
        return t if f is None else t.unsqueeze(0) if f == WHOLE else t.movedim(f, 0) if f else t

    values = {k: getattr(prepared, k) for k in prepared.__dataclass_fields__}
    values.update(tensors=[move(t, f) for t, f in zip(prepared.tensors, fed)],
                  baselines=[move(b, f) for b, f in zip(prepared.baselines, fed)], fed=fed)
    return BatchFirst(**values)


def _restored(a: Tensor, f) -> Tensor:
    return a.squeeze(0) if f == WHOLE else a.movedim(0, f) if isinstance(f, int) and f else a


def is_held(t: Tensor) -> bool:
    """A 0-d non-floating input (a flag, a sample rate): it has no batch, so every method feeds it
    as given, never repeated or cut per example, and it is not attributed."""
    return t.dim() == 0 and not t.is_floating_point()


def _held(t: Tensor) -> Tensor:
    """The attribution of a held input: zeros of its shape, as it is the same in the input and the
    baseline."""
    return torch.zeros(t.shape, dtype=torch.float32, device=t.device)


def example_count(model, prepared: "Prepared") -> int:
    """The examples along the first attributed input's batch axis (1 when it has none: the whole
    tensor is one example); a clear error when none is attributed."""
    for i, (t, a) in enumerate(zip(prepared.tensors, prepared.attributed)):
        if a:
            axis = prepared.axis(i)
            return 1 if axis is None else t.shape[axis]
    described = ", ".join(f"{s.name!r} ({s.dtype}, shape {list(t.shape)})" for s, t in zip(model.inputs, prepared.tensors))
    raise InputError(f"no input can be attributed: the model's inputs are {described}, and none is floating or feeds "
                     "an embedding lookup (a Gather of a constant table). Attribute a float input, or attribute an "
                     "inner tensor with LayerIntegratedGradients / LayerDeepLift (onnx_attr.tensor_as_input)")


def check_batched(model, prepared: "Prepared", n: int) -> None:
    """Every attributed input has the n examples on its batch axis, or is the one example itself."""
    bad = []
    for i, (spec, t, a) in enumerate(zip(model.inputs, prepared.tensors, prepared.attributed)):
        axis = prepared.axis(i)
        if a and t.is_floating_point() and ((axis is None and n > 1) or (axis is not None and t.shape[axis] != n)):
            bad.append(f"{spec.name!r} (shape {list(t.shape)}, " + ("no batch axis" if axis is None else
                                                                      f"batch axis {axis}") + ")")
    if bad:
        raise InputError(f"attributed input(s) {', '.join(bad)} do not have the batch of {n} that the others have; "
                         "attribute one example at a time, or pass them as additional_forward_args (held at their "
                         "values)")


def _as_list(value: Any) -> tuple[list, Callable[[list], Any]]:
    """A list of the user's values and a function putting per-value results back the same way."""
    if isinstance(value, Mapping):
        keys = list(value)
        return [value[k] for k in keys], lambda items: dict(zip(keys, items))
    if isinstance(value, (tuple, list)):
        kind = type(value)
        return list(value), lambda items: kind(items)
    return [value], lambda items: items[0]


def prepare(model, inputs: Any, baselines: Any, additional_forward_args: Any, embedded: set[str],
            missing: Optional[str] = None) -> Prepared:
    """Place the attributed inputs and the extra forward args at their ONNX positions, checked.

    `embedded` names the integer inputs that are attributed at their embedding lookup. `missing`: which
    attributed inputs may hold NaN as missing values (`importing.missing_values`): "read" those the
    graph reads as missing (DeepLift's rules), "any" every one (the perturbation methods, which only
    run the model; its outputs must stay finite), None none (a NaN is refused).
    """
    specs = model.inputs
    names = [s.name for s in specs]
    given, repack_user = _as_list(inputs)
    as_numpy = all(isinstance(v, np.ndarray) for v in given)
    if isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        if unknown:
            raise InputError(f"unknown input name(s) {unknown}; the model's inputs are {names}")
        positions = [names.index(k) for k in inputs]
    else:
        positions = list(range(len(given)))
    extra, _ = _as_list(additional_forward_args) if additional_forward_args is not None else ([], None)
    if isinstance(additional_forward_args, Mapping):
        extra_positions = [names.index(k) if k in names else -1 for k in additional_forward_args]
        if -1 in extra_positions:
            raise InputError(f"unknown name(s) in additional_forward_args; the model's inputs are {names}")
    else:
        free = [i for i in range(len(specs)) if i not in positions]
        extra_positions = free[: len(extra)]
    if len(positions) + len(extra) != len(specs) or len(extra_positions) != len(extra):
        raise InputError(
            f"the model takes {len(specs)} input(s) {names}; got {len(given)} to attribute and {len(extra)} "
            "additional forward arg(s)"
        )
    values: list[Any] = [None] * len(specs)
    for pos, v in zip(positions, given):
        values[pos] = v
    for pos, v in zip(extra_positions, extra):
        values[pos] = v
    finite = [i in positions for i in range(len(specs))]  # a mask of -inf may ride along unattributed
    read = missing_value_inputs(model) if missing == "read" else frozenset()
    may_miss = [f and (missing == "any" or specs[i].name in read) for i, f in enumerate(finite)]
    hint = missing_hint(model, [specs[i].name for i in positions]) if missing is None else \
        READ_AS_MISSING if missing == "read" else ""
    tensors = [t.to(model.device) for t in check_inputs(values, specs, any_batch=batch_axes(specs), finite=finite,
                                                          ids_as_integers=True, missing=may_miss, hint=hint)]
    held = [i for i in positions if is_held(tensors[i])]
    # an integer input that feeds no embedding lookup (a sequence's lengths beside its ids) cannot be
    # attributed by any method: given among inputs that can, it is held at its value (attributions 0)
    # and reported so; given alone, the error below says where it goes
    unattributable = [i for i in positions if i not in held and not specs[i].differentiable
                      and specs[i].name not in embedded]
    if len(unattributable) < len(positions) - len(held):
        held += unattributable
    # a 0-d floating input (a pitch tracker's fmin and fmax, a threshold) has no examples: given among inputs
    # that have them, it is held at its value too
    scalars = [i for i in positions if i not in held and tensors[i].dim() == 0]
    if len(scalars) < len(positions) - len(held):
        held += scalars
    chosen = [i for i in positions if i not in held]
    axes = batch_axes(specs, tensors)
    for i in chosen:
        if tensors[i].dim() == 0 or (axes[i] is not None and tensors[i].shape[axes[i]] == 0):
            raise InputError(f"input {specs[i].name!r} has no examples (shape {list(tensors[i].shape)}); "
                             "pass at least one" + (" (a scalar setting such as a sample rate goes in "
                                                     "additional_forward_args)" if tensors[i].dim() == 0 else ""))
    for i in chosen:  # a float16 input is computed in float32 from its first step (importing/widen.py): fed so, its
        # multipliers and attributions are float32, whose sum keeps f(x) - f(x0) (float16's would be 1e-3 off)
        if tensors[i].dtype == torch.float16:
            tensors[i] = tensors[i].float()
    attributed = [i in chosen for i in range(len(specs))]
    if not chosen:
        raise InputError(f"no input to attribute: give at least one of {names} as inputs"
                         + (" (a 0-d non-floating input is held at its value, not attributed)" if held else ""))
    for i in chosen:
        if not specs[i].differentiable and specs[i].name not in embedded:
            raise InputError(
                f"input {specs[i].name!r} is {specs[i].dtype} and feeds no embedding lookup (a Gather of a "
                "constant table), so it cannot be attributed; pass it as additional_forward_args"
            )
    layout = probe(model, tensors, axes)
    whole = axes if layout.stackable else [None] * len(axes)  # rows that influence each other: one example
    missing_ok = {i for i, m in enumerate(may_miss) if m}  # "missing" may be the reference too (trees, imputers)
    base = {i: b for i, b in _baselines(model, baselines, positions, tensors, held, whole, missing_ok).items()
            if i not in held}
    full = [base.get(i, tensors[i]) for i in range(len(specs))]
    return Prepared(tensors, attributed, full, positions, repack_user, as_numpy, axes, layout)


def _one_row(t: Tensor, axis: Optional[int]) -> Tensor:
    """One example's worth of `t`: batch 1 on its batch axis, the whole tensor when it has none."""
    return t if axis is None else t.narrow(axis, 0, 1)


def _baselines(model, baselines: Any, positions: list[int], tensors: list[Tensor],
               held: Sequence[int] = (), axes: Optional[Sequence[Optional[int]]] = None,
               missing_ok: set[int] = frozenset()) -> dict[int, Tensor]:
    """Baselines for the attributed inputs: zeros by default, a scalar, or arrays of batch 1 or N.
    A held input (0-d and not floating, or integer with no lookup) takes its own value, whatever is
    given for it."""
    specs = model.inputs
    axes = list(axes) if axes is not None else [0 if t.dim() else None for t in tensors]
    if held and not (isinstance(baselines, (tuple, list)) and len(baselines) == len(positions)):
        positions = [p for p in positions if p not in held]
    if baselines is None:
        return {p: torch.zeros_like(_one_row(tensors[p], axes[p])) for p in positions}
    if callable(baselines) and not isinstance(baselines, (Tensor, np.ndarray)):
        raise InputError("a callable baseline is only taken by DeepLiftShap and GradientShap (which draw from a "
                         "distribution); give a scalar or an array here")
    if isinstance(baselines, (bool, int, float, np.number)):
        return {p: _one_baseline(specs[p], baselines, tensors[p], axes[p], p in missing_ok) for p in positions}
    items, _ = _as_list(baselines)
    if isinstance(baselines, Mapping):
        items = [baselines.get(specs[p].name) for p in positions]
        if any(i is None for i in items):
            raise InputError(f"baselines must name every attributed input: {[specs[p].name for p in positions]}")
    if len(items) != len(positions):
        raise InputError(f"{len(items)} baseline(s) for {len(positions)} attributed input(s)")
    out = {}
    for p, b in zip(positions, items):
        out[p] = tensors[p] if p in held else _one_baseline(specs[p], b, tensors[p], axes[p], p in missing_ok)
    return out


def _one_baseline(spec, b: Any, x: Tensor, axis: Optional[int] = 0, missing: bool = False) -> Tensor:
    """One input's baseline: a scalar, or an array broadcastable to the input (Captum's rule), kept
    at batch 1 on the batch axis when it does not vary over examples (so the reference is shared)."""
    row = _one_row(x, axis)
    if isinstance(b, (bool, int, float, np.number)):
        return torch.full_like(row, float(b)) if x.is_floating_point() else torch.full_like(row, int(b))
    try:
        b = torch.as_tensor(np.asarray(b) if not isinstance(b, Tensor) else b)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the baseline for {spec.name!r} as an array: {err}") from None
    try:
        if torch.broadcast_shapes(b.shape, x.shape) != x.shape:
            raise RuntimeError
    except RuntimeError:
        raise InputError(
            f"baseline for {spec.name!r} has shape {list(b.shape)}, which does not broadcast to the input's shape "
            f"{list(x.shape)}: give {list(x.shape[1:])} with a batch of 1 or {x.shape[0]} in front, or a scalar"
        ) from None
    if axis is None:
        b = b.expand(x.shape)
    else:
        rows = x.shape[axis] if b.dim() == x.dim() and b.shape[axis] == x.shape[axis] else 1
        b = b.expand(*x.shape[:axis], rows, *x.shape[axis + 1:])
    (checked,) = check_inputs([b.contiguous()], [spec], what="baseline", any_batch=[axis], ids_as_integers=True,
                              missing=missing)
    return checked.to(x.device)


def as_tensor(value: Any, what: str) -> Tensor:
    """A user's array as a tensor; a clear error when it is not one."""
    try:
        return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the {what} as an array: {err}") from None


def batched_inputs(inputs: Any, method: str, model=None) -> tuple[list[Tensor], Callable[[list], Any], bool, int]:
    """The user's inputs as tensors before `prepare`, for methods that repeat them per sample
    (NoiseTunnel, GradientShap): the tensors, how to pack results back, numpy or not, and the
    examples on axis 0 (0-d non-floating inputs, flags, are held as given). Given the model, ids
    held as floats come as int64, so no noise is added to them."""
    values, repack = _as_list(inputs)
    as_numpy = all(isinstance(v, np.ndarray) for v in values)
    tensors = [as_tensor(v, "input") for v in values]
    if model is not None:
        by_name = {s.name: s for s in model.inputs}
        specs = [by_name.get(k) for k in inputs] if isinstance(inputs, Mapping) else list(model.inputs)
        tensors = [as_ids(t, spec, "input") if spec is not None and spec.integer_ids else t
                   for t, spec in zip(tensors, [*specs, *[None] * len(tensors)])]
    if any(t.dim() == 0 and not is_held(t) for t in tensors) or all(is_held(t) for t in tensors):
        raise InputError(f"{method} needs a batch axis on every input (shape [N, ...]) but 0-d non-floating ones "
                         "(flags), which are held as given")
    n = next(t.shape[0] for t in tensors if not is_held(t))
    return tensors, repack, as_numpy, n
