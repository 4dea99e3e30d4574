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


def test_a_lookup_read_only_for_its_shape_is_no_attribution_point():
    """DistilBERT sizes its positions from the word embeddings' Shape; after onnxruntime's BERT recipe
    that is a quantized Gather -> DequantizeLinear -> Shape beside the fused embedding, and every gradient
    method crashed looking for it (hunt 26). A lookup whose values reach only shape reads is not one the
    tokens are attributed at; the methods explain through the lookup that carries values, equal to the
    same graph without the shape-only lookup."""
    from onnx_attr.deeplift.layers import embedding_lookups

    rng = np.random.default_rng(0)
    table = rng.normal(0, 1, (VOCAB, EMBED)).astype(np.float32)
    w = rng.normal(0, 1, (EMBED, CLASSES)).astype(np.float32)
    inits = {"table": table, "w": w, "table_q": rng.integers(0, 256, (VOCAB, EMBED)).astype(np.uint8),
             "scale": np.float32(0.02), "zp": np.uint8(128)}
    tail = [helper.make_node("Tanh", ["shaped"], ["t"]),
            helper.make_node("ReduceMean", ["t"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    sized = [helper.make_node("Gather", ["table_q", "ids"], ["size_q"]),
             helper.make_node("DequantizeLinear", ["size_q", "scale", "zp"], ["size_f"]),
             helper.make_node("Shape", ["size_f"], ["shape"])]
    lookup = helper.make_node("Gather", ["table", "ids"], ["emb"])
    io = ([("ids", TensorProto.INT64, ["N", "T"])], [("logits", FLOAT, ["N", CLASSES])])
    model = onnx_attr.load(make_model([*sized, lookup, helper.make_node("Reshape", ["emb", "shape"], ["shaped"]),
                                       *tail], *io, inits))
    plain = onnx_attr.load(make_model([lookup, helper.make_node("Identity", ["emb"], ["shaped"]), *tail], *io,
                                      {"table": table, "w": w}))
    assert embedding_lookups(model) == {"ids": ["emb"]}
    ids = rng.integers(1, VOCAB, (2, 7))
    for method in ("IntegratedGradients", "Saliency"):
        got = getattr(onnx_attr, method)(model).attribute({"ids": ids}, target=1)["ids"]
        expected = getattr(onnx_attr, method)(plain).attribute({"ids": ids}, target=1)["ids"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
