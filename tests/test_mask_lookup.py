"""An additive attention mask looked up by id, as chython-rxnmap's graph transformer ships it: row
0 of a bias table is −inf (padding), added to the attention scores before a Softmax. The input's
own lookup then holds −inf, and so does a reference that keeps those ids: −inf − (−inf) is NaN,
which every method turned into NaN attributions. An element at its reference has not moved, so
its difference and its contribution are exactly 0. And the CLI's default reference: zero ids
mask every position (the output is NaN there), the blur leaves ids as they are (so every
attribution was 0, called "blurred"); now the ids that keep the model defined at zero go there,
the others stay at their own values and the report says so. Oracles: onnxruntime's outputs at the
input and at the reference (completeness), and the attention rows by hand (a masked position has
no influence)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.app.cli import main

RNG = np.random.default_rng(5)
T = 6


def mask_model() -> bytes:
    emb = (RNG.standard_normal((7, 8)) * 3).astype(np.float32)
    bias = (RNG.standard_normal((5, 1)) * 2).astype(np.float32)
    bias[0] = -np.inf  # distance id 0: padding, masked
    nodes = [
        helper.make_node("Gather", ["emb", "tokens"], ["x"]),  # [N, T, 8]
        helper.make_node("Gather", ["bias_table", "dist"], ["b4"]),  # [N, T, T, 1]
        helper.make_node("Squeeze", ["b4", "axis"], ["bias"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["h"]),
        helper.make_node("ReduceSum", ["h", "last"], ["y"], keepdims=0),  # [N, T]: one score per token
    ]
    graph = helper.make_graph(
        nodes, "mask_lookup",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", T]),
         helper.make_tensor_value_info("dist", TensorProto.INT64, ["N", T, T])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(bias, "bias_table"),
         numpy_helper.from_array(np.array([3]), "axis"), numpy_helper.from_array(np.array([2]), "last")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def inputs(n: int = 2) -> dict[str, np.ndarray]:
    """Two molecules of 5 and 4 atoms padded to T: distances 1-4 between real atoms, 0 to padding."""
    tokens = RNG.integers(1, 7, (n, T))
    dist = RNG.integers(1, 5, (n, T, T))
    for i, atoms in enumerate((5, 4)[:n]):
        tokens[i, atoms:] = 0
        dist[i, atoms:, :] = 0
        dist[i, :, atoms:] = 0
        dist[i, range(atoms, T), range(atoms, T)] = 1  # a padded row attends to itself: defined
    return {"tokens": tokens, "dist": dist}


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "mask.onnx"
    path.write_bytes(mask_model())
    return path


def _ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients", "GradientShap"])
def test_ids_at_their_reference_contribute_exactly_zero_through_an_infinite_lookup(model_file, method):
    # GradientShap draws its reference rows from the baselines given: one example, so its own mask
    x = inputs(1 if method == "GradientShap" else 2)
    reference = {"tokens": np.zeros_like(x["tokens"]), "dist": x["dist"]}  # the mask kept as it is
    model = onnx_attr.load(str(model_file))
    explainer = getattr(onnx_attr, method)(model)
    if method == "GradientShap":
        attributions = explainer.attribute(x, baselines=reference, target=1, n_samples=4, stdevs=0.0)
    else:
        attributions = explainer.attribute(x, baselines=reference, target=1)
    tokens, dist = (np.asarray(attributions[k]) for k in ("tokens", "dist"))
    assert np.isfinite(tokens).all() and np.isfinite(dist).all()  # NaN before: −inf − (−inf)
    assert (dist == 0).all()
    if method == "GradientShap":  # one random point of the path per sample: no completeness to check
        return
    change = _ort(model_file, x)[:, 1] - _ort(model_file, reference)[:, 1]
    tolerance = 1e-4 if method == "DeepLift" else 5e-2
    np.testing.assert_allclose(tokens.sum(1), change, rtol=tolerance, atol=tolerance * np.abs(change).max())
    # token 1 attends only to the real atoms: a padded token (masked for it) has no influence on it
    if method == "DeepLift":
        assert (tokens[0, 5:] == 0).all() and (tokens[1, 4:] == 0).all()


def test_the_cli_default_keeps_the_mask_ids_and_moves_the_others(model_file, tmp_path, capsys):
    x = inputs()
    np.savez(tmp_path / "x.npz", **x)
    out = tmp_path / "out"
    assert main(["attribute", str(model_file), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--quiet",
                 "--target", "1", "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["baseline_used"] == "blur"
    assert "the ids of ['tokens'] at zero" in report["baseline_note"]
    assert "['dist'] kept at their own values" in report["baseline_note"]
    found = np.load(out / "attributions.npz")
    assert (found["dist"] == 0).all() and np.abs(found["tokens"]).max() > 0.1  # all 0 before: ids do not blur
    reference = {"tokens": np.zeros_like(x["tokens"]), "dist": x["dist"]}
    change = _ort(model_file, x)[:, 1] - _ort(model_file, reference)[:, 1]
    np.testing.assert_allclose(found["tokens"].sum(1), change, rtol=1e-4, atol=1e-4 * np.abs(change).max())


def test_nan_attributions_are_written_but_exit_1(model_file, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", **inputs())
    out = tmp_path / "out"
    # zero distances mask every position: the reference's output is NaN
    assert main(["attribute", str(model_file), "-i", str(tmp_path / "x.npz"), "-o", str(out), "--quiet",
                 "--target", "1", "--baseline", "zeros", "--no-pictures"]) == 1
    assert "non-finite attributions" in capsys.readouterr().out
    assert (out / "attributions.npz").exists() and json.loads((out / "report.json").read_text())["non_finite"]


def test_a_closed_stdout_is_not_an_internal_error(model_file):
    process = subprocess.Popen([sys.executable, "-c", "import sys; from onnx_attr.app.cli import main; "
                                "sys.exit(main())", "inspect", str(model_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
