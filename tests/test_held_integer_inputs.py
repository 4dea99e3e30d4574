"""An integer input that feeds no embedding lookup (a sequence's lengths beside its ids, as
PyTorch's pack_padded_sequence exports take them) cannot be attributed by a gradient method.
Given in the inputs dict with ids that can, it is held at its value: attributions 0 of its shape,
reported among `held_inputs`, the others complete. Given alone, a clear error says where it goes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.errors import InputError

L, D, CLASSES = 5, 3, 2
RNG = np.random.default_rng(4)
TABLE = (RNG.standard_normal((9, D)) * 20).astype(np.float32)  # embeddings at a scale that moves logits by tens
W = RNG.standard_normal((D, CLASSES)).astype(np.float32)


def ids_and_lengths():
    """ids -> Gather -> zeroed past each row's length (Range < lengths) -> mean over tokens -> MatMul."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
             helper.make_node("Less", ["positions", "lengths_col"], ["live"]),
             helper.make_node("Unsqueeze", ["lengths", "one"], ["lengths_col"]),
             helper.make_node("Cast", ["live"], ["live_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["live_f", "last"], ["live_e"]),
             helper.make_node("Mul", ["emb", "live_e"], ["kept"]),
             helper.make_node("ReduceMean", ["kept"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Tanh", ["pooled"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    nodes.insert(1, nodes.pop(2))  # the Unsqueeze before its Less
    inits = {"table": TABLE, "w": W, "positions": np.arange(L, dtype=np.int64)[None], "one": np.array([1], np.int64),
             "last": np.array([-1], np.int64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", L]),
                     helper.make_tensor_value_info("lengths", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


FEEDS = {"ids": np.array([[3, 1, 4, 0, 0], [5, 2, 6, 5, 8]], np.int64), "lengths": np.array([3, 5], np.int64)}


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients", "InputXGradient"])
def test_lengths_given_with_the_ids_are_held(method):
    model = onnx_attr.load(ids_and_lengths())
    explainer = getattr(onnx_attr, method)(model)
    attributions = explainer.attribute(dict(FEEDS), target=1)
    assert np.asarray(attributions["lengths"]).shape == FEEDS["lengths"].shape
    assert not np.asarray(attributions["lengths"]).any()
    assert explainer.last_report["held_inputs"] == ["lengths"]
    ids = np.asarray(attributions["ids"])
    assert ids.shape == FEEDS["ids"].shape and not ids[0, 3:].any()  # past row 0's length: masked in both passes
    if method == "DeepLift":  # complete against the model run at the reference ids, the lengths as given
        change = (model.run(FEEDS)[0][:, 1] - model.run({**FEEDS, "ids": np.zeros_like(FEEDS["ids"])})[0][:, 1])
        np.testing.assert_allclose(ids.sum(1), change.numpy(), rtol=1e-5, atol=1e-5)


def test_lengths_given_alone_are_a_clear_error():
    model = onnx_attr.load(ids_and_lengths())
    with pytest.raises(InputError, match="'lengths' is int64 and feeds no embedding lookup.*additional_forward_args"):
        onnx_attr.DeepLift(model).attribute({"lengths": FEEDS["lengths"]}, target=1,
                                            additional_forward_args={"ids": FEEDS["ids"]})
