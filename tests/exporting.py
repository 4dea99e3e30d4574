"""Export small PyTorch models to ONNX bytes for the tests (dynamo exporter, opset 18)."""

from __future__ import annotations

import io
import warnings

import torch


def to_onnx(model: torch.nn.Module, example: torch.Tensor | tuple, *, dynamic_batch: bool = True,
            input_names=("x",), opset: int = 18) -> bytes:
    args = example if isinstance(example, tuple) else (example,)
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in args) if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.eval(), args, input_names=list(input_names), dynamic_shapes=shapes,
                                    opset_version=opset, dynamo=True, verbose=False)
    program.save(buffer)
    return buffer.getvalue()
