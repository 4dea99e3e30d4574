"""An If whose condition is a score against a threshold (openWakeWord's verifier stage: `if p1 >= 0.5
then verifier(x) else p1`), explained by DeepLift through both branches and the comparison.

Oracle: the attributions written out by hand in float64 numpy (the chain rule of DeepLift's rescale
through each Sigmoid, the Shapley split of the select), and onnxruntime's f(x) - f(x0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(2412)
W1 = RNG.standard_normal((4, 1)).astype(np.float32)
W2 = RNG.standard_normal((4, 1)).astype(np.float32)


def gated_model(condition: str = "GreaterOrEqual"):
    """p1 = sigmoid(x·W1); y = sigmoid(x·W2) if p1 >= 0.5 else p1 (the condition written two ways)."""
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["z2"]),
                              helper.make_node("Sigmoid", ["z2"], ["p2"])], "then", [],
                             [helper.make_tensor_value_info("p2", FLOAT, [1, 1])])
    other = helper.make_graph([helper.make_node("Identity", ["p1"], ["kept"])], "else", [],
                              [helper.make_tensor_value_info("kept", FLOAT, [1, 1])])
    if condition == "GreaterOrEqual":
        test = [helper.make_node("GreaterOrEqual", ["p1", "half"], ["c"]),
                helper.make_node("Cast", ["c"], ["cond"], to=TensorProto.BOOL)]
    else:  # not (p1 < 0.5), reshaped to a scalar on the way
        test = [helper.make_node("Less", ["p1", "half"], ["below"]),
                helper.make_node("Not", ["below"], ["c"]),
                helper.make_node("Reshape", ["c", "scalar"], ["cond"])]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["z1"]), helper.make_node("Sigmoid", ["z1"], ["p1"]), *test,
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="verifier")]
    return make_model(nodes, [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 1])], opset=13,
                      initializers={"w1": W1, "w2": W2, "half": np.array(0.5, np.float32),
                                    "scalar": np.zeros(0, np.int64)})


def hand_attributions(x, x0):
    """DeepLift by hand: rescale through each Sigmoid, the select's Shapley split, in float64."""
    x, x0 = x.astype(np.float64)[0], x0.astype(np.float64)[0]
    w1, w2 = W1.astype(np.float64)[:, 0], W2.astype(np.float64)[:, 0]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    z1, z10, z2, z20 = x @ w1, x0 @ w1, x @ w2, x0 @ w2
    p1, p10, p2, p20 = sig(z1), sig(z10), sig(z2), sig(z20)
    m1, m2 = (p1 - p10) / (z1 - z10), (p2 - p20) / (z2 - z20)  # each Sigmoid's rescale multiplier
    s, s0 = float(p1 >= 0.5), float(p10 >= 0.5)
    if s == s0:
        return (m2 * w2 if s else m1 * w1) * (x - x0)
    jump = ((p2 + p20) / 2 - (p1 + p10) / 2) * (s - s0)  # (Ā - B̄)·Δs, carried by d = p1 - 0.5
    on_p1 = 0.5 + jump / (p1 - p10)  # the else branch's half, plus the jump
    return (on_p1 * m1 * w1 + 0.5 * m2 * w2) * (x - x0)


def _point(side: float, scale: float) -> np.ndarray:
    """A point whose first score z1 = x·W1 has the sign of `side`, at this magnitude."""
    x = RNG.standard_normal((1, 4))
    z = (x @ W1).item()
    x = x + (side * (0.5 + abs(z)) - z) * W1.T / (W1.T @ W1).item()  # along W1 onto the wanted side
    return (scale * x).astype(np.float32)


@pytest.mark.parametrize("condition", ["GreaterOrEqual", "Less+Not"])
@pytest.mark.parametrize("sides", [(1, -1), (-1, 1), (1, 1), (-1, -1)])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_the_verifier_if_is_explained_through_both_branches(condition, sides, scale):
    proto = gated_model(condition)
    model = onnx_attr.load(proto, strip_final_activation=False)
    x, x0 = _point(sides[0], scale), _point(sides[1], scale)
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(x, baselines=x0, return_convergence_delta=True)
    change = ort_run(proto, {"x": x})[0] - ort_run(proto, {"x": x0})[0]
    expected = hand_attributions(x, x0)
    np.testing.assert_allclose(np.asarray(attributions)[0], expected, rtol=2e-4, atol=1e-6)  # outputs are probabilities
    np.testing.assert_allclose(np.asarray(attributions).sum(), change.item(), rtol=1e-4, atol=1e-7)
    assert abs(float(delta[0])) <= 1e-4 * max(abs(change.item()), 1e-3)
    assert any("both branches" in note for note in dl.engine.model.notes)


def test_the_select_forward_is_the_if_forward_bit_for_bit():
    proto = gated_model()
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    for side in (1, -1):
        x = torch.from_numpy(_point(side, 3.0))
        dl.attribute(x)
        with torch.no_grad():
            assert torch.equal(dl.engine.model(x), model(x))  # the If's own module, its taken branch


def test_branches_of_different_shapes_crossed_are_refused_by_name():
    then = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, None)])
    other = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other, name="shape_switch"),
             helper.make_node("ReduceSum", ["y"], ["out"], keepdims=1)]
    proto = make_model(nodes, [("x", FLOAT, [1, 3])], [("out", FLOAT, [1, 1])],
                       initializers={"zero": np.array(0, np.float32)}, opset=13)
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    same = dl.attribute(np.ones((1, 3), np.float32), baselines=np.full((1, 3), 0.5, np.float32))
    assert np.isfinite(np.asarray(same)).all()  # one side: the taken branch alone
    with pytest.raises(onnx_attr.OnnxAttrError, match="shape_switch.*different shapes"):
        dl.attribute(np.ones((1, 3), np.float32), baselines=-np.ones((1, 3), np.float32))
