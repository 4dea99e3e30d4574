"""Step functions of attributed values: Sign, Floor, Ceil and Round get the rescale rule (their secant
is their exact jump), and a comparison that flips between the input and the reference is named when
it breaks completeness, never left as a silent delta (tf2onnx's Atan2 is built from Sign and casts;
a ReLU may be exported as Where(x > 0, x, 0))."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr

from conftest import FLOAT, make_model


def _steps_model():
    """y[n] = Σ_i 5·sign(x_i) + floor(x_i) + ceil(2·x_i) + round(x_i / 3): elementwise steps, summed."""
    nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Mul", ["s", "five"], ["s5"]),
             helper.make_node("Floor", ["x"], ["f"]), helper.make_node("Mul", ["x", "two"], ["x2"]),
             helper.make_node("Ceil", ["x2"], ["c"]), helper.make_node("Div", ["x", "three"], ["x3"]),
             helper.make_node("Round", ["x3"], ["r"]), helper.make_node("Sum", ["s5", "f", "c", "r"], ["t"]),
             helper.make_node("ReduceSum", ["t", "axes"], ["y"], keepdims=1)]
    consts = {"five": np.float32(5), "two": np.float32(2), "three": np.float32(3), "axes": np.array([1], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["n", 6])], [("y", FLOAT, ["n", 1])], consts, opset=13)


def _by_hand(x, x0):
    def steps(v):
        v = v.astype(np.float64)
        return 5 * np.sign(v) + np.floor(v) + np.ceil(2 * v) + np.round(v / 3)
    return steps(x) - steps(x0)


def test_sign_floor_ceil_round_are_attributed_their_exact_jumps():
    """Each element's attribution is its own jump, by hand; across signs and at magnitudes in the
    hundreds, with references far from the inputs, and one element at its reference (no jump)."""
    model = onnx_attr.load(_steps_model())
    x = np.array([[-250.3, 0.7, 3.2, -0.4, 120.5, 7.0], [1.49, -1.51, 300.2, -299.9, 0.0, 2.5]], np.float32)
    x0 = np.array([[180.1, -0.6, 3.2, 0.4, -77.7, 7.5]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=0, return_convergence_delta=True)
    np.testing.assert_allclose(np.asarray(got), _by_hand(x, x0), rtol=1e-5, atol=1e-4)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-3


def _relu_as_where(threshold: str = "zero", banded: bool = False):
    """max(x, 0) written as Where(Greater(x, 0), x, 0), then a weighted sum; with threshold "t", x is
    compared with a second input t (one comparison of two inputs: no elementwise function of x alone).
    `banded`: the condition is And(x > t, x < 100)."""
    nodes = [helper.make_node("Greater", ["x", threshold], ["pos" if not banded else "above"], name="is_positive"),
             helper.make_node("Where", ["pos", "x", "zero"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    if banded:
        nodes[1:1] = [helper.make_node("Less", ["x", "hundred"], ["below"]),
                      helper.make_node("And", ["above", "below"], ["pos"])]
    w = np.array([[1.0, -2.0], [0.5, 1.0], [3.0, 0.25]], np.float32)
    inputs = [("x", FLOAT, ["n", 3])] + ([("t", FLOAT, ["n", 3])] if threshold == "t" else [])
    return make_model(nodes, inputs, [("y", FLOAT, ["n", 2])], {"zero": np.float32(0), "w": w,
                                                                "hundred": np.float32(100)}, opset=13)


@pytest.mark.parametrize("banded", [False, True])
def test_a_comparison_of_two_inputs_selecting_is_complete_where_it_flips(banded):
    """Where(Greater(x, t), x, 0) with t a second input, and with the band And(x > t, x < 100): the
    comparisons, the logic and the Where are one StepSelect (select_fusion.py). With t at its reference,
    x's attribution is each element's own change of the function times its weight, by hand, where x and
    x0 sit on either side of 0 (and of 100)."""
    model = onnx_attr.load(_relu_as_where("t", banded))
    t = np.zeros((1, 3), np.float32)
    x, x0 = np.array([[2.0, 3.0, 4.0], [150.0, -7.0, 99.0]], np.float32), np.array([[-1.0, 0.5, 120.0]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute((x, t.repeat(2, 0)), (x0, t), target=0,
                                                     return_convergence_delta=True)
    f = (lambda v: np.where((v > 0) & (v < 100), v, 0)) if banded else (lambda v: np.maximum(v, 0))
    w0 = np.array([1.0, 0.5, 3.0])
    np.testing.assert_allclose(np.asarray(got[0]), (f(x) - f(x0)) * w0, rtol=1e-6)
    assert not np.asarray(got[1]).any() and float(np.abs(np.asarray(delta)).max()) < 1e-4


def test_a_threshold_of_two_inputs_cast_to_a_float_is_complete_where_it_flips():
    """(x + 1)·Cast(x > t): the Cast of the comparison is Where(x > t, 1, 0), one StepSelect; x's
    attribution is each element's own change, by hand."""
    nodes = [helper.make_node("Greater", ["x", "t"], ["pos"]), helper.make_node("Cast", ["pos"], ["on"], to=FLOAT),
             helper.make_node("Add", ["x", "one"], ["x1"]), helper.make_node("Mul", ["x1", "on"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    w = np.array([[1.0], [0.5], [3.0]], np.float32)
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3]), ("t", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 1])],
                                      {"one": np.float32(1), "w": w}, opset=13))
    x = np.array([[2.0, -300.0, 4.5], [-1.0, 250.0, 0.0]], np.float32)
    x0, t = np.array([[-2.0, 120.0, 4.0]], np.float32), np.zeros((1, 3), np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute((x, t.repeat(2, 0)), (x0, t), target=0,
                                                     return_convergence_delta=True)
    f = lambda v: (v + 1) * (v > 0)  # noqa: E731
    np.testing.assert_allclose(np.asarray(got[0]), (f(x) - f(x0)) * w[:, 0], rtol=1e-6)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-4


def _peak_model():
    """y = (x + c)[argmax(x - t)] · w: an ArgMax picking the value (swift-f0's pitch decode)."""
    nodes = [helper.make_node("Sub", ["x", "t"], ["s"]),
             helper.make_node("ArgMax", ["s"], ["peak"], axis=1, keepdims=1, name="is_positive"),
             helper.make_node("Add", ["x", "c"], ["xc"]), helper.make_node("GatherElements", ["xc", "peak"], ["r"], axis=1),
             helper.make_node("Mul", ["r", "w"], ["y"])]
    return make_model(nodes, [("x", FLOAT, ["n", 3]), ("t", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 2])],
                      {"c": np.array([[0.0, 10.0, 20.0]], np.float32), "w": np.array([[1.0, -2.0]], np.float32)},
                      opset=13)


