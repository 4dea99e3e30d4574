"""An 8-bit embedding table (onnxruntime's quantizer on an nn.Embedding: ids -> Gather of uint8 rows
-> Transpose -> DequantizeLinear) explained by every gradient method at its lookup, as DeepLift's
rewrite does (pyfrspell's GRU seq2seq models: IntegratedGradients had refused the uint8 lookup).
The oracle is the same graph with the table dequantized into a float32 initializer by hand."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model

VOCAB, EMBED, CLASSES = 30, 8, 5


def _graphs(direct: bool):
    """The quantized graph and its float twin; `direct`: the lookup feeds its DequantizeLinear
    directly (quantize_dynamic's form, T5's encoder) and the rows are transposed after it."""
    rng = np.random.default_rng(0)
    table = rng.integers(0, 256, (VOCAB, EMBED)).astype(np.uint8)
    scale, zero = np.float32(0.02), np.uint8(128)
    w = rng.normal(0, 1, (EMBED, CLASSES)).astype(np.float32)
    tail = [helper.make_node("Tanh", ["emb"], ["t"]),
            helper.make_node("ReduceMean", ["t"], ["pooled"], axes=[0], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    inputs, outputs = [("ids", TensorProto.INT64, ["N", "T"])], [("logits", FLOAT, ["N", CLASSES])]
    head = [helper.make_node("Gather", ["table_q", "ids"], ["emb_q"]),
            helper.make_node("Transpose", ["emb_q"], ["emb_qt"], perm=[1, 0, 2]),
            helper.make_node("DequantizeLinear", ["emb_qt", "scale", "zp"], ["emb"])]
    if direct:
        head = [helper.make_node("Gather", ["table_q", "ids"], ["emb_q"]),
                helper.make_node("DequantizeLinear", ["emb_q", "scale", "zp"], ["emb_f"]),
                helper.make_node("Transpose", ["emb_f"], ["emb"], perm=[1, 0, 2])]
    quantized = make_model([*head, *tail], inputs, outputs, {"table_q": table, "scale": scale, "zp": zero, "w": w})
    by_hand = ((table.astype(np.float32) - np.float32(zero)) * scale).astype(np.float32)
    floating = make_model([helper.make_node("Gather", ["table", "ids"], ["emb_f"]),
                           helper.make_node("Transpose", ["emb_f"], ["emb"], perm=[1, 0, 2]), *tail],
                          inputs, outputs, {"table": by_hand, "w": w})
    return onnx_attr.load(quantized), onnx_attr.load(floating)


@pytest.mark.parametrize("direct", [False, True], ids=["rearranged", "direct"])
@pytest.mark.parametrize("method", ["IntegratedGradients", "Saliency", "InputXGradient", "DeepLift"])
def test_token_ids_are_attributed_at_the_dequantized_lookup(method, direct):
    quantized, floating = _graphs(direct)
    ids = np.random.default_rng(1).integers(1, VOCAB, (2, 7))
    kwargs = {"n_steps": 16} if method == "IntegratedGradients" else {}
    got = getattr(onnx_attr, method)(quantized).attribute({"ids": ids}, target=1, **kwargs)["ids"]
    expected = getattr(onnx_attr, method)(floating).attribute({"ids": ids}, target=1, **kwargs)["ids"]
    assert got.shape == ids.shape and np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
