"""Batch axes off axis 0 in the DeepLift engine's fixed-batch chunks and in the dataset job's
target forms. (Every registered method on the four layouts of `batch_axis_cases` is checked in
test_method_registry_contract.py.) Oracles: the same graph exported with a dynamic batch (the
method on all rows at once), and onnxruntime for f(x) - f(x0)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

R = np.random.default_rng(418)
W, V = (0.5 * R.standard_normal((4, 8))).astype(np.float32), (0.5 * R.standard_normal((8, 3))).astype(np.float32)


def state_model(batch):
    """x [B, 4] and a state [2, B, 8] (batch on axis 1); out = relu(x·W + s0·s1)·V. `batch` an
    int fixes it (both inputs), a str leaves it dynamic."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Gather", ["state", "i0"], ["s0"], axis=0),
             helper.make_node("Gather", ["state", "i1"], ["s1"], axis=0),
             helper.make_node("Mul", ["s0", "s1"], ["p"]),
             helper.make_node("Add", ["h", "p"], ["z"]),
             helper.make_node("Relu", ["z"], ["a"]),
             helper.make_node("MatMul", ["a", "v"], ["out"])]
    return make_model(nodes, [("x", FLOAT, [batch, 4]), ("state", FLOAT, [2, batch, 8])], [("out", FLOAT, [batch, 3])],
                      {"w": W, "v": V, "i0": np.array(0, np.int64), "i1": np.array(1, np.int64)}, opset=13)


def test_the_fixed_batch_axis_is_found_on_axis_one():
    model = onnx_attr.load(state_model(4))
    assert [d["batch_axis"] for d in model.summary()["inputs"]] == [0, 1]


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients", "FeatureAblation", "Saliency"])
def test_a_batch_fixed_on_axis_one_is_chunked_and_padded_there(method):
    """6 examples through an export fixed at 4: passes [0:4] and [4:6] padded on the state's axis 1,
    equal to the dynamic export on all 6 at once; DeepLift complete against onnxruntime."""
    fixed, dynamic = onnx_attr.load(state_model(4)), onnx_attr.load(state_model("n"))
    x = (30 * R.standard_normal((6, 4))).astype(np.float32)
    state = (5 * R.standard_normal((2, 6, 8))).astype(np.float32)
    feeds = {"x": x, "state": state}
    options = {"n_steps": 16} if method == "IntegratedGradients" else {}
    target = [0, 1, 2, 2, 1, 0]
    ours = getattr(onnx_attr, method)(fixed).attribute(feeds, target=target, **options)
    expected = getattr(onnx_attr, method)(dynamic).attribute(feeds, target=target, **options)
    for k in feeds:
        assert ours[k].shape == feeds[k].shape
        np.testing.assert_allclose(ours[k], expected[k], rtol=1e-4, atol=1e-4 * np.abs(expected[k]).max())
    if method == "DeepLift":
        proto = dynamic.reference_model
        change = ort_run(proto, feeds)[0] - ort_run(proto, {k: 0 * v for k, v in feeds.items()})[0]
        total = ours["x"].sum(1) + ours["state"].sum((0, 2))
        np.testing.assert_allclose(total, change[np.arange(6), target], rtol=1e-4, atol=1e-3)