def _picked(x, t=0.0):
    """The peak model's first output, by hand."""
    x = np.asarray(x, np.float64)
    return (x + [0.0, 10.0, 20.0])[np.arange(len(x)), np.argmax(x - t, axis=1)]


def test_a_comparison_that_flips_is_named_when_it_breaks_completeness():
    model = onnx_attr.load(_peak_model())
    t = np.zeros((1, 3), np.float32)
    same_side = np.array([[2.0, 3.0, 4.0]], np.float32), np.array([[1.0, 0.5, 9.0]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute((same_side[0], t), (same_side[1], t), target=0,
                                                     return_convergence_delta=True)
    np.testing.assert_allclose(np.asarray(got[0]), [[0.0, 0.0, -5.0]], rtol=1e-6)  # the pick's own change
    assert abs(float(delta[0])) < 1e-5
    flipped = (np.array([[2.0, 3.0, 4.0]], np.float32), t), (np.array([[9.0, 0.5, 1.0]], np.float32), t)
    with pytest.raises(onnx_attr.UnsupportedOpError, match="(?s)is_positive.*perturbation method"):
        onnx_attr.DeepLift(model).attribute(*flipped, target=0)
    method = onnx_attr.DeepLift(model, gradient_fallback=True)  # opted in: a warning in the report instead
    method.attribute(*flipped, target=0)
    assert any("is_positive" in w for w in method.last_report["warnings"])


def test_a_piecewise_function_of_one_input_is_complete_where_its_branch_flips():
    """Where(Greater(x, 0), x, 0) is max(x, 0), one elementwise function of x: fused into one rescale
    (unary_fusion.fuse_piecewise), complete where input and reference sit on either side of 0, with each
    element's own change as its attribution (by hand)."""
    model = onnx_attr.load(_relu_as_where())
    x = np.array([[2.0, 3.0, -4.0], [150.0, -0.0, 7.5]], np.float32)
    x0 = np.array([[-1.0, 0.5, 9.0]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=0, return_convergence_delta=True)
    w0 = np.array([1.0, 0.5, 3.0])
    np.testing.assert_allclose(np.asarray(got), (np.maximum(x, 0) - np.maximum(x0, 0)) * w0, rtol=1e-6)
    assert np.abs(np.asarray(delta)).max() < 1e-5


def test_a_flip_the_target_does_not_depend_on_stands():
    """A detector's peak mask (x == max-pooled x) flips at many elements between an image and a zero
    baseline; the target's own element keeps its value, so DeepLift is complete there and no error."""
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Equal", ["x", "m"], ["peak"], name="peaks"),
             helper.make_node("Cast", ["peak"], ["pf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "pf"], ["y"])]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 1, 6, 6])], [("y", FLOAT, ["n", 1, 6, 6])],
                                      opset=13))
    x = np.random.default_rng(0).random((1, 1, 6, 6)).astype(np.float32) * 100
    top = np.unravel_index(int(np.argmax(x)), x.shape)
    got, delta = onnx_attr.DeepLift(model).attribute(x, np.zeros_like(x), target=tuple(top[1:]),
                                                     return_convergence_delta=True)
    assert abs(float(delta[0])) < 1e-4 * float(x.max())
    assert np.asarray(got)[top] == pytest.approx(float(x[top]), rel=1e-5)


def test_the_cli_default_falls_back_per_call_where_deeplift_refuses_a_flip(tmp_path, capsys):
    """swift-f0's pitch decode flips an ArgMax between the audio and a zero baseline: DeepLift refuses that call.
    The CLI's default method then runs FeatureAblation for that input (said on stderr and in the manifest), and a
    resumed run keeps the result; a method the user names is never replaced."""
    import json

    import onnx

    from onnx_attr.app.cli import main

    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(_peak_model(), path)
    x = np.array([[2.0, -3.0, 4.0], [1.0, 5.0, -0.5]], np.float32)  # at zeros the first element is the peak
    np.savez(inputs, x=x, t=np.zeros_like(x))
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--target", "0"]) == 0
    assert "FeatureAblation runs instead" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["manifest"]["method"] == "featureablation" and "method_fallback" in report["manifest"]["options"]
    found = np.load(out / "attributions.npz")["x"]
    dropped = [_picked(np.where(np.arange(3) == i, 0, x)) for i in range(3)]
    np.testing.assert_allclose(found, np.stack([_picked(x) - d for d in dropped], 1), rtol=1e-6)  # each feature to 0
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--target", "0", "--resume"]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "o2"), "--target", "0",
                 "--method", "deeplift"]) == 2


def test_a_logistic_written_out_stays_complete_where_its_exp_overflows():
    """skl2onnx's SGDClassifier: 1 / (1 + Exp(-score)) per class. At scores of -100 and below, Exp(-score) is
    inf in float32 and each op's own secant times the next one's is inf · 0 = NaN; the chain (Mul, Exp, Add,
    Reciprocal) is one elementwise function, fused into one rescale that stays finite."""
    w = np.array([[40.0, -60.0], [-30.0, 20.0], [25.0, 35.0]], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["score"]), helper.make_node("Mul", ["score", "negate"], ["neg"]),
             helper.make_node("Exp", ["neg"], ["e"]), helper.make_node("Add", ["e", "one"], ["d"]),
             helper.make_node("Reciprocal", ["d"], ["p"], name="proba")]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("p", FLOAT, ["n", 2])],
                                      {"w": w, "negate": np.float32(-1), "one": np.float32(1)}, opset=13),
                           strip_final_activation=False)
    x = np.array([[4.0, -1.0, 0.5], [-3.0, 2.0, 1.0], [0.1, 0.2, -0.1]], np.float32)  # scores from -280 to 230
    dl = onnx_attr.DeepLift(model)
    for target in (0, 1):
        got, delta = dl.attribute(x, target=target, return_convergence_delta=True)
        assert np.all(np.isfinite(np.asarray(got)))
        y, y0 = 1 / (1 + np.exp(-(x.astype(np.float64) @ w[:, target]))), 0.5
        np.testing.assert_allclose(np.asarray(got).sum(1), y - y0, rtol=1e-5, atol=1e-6)
    assert dl.last_report["rewritten_nodes"] == 1  # one fused chain
    import torch

    plain, fused = model.module(torch.from_numpy(x)), dl.engine.rewrite.module(torch.from_numpy(x))
    assert torch.equal(plain, fused)  # the same modules in the same order: the forward bit for bit


