"""An output of labels only (ArgMax of scores, the greedy decode a CRNN export ends in) has no
gradient: the scores it reads become an output, attributed by default, checked against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run
from onnx_attr.app.cli import main

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((6, 5)) * 4).astype(np.float32)


def crnn_like(softmax: bool = False) -> onnx.ModelProto:
    """x [N, 7, 6] -> 100·tanh(x @ W) scores [N, 7, 5] (-> Softmax) -> ArgMax -> Cast: int32 labels [N, 7]."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["scores"])]
    last = "scores"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
        last = "probs"
    nodes += [helper.make_node("ArgMax", [last], ["ids"], axis=-1, keepdims=0),
              helper.make_node("Cast", ["ids"], ["labels"], to=onnx.TensorProto.INT32)]
    return make_model(nodes, [("x", FLOAT, ["N", 7, 6])], [("labels", onnx.TensorProto.INT32, ["N", 7])],
                      {"w": W, "k": np.array(100.0, np.float32)}, opset=13)


@pytest.mark.parametrize("softmax", [False, True])
def test_labels_output_gains_its_scores_which_are_attributed_by_default(softmax):
    graph = crnn_like(softmax)
    model = onnx_attr.load(graph)
    names = [o.name for o in model.outputs]
    assert names[0] == "labels" and names[1] == ("probs" if softmax else "scores")
    assert any("ArgMax" in note for note in model.notes)
    x = (RNG.standard_normal((2, 7, 6)) * 3).astype(np.float32)
    labels, scores = model.run(x)
    np.testing.assert_array_equal(np.asarray(labels), ort_run(graph, {"x": x})[0])  # the labels unchanged
    logits = np.tanh(x.astype(np.float64) @ W) * 100  # the softmax, if any, stripped: the logits by hand
    np.testing.assert_allclose(np.asarray(scores), logits, rtol=1e-4, atol=1e-3)
    assert model.verify({"x": x}).passed
    # the default output is the scores; step 3 of example 1, its predicted class: complete at logits ~100
    dl = onnx_attr.DeepLift(model)
    target = [(3, int(row[3].argmax())) for row in logits]
    attr = np.asarray(dl.attribute(x, target=target, return_convergence_delta=True)[0], np.float64)
    assert dl.last_report["output"] == names[1]
    change = [logits[i, 3, c] for i, (_, c) in enumerate(target)]  # the zero baseline scores 0
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), change, rtol=1e-5)
    assert not np.delete(attr, 3, axis=1).any()  # only that step's input reaches it


def test_cli_default_run_on_a_labels_output_explains_the_greedy_path(tmp_path):
    path = tmp_path / "crnn.onnx"
    onnx.save(crnn_like(), path)
    x = (RNG.standard_normal((1, 7, 6)) * 3).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["output"] == "scores"
    logits = np.tanh(x.astype(np.float64) @ W) * 100
    greedy = logits[0].max(-1).sum()  # the greedy path's summed score, by hand; baseline 0 scores 0
    with np.load(tmp_path / "out" / "attributions.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(data["x"].astype(np.float64).sum(), greedy, rtol=1e-5)


def test_an_argmax_of_a_graph_input_is_left_alone():
    """Nothing is computed before the ArgMax: the file's outputs stay as they are (ONNX's node suite)."""
    nodes = [helper.make_node("ArgMax", ["x"], ["ids"], axis=1, keepdims=0)]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 6])], [("ids", INT64, ["N"])]))
    assert [o.name for o in model.outputs] == ["ids"]


def test_an_integer_output_not_made_by_argmax_is_left_alone():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Cast", ["h"], ["n"], to=INT64)]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 6])], [("n", INT64, ["N", 5])], {"w": W}))
    assert [o.name for o in model.outputs] == ["n"]


