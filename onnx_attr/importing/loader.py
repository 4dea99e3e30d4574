"""`load`: read, check, strip, normalize and convert an ONNX model in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from onnx_attr.importing.budget import Budget, using
from onnx_attr.importing.convert import convert, is_importable, opsets
from onnx_attr.errors import InputError
from onnx_attr.importing.final_activation import expose_selection_scores, strip_final_activations
from onnx_attr.importing.model import AttributableModel
from onnx_attr.importing.normalize import normalize, sort_unsorted_top_k
from onnx_attr.importing.read import ModelSource, read_model
from onnx_attr.importing.saturation import unsaturated
from onnx_attr.importing.split_fused import split_fused_activations
from onnx_attr.importing.specs import cast_id_inputs, output_spec, value_spec


def load(
    source: ModelSource,
    *,
    strip_final_activation: bool = True,
    device: Union[str, torch.device, None] = None,
    budget: Optional[Budget] = None,
) -> AttributableModel:
    """Import an ONNX model (path, bytes or ModelProto) as an `AttributableModel`.

    With `strip_final_activation` (the default) a Softmax/LogSoftmax/Sigmoid ending an output
    is removed, so `model(x)` returns logits; what was found and done is on `model.outputs`.
    `budget` bounds what the file may make us allocate or repeat (`onnx_attr.Budget`); it stays
    on `model.budget`, checked on every run.
    """
    target = resolve_device(device)
    budget = Budget() if budget is None else budget
    with using(budget):
        model, _ = read_model(source)
        file_outputs = len(model.graph.output)  # those `expose_selection_scores` adds come after them
        split_notes: list[str] = []
        model = split_fused_activations(model, split_notes)  # before the final activations are looked for
        model, label_notes, roles = expose_selection_scores(model)
        model, finals = strip_final_activations(model, strip_final_activation)
        declared = opsets(model)  # the file's own, which errors name (the passes may raise them)
        normalized = normalize(model, importable=is_importable, owned=True)  # changed in place: weights held once
        del model
        module = convert(normalized.converted, declared if opsets(normalized.converted) != declared else None)
    canonical = normalized.canonical
    sort_unsorted_top_k(canonical.graph)  # the reference runs it in our order, which the file allows
    ids = cast_id_inputs(canonical.graph)
    canonical, shifted = unsaturated(canonical)  # a copy where it changes a weight: `converted` may be canonical
    saturation = (f"onnxruntime on this CPU (AVX2 without VNNI) saturates uint8 x int8 products in int16; the "
                  f"reference gives {shifted} integer kernel(s) or weight DequantizeLinear(s) their int8 weights as the "
                  "same integers in uint8 (+128, zero point +128), which it computes exactly",) if shifted else ()
    imported = AttributableModel(
        module,
        inputs=[value_spec(v, ids=v.name in ids) for v in canonical.graph.input],
        outputs=[output_spec(v, finals.get(v.name), roles.get(v.name)) for v in canonical.graph.output],
        onnx_model=normalized.converted,
        reference_model=canonical,
        notes=(*split_notes, *label_notes, *normalized.notes, *saturation),
        source=Path(source) if isinstance(source, (str, Path)) else None,
    )
    imported.budget = budget
    imported.file_opsets = declared  # what `inspect` shows beside the opsets it was imported at
    imported.file_outputs = file_outputs  # what `convert` returns: the file's own outputs
    imported.eval()
    del normalized, module
    if len(canonical.graph.node) >= _LARGE_GRAPH:
        _settle_garbage()
    return imported.to(target) if target is not None else imported


#: nodes from which an import leaves enough garbage to settle at once (a small graph's is not worth
#: the ~0.1 s: the test suite loads thousands of them)
_LARGE_GRAPH = 256


def _settle_garbage() -> None:
    """One full garbage collection at the end of a large import. Reading, normalising and converting a
    graph leave tens of thousands of Python objects (cycles among them); Python runs a full
    collection once the survivors since the last one reach a quarter of all tracked objects, and
    with torch imported that pass costs ~0.1 s. Left alone it fell in the first explain call
    (layout_cdla's first DeepLift call, 1.04 s → 0.83 s without it); here it is part of the import,
    which made the garbage, and frees it at once."""
    import gc

    gc.collect()


def resolve_device(device: Union[str, torch.device, None]) -> Optional[torch.device]:
    """A torch device, with a clear error when CUDA is asked for and not there."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    return resolved
