"""Token ids reordered at run time before their lookup (PyTorch's pack_padded_sequence with
enforce_sorted=False exports TopK(lengths) -> Gather(ids, order) -> embedding -> ... -> Gather(out,
inverse order); pythainlp's thai2rom encoder). The ids are attributed at the lookup and folded back
through the order the call computed. Oracles: by hand (a mean of embeddings times a matrix is
linear, so each token's share is (E[id] - E[0]) . W[:, c] / L, on the token's own row and place),
and onnxruntime's f(x) - f(baseline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from onnx_attr.app.cli import main
from onnx_attr.errors import InputError

from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(0)
E = RNG.standard_normal((20, 4)).astype(np.float32)
W = (40 * RNG.standard_normal((4, 3))).astype(np.float32)  # scores in the tens


def sorted_by_length(batch="n"):
    nodes = [helper.make_node("Shape", ["lengths"], ["k"]),
             helper.make_node("TopK", ["lengths", "k"], ["_", "order"], largest=0),
             helper.make_node("Gather", ["ids", "order"], ["ids_sorted"], axis=0),
             helper.make_node("Gather", ["E", "ids_sorted"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["scores"]),
             helper.make_node("TopK", ["order", "k"], ["__", "inverse"], largest=0),
             helper.make_node("Gather", ["scores", "inverse"], ["y"], axis=0)]
    return make_model(nodes, [("ids", INT64, [batch, "L"]), ("lengths", INT64, [batch])], [("y", FLOAT, [batch, 3])],
                      initializers={"E": E, "W": W}, opset=13)


def by_hand(ids, target):
    return (E[ids] - E[0]) @ W[:, target] / ids.shape[1]


IDS = np.array([[3, 7, 1, 9, 4], [5, 2, 8, 11, 6], [13, 1, 1, 19, 2]], np.int64)
LENGTHS = np.array([4, 5, 2], np.int64)  # sorted, the rows run in the order 2, 0, 1


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_ids_reordered_by_their_lengths_are_attributed_on_their_own_rows(method):
    proto = sorted_by_length()
    model = onnx_attr.load(proto)
    explainer = getattr(onnx_attr, method)(model)
    attributions = explainer.attribute(torch.from_numpy(IDS), target=1,
                                       additional_forward_args=(torch.from_numpy(LENGTHS),))
    np.testing.assert_allclose(attributions.numpy(), by_hand(IDS, 1), rtol=1e-4, atol=1e-4)
    feeds = {"ids": IDS, "lengths": LENGTHS}
    change = ort_run(proto, feeds)[0][:, 1] - ort_run(proto, {**feeds, "ids": 0 * IDS})[0][:, 1]
    np.testing.assert_allclose(attributions.numpy().sum(1), change, rtol=1e-4, atol=1e-4)


def test_a_fixed_batch_export_is_folded_per_pass(tmp_path):
    """A batch-1 export fed three rows runs three passes, each ordering its own row: DeepLift folds
    each pass; the gradient methods, which fold once over all rows, say what to do."""
    proto = sorted_by_length(batch=1)
    model = onnx_attr.load(proto)
    attributions = onnx_attr.DeepLift(model).attribute(torch.from_numpy(IDS), target=2,
                                                       additional_forward_args=(torch.from_numpy(LENGTHS[:1]),))
    np.testing.assert_allclose(attributions.numpy(), by_hand(IDS, 2), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="pass 1 row"):
        onnx_attr.IntegratedGradients(model).attribute(torch.from_numpy(IDS), target=2,
                                                       additional_forward_args=(torch.from_numpy(LENGTHS[:1]),))
    path = tmp_path / "packed.onnx"
    path.write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "x.npz", ids=IDS[:1], lengths=LENGTHS[:1])
    assert main(["attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out")]) == 0
    saved = np.load(tmp_path / "out" / "attributions.npz")["ids"]
    target = int(np.argmax(ort_run(proto, {"ids": IDS[:1], "lengths": LENGTHS[:1]})[0][0]))
    np.testing.assert_allclose(saved, by_hand(IDS[:1], target), rtol=1e-4, atol=1e-4)


def test_ids_gathered_at_positions_given_as_another_input():
    """Gather(ids, starts) with the starts a model input of their own (each word's first token):
    a run-time operand that is a placeholder. By hand: the looked-up token's share lands on its
    position, every other position gets 0."""
    nodes = [helper.make_node("Gather", ["ids", "starts"], ["first"], axis=1),
             helper.make_node("Gather", ["E", "first"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["y"])]
    proto = make_model(nodes, [("ids", INT64, ["n", "L"]), ("starts", INT64, ["k"])], [("y", FLOAT, ["n", 3])],
                       initializers={"E": E, "W": W}, opset=13)
    starts = np.array([0, 3], np.int64)
    attributions = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(
        torch.from_numpy(IDS), target=0, additional_forward_args=(torch.from_numpy(starts),))
    expected = np.zeros(IDS.shape)
    expected[:, starts] = by_hand(IDS[:, starts], 0)
    np.testing.assert_allclose(attributions.numpy(), expected, rtol=1e-4, atol=1e-4)
