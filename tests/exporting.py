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


class TokenBag(torch.nn.Module):
    """Token ids -> embedding -> tanh -> mean over tokens -> linear: the smallest text classifier."""

    def __init__(self, vocabulary: int = 30, width: int = 6, classes: int = 3):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocabulary, width), torch.nn.Linear(width, classes)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids)).mean(1))
