"""Save the imported module as a `torch.export` program (.pt2): weights and graph, no pickled code."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from onnx_attr.errors import ExportError
from onnx_attr.fileio import atomic_write
from onnx_attr.importing.inputs import sample_inputs


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


def save_program(model, path: str | os.PathLike, example_inputs: Any = None, *,
                 final_activation: str = "keep") -> list[str]:
    """Export and write atomically; load it back with `torch.export.load(path).module()`.

    With `final_activation="keep"` (the default) the program computes what the .onnx file
    computes: a model whose final Softmax/Sigmoid was stripped on load (for attribution) is
    re-imported from its file with the activation kept. `"as-loaded"` exports the module as it
    is (logits where the activation was stripped); the notes say which it was.
    """
    if final_activation not in ("keep", "as-loaded"):
        raise ExportError(f"final_activation={final_activation!r}: use 'keep' or 'as-loaded'")
    notes: list[str] = []
    stripped = [s for s in model.outputs if s.final_activation is not None and s.final_activation.stripped]
    if stripped and final_activation == "keep":
        model = _with_final_activation(model)
        notes.append("re-imported with the final " + ", ".join(sorted({s.final_activation.op_type for s in stripped}))
                     + " kept, so the program computes what the .onnx file computes")
    elif stripped:
        notes.append("final " + ", ".join(sorted({s.final_activation.op_type for s in stripped}))
                     + " stripped: the program returns logits, not what the .onnx file returns")
    program, export_notes = export_program(model, example_inputs)
    atomic_write(Path(path), lambda tmp: torch.export.save(program, tmp))
    return notes + export_notes


def _with_final_activation(model):
    """The same model file imported without stripping; refused when there is no file to re-read."""
    from onnx_attr.importing.loader import load

    if model.source is None or not Path(model.source).is_file():
        raise ExportError("this model's final activation was stripped on load and it was not loaded from a file, "
                          "so it cannot be re-imported with it: load it with strip_final_activation=False, or "
                          "export the logits with final_activation='as-loaded'")
    if getattr(model, "smoothed_from", None) is not None:
        raise ExportError("a smoothed model is exported as it is: pass final_activation='as-loaded'")
    return load(model.source, strip_final_activation=False, device=model.device)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
