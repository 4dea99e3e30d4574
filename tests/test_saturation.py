"""The reference's int8 weights in uint8 where onnxruntime's u8 x s8 products saturate (AVX2 without
VNNI): the same integers, which its uint8 kernels compute exactly on every CPU. Oracles: values by
hand, a float64 convolution, and onnxruntime on the model as written where this CPU does not saturate."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from onnx_attr.importing import saturation
from onnx_attr.importing.saturation import unsaturated

from conftest import FLOAT, make_model

RNG = np.random.default_rng(7)
CPU_SATURATES = saturation.saturates  # the probe itself, before any test stands in for it


def _run(proto, feeds):
    """onnxruntime on the graph as written (its optimizer would turn a DequantizeLinear weight and
    its MatMul into a product that rounds the activations too)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def saturating(monkeypatch):
    """Every CPU treated as one that saturates, so the re-expression runs here too."""
    monkeypatch.setattr(saturation, "saturates", lambda: True)


def _matmul_integer(a_type=TensorProto.UINT8):
    b = np.array([[127], [127], [-128], [-128]], np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b", "", "bz"], ["y"])
    return make_model([node], [("a", a_type, [1, 4])], [("y", TensorProto.INT32, [1, 1])],
                      initializers={"b": b, "bz": np.int8(-3)}, opset=13)


def test_pairs_that_saturate_in_int16_come_out_exact(saturating):
    proto = _matmul_integer()
    a = np.array([[255, 255, 0, 0]], np.uint8)
    fixed, changed = unsaturated(proto)
    assert changed == 1 and fixed is not proto
    assert _run(fixed, {"a": a})[0].item() == 2 * 255 * (127 + 3)  # 66300 by hand; saturated: 32767
    b = np.array([[255, 0, 255, 255]], np.uint8)
    assert _run(fixed, {"a": b})[0].item() == 255 * 130 + 2 * 255 * (-128 + 3)
    if CPU_SATURATES():  # this CPU saturates: the file as written is off
        assert _run(proto, {"a": a})[0].item() != 66300


def test_integer_convolution_matches_a_float64_one(saturating):
    w = RNG.integers(-128, 128, (6, 5, 3, 3)).astype(np.int8)
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])
    proto = make_model([node], [("x", TensorProto.UINT8, [2, 5, 7, 7])], [("y", TensorProto.INT32, [2, 6, 7, 7])],
                       initializers={"w": w, "xz": np.uint8(17), "wz": np.int8(4)}, opset=13)
    x = RNG.integers(180, 256, (2, 5, 7, 7)).astype(np.uint8)  # large activations: the pairs that saturate
    exact = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64) - 17),
                                       torch.from_numpy(w.astype(np.float64) - 4), padding=1).numpy()
    np.testing.assert_array_equal(_run(unsaturated(proto)[0], {"x": x})[0], exact)


def test_a_qdq_weight_dequantizes_to_the_same_floats(saturating):
    w = RNG.integers(-128, 128, (4, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=1),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [2, 4])], [("y", FLOAT, [2, 3])], opset=13,
                       initializers={"w": w, "ws": np.array([0.1, 0.02, 0.5], np.float32),
                                     "wz": np.array([0, -5, 9], np.int8)})
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    fixed, changed = unsaturated(proto)
    assert changed == 1
    assert {t.name: t.data_type for t in fixed.graph.initializer}["w__as_uint8"] == TensorProto.UINT8
    np.testing.assert_array_equal(_run(fixed, {"x": x})[0], _run(proto, {"x": x})[0])


def test_a_per_axis_weight_without_zero_point_gets_one_per_axis(saturating):
    """A missing zero point is 0; per axis, onnxruntime wants it 1-D like the scale."""
    w = RNG.integers(-128, 128, (4, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"], axis=1),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [2, 4])], [("y", FLOAT, [2, 3])], opset=13,
                       initializers={"w": w, "ws": np.array([0.1, 0.02, 0.5], np.float32)})
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    by_hand = x.astype(np.float64) @ (w * np.array([0.1, 0.02, 0.5], np.float32)).astype(np.float64)
    np.testing.assert_allclose(_run(unsaturated(proto)[0], {"x": x})[0], by_hand, rtol=1e-5)


def test_int8_activations_and_computed_weights_are_left_alone(saturating):
    proto = _matmul_integer(TensorProto.INT8)  # int8 x int8: onnxruntime's exact path
    assert unsaturated(proto) == (proto, 0)


def test_the_import_says_when_it_changed_the_reference(saturating):
    model = onnx_attr.load(_matmul_integer())
    assert any("saturates uint8 x int8" in note for note in model.notes)
    a = RNG.integers(0, 256, (3, 4)).astype(np.uint8)
    assert model.verify({"a": a}).passed
