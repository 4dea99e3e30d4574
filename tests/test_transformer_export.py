"""A small BERT-style encoder (token and position embeddings, an attention mask made with a
comparison op, softmax attention, LayerNorm, erf-GELU), exported by both PyTorch exporters:
imports, verifies, keeps its int64 ids non-differentiable, and attributes per token."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr


class TinyEncoder(nn.Module):
    def __init__(self, vocab=50, d=16, heads=2, layers=2, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos, self.heads = nn.Embedding(vocab, d), nn.Embedding(32, d), heads
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            q=nn.Linear(d, d), k=nn.Linear(d, d), v=nn.Linear(d, d), o=nn.Linear(d, d), ln1=nn.LayerNorm(d),
            ff1=nn.Linear(d, 2 * d), ff2=nn.Linear(2 * d, d), ln2=nn.LayerNorm(d))) for _ in range(layers))
        self.cls = nn.Linear(d, classes)

    def forward(self, ids):
        n, length = ids.shape
        bias = (ids == 0)[:, None, None, :].float() * -1e4  # padding mask from a comparison
        h = self.tok(ids) + self.pos(torch.arange(length, device=ids.device))[None]
        for b in self.blocks:
            d = h.shape[-1]
            split = lambda t: t.reshape(n, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(b["q"](h)), split(b["k"](h)), split(b["v"](h))
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias, -1)
            h = b["ln1"](h + b["o"]((att @ v).transpose(1, 2).reshape(n, length, d)))
            h = b["ln2"](h + b["ff2"](nn.functional.gelu(b["ff1"](h))))
        return self.cls(h[:, 0])


IDS = torch.tensor([[5, 7, 9, 11, 0, 0], [3, 4, 8, 2, 6, 1]])


def _export(dynamo: bool) -> bytes:
    model, buffer = TinyEncoder().eval(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (IDS,), input_names=["ids"], opset_version=18, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},)).save(buffer)
        else:
            torch.onnx.export(model, (IDS,), buffer, input_names=["ids"], dynamic_axes={"ids": {0: "batch"}},
                              opset_version=17, dynamo=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def token_scores():
    return {}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_encoder_imports_verifies_and_attributes_tokens(dynamo, token_scores):
    imported = onnx_attr.load(_export(dynamo))
    assert imported.inputs[0].dtype == np.int64 and not imported.inputs[0].differentiable
    report = imported.verify(IDS.numpy())
    assert report.passed and report.outputs[0].max_abs <= 1e-4, report.format()
    dl = onnx_attr.DeepLift(imported)
    baseline = torch.where(IDS == 0, 0, 1)  # a neutral token, padding kept
    scores, delta = dl.attribute(IDS, baseline, target=[0, 2], return_convergence_delta=True)
    assert scores.shape == IDS.shape and torch.all(scores[IDS == 0] == 0)
    lookups = dl.last_report["embedding_lookups"]["ids"]
    assert len(lookups) == 1, lookups  # the token embedding; positions come from the ids' shape alone
    out = imported.run(IDS)[0][[0, 1], [0, 2]]
    ref = imported.run(baseline)[0][[0, 1], [0, 2]]
    change = (out - ref).double()
    assert (delta.abs() / change.abs().clamp_min(1.0)).max() <= 1e-4
    token_scores[dynamo] = scores
    if len(token_scores) == 2:  # both exporters' graphs explain the model the same way
        torch.testing.assert_close(token_scores[True], token_scores[False], atol=1e-5, rtol=1e-4)
