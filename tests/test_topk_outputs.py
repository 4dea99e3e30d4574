"""Detectors exported with a final TopK (YOLOv10 "end2end", DETR-style heads): which anchors it
selects changes along the path from the baseline, so the scores it selects from become an output,
explained by default, and the selected rows are marked kept-by-selection. A TopK inside the network
is left alone. Oracles: onnxruntime, hand-computed scores, the completeness identity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.app.cli import main
from onnx_attr.importing.final_activation import KEPT_BY_NMS, KEPT_BY_TOPK, NMS_SCORES, TOPK_SCORES

RNG = np.random.default_rng(47)
WB = RNG.standard_normal((3, 4)).astype(np.float32)
WO = (RNG.standard_normal((3, 1)) * 3).astype(np.float32)
WC = (RNG.standard_normal((3, 5)) * 3).astype(np.float32)
INT = onnx.TensorProto.INT64


def yolo_end2end() -> onnx.ModelProto:
    """x [1, 8, 3] -> scores sigmoid(x·WO) [1, 8] -> TopK 3 -> GatherElements boxes -> [1, 3, 6]."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wo"], ["obj"]),
             helper.make_node("Squeeze", ["obj", "minus_one"], ["obj2"]),
             helper.make_node("Sigmoid", ["obj2"], ["scores"]),
             helper.make_node("MatMul", ["x", "wc"], ["cls"]),
             helper.make_node("ArgMax", ["cls"], ["labels_all"], axis=2, keepdims=0),
             helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_idx"], axis=1, name="end2end_topk"),
             helper.make_node("Unsqueeze", ["top_idx", "minus_one"], ["idx3"]),
             helper.make_node("Expand", ["idx3", "box_shape"], ["idx_boxes"]),
             helper.make_node("GatherElements", ["boxes", "idx_boxes"], ["top_boxes"], axis=1),
             helper.make_node("GatherElements", ["labels_all", "top_idx"], ["top_labels"], axis=1),
             helper.make_node("Cast", ["top_labels"], ["labels_f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["top_scores", "minus_one"], ["s3"]),
             helper.make_node("Unsqueeze", ["labels_f", "minus_one"], ["l3"]),
             helper.make_node("Concat", ["top_boxes", "s3", "l3"], ["dets"], axis=2)]
    return make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("dets", FLOAT, [1, 3, 6])], opset=13, initializers={
        "wb": WB, "wo": WO, "wc": WC, "k": np.array([3], np.int64), "minus_one": np.array([-1], np.int64),
        "box_shape": np.array([1, 3, 4], np.int64)})


