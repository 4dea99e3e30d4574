"""Save the imported module as a `torch.export` program (.pt2): weights and graph, no pickled code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError
from .fileio import atomic_write
from .inputs import sample_inputs


def export_program(model, example_inputs: Any = None) -> tuple[torch.export.ExportedProgram, list[str]]:
    """Export with the ONNX symbolic dims (e.g. the batch axis) kept dynamic where torch can.

    Returns the program and notes; when the dims cannot stay dynamic, the shapes of the
    example inputs are fixed and a note says so.
    """
    arrays = example_inputs if example_inputs is not None else sample_inputs(model.inputs)
    args = tuple(model.prepare(arrays))
    notes: list[str] = []
    dims: dict[str, Any] = {}
    dynamic = []
    for spec in model.inputs:
        axes = {}
        for axis, dim in enumerate(spec.shape or ()):
            if isinstance(dim, str):
                name = re.sub(r"\W", "_", dim) or f"dim{axis}"
                axes[axis] = dims.setdefault(name, torch.export.Dim(f"d_{name}"))
        dynamic.append(axes or None)
    try:
        return torch.export.export(model.module, args, dynamic_shapes=tuple(dynamic), strict=False), notes
    except Exception as err:  # torch.export raises many types (UserError, GuardOnDataDependent...)
        if not dims:
            raise ExportError(f"torch.export could not trace the imported module: {_first_line(err)}") from err
        notes.append(f"symbolic dims {sorted(dims)} could not stay dynamic ({_first_line(err)}); "
                     f"exported for input shapes {[list(a.shape) for a in args]}")
    try:
        return torch.export.export(model.module, args, strict=False), notes
    except Exception as err:
        raise ExportError(f"torch.export could not trace the imported module: {_first_line(err)}") from err


def save_program(model, path: str | os.PathLike, example_inputs: Any = None) -> list[str]:
    """Export and write atomically; load it back with `torch.export.load(path).module()`."""
    program, notes = export_program(model, example_inputs)
    atomic_write(Path(path), lambda tmp: torch.export.save(program, tmp))
    return notes


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
