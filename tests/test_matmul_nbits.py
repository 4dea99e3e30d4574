"""com.microsoft MatMulNBits: onnxruntime's weight-only quantization (MatMulNBitsQuantizer: 2, 4 or 8 bits in
blocks along K, small language and embedding models shipped as "q4"). The weight is dequantized once at
import; the op is then a MatMul by a constant, linear in A.

Oracles: onnxruntime's own kernel on graphs whose packed weights are written here by a packer of the
test's own (not the converter's unpacking), and on the quantizer's output; DeepLift's completeness
against onnxruntime at unnormalised magnitudes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr

RNG = np.random.default_rng(61)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values [..., count] -> uint8 [..., ceil(count·bits/8)], the first value in the lowest bits."""
    per_byte = 8 // bits
    count = values.shape[-1]
    padded = np.zeros((*values.shape[:-1], -(-count // per_byte) * per_byte), np.uint16)
    padded[..., :count] = values
    grouped = padded.reshape(*values.shape[:-1], -1, per_byte)
    return sum(grouped[..., j] << (j * bits) for j in range(per_byte)).astype(np.uint8)


def _quantized(w: np.ndarray, bits: int, block: int, zero: str):
    """W [K, N] quantized per block of K: (packed B [N, blocks, blob], scales [N, blocks], zero points or None,
    the dequantized W the graph stands for)."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    per_block = padded.T.reshape(n, blocks, block)
    top = (1 << bits) - 1
    if zero == "none":  # symmetric: the default zero point 2^(bits-1)
        scale = np.abs(per_block).max(-1) / (1 << (bits - 1)) + 1e-8
        zp = np.full((n, blocks), 1 << (bits - 1), np.float32)
    else:
        low, high = per_block.min(-1), per_block.max(-1)
        scale = (high - low) / top + 1e-8
        zp = np.clip(np.round(-low / scale), 0, top)
    q = np.clip(np.round(per_block / scale[..., None] + zp[..., None]), 0, top).astype(np.uint16)
    dequantized = ((q - zp[..., None]) * scale[..., None]).reshape(n, -1)[:, :k].T
    zero_points = None if zero == "none" else _pack(zp.astype(np.uint16), bits) if zero == "packed" else \
        zp.astype(np.float32)
    return _pack(q, bits), scale.astype(np.float32), zero_points, dequantized.astype(np.float32)


def _model(k, n, bits, block, zero, bias):
    w = (RNG.standard_normal((k, n)) * 0.2).astype(np.float32)
    b, scales, zero_points, dequantized = _quantized(w, bits, block, zero)
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(scales, "scales"),
             numpy_helper.from_array((RNG.standard_normal((n, 3)) * 0.5).astype(np.float32), "head")]
    names = ["a", "b", "scales", "", "", ""]
    if zero_points is not None:
        inits.append(numpy_helper.from_array(zero_points, "zp"))
        names[3] = "zp"
    if bias:
        inits.append(numpy_helper.from_array(RNG.standard_normal(n).astype(np.float32), "bias"))
        names[5] = "bias"
    while not names[-1]:
        names.pop()
    nodes = [helper.make_node("MatMulNBits", names, ["h"], domain="com.microsoft", K=k, N=n, bits=bits,
                              block_size=block),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "head"], ["y"])]
    graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 5, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 3])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    return proto, dequantized


def _ort(proto, a):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]


@pytest.mark.parametrize("bits, block, zero, bias", [(4, 32, "packed", False), (4, 16, "none", True),
                                                     (8, 64, "packed", True), (2, 16, "packed", False),
                                                     (4, 32, "float", True)])
def test_matmul_nbits_computes_what_onnxruntime_computes(bits, block, zero, bias):
    k = 200  # not a multiple of the block: the last block is padded
    proto, dequantized = _model(k, 24, bits, block, zero, bias)
    a = (RNG.standard_normal((2, 5, k)) * 40).astype(np.float32)  # unnormalised activations
    want = _ort(proto, a)
    model = onnx_attr.load(proto)
    got = model.run({"a": a})[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert model.verify({"a": a}).passed
    weight = next(m for m in model.module.modules() if type(m).__name__ == "Projection").weight.numpy()
    np.testing.assert_allclose(weight, dequantized, rtol=1e-6, atol=1e-7)  # the packer's own dequantization
    attributions, delta = onnx_attr.DeepLift(model).attribute(a, target=(4, 1), return_convergence_delta=True)
    change = want[:, 4, 1] - _ort(proto, np.zeros_like(a[:1]))[:, 4, 1]
    np.testing.assert_allclose(attributions.reshape(2, -1).sum(1), change, rtol=1e-4, atol=1e-4 * np.abs(change).max())


def test_the_quantizers_own_output_imports_and_is_complete():
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = RNG.standard_normal((96, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
                              [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    quantizer = MatMulNBitsQuantizer(proto, block_size=32)
    quantizer.process()
    quantized = quantizer.model.model
    assert [n.op_type for n in quantized.graph.node] == ["MatMulNBits", "Tanh"]
    a = (RNG.standard_normal((3, 96)) * 0.3).astype(np.float32)
    model = onnx_attr.load(quantized, strip_final_activation=False)
    assert model.verify({"a": a}).passed
    got, delta = onnx_attr.DeepLift(model).attribute(a, target=7, return_convergence_delta=True)
    change = _ort(quantized, a)[:, 7] - _ort(quantized, np.zeros_like(a[:1]))[:, 7]
    np.testing.assert_allclose(got.sum(1), change, rtol=1e-4, atol=1e-6)
