"""Local gradient methods (Saliency, InputXGradient, the guided ones) on token ids read the gradient at
the input's embeddings alone. They used to run the model at the baseline ids first, to record the
baseline's embeddings they never read: a TTS model whose ids 0 give zero durations, so no frame and a
Conv over an empty axis (hibari-tts, hunt 34), stopped both with exit 2. Oracle: the same computation
written in torch by hand (durations fixed at the input, the gradient by autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import length_regulator, make_model

V, D, B = 20, 8, 16


def _tts():
    rng = np.random.default_rng(0)
    v = rng.normal(0, .5, (D, 1)).astype(np.float32)
    table = rng.normal(0, 1, (V, D)).astype(np.float32)
    table[1:] += (2.0 * v / np.linalg.norm(v) ** 2).T  # every real token lasts a frame or more
    table[0] = (-3.0 * v / np.linalg.norm(v) ** 2).ravel()  # id 0 lasts none
    weights = {"E": table, "W": rng.normal(0, .5, (D, B)).astype(np.float32), "v": v,
               "K": rng.normal(0, .5, (B, B, 1)).astype(np.float32), "zero": np.array(0, np.int64),
               "one": np.array(1, np.int64), "last": np.array([-1], np.int64)}
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("MatMul", ["emb", "W"], ["feat"]),
             helper.make_node("MatMul", ["emb", "v"], ["d0"]), helper.make_node("Relu", ["d0"], ["d1"]),
             *length_regulator("d1", "feat", "per_frame"),
             helper.make_node("Transpose", ["per_frame"], ["spec0"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["spec0", "K"], ["spec"])]  # [1, B, frames]: none at ids 0
    return make_model(nodes, [("ids", TensorProto.INT64, [1, "L"])], [("spec", TensorProto.FLOAT, [1, B, "F"])],
                      weights, opset=17), weights


def _by_hand(weights, ids, target):
    """d spec[0, target] / d emb (per token), the durations fixed at the input's."""
    emb = torch.tensor(weights["E"][ids[0]], dtype=torch.float64, requires_grad=True)  # [L, D]
    dur = np.rint(np.maximum(weights["E"][ids[0]].astype(np.float64) @ weights["v"][:, 0], 0)).astype(int)
    token = np.repeat(np.arange(len(dur)), dur)
    feat = emb @ torch.tensor(weights["W"], dtype=torch.float64)  # [L, B]
    spec = torch.tensor(weights["K"][:, :, 0], dtype=torch.float64) @ feat[token].T  # [B, F]
    spec[target].backward()
    return emb.grad.numpy(), emb.detach().numpy()


@pytest.mark.parametrize("method", ["Saliency", "InputXGradient"])
def test_local_methods_on_ids_do_not_run_the_model_at_the_baseline_ids(method):
    proto, weights = _tts()
    model = onnx_attr.load(proto)
    ids = np.array([[3, 7, 11, 4, 9, 15, 2]], np.int64)
    with pytest.raises(onnx_attr.errors.ForwardError):  # the model has no frame at ids 0
        model.run({"ids": np.zeros_like(ids)})
    got = getattr(onnx_attr, method)(model).attribute(ids, target=(0, 2))
    grad, emb = _by_hand(weights, ids, (0, 2))
    expected = np.abs(grad).sum(-1) if method == "Saliency" else (grad * emb).sum(-1)
    np.testing.assert_allclose(np.asarray(got)[0], expected, rtol=1e-4, atol=1e-5)
