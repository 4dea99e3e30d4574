"""Rows as every pass feeds them: the examples counted, cut on their batch axis into the batch a
fixed-batch export takes (the last chunk padded by repeating its last row), and the explained
output picked. One home for what the engine and every method share (the batch axes themselves
come from `batch`)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from onnx_attr.importing.batch import fixed_batch, pass_batch  # noqa: F401  (one home)


def pick_output(out: Any, index: int) -> Tensor:
    """Output `index` of a module's result (a single tensor is output 0)."""
    return out[index] if isinstance(out, (tuple, list)) else out


def example_rows(tensors: Sequence[Tensor], attributed: Sequence[bool]) -> int:
    """The examples on axis 0 of the first attributed tensor."""
    return next(t.shape[0] for t, a in zip(tensors, attributed) if a)


def padded_rows(t: Tensor, start: int, stop: int, size: int, axis: int = 0) -> Tensor:
    """Rows [start, stop) on `axis` (the tensor's batch axis), padded to `size` by repeating the
    last (for fixed-batch exports)."""
    part = t.narrow(axis, start, stop - start)
    if part.shape[axis] < size:
        last = part.narrow(axis, part.shape[axis] - 1, 1)
        part = torch.cat([part, last.expand(*part.shape[:axis], size - part.shape[axis], *part.shape[axis + 1:])],
                         dim=axis)
    return part


def rows_first(t: Tensor, axis: Optional[int]) -> Tensor:
    """`t` with its examples on axis 0: its batch axis moved there, or (axis None: one whole
    example) a batch of 1 put in front. Methods that index rows work in this layout."""
    return t.unsqueeze(0) if axis is None else t.movedim(axis, 0) if axis else t


def example_sums(parts: Sequence[Optional[Tensor]], axes: Sequence[Optional[int]], n: int,
                 absolute: bool = False) -> Tensor:
    """Per example, in float64, the sum of every part's values (of |values| with `absolute`) on its
    own batch axis (an input [8, batch] has its examples on axis 1): completeness deltas add these."""
    total = torch.zeros(n, dtype=torch.float64)
    for part, axis in zip(parts, axes):
        if part is not None:
            rows = rows_first(part, axis).reshape(n, -1).double()
            total = total.to(rows.device) + (rows.abs() if absolute else rows).sum(1)
    return total


def rows_back(t: Tensor, axis: Optional[int]) -> Tensor:
    """`rows_first` undone: the examples back on the tensor's own batch axis."""
    return t.squeeze(0) if axis is None else t.movedim(0, axis) if axis else t


def path_runs(tensors: Sequence[Tensor], baselines: Sequence[Tensor], attributed: Sequence[bool],
              axes: Sequence[Optional[int]], n: int, alphas: Sequence[float]) -> list[list[Tensor]]:
    """The inputs at points b + α(x − b) of the straight path, as runs the model takes: one run
    with every step stacked on each input's batch axis (step-major), or, where an attributed
    input has no batch axis (one whole example, rows that mix), one run per step."""
    stack = all(a is not None for a, chosen in zip(axes, attributed) if chosen)
    groups = [list(alphas)] if stack else [[a] for a in alphas]
    runs = []
    for group in groups:
        runs.append([torch.cat([b + float(a) * (t - b) for a in group], dim=x or 0) if chosen and t.is_floating_point()
                     else t if x is None or t.dim() <= x or t.shape[x] != n
                     else t.repeat(*[len(group) if i == x else 1 for i in range(t.dim())])
                     for t, b, chosen, x in zip(tensors, baselines, attributed, axes)])
    return runs


def fixed_passes(model, tensors: Sequence[Tensor]) -> Optional[tuple[list[list[Tensor]], int]]:
    """The passes `tensors` of n rows take where one pass holds k (`pass_batch`): an export that fixes
    its batch at k (a tf2onnx [1, 1960]), or one row at a time where a dynamic quantization's scale
    over the whole batch would make rows run together change each other (each runs alone, as in
    production and in the methods): k rows each, the last padded by repeating its last row, and n.
    None where one pass takes them as they are (no such k, n == k, or batch axes that disagree on n)."""
    from onnx_attr.importing.batch import batch_axes

    k = pass_batch(model)
    axes = batch_axes(model.inputs, tensors)
    sizes = {t.shape[a] for t, a in zip(tensors, axes) if a is not None}
    if k is None or len(sizes) != 1 or sizes == {k}:
        return None
    (n,) = sizes
    return [[t if a is None else padded_rows(t, start, min(start + k, n), k, a) for t, a in zip(tensors, axes)]
            for start in range(0, n, k)], n


def joined_passes(model, outputs: Sequence[Sequence[Tensor]], n: int) -> tuple:
    """The outputs of `fixed_passes`' passes as one run of n rows: joined on each output's declared
    batch axis, the padding rows dropped. An output that does not hold the pass's k rows on that axis
    (a count of boxes, a state without a batch) cannot be joined: a clear error, not a guess."""
    from onnx_attr.errors import InputError
    from onnx_attr.importing.batch import output_batch_axes

    k = pass_batch(model)
    joined = []
    for i, (spec, axis) in enumerate(zip(model.outputs, output_batch_axes(model.inputs, model.outputs))):
        parts = [out[i] for out in outputs]
        if axis is None or any(p.dim() <= axis or p.shape[axis] != k for p in parts):
            # a shape the graph does not declare, or declares at another rank than it computes
            undeclared = spec.shape is None or any(p.dim() != len(spec.shape) for p in parts)
            axis = _rows_axis(parts, k) if undeclared else None
        if axis is None:
            raise InputError(
                (f"this export fixes its batch at {k}" if fixed_batch(model.inputs) else
                 "this model quantizes its activations over the whole batch, so each row runs alone,")
                + f" and output {spec.name!r} has no axis of {k} rows to join {n} rows' passes on: give {k} "
                "row(s) per call (one file per example with the CLI)")
        joined.append(torch.cat(parts, dim=axis).narrow(axis, 0, n))
    return tuple(joined)


def _rows_axis(parts: Sequence[Tensor], k: int) -> Optional[int]:
    """For an output whose shape the graph does not declare, or declares wrongly (ddddocr 1.6's CTC
    scores: declared [1, seqlen], computed time-major [20, 1, 8210]), the one axis holding k in every
    pass, where exactly one does; None otherwise."""
    ranks = {p.dim() for p in parts}
    if len(ranks) != 1:
        return None
    found = [a for a in range(ranks.pop()) if all(p.shape[a] == k for p in parts)]
    return found[0] if len(found) == 1 else None