def detr_head() -> onnx.ModelProto:
    """x [1, 6, 3] -> sigmoid(x·WC) [1, 6, 5] -> flatten [1, 30] -> TopK 4 -> query = i // 5,
    label = i % 5 -> Gather boxes by query; outputs boxes [1, 4, 4], scores [1, 4], labels [1, 4]."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wc"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probs"]),
             helper.make_node("Reshape", ["probs", "flat_shape"], ["flat"]),
             helper.make_node("TopK", ["flat", "k"], ["scores", "idx"], axis=1),
             helper.make_node("Div", ["idx", "five"], ["query"]),
             helper.make_node("Mod", ["idx", "five"], ["labels"]),
             helper.make_node("Unsqueeze", ["query", "minus_one"], ["q3"]),
             helper.make_node("Expand", ["q3", "box_shape"], ["qb"]),
             helper.make_node("GatherElements", ["boxes", "qb"], ["top_boxes"], axis=1)]
    return make_model(nodes, [("x", FLOAT, [1, 6, 3])],
                      [("top_boxes", FLOAT, [1, 4, 4]), ("scores", FLOAT, [1, 4]), ("labels", INT, [1, 4])],
                      opset=13, initializers={"wb": WB, "wc": WC, "k": np.array([4], np.int64),
                                              "five": np.array(5, np.int64), "minus_one": np.array([-1], np.int64),
                                              "flat_shape": np.array([1, 30], np.int64),
                                              "box_shape": np.array([1, 4, 4], np.int64)})


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_yolo_end2end_topk_scores_are_explained_complete():
    model = onnx_attr.load(yolo_end2end(), strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("dets", KEPT_BY_TOPK), ("scores", TOPK_SCORES)]
    assert any("TopK" in note for note in model.notes)
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    assert model.verify({"x": x}).passed
    scores = _sigmoid(x.astype(np.float64) @ WO)[..., 0]
    np.testing.assert_allclose(ort_run(model.reference_model, {"x": x})[1], scores, rtol=1e-5, atol=1e-6)
    anchor = int(scores[0].argmax())
    for method in (onnx_attr.DeepLift(model), onnx_attr.IntegratedGradients(model)):
        attr, delta = method.attribute(x, target=anchor, return_convergence_delta=True)
        assert method.last_report["output"] == "scores"
        total = np.asarray(attr, np.float64).sum()
        assert abs(total - (scores[0, anchor] - 0.5)) <= 1e-4 * abs(scores[0, anchor] - 0.5) + 1e-6
        assert np.delete(np.asarray(attr)[0], anchor, axis=0).sum() == 0
    with pytest.raises(onnx_attr.UnsupportedOpError, match=r"(?s)TopK.*end2end_topk"):
        # the anchors reversed: the top three are others, and their boxes differ (at zeros every anchor's
        # box is 0 and its score 0.5, so the selection's move costs nothing there and is not refused)
        onnx_attr.DeepLift(model).attribute(x, x[:, ::-1].copy(), target=(0, 0), output="dets")


def test_detr_head_topk_over_flattened_class_scores(tmp_path):
    model = onnx_attr.load(detr_head(), strip_final_activation=False)
    roles = {o.name: o.role for o in model.outputs}
    assert roles == {"top_boxes": KEPT_BY_TOPK, "scores": KEPT_BY_TOPK, "labels": KEPT_BY_TOPK, "flat": TOPK_SCORES}
    x = (RNG.standard_normal((1, 6, 3)) * 2).astype(np.float32)
    assert model.verify({"x": x}).passed
    flat = _sigmoid(x.astype(np.float64) @ WC).reshape(1, 30)
    np.testing.assert_allclose(ort_run(model.reference_model, {"x": x})[3], flat, rtol=1e-5, atol=1e-6)
    dl = onnx_attr.DeepLift(model)
    attr, delta = dl.attribute(x, target=int(flat.argmax()), return_convergence_delta=True)
    assert dl.last_report["output"] == "flat"
    np.testing.assert_allclose(np.asarray(attr, np.float64).sum(), flat.max() - 0.5, rtol=1e-4)
    path = tmp_path / "detr.onnx"
    onnx.save(detr_head(), path)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "--keep-final-activation"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["output"] == "flat"
    with np.load(tmp_path / "out" / "attributions.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["x"].astype(np.float64).sum(), flat.max() - 0.5, rtol=1e-4)


def test_topk_inside_the_network_is_not_an_output():
    """A top-k pooling (TopK then ReduceMean) feeds computation, not outputs: nothing is added."""
    nodes = [helper.make_node("MatMul", ["x", "wc"], ["h"]),
             helper.make_node("TopK", ["h", "k"], ["vals", "idx"], axis=2),
             helper.make_node("ReduceMean", ["vals"], ["y"], axes=[2], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, [1, 6, 3])], [("y", FLOAT, [1, 6])], opset=13,
                       initializers={"wc": WC, "k": np.array([2], np.int64)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("y", None)]


def test_topk_preselection_before_nms_exposes_the_scores_before_the_topk():
    """Top-k anchors by objectness, then NMS over the gathered ones (RetinaNet-style exports): the
    NMS's scores come through the TopK, so the scores the TopK reads are the explained output."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wo"], ["obj"]),
             helper.make_node("Squeeze", ["obj", "minus_one"], ["obj2"]),
             helper.make_node("Sigmoid", ["obj2"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_idx"], axis=1, name="pre_topk"),
             helper.make_node("Unsqueeze", ["top_idx", "minus_one"], ["idx3"]),
             helper.make_node("Expand", ["idx3", "box_shape"], ["idx_boxes"]),
             helper.make_node("GatherElements", ["boxes", "idx_boxes"], ["top_boxes"], axis=1),
             helper.make_node("Unsqueeze", ["top_scores", "one"], ["nms_scores"]),
             helper.make_node("NonMaxSuppression", ["top_boxes", "nms_scores", "keep", "iou", "floor"], ["picked"]),
             helper.make_node("Gather", ["picked", "two"], ["box_index"], axis=1),
             helper.make_node("Reshape", ["top_scores", "minus_one"], ["flat_scores"]),
             helper.make_node("Gather", ["flat_scores", "box_index"], ["kept"], axis=0)]
    proto = make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("kept", FLOAT, ["K"])], opset=13, initializers={
        "wb": WB, "wo": WO, "k": np.array([5], np.int64), "minus_one": np.array([-1], np.int64),
        "one": np.array([1], np.int64), "two": np.array(2, np.int64), "box_shape": np.array([1, 5, 4], np.int64),
        "keep": np.array([3], np.int64), "iou": np.array([0.5], np.float32), "floor": np.array([0.0], np.float32)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("kept", KEPT_BY_NMS), ("scores", TOPK_SCORES)]
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    assert model.verify({"x": x}).passed
    scores = _sigmoid(x.astype(np.float64) @ WO)[..., 0]
    np.testing.assert_allclose(ort_run(model.reference_model, {"x": x})[1], scores, rtol=1e-5, atol=1e-6)
    anchor = int(scores[0].argmax())
    dl = onnx_attr.DeepLift(model)
    attr = dl.attribute(x, target=anchor)
    assert dl.last_report["output"] == "scores"
    np.testing.assert_allclose(np.asarray(attr, np.float64).sum(), scores[0, anchor] - 0.5, rtol=1e-4)


