"""Batch axes off axis 0 in the DeepLift engine's fixed-batch chunks and in the dataset job's
target forms. (Every registered method on the four layouts of `batch_axis_cases` is checked in
test_method_registry_contract.py.) Oracles: the same graph exported with a dynamic batch (the
method on all rows at once), and onnxruntime for f(x) - f(x0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from batch_axis_cases import state_nodes
from conftest import FLOAT, make_model, ort_run

R = np.random.default_rng(418)
STATE_NODES, STATE_CONSTANTS = state_nodes("state")


def state_model(batch):
    """x [B, 4] and a state [2, B, 8] (batch on axis 1); out = relu(x·W + s0·s1)·V. `batch` an
    int fixes it (both inputs), a str leaves it dynamic."""
    return make_model(STATE_NODES, [("x", FLOAT, [batch, 4]), ("state", FLOAT, [2, batch, 8])],
                      [("out", FLOAT, [batch, 3])], STATE_CONSTANTS, opset=13)


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


# --- the dataset job takes every target form of `onnx-attr attribute` -----------------------------------------------

def map_model():
    """A dense map [N, 1, 6, 6]: relu(conv3x3(x)), biased so that part of it is above 0."""
    w = (0.4 * R.standard_normal((1, 1, 3, 3))).astype(np.float32)
    return make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["c"], ["out"])],
                      [("x", FLOAT, ["n", 1, 6, 6])], [("out", FLOAT, ["n", 1, 6, 6])],
                      {"w": w, "b": np.array([0.5], np.float32)}, opset=13)


def sequence_model():
    """A recogniser's sequence [N, T, C]: tanh(x·W) over 5 steps of 4 features, 3 classes."""
    w = (0.6 * R.standard_normal((4, 3))).astype(np.float32)
    return make_model([helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Tanh", ["z"], ["out"])],
                      [("x", FLOAT, ["n", 5, 4])], [("out", FLOAT, ["n", 5, 3])], {"w": w}, opset=13)


def _dataset(tmp_path, proto, x, target, out="out", **kwargs):
    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "rows.npz", x=x)
    attribute_dataset(str(path), str(tmp_path / "rows.npz"), str(tmp_path / out), target=target, shard_rows=4,
                      batch_size=3, quiet=True, **kwargs)
    table = read_results(tmp_path / out)
    assert set(table.column("status").to_pylist()) == {"ok"}
    return table, attribution_array(table, "attributions").astype(np.float64), path


def _change(proto, x) -> np.ndarray:
    """f(x) - f(0) by onnxruntime, per row."""
    return ort_run(proto, {"x": x})[0].astype(np.float64) - ort_run(proto, {"x": 0 * x})[0].astype(np.float64)


@pytest.mark.parametrize("form", ["region>0.6", "top", "0:3:4", None])
def test_the_dataset_job_explains_a_dense_map_by_every_form(tmp_path, form):
    """Each row's attributions add up to the target's change by onnxruntime: Σ over the region
    (out > T), the top pixel, a given pixel, or the layout's default (the region above halfway)."""
    proto = map_model()
    x = (3 * R.standard_normal((7, 1, 6, 6))).astype(np.float32)
    table, got, _ = _dataset(tmp_path, proto, x, form)
    out = ort_run(proto, {"x": x})[0].astype(np.float64)
    change = _change(proto, x)
    flat, delta = out.reshape(7, -1), change.reshape(7, -1)
    if form == "region>0.6":
        expected = (delta * (flat > 0.6)).sum(1)
    elif form == "top":
        expected = delta[np.arange(7), flat.argmax(1)]
    elif form == "0:3:4":
        expected = change[:, 0, 3, 4]
    else:
        halfway = (flat.min(1) + flat.max(1)) / 2
        expected = (delta * (flat > halfway[:, None])).sum(1)
    np.testing.assert_allclose(got.reshape(7, -1).sum(1), expected, rtol=1e-4, atol=1e-4)
    rows = [json.loads(t) for t in table.column("target").to_pylist()]
    if form in ("region>0.6", None):
        assert [r["mask_size"] for r in rows] == [int(m) for m in ((flat > 0.6).sum(1) if form else
                                                                   (flat > halfway[:, None]).sum(1))]


