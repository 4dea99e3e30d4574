"""TopK under DeepLift: its values by the cross-max rule per pick (a plain selection where the input
and the reference pick the same element), its indices a step, refused by name where they pick
others and the explained output reads them; and the CLI's default falling back per call where a
size follows the input's values.

Oracles: hand-computed selections; onnxruntime's outputs for completeness; FeatureAblation's values
recomputed by hand for the CLI's fallback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.app.cli import main


def _top2():
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)]
    return make_model(nodes, [("x", FLOAT, ["n", 4])], [("values", FLOAT, ["n", 2]), ("indices", TensorProto.INT64, ["n", 2])],
                      {"k": np.array([2], np.int64)}, opset=17)


def test_a_selection_that_keeps_its_elements_is_a_gather():
    """x = (3, 1, 2, 0) against x0 = (2, 0, 1, -1): both pick elements 0 and 2, so the first value's
    change 3 - 2 = 1 is element 0's, the second's 2 - 1 = 1 element 2's."""
    model = onnx_attr.load(_top2())
    x, x0 = torch.tensor([[3.0, 1.0, 2.0, 0.0]]), torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    dl = onnx_attr.DeepLift(model)
    np.testing.assert_array_equal(dl.attribute(x, x0, target=0, output=0).numpy(), [[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(dl.attribute(x, x0, target=1, output=0).numpy(), [[0.0, 0.0, 1.0, 0.0]])


def test_values_of_a_selection_that_moves_take_the_cross_max_rule():
    """Against x0 = (0, 5, 0, 0) the top value is another element's: y = 3 (element 0), y0 = 5
    (element 1). With c = max(y, y0) = 5, element 0 gets c - y0 = 0 and element 1 gets y - c = -2
    (its own fall is 1 - 5 = -4): attributions (0, -2, 0, 0), summing to 3 - 5. By hand."""
    model = onnx_attr.load(_top2())
    x, x0 = torch.tensor([[3.0, 1.0, 2.0, 0.0]]), torch.tensor([[0.0, 5.0, 0.0, 0.0]])
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=0, output=0, return_convergence_delta=True)
    np.testing.assert_allclose(got.numpy(), [[0.0, -2.0, 0.0, 0.0]], atol=1e-6)
    assert abs(float(delta[0])) < 1e-6


def test_a_later_picks_credit_on_an_element_that_did_not_move_is_spread_along_the_row():
    """x = (5, 3, 1) against x0 = (0, 3, 2): the second value is element 1's at x (3) and element 2's
    at x0 (2). With c = max(3, 2) = 3, element 1 gets 3 - 2 = 1, but it did not move (Δx = 0): that
    credit goes along the row's Δx = (5, 0, -1), 1 · Δx / |Δx|² each, so the sum is still 3 - 2 = 1."""
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)]
    proto = make_model(nodes, [("x", FLOAT, ["n", 3])], [("values", FLOAT, ["n", 2])], {"k": np.array([2], np.int64)},
                       opset=17)
    model = onnx_attr.load(proto)
    x, x0 = torch.tensor([[5.0, 3.0, 1.0]]), torch.tensor([[0.0, 3.0, 2.0]])
    got = onnx_attr.DeepLift(model).attribute(x, x0, target=1).numpy()
    dx = np.array([5.0, 0.0, -1.0])
    np.testing.assert_allclose(got[0], 1.0 * dx * dx / (dx @ dx), atol=1e-6)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-6)


