"""Token ids that reach the model through a one-hot (Equal against the classes, then Cast: tf2onnx,
magika) or through a Cast before their Gather are attributed there, one value per token.

Oracle: the per-byte value by hand. The magika pattern below is relu(W[b_t]) averaged over the
bytes, so byte t's exact share of logit c is (relu(W[b_t, c]) − relu(W[b0_t, c])) / L, which
DeepLift's Rescale rule and IG along the one-hot's straight path both give; onnxruntime for f."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run
from onnx_attr.deeplift.layers import embedding_lookups

from test_real_export_patterns import INT32, jax_one_hot_model

LENGTH, DEPTH, CLASSES = 8, 257, 5


def _weights(proto) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == "w").astype(np.float64)


def _per_byte(w: np.ndarray, data: np.ndarray, base: np.ndarray, target: int) -> np.ndarray:
    return (np.maximum(w[data, target], 0) - np.maximum(w[base, target], 0)) / data.shape[1]


@pytest.fixture(scope="module")
def magika_like():
    proto = jax_one_hot_model(LENGTH, DEPTH, CLASSES)
    data = np.random.default_rng(3).integers(0, DEPTH, size=(3, LENGTH)).astype(np.int32)
    data[0, 5:] = 256  # magika's padding token
    return proto, onnx_attr.load(proto), data


def test_the_one_hot_is_found_as_the_bytes_embedding(magika_like):
    _, model, _ = magika_like
    assert embedding_lookups(model) == {"bytes": ["hot_f"]}


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients", "InputXGradient"])
def test_one_hot_bytes_get_their_exact_share(magika_like, method):
    proto, model, data = magika_like
    target = 2
    base = np.full_like(data, 7)
    explainer = getattr(onnx_attr, method)(model)
    if method == "InputXGradient":  # one-hot · gradient: the gradient at each byte's own class
        found = np.asarray(explainer.attribute({"bytes": data}, target=target)["bytes"])
        w = _weights(proto)
        np.testing.assert_allclose(found, np.maximum(w[data, target], 0) / LENGTH, rtol=1e-5)
        return
    kwargs = {"n_steps": 64} if method == "IntegratedGradients" else {}
    tolerance = 2e-2 if method == "IntegratedGradients" else 1e-5  # IG: the quadrature of the relu's kink
    found, delta = explainer.attribute({"bytes": data}, {"bytes": base}, target=target,
                                       return_convergence_delta=True, **kwargs)
    found = np.asarray(found["bytes"], np.float64)
    assert found.shape == data.shape
    expected = _per_byte(_weights(proto), data, base, target)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(found, expected, atol=tolerance * scale)
    (y,), (y0,) = ort_run(proto, {"bytes": data}), ort_run(proto, {"bytes": base})
    np.testing.assert_allclose(found.sum(1), y[:, target] - y0[:, target], atol=tolerance * LENGTH * scale)
    assert np.abs(np.asarray(delta)).max() <= tolerance * LENGTH * scale


def test_a_padding_mask_from_equal_is_not_an_embedding():
    """Equal(ids, 0) -> Cast is a mask, computed from the ids in both passes; the Gather is the tap."""
    table = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32) * 3
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["keep_f"], to=FLOAT),
             helper.make_node("Unsqueeze", ["keep_f", "last"], ["keep3"]),
             helper.make_node("Mul", ["e", "keep3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axes"], ["y"], keepdims=0)]  # opset 17: axes as input
    proto = make_model(nodes, [("ids", INT64, ["N", 6])], [("y", FLOAT, ["N", 4])],
                       initializers={"table": table, "pad": np.array(0, np.int64), "last": np.array([-1], np.int64),
                                     "axes": np.array([1], np.int64)})
    model = onnx_attr.load(proto)
    assert embedding_lookups(model) == {"ids": ["e"]}
    ids = np.array([[3, 5, 0, 0, 9, 1], [2, 2, 2, 0, 0, 0]], np.int64)
    found, delta = onnx_attr.DeepLift(model).attribute({"ids": ids}, target=1, return_convergence_delta=True)
    (y,), (y0,) = ort_run(proto, {"ids": ids}), ort_run(proto, {"ids": np.zeros_like(ids)})
    # padded positions (id 0) add nothing: the reference keeps the input's mask (as for every tap)
    # and looks up the baseline id 0 where the input has tokens
    keep = (ids != 0).astype(np.float64)
    expected = keep * (table[ids, 1] - table[0, 1])
    np.testing.assert_allclose(np.asarray(found["ids"]), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(found["ids"]).sum(1), y[:, 1] - keep.sum(1) * table[0, 1], rtol=1e-5,
                               atol=1e-5)
    assert np.abs(np.asarray(delta)).max() < 1e-5
    assert y0.sum() == 0  # (onnxruntime's f(0) masks every position: not the reference DeepLift explains against)


def test_int32_ids_cast_before_their_gather_are_attributed_at_it():
    table = np.random.default_rng(2).normal(size=(12, 3)).astype(np.float32) * 10
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=INT64),
             helper.make_node("Gather", ["table", "ids64"], ["e"]),
             helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["y"], axes=[1], keepdims=0)]
    proto = make_model(nodes, [("ids", INT32, ["N", 4])], [("y", FLOAT, ["N", 3])], initializers={"table": table})
    model = onnx_attr.load(proto)
    assert embedding_lookups(model) == {"ids": ["e"]}
    ids = np.array([[1, 5, 11, 3], [7, 7, 2, 0]], np.int32)
    found = np.asarray(onnx_attr.DeepLift(model).attribute({"ids": ids}, target=0)["ids"], np.float64)
    t = table.astype(np.float64)
    np.testing.assert_allclose(found, (np.maximum(t[ids, 0], 0) - np.maximum(t[0, 0], 0)) / 4, rtol=1e-5, atol=1e-6)


def test_cli_attributes_one_hot_bytes_with_the_default_target(tmp_path, magika_like):
    from onnx_attr.app.cli import main

    proto, _, data = magika_like
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "x.npz", bytes=data)
    for method in ("deeplift", "integratedgradients"):
        out = tmp_path / method
        assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(out),
                     "--method", method, "--no-pictures"]) == 0
        report = json.loads((out / "report.json").read_text())
        (y,), (y0,) = ort_run(proto, {"bytes": data}), ort_run(proto, {"bytes": np.zeros_like(data)})
        predicted = y.argmax(1)
        assert report["target"] == predicted.tolist()
        found = np.load(out / "attributions.npz")["bytes"].astype(np.float64)
        expected = np.stack([_per_byte(_weights(proto), data[i:i + 1], np.zeros_like(data[i:i + 1]), c)[0]
                             for i, c in enumerate(predicted)])
        tolerance = 1e-4 if method == "deeplift" else 2e-2  # IG: the quadrature of the relu's kink
        np.testing.assert_allclose(found, expected, atol=tolerance * np.abs(expected).max())
        change = y[np.arange(3), predicted] - y0[0, predicted]
        np.testing.assert_allclose(found.sum(1), change, atol=tolerance * np.abs(change).max())
