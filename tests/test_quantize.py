"""QuantizeLinear/DequantizeLinear against onnxruntime: per-tensor, per-axis and blocked scales,
round-half-to-even, saturation at the integer range, and the refusal of 4-bit types by name."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.errors import UnsupportedOpError

RNG = np.random.default_rng(8)


def _q_dq(attrs, scale, zero_point, opset):
    """x -> QuantizeLinear -> q (an output too) -> DequantizeLinear -> y."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)]
    q_type = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    return make_model(nodes, [("x", FLOAT, [4, 6])], [("q", q_type, [4, 6]), ("y", FLOAT, [4, 6])],
                      initializers={"s": scale, "z": zero_point}, opset=opset)


CASES = {
    "per-tensor-uint8-opset10": ({}, np.float32(0.05), np.uint8(128), 10),
    "per-axis-int8-opset13": ({"axis": 0}, np.array([0.1, 0.02, 0.3, 0.05], np.float32),
                              np.array([0, 3, -2, 1], np.int8), 13),
    "per-axis-int16-opset21": ({"axis": -1}, np.linspace(0.001, 0.01, 6).astype(np.float32),
                               np.arange(6).astype(np.int16), 21),
    "blocked-uint8-opset21": ({"axis": 1, "block_size": 4}, np.array([[0.1, 0.2]] * 4, np.float32),
                              np.array([[120, 130]] * 4, np.uint8), 21),
}


@pytest.mark.parametrize("name", CASES)
def test_quantize_dequantize_match_onnxruntime(name):
    attrs, scale, zero_point, opset = CASES[name]
    proto = _q_dq(attrs, np.asarray(scale), np.asarray(zero_point), opset)
    x = (RNG.standard_normal((4, 6)) * 8).astype(np.float32)
    x[0, :3] = [0.025, 0.075, -0.125]  # halfway cases: round half to even
    x[1, 0] = 1e4  # saturates
    expected = ort_run(proto, {"x": x})
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})
    np.testing.assert_array_equal(got[0].numpy(), expected[0])
    np.testing.assert_allclose(got[1].numpy(), expected[1], rtol=1e-6)


def test_four_bit_quantization_is_refused_by_name():
    node = helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")
    proto = make_model([node], [("q", TensorProto.INT4, [4])], [("y", FLOAT, [4])],
                       initializers={"s": np.float32(0.5)}, opset=21)
    with pytest.raises(UnsupportedOpError, match="(?s)dq.*INT4"):
        onnx_attr.load(proto)