@pytest.mark.parametrize("largest", [1, 0])
def test_the_top_value_is_attributed_as_reduce_max_is(largest):
    """TopK with K = 1 is ReduceMax (ReduceMin for the smallest): the two graphs' DeepLift agree
    element for element, at logits in the hundreds against a zero and a far reference, and both sum
    to onnxruntime's change."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((6, 10)) * 3).astype(np.float32)
    weights = {"w": w, "k": np.array([1], np.int64), "two": np.array(2, np.float32)}

    def graph(op):
        pick = helper.make_node("TopK", ["z", "k"], ["v", "i"], axis=1, largest=largest) if op == "TopK" else \
            helper.make_node("ReduceMax" if largest else "ReduceMin", ["z"], ["v"], axes=[1], keepdims=1)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), pick, helper.make_node("Mul", ["v", "two"], ["y"])]
        return make_model(nodes, [("x", FLOAT, ["n", 6])], [("y", FLOAT, ["n", 1])], weights, opset=11)

    x = (rng.standard_normal((4, 6)) * 30).astype(np.float32)
    for reference in (np.zeros((1, 6), np.float32), (rng.standard_normal((1, 6)) * 30).astype(np.float32)):
        ours, theirs = (onnx_attr.DeepLift(onnx_attr.load(graph(op))).attribute(x, reference, target=0, output="y")
                        for op in ("TopK", "ReduceMax"))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
        change = ort_run(graph("TopK"), {"x": x})[0][:, 0] - ort_run(graph("TopK"), {"x": reference})[0][:, 0]
        np.testing.assert_allclose(np.asarray(ours).sum(1), change, rtol=1e-5, atol=1e-3)


def test_indices_of_a_selection_that_moves_are_refused_by_name():
    """The indices pick rows of other data (a decoder's next-token embedding): where the pick differs
    at the reference, the row the output holds jumps, and no multiplier carries a jump."""
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1),
             helper.make_node("Gather", ["table", "indices"], ["rows"]),
             helper.make_node("Mul", ["rows", "values_3"], ["y"]),
             helper.make_node("Unsqueeze", ["values", "two"], ["values_3"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 1, 3])],
                       {"k": np.array([1], np.int64), "table": table, "two": np.array([2], np.int64)}, opset=17)
    model = onnx_attr.load(proto)
    x = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    with pytest.raises(onnx_attr.UnsupportedOpError, match="TopK"):
        onnx_attr.DeepLift(model).attribute(x, torch.tensor([[0.0, 5.0, 0.0, 0.0]]), target=(0, 1))
    got, delta = onnx_attr.DeepLift(model).attribute(x, x / 2, target=(0, 1), return_convergence_delta=True)
    change = ort_run(proto, {"x": x.numpy()})[0][0, 0, 1] - ort_run(proto, {"x": x.numpy() / 2})[0][0, 0, 1]
    np.testing.assert_allclose(got.numpy().sum(), change, rtol=1e-5)  # the same pick: complete


def test_a_detector_head_picking_its_top_anchors_is_complete():
    """Scores [n, 50] -> TopK 5 -> the chosen anchors' boxes (Gather of a box head computed from the
    same features): with a baseline of the input at half scale the same anchors win, and Σ attributions
    is the chosen box coordinate's change, onnxruntime's outputs as the oracle."""
    rng = np.random.default_rng(0)
    w_score, w_box = rng.standard_normal((8, 50)).astype(np.float32), rng.standard_normal((8, 200)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "ws"], ["scores"]), helper.make_node("TopK", ["scores", "k"], ["top", "anchor"], axis=1),
             helper.make_node("MatMul", ["x", "wb"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"], ["boxes"]),
             helper.make_node("GatherElements", ["boxes", "index"], ["chosen"], axis=1),
             helper.make_node("Unsqueeze", ["anchor", "last"], ["a3"]), helper.make_node("Expand", ["a3", "four"], ["index"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 8])], [("chosen", FLOAT, ["n", 5, 4]), ("top", FLOAT, ["n", 5])],
                       {"ws": w_score, "wb": w_box, "k": np.array([5], np.int64), "shape": np.array([0, 50, 4], np.int64),
                        "last": np.array([2], np.int64), "four": np.array([1, 1, 4], np.int64)}, opset=17)
    model = onnx_attr.load(proto, strip_final_activation=False)
    x = (rng.standard_normal((3, 8)) * 50).astype(np.float32)
    assert model.verify(x).passed
    for output, target in ((0, (0, 1)), (1, (2,))):
        got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), torch.from_numpy(x / 2), target=target,
                                                         output=output, return_convergence_delta=True)
        change = ort_run(proto, {"x": x})[output][(slice(None), *target)] - \
            ort_run(proto, {"x": x / 2})[output][(slice(None), *target)]
        np.testing.assert_allclose(got.numpy().sum(1), change, rtol=1e-5, atol=1e-3)


def test_the_cli_falls_back_per_call_where_a_size_follows_the_values(tmp_path, capsys):
    """The sum of the elements above 0.5 (NonZero, Gather, Relu): at a zero baseline none are, so the
    reference pass has no element to pair with the input's. The CLI's default runs FeatureAblation
    for that input (stderr and report.json say so) and exits 0; each element's ablation to 0 is its
    own value where it is above 0.5, by hand."""
    nodes = [helper.make_node("Greater", ["x", "half"], ["above"]), helper.make_node("NonZero", ["above"], ["where"]),
             helper.make_node("Transpose", ["where"], ["pairs"]), helper.make_node("GatherND", ["x", "pairs"], ["kept"]),
             helper.make_node("Relu", ["kept"], ["r"]), helper.make_node("ReduceSum", ["r"], ["total"], keepdims=1)]
    proto = make_model(nodes, [("x", FLOAT, [1, 6])], [("total", FLOAT, [1])], {"half": np.float32(0.5)}, opset=13)
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    x = np.array([[0.9, 0.1, 0.7, 0.4, 2.0, 0.0]], np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    with pytest.raises(onnx_attr.errors.ValueShapedError, match="size there follows the input's values"):
        onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(torch.from_numpy(x))
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures"]) == 0
    assert "FeatureAblation runs instead" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "method_fallback" in report["manifest"]["options"]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attributions.npz")["x"], np.where(x > 0.5, x, 0), rtol=1e-6)


def test_a_selection_among_candidates_a_threshold_kept_takes_the_plain_pick():
    """table_obj_det_q's PicoDet picks its top boxes among those a threshold kept: at a zero
    reference none are, so the reference's scores have another shape and no pick pairs with another.
    There the values are the plain selection (a gather, as before TopK had a rule), not a refusal:
    the top positive value's change, by onnxruntime."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Compress", ["x", "positive"], ["kept"]),
             helper.make_node("Concat", ["kept", "floor"], ["candidates"], axis=0),
             helper.make_node("TopK", ["candidates", "k"], ["top", "where"], axis=0),
             helper.make_node("Mul", ["top", "three"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 6])], [("y", FLOAT, [1])],
                       {"zero": np.float32(0), "floor": np.zeros(2, np.float32), "k": np.array([1], np.int64),
                        "three": np.float32(3)}, opset=17)  # the reference's candidates: [0, 0], the input's: 6
    model = onnx_attr.load(proto)
    x = np.array([[-40.0, 120.0, 3.0, -7.0, 250.0, 0.5]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), torch.zeros(1, 6), output="y",
                                                     return_convergence_delta=True)
    change = ort_run(proto, {"x": x})[0][0] - ort_run(proto, {"x": np.zeros((1, 6), np.float32)})[0][0]
    np.testing.assert_allclose(got.numpy(), [[0, 0, 0, 0, 750.0, 0]], atol=1e-4)
    np.testing.assert_allclose(got.numpy().sum(), change, rtol=1e-6)
