"""Ids transposed to time-major [T, N] before their embedding lookup, as PyTorch's nn.Transformer
(batch_first=False) exports it (g2p-id's tiny-pron, hunt 33 F2): the lookup is [T, N, D], its batch
on axis 1. The gradient methods fed it to the model as if batch-first: Saliency crashed, IG refused
one example as 'not the batch', and InputXGradient gave every token token 0's gradient. Oracle: the
closed form, by hand in numpy (the embedding times the gradient of a mean of Tanh through a linear
head), and IG's completeness against onnxruntime with the baseline ids' embeddings looked up."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model

RNG = np.random.default_rng(8)
TABLE = RNG.normal(size=(11, 6)).astype(np.float32) * 2
W = RNG.normal(size=(6, 3)).astype(np.float32)


def _model(batch):
    nodes = [helper.make_node("Transpose", ["text"], ["text_t"], perm=[1, 0]),
             helper.make_node("Gather", ["table", "text_t"], ["emb"]),  # [T, N, D]
             helper.make_node("Tanh", ["emb"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[0], keepdims=0),  # [N, D]
             helper.make_node("MatMul", ["pooled", "w"], ["scores"])]
    return make_model(nodes, [("text", TensorProto.INT64, [batch, 5])], [("scores", FLOAT, [batch, 3])],
                      initializers={"table": TABLE, "w": W}, opset=13)


def _closed_form(ids: np.ndarray, target: int) -> np.ndarray:
    """InputXGradient per token: Σ_d e·∂score/∂e, with score = mean_t tanh(e_t) · W[:, target]."""
    e = TABLE[ids].astype(np.float64)  # [N, T, D]
    grad = (1 - np.tanh(e) ** 2) * W[:, target] / ids.shape[1]
    return (e * grad).sum(-1)


@pytest.mark.parametrize("batch, ids", [(1, [[3, 5, 2, 7, 1]]), ("N", [[3, 5, 2, 7, 1], [9, 4, 4, 10, 0]])])
def test_time_major_ids_get_their_own_gradients(batch, ids):
    ids = np.array(ids, np.int64)
    model = onnx_attr.load(_model(batch), strip_final_activation=False)
    ixg = onnx_attr.InputXGradient(model).attribute(ids, target=1)
    np.testing.assert_allclose(np.asarray(ixg), _closed_form(ids, 1), rtol=1e-4, atol=1e-6)
    saliency = np.asarray(onnx_attr.Saliency(model).attribute(ids, target=1))
    assert saliency.shape == ids.shape and np.isfinite(saliency).all()
    ig, delta = onnx_attr.IntegratedGradients(model).attribute(ids, target=1, n_steps=64,
                                                               return_convergence_delta=True)
    session = ort.InferenceSession(_model(batch).SerializeToString(), providers=["CPUExecutionProvider"])
    at_input = session.run(None, {"text": ids})[0][:, 1]
    at_baseline = session.run(None, {"text": np.zeros_like(ids)})[0][:, 1]  # every lookup reads the ids here
    np.testing.assert_allclose(np.asarray(ig).sum(1), at_input - at_baseline, rtol=1e-3, atol=1e-4)