@pytest.mark.parametrize("form", ["greedy", "3,1", "top"])
def test_the_dataset_job_explains_a_sequence_by_every_form(tmp_path, form):
    """[N, T, C]: the greedy path's summed score, step 3's class 1, the top (step, class) cell."""
    proto = sequence_model()
    x = (2 * R.standard_normal((7, 5, 4))).astype(np.float32)
    table, got, path = _dataset(tmp_path, proto, x, form)
    out = ort_run(proto, {"x": x})[0].astype(np.float64)
    change = _change(proto, x)
    if form == "greedy":
        best = out.argmax(2)
        expected = np.take_along_axis(change, best[:, :, None], 2).sum((1, 2))
        assert [json.loads(t)["path"] for t in table.column("target").to_pylist()] == best.tolist()
    elif form == "3,1":
        expected = change[:, 3, 1]
        assert [json.loads(t) for t in table.column("target").to_pylist()] == [[3, 1]] * 7
    else:
        flat = out.reshape(7, -1)
        expected = change.reshape(7, -1)[np.arange(7), flat.argmax(1)]
    np.testing.assert_allclose(got.reshape(7, -1).sum(1), expected, rtol=1e-4, atol=1e-4)
    # the same form through `onnx-attr attribute` on the same rows gives the same attributions
    from onnx_attr.app.attribute_job import run_attribute

    run_attribute(onnx_attr.load(str(path)), input_path=str(tmp_path / "rows.npz"), target=form, baseline=None, method="deeplift",
                  output_name=None, out=str(tmp_path / "single"), quiet=True)
    single = np.load(tmp_path / "single" / "attributions.npz")["x"]
    np.testing.assert_allclose(got.reshape(single.shape), single, rtol=1e-5, atol=1e-6)


def test_the_dataset_job_refuses_a_resume_with_another_form_and_one_target_per_example(tmp_path):
    from onnx_attr.app.dataset_job import attribute_dataset

    proto = sequence_model()
    x = (2 * R.standard_normal((7, 5, 4))).astype(np.float32)
    _, _, path = _dataset(tmp_path, proto, x, "greedy")
    with pytest.raises(onnx_attr.InputError, match=r"(?m)^  target\b.*greedy.*->.*3,1"):
        attribute_dataset(str(path), str(tmp_path / "rows.npz"), str(tmp_path / "out"), target="3,1", shard_rows=4,
                          resume=True, quiet=True)
    with pytest.raises(onnx_attr.InputError, match="never one target per example"):
        attribute_dataset(str(path), str(tmp_path / "rows.npz"), str(tmp_path / "other"), target="1,2,0,1",
                          quiet=True)
    with pytest.raises(onnx_attr.InputError, match="is not a target form"):
        attribute_dataset(str(path), str(tmp_path / "rows.npz"), str(tmp_path / "third"), target="bogus", quiet=True)


def test_the_dataset_job_reads_a_time_major_output_on_its_batch_axis(tmp_path):
    """[T, N, C] with --batch-axis 1 (and without: the probe finds it): step 3's class 1 per row."""
    proto = make_model([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                        helper.make_node("MatMul", ["xt", "w"], ["z"]), helper.make_node("Tanh", ["z"], ["out"])],
                       [("x", FLOAT, ["n", 5, 4])], [("out", FLOAT, [5, "n", 3])],
                       {"w": (0.6 * R.standard_normal((4, 3))).astype(np.float32)}, opset=13)
    x = (2 * R.standard_normal((7, 5, 4))).astype(np.float32)
    change = _change(proto, x)  # [T, N, C]
    for out, axis in (("given", 1), ("probed", None)):
        _, got, _ = _dataset(tmp_path, proto, x, "3,1", out=out, batch_axis=axis)
        np.testing.assert_allclose(got.reshape(7, -1).sum(1), change[3, :, 1], rtol=1e-4, atol=1e-4)