def test_the_scores_an_argmax_labels_from_come_before_a_floating_side_output():
    """trueocr's recogniser returns labels (ArgMax of the step scores) and a float confidence per step (the
    max softmax probability, [N, T]). Explaining that confidence as classes [N, C] picks the most confident
    step, which means nothing; the scores the labels are read from are the default, as the note says."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["scores"]), helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("ReduceMax", ["p"], ["conf"], axes=[-1], keepdims=0),
             helper.make_node("ArgMax", ["scores"], ["ids"], axis=-1, keepdims=0),
             helper.make_node("Cast", ["ids"], ["labels"], to=onnx.TensorProto.INT32)]
    proto = make_model(nodes, [("x", FLOAT, ["N", 7, 6])], [("labels", onnx.TensorProto.INT32, ["N", 7]),
                                                            ("conf", FLOAT, ["N", 7])],
                       initializers={"w": W, "k": np.float32(100.0)}, opset=13)
    model = onnx_attr.load(proto)
    dl = onnx_attr.DeepLift(model)
    x = RNG.standard_normal((2, 7, 6)).astype(np.float32)
    dl.attribute(x, target=(3, 1))
    assert dl.last_report["output"] == "scores"


TAILS = {  # what exporters put after the ArgMax of labels-only outputs (hunt 20: text2tashkeel's gated tagger)
    "offset": ([helper.make_node("Add", ["ids", "one"], ["labels"])], INT64),
    "lookup": ([helper.make_node("Gather", ["table", "ids"], ["labels"])], INT64),
    "blank": ([helper.make_node("Equal", ["ids", "zero"], ["blank"]),
               helper.make_node("Where", ["blank", "minus_one", "ids"], ["labels"])], INT64),
    "float": ([helper.make_node("Cast", ["ids"], ["labels"], to=onnx.TensorProto.FLOAT)], FLOAT),
    "gated": ([helper.make_node("ArgMax", ["gate"], ["g"], axis=-1, keepdims=0),
               helper.make_node("Equal", ["g", "zero"], ["bare"]),
               helper.make_node("Where", ["bare", "zero", "ids"], ["labels"])], INT64),
}


@pytest.mark.parametrize("tail", list(TAILS))
def test_labels_passed_on_past_their_argmax_still_gain_their_scores(tail, tmp_path):
    """Labels offset by one, looked up in a table, blanked where a mask (or a gate's own ArgMax) says,
    or cast to float: before, only reshapes and integer casts led back to the ArgMax, so the CLI
    explained the labels themselves, as class scores, with FeatureAblation. Oracle: the scores by hand
    (x @ W, no bias: 0 at the zero baseline) at each step's argmax, summed (the greedy path)."""
    nodes, kind = TAILS[tail]
    weights = {"w": W, "one": np.array(1, np.int64), "table": np.arange(10, 60, 10, dtype=np.int64),
               "zero": np.array(0, np.int64), "minus_one": np.array(-1, np.int64),
               "wg": (RNG.standard_normal((6, 2)) * 4).astype(np.float32)}
    graph = make_model([helper.make_node("MatMul", ["x", "w"], ["scores"]), helper.make_node("MatMul", ["x", "wg"], ["gate"]),
                        helper.make_node("ArgMax", ["scores"], ["ids"], axis=-1, keepdims=0), *nodes],
                       [("x", FLOAT, ["N", 7, 6])], [("labels", kind, ["N", 7])], weights, opset=13)
    onnx.save(graph, tmp_path / "m.onnx")
    x = (RNG.standard_normal((2, 7, 6)) * 3).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "-q", "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "DeepLift" and report["output"] == "scores" and report["target"] == "greedy"
    scores = x @ W
    want = np.take_along_axis(scores, scores.argmax(-1)[..., None], -1).sum((1, 2))
    got = np.load(tmp_path / "out" / "attributions.npz")["x"].sum((1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_a_softmax_read_by_the_argmax_and_another_node_has_its_logits_explained(tmp_path):
    """A CTC head exported with its decode: ids = ArgMax(p) beside confidences = ReduceMax(p), p = Softmax(x W)
    (hunt 32). The Softmax stays for the ReduceMax, so exposing p attributed probabilities, while the same
    head with the ArgMax alone gets its Softmax stripped. The logits are exposed instead (the ArgMax picks
    the same from them): the greedy path over them, complete against onnxruntime's logits."""
    rng = np.random.default_rng(81)
    w = rng.normal(size=(8, 5)).astype(np.float32) * 3
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("ArgMax", ["p"], ["ids"], axis=-1, keepdims=0),
             helper.make_node("ReduceMax", ["p"], ["probs"], axes=[-1], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, ["N", 12, 8])], [("ids", INT64, ["N", 12]), ("probs", FLOAT, ["N", 12])],
                       initializers={"w": w}, opset=17)
    model = onnx_attr.load(proto)
    assert model.outputs[-1].name == "logits" and any("'logits'" in note for note in model.notes)
    path = tmp_path / "ctc.onnx"
    path.write_bytes(proto.SerializeToString())
    x = (rng.normal(size=(2, 12, 8)) * 4).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"), "-q",
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["output"] == "logits" and report["target"] == "greedy"
    logits, logits0 = x.astype(np.float64) @ w, np.zeros((1, 12, 5))
    picked = np.eye(5)[logits.argmax(2)]
    found = np.load(tmp_path / "o" / "attributions.npz")["x"].reshape(2, -1).sum(1)
    np.testing.assert_allclose(found, (picked * (logits - logits0)).reshape(2, -1).sum(1), rtol=1e-4)


def test_two_label_maps_combined_gain_both_scores():
    """kelp-o-matic (hunt 37): output = presence ArgMax x species ArgMax, an int64 label map with no
    gradient; the look-through stopped at the Mul and the default run fell back to FeatureAblation. Both
    ArgMaxes' scores are now outputs, the first explained by default. Oracles: the scores by hand, the
    labels against onnxruntime, and DeepLift's completeness against the scores by hand."""
    w2 = (RNG.standard_normal((6, 3)) * 2).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("ArgMax", ["a"], ["la"], axis=-1, keepdims=0),
             helper.make_node("ArgMax", ["b"], ["lb"], axis=-1, keepdims=0),
             helper.make_node("Mul", ["la", "lb"], ["labels"])]
    graph = make_model(nodes, [("x", FLOAT, ["N", 7, 6])], [("labels", INT64, ["N", 7])], {"w": W, "w2": w2},
                       opset=13)
    model = onnx_attr.load(graph)
    assert [o.name for o in model.outputs] == ["labels", "a", "b"]
    x = (RNG.standard_normal((2, 7, 6)) * 3).astype(np.float32)
    labels, a, b = model.run(x)
    np.testing.assert_array_equal(np.asarray(labels), ort_run(graph, {"x": x})[0])
    np.testing.assert_allclose(np.asarray(b), x.astype(np.float64) @ w2, rtol=1e-5, atol=1e-4)
    dl = onnx_attr.DeepLift(model)
    found, delta = dl.attribute(x, target=[(0, 1), (6, 4)], return_convergence_delta=True)
    assert dl.last_report["output"] == "a"
    expected = (x.astype(np.float64) @ W)[[0, 1], [0, 6], [1, 4]]  # linear: f(0) = 0
    np.testing.assert_allclose(found.astype(np.float64).sum(axis=(1, 2)), expected, rtol=1e-5, atol=1e-4)