def test_a_static_quantizer_pair_is_no_link_of_a_fused_chain():
    """smart-turn (int8 QDQ): a quantize/dequantize pair between elementwise nonlinearities. Its forward
    rounds through integers, so it cannot sit inside a fused chain's rescale, which differentiates the chain
    where x ≈ x0 (that had raised a raw autograd error): the chain stops at the pair."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Exp", ["s"], ["e"]),
             helper.make_node("QuantizeLinear", ["e", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
             helper.make_node("Tanh", ["dq"], ["t"]), helper.make_node("Log", ["t"], ["y"])]
    consts = {"scale": np.float32(0.01), "zero": np.uint8(0)}
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 4])], consts, opset=13),
                           strip_final_activation=False)
    x = np.array([[0.5, -2.0, 3.0, 1.0]], np.float32)
    x0 = np.array([[0.5, 1.0, -1.0, 1.0]], np.float32)  # two elements at their reference: the derivative there
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=(0,), return_convergence_delta=True)
    assert np.all(np.isfinite(np.asarray(got))) and abs(float(delta[0])) < 1e-4


def _thresholds_model():
    """y = Cast(Greater(x, 0.5)) @ w + Cast(LessOrEqual(x, -2)) @ u + x @ v: votes and a linear part,
    the votes written as scikit-learn's one-against-rest SVC scores are (Cast(Less(s, 0)))."""
    nodes = [helper.make_node("Greater", ["x", "half"], ["up"], name="vote_up"),
             helper.make_node("Cast", ["up"], ["upf"], to=TensorProto.FLOAT),
             helper.make_node("LessOrEqual", ["x", "minus_two"], ["down"], name="vote_down"),
             helper.make_node("Cast", ["down"], ["downf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["upf", "w"], ["a"]), helper.make_node("MatMul", ["downf", "u"], ["b"]),
             helper.make_node("MatMul", ["x", "v"], ["c"]), helper.make_node("Sum", ["a", "b", "c"], ["y"])]
    consts = {"half": np.float32(0.5), "minus_two": np.float32(-2), "w": np.array([[3.0], [-1.0], [2.0]], np.float32),
              "u": np.array([[-4.0], [0.5], [1.0]], np.float32), "v": np.array([[0.1], [0.2], [-0.3]], np.float32)}
    return make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 1])], consts, opset=13)