def test_cli_default_target_on_an_end2end_yolo_head(tmp_path):
    path = tmp_path / "yolo.onnx"
    onnx.save(yolo_end2end(), path)
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "--keep-final-activation", "--method", "integratedgradients"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["output"] == "scores"
    scores = _sigmoid(x.astype(np.float64) @ WO)[..., 0]
    with np.load(tmp_path / "out" / "attributions.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["x"].astype(np.float64).sum(), scores.max() - 0.5, rtol=1e-3)


def test_topk_feeding_attention_is_not_an_output():
    """Top-k keys gathered then multiplied with the queries (sparse attention): the TopK feeds a
    MatMul, so it is part of the network and nothing is exposed."""
    nodes = [helper.make_node("MatMul", ["x", "wc"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["key_score"], axes=[2], keepdims=0),
             helper.make_node("TopK", ["key_score", "k"], ["vals", "idx"], axis=1),
             helper.make_node("Squeeze", ["idx", "zero"], ["idx0"]),
             helper.make_node("Gather", ["x", "idx0"], ["keys"], axis=1),
             helper.make_node("Transpose", ["keys"], ["keys_t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "keys_t"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 6, 3])], [("y", FLOAT, [1, 6, 2])], opset=13,
                       initializers={"wc": WC, "k": np.array([2], np.int64), "zero": np.array([0], np.int64)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("y", None)]


def test_topk_after_nms_adds_no_second_output():
    """multiclass_nms3's keep_top_k: a TopK over the scores the NMS kept. Those are a selection
    already; only the scores the NMS reads are exposed."""
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["x", "wo"], ["obj"]),
             helper.make_node("Transpose", ["obj"], ["obj_t"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["obj_t"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "keep", "iou", "floor"], ["picked"]),
             helper.make_node("Gather", ["picked", "two"], ["box_index"], axis=1),
             helper.make_node("Reshape", ["scores", "minus_one"], ["flat_scores"]),
             helper.make_node("Gather", ["flat_scores", "box_index"], ["kept_scores"], axis=0),
             helper.make_node("TopK", ["kept_scores", "k"], ["top", "top_idx"], axis=0),
             helper.make_node("Gather", ["box_index", "top_idx"], ["top_boxes"], axis=0)]
    proto = make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("top", FLOAT, ["K"]), ("top_boxes", INT, ["K"])],
                       opset=13, initializers={
                           "wb": WB, "wo": WO, "k": np.array([1], np.int64), "minus_one": np.array([-1], np.int64),
                           "two": np.array(2, np.int64), "keep": np.array([3], np.int64),
                           "iou": np.array([0.5], np.float32), "floor": np.array([0.0], np.float32)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [
        ("top", KEPT_BY_NMS), ("top_boxes", KEPT_BY_NMS), ("scores", NMS_SCORES)]
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    assert model.verify({"x": x}).passed
