"""TopK under DeepLift: a selection, linear while it picks the same elements at the input and at the
reference (its step guard checks each call), refused by name where it picks others; and the CLI's
default falling back per call where a size follows the input's values.

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


def test_a_selection_that_moves_is_refused_by_name():
    """Against x0 = (0, 5, 0, 0) the top two are other elements: the jump has no multiplier."""
    model = onnx_attr.load(_top2())
    with pytest.raises(onnx_attr.UnsupportedOpError, match="TopK"):
        onnx_attr.DeepLift(model).attribute(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), torch.tensor([[0.0, 5.0, 0.0, 0.0]]),
                                            target=0, output=0)


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
