"""A detector exported with its NonMaxSuppression (paddle2onnx's multiclass_nms3): the rows it keeps
change along the path from the baseline, so the class scores it selects from become an output,
explained by default; DeepLift refuses the kept rows by name and needs no rule for the NMS to
explain the scores. Oracles: onnxruntime, hand-computed scores, the completeness identity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.app.cli import main
from onnx_attr.importing.final_activation import KEPT_BY_NMS, NMS_SCORES

RNG = np.random.default_rng(31)
WB = RNG.standard_normal((3, 4)).astype(np.float32)
WC = (RNG.standard_normal((3, 2)) * 3).astype(np.float32)


def detector_with_nms() -> onnx.ModelProto:
    """x [1, 8, 3] -> boxes x·WB [1, 8, 4], scores sigmoid(x·WC)ᵀ [1, 2, 8] -> NMS -> kept scores [K]."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wc"], ["logits"]),
             helper.make_node("Transpose", ["logits"], ["logits_t"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["logits_t"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep", "iou", "floor"], ["picked"],
                              name="multiclass_nms"),
             helper.make_node("Gather", ["picked", "two"], ["box_index"], axis=1),
             helper.make_node("Gather", ["picked", "one"], ["class_index"], axis=1),
             helper.make_node("Mul", ["class_index", "eight"], ["offset"]),
             helper.make_node("Add", ["offset", "box_index"], ["flat_index"]),
             helper.make_node("Reshape", ["scores", "minus_one"], ["flat_scores"]),
             helper.make_node("Gather", ["flat_scores", "flat_index"], ["kept"], axis=0)]
    return make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("kept", FLOAT, ["K"])], opset=13, initializers={
        "wb": WB, "wc": WC, "keep": np.array([3], np.int64), "iou": np.array([0.5], np.float32),
        "floor": np.array([0.2], np.float32), "two": np.array(2, np.int64), "one": np.array(1, np.int64),
        "eight": np.array(8, np.int64), "minus_one": np.array([-1], np.int64)})


def test_the_scores_nms_reads_are_an_output_explained_by_default():
    proto = detector_with_nms()
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("kept", KEPT_BY_NMS), ("scores", NMS_SCORES)]
    assert any("NonMaxSuppression" in note for note in model.notes)
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    assert model.verify({"x": x}).passed
    scores = 1 / (1 + np.exp(-(x.astype(np.float64) @ WC).transpose(0, 2, 1)))  # by hand
    np.testing.assert_allclose(ort_run(model.reference_model, {"x": x})[1], scores, rtol=1e-5, atol=1e-6)
    dl = onnx_attr.DeepLift(model)
    anchor = int(scores[0, 1].argmax())
    attr, delta = dl.attribute(x, target=(1, anchor), return_convergence_delta=True)
    assert dl.last_report["output"] == "scores"
    np.testing.assert_allclose(np.asarray(attr, np.float64).sum(), scores[0, 1, anchor] - 0.5, rtol=1e-5)
    assert abs(float(delta[0])) < 1e-5
    assert np.delete(np.asarray(attr)[0], anchor, axis=0).sum() == 0  # one anchor's features only
    with pytest.raises(onnx_attr.UnsupportedOpError, match=r"(?s)NonMaxSuppression.*multiclass_nms"):
        dl.attribute(x, target=0, output="kept")
    ig = onnx_attr.IntegratedGradients(model)
    ig.attribute(x, target=(1, anchor))
    assert ig.last_report["output"] == "scores"


def test_cli_default_run_explains_the_top_anchor_of_the_scores(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(detector_with_nms(), path)
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "--keep-final-activation"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["output"] == "scores"
    scores = 1 / (1 + np.exp(-(x.astype(np.float64) @ WC).transpose(0, 2, 1)))
    with np.load(tmp_path / "out" / "attributions.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["x"].astype(np.float64).sum(), scores.max() - 0.5, rtol=1e-5)