def test_a_threshold_cast_to_float_is_a_step_attributed_its_exact_jump():
    """Cast(Greater(x, c)) is the step H(x − c): one rescale over the pair carries each element's jump,
    by hand, where a bare comparison flipping between input and reference would be refused. At
    magnitudes in the hundreds, a reference far away, one element at its reference, and one flip by
    a hair (x = 0.5 + 1 ulp-ish against 0.5)."""
    model = onnx_attr.load(_thresholds_model())
    x = np.array([[250.0, -300.0, 0.50001], [-2.0, 0.7, 0.1]], np.float32)
    x0 = np.array([[-120.0, 5.0, 0.5]], np.float32)
    method = onnx_attr.DeepLift(model)
    got, delta = method.attribute(x, x0, return_convergence_delta=True)
    assert len(method.engine.rewrite.steps_fused) == 2
    h = lambda v: (v > 0.5) * np.array([3.0, -1.0, 2.0]) + (v <= -2) * np.array([-4.0, 0.5, 1.0])  # noqa: E731
    expected = h(x.astype(np.float64)) - h(x0.astype(np.float64)) + (x - x0) * np.array([0.1, 0.2, -0.3])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-4


def test_what_a_fused_step_feeds_gets_its_rules():
    """Sigmoid(4·Cast(Greater(x, 0)) − 2): the Sigmoid after the step varies with x only through it,
    and needs its rescale (left plain, its gradient would break completeness where the step flips)."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["up"]),
             helper.make_node("Cast", ["up"], ["upf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["upf", "four"], ["jump"]), helper.make_node("Sub", ["jump", "two"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["s"]), helper.make_node("ReduceSum", ["s", "axes"], ["y"])]
    consts = {"zero": np.float32(0), "four": np.float32(4), "two": np.float32(2), "axes": np.array([1], np.int64)}
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 1])], consts, opset=13),
                           strip_final_activation=False)
    x = np.array([[1.5, -2.0, 0.2, 3.0]], np.float32)
    x0 = np.array([[-1.0, 1.0, -0.3, 2.0]], np.float32)
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, return_convergence_delta=True)
    z = lambda v: 4.0 * (v > 0) - 2  # noqa: E731
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = sig(z(x.astype(np.float64))) - sig(z(x0.astype(np.float64)))  # elementwise: each its own change
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(delta[0])) < 1e-6
