"""Self-gated activations (x·σ(x), x·HardSigmoid(x), x·Clip(x+3, 0, 6)) fused into one rescale
(onnx_attr/deeplift/unary_fusion.py): forward bit for bit, complete, multiplier = the secant."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from conftest import assert_forward_unchanged

OPSET = 17


def _model(gate_nodes, gate_out, *, extra_outputs=(), head=True, swap=False, width=6):
    """x -> (MatMul W ->) h -> Mul(h, g(h)) -> (MatMul V) -> y; logits in the hundreds with `head`."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    if head:
        inits.append(numpy_helper.from_array((rng.standard_normal((8, width)) * 3).astype(np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"))
    else:
        nodes.append(helper.make_node("Identity", ["x"], ["h"], name="id"))
    nodes += gate_nodes
    nodes.append(helper.make_node("Mul", [gate_out, "h"] if swap else ["h", gate_out], ["a"], name="gated"))
    if head:
        inits.append(numpy_helper.from_array((rng.standard_normal((width, 3)) * 40).astype(np.float32), "V"))
        nodes.append(helper.make_node("MatMul", ["a", "V"], ["y"], name="mm2"))
    else:
        nodes.append(helper.make_node("Identity", ["a"], ["y"], name="out"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8 if head else width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3 if head else width])
    outs = [y] + [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", width]) for n in extra_outputs]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


SILU = ([helper.make_node("Sigmoid", ["h"], ["s"], name="sig")], "s")
HARD_SIGMOID = ([helper.make_node("HardSigmoid", ["h"], ["s"], name="hsig", alpha=1 / 6, beta=0.5)], "s")
HARD_SWISH_WRITTEN = ([  # PaddlePaddle's export: x·Clip(x + 3, 0, 6), the /6 after the Mul
    helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.array(3, np.float32))),
    helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
    helper.make_node("Constant", [], ["six"], value=numpy_helper.from_array(np.array(6, np.float32))),
    helper.make_node("Add", ["h", "three"], ["p"], name="add3"),
    helper.make_node("Clip", ["p", "zero", "six"], ["s"], name="relu6"),
], "s")
GATES = {"silu": SILU, "hard_sigmoid": HARD_SIGMOID, "hard_swish_written": HARD_SWISH_WRITTEN}


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("gate", sorted(GATES))
def test_fused_forward_is_bit_for_bit_and_complete(gate, swap):
    model = _model(*GATES[gate], swap=swap)
    imported = onnx_attr.load(model)
    dl = onnx_attr.DeepLift(imported)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 8)) * 2).astype(np.float32)
    x0 = (rng.standard_normal((1, 8)) * 2 - 3).astype(np.float32)  # far from the inputs
    attributions, delta = dl.attribute(x, x0, target=1, return_convergence_delta=True)
    rewrite = dl.engine.rewrite
    assert len(rewrite.self_gated) == 1 and "SelfGated" in {op for _, op, _ in rewrite.rewritten}
    assert "Mul" not in {op for _, op, _ in rewrite.rewritten}
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    y0 = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x0})[0]
    assert np.abs(y[:, 1] - y0[:, 1]).max() > 100  # logits in the hundreds
    total = attributions.reshape(4, -1).sum(1)
    np.testing.assert_allclose(total, y[:, 1] - y0[:, 1], rtol=1e-4, atol=1e-4 * np.abs(y[:, 1]).max())
    assert dl.last_report["max_relative_delta"] <= 1e-4
    plain = assert_forward_unchanged(imported, dl, x, x0)  # the forward, in every mode, bit for bit
    np.testing.assert_allclose(plain.numpy(), y, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("gate", sorted(GATES))
def test_the_fused_multiplier_is_the_secant_of_the_composite(gate):
    model = _model(*GATES[gate], head=False)
    dl = onnx_attr.DeepLift(onnx_attr.load(model, strip_final_activation=False), multiply_by_inputs=False)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((3, 6)) * 4).astype(np.float32)
    x0 = (rng.standard_normal((1, 6)) * 4).astype(np.float32)
    if gate == "silu":
        f = lambda t: t / (1 + np.exp(-t))  # noqa: E731
    elif gate == "hard_sigmoid":
        f = lambda t: t * np.clip(t / 6 + 0.5, 0, 1)  # noqa: E731
    else:
        f = lambda t: t * np.clip(t + 3, 0, 6)  # noqa: E731
    wide, wide0 = x.astype(np.float64), x0.astype(np.float64)
    secant = (f(wide) - f(wide0)) / (wide - wide0)  # by hand, in float64
    for j in range(6):
        (m,) = [dl.attribute(x, x0, target=[(j,)] * 3)]
        assert len(dl.engine.rewrite.self_gated) == 1
        np.testing.assert_allclose(np.asarray(m)[:, j], secant[:, j], rtol=2e-4, atol=1e-6)
        others = np.delete(np.asarray(m), j, axis=1)
        assert not others.any()


def test_a_gate_used_elsewhere_is_not_fused():
    """σ(h) also an output: the Mul is a product of two tensors, not a function of h alone."""
    model = _model(*SILU, extra_outputs=("s",))
    dl = onnx_attr.DeepLift(onnx_attr.load(model))
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 8))).astype(np.float32)
    _, delta = dl.attribute(x, np.zeros((1, 8), np.float32), target=0, return_convergence_delta=True)
    assert dl.engine.rewrite.self_gated == []
    assert {"Sigmoid", "Mul"} <= {op for _, op, _ in dl.engine.rewrite.rewritten}
    assert dl.last_report["max_relative_delta"] <= 1e-4


def test_a_gate_with_a_per_channel_constant_is_not_fused():
    """x·σ(x + b) with b per channel is still elementwise, but a constant with more than one element
    could broadcast x to a larger shape: only scalar constants are folded."""
    b = numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "b")
    nodes = [helper.make_node("Add", ["h", "b"], ["p"], name="bias"), helper.make_node("Sigmoid", ["p"], ["s"])]
    model = _model(nodes, "s")
    model.graph.initializer.append(b)
    dl = onnx_attr.DeepLift(onnx_attr.load(model))
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    dl.attribute(x, np.zeros((1, 8), np.float32), target=0)
    assert dl.engine.rewrite.self_gated == []
    assert dl.last_report["max_relative_delta"] <= 1e-4


def test_revealcancel_takes_the_fused_nonlinearity_with_its_weighted_op():
    model = _model(*SILU)
    dl = onnx_attr.DeepLift(onnx_attr.load(model), rule="revealcancel")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 8)) * 2).astype(np.float32)
    dl.attribute(x, (rng.standard_normal((1, 8)) - 2).astype(np.float32), target=2)
    rewrite = dl.engine.rewrite
    assert len(rewrite.self_gated) == 1 and len(rewrite.reveal_cancel) == 1
    assert dl.last_report["max_relative_delta"] <= 1e-4
