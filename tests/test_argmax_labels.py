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
