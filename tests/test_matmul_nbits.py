"""onnxruntime's weight-only quantization (MatMulNBitsQuantizer: 2, 4 or 8 bits in blocks, small language and
embedding models shipped as "q4"): com.microsoft MatMulNBits, whose weight is dequantized once at import (the
op is then a MatMul by a constant, linear in A); GatherBlockQuantized, written out as a Gather of its table
dequantized at import; and int4 initializers under a blocked DequantizeLinear (opset 21 QDQ).

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


def _lookup_model(table_inits, gather_inputs, attrs, opset=21):
    head = numpy_helper.from_array((RNG.standard_normal((64, 4)) * 0.3).astype(np.float32), "head")
    nodes = [helper.make_node("GatherBlockQuantized", gather_inputs, ["e"], domain="com.microsoft", **attrs),
             helper.make_node("MatMul", ["e", "head"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4])], [*table_inits, head])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 10
    return proto


def _uint4_table(table, block):
    """uint4 values [rows, dim] quantized per block along dim, their scales and (uint4) zero points."""
    rows, dim = table.shape
    per_block = table.reshape(rows, dim // block, block)
    low, high = per_block.min(-1), per_block.max(-1)
    scale = ((high - low) / 15 + 1e-8).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, 15)
    q = np.clip(np.round(per_block / scale[..., None] + zero[..., None]), 0, 15)
    return q.reshape(rows, dim).astype(np.uint8), scale, zero.astype(np.uint8)


@pytest.mark.parametrize("storage", ["uint4", "uint8 packed"])
def test_block_quantized_lookups_are_a_gather_of_the_dequantized_table(storage):
    """GatherBlockQuantized (the weight-only quantizer on a Gather: a 4-bit embedding table in blocks along its
    rows) is written out as a Gather of the table dequantized at import, so token ids are attributed at their
    embedding. Oracle: onnxruntime's kernel on the quantized graph, for the forward and for DeepLift's sum
    (the ids' baseline, id 0, looks up row 0)."""
    from onnx import helper as h

    table = (RNG.standard_normal((50, 64)) * 2).astype(np.float32)
    q, scale, zero = _uint4_table(table, 32)
    if storage == "uint4":
        inits = [h.make_tensor("q", TensorProto.UINT4, q.shape, q.reshape(-1).tolist()),
                 numpy_helper.from_array(scale, "scale"),
                 h.make_tensor("zero", TensorProto.UINT4, zero.shape, zero.reshape(-1).tolist())]
        attrs = {"block_size": 32, "gather_axis": 0, "quantize_axis": 1}
    else:  # two values per byte along the last axis, low bits first; zero points packed alike
        inits = [numpy_helper.from_array(_pack(q, 4), "q"), numpy_helper.from_array(scale, "scale"),
                 numpy_helper.from_array(_pack(zero, 4), "zero")]
        attrs = {"block_size": 32, "gather_axis": 0, "quantize_axis": 1, "bits": 4}
    proto = _lookup_model(inits, ["q", "ids", "scale", "zero"], attrs)
    ids = np.array([[1, 5, 49, 0, 7, 22], [3, 3, 10, 44, 2, 1]], np.int64)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"ids": ids})[0]
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert any("GatherBlockQuantized" in note for note in model.notes)
    np.testing.assert_allclose(model.run({"ids": ids})[0].numpy(), want, rtol=1e-5, atol=1e-6)
    assert model.verify({"ids": ids}).passed
    got = onnx_attr.DeepLift(model).attribute({"ids": ids}, target=(2, 1))["ids"]
    change = want[:, 2, 1] - session.run(None, {"ids": np.zeros_like(ids)})[0][:, 2, 1]
    np.testing.assert_allclose(got.sum(1), change, rtol=1e-4, atol=1e-6)


def test_int4_weights_under_a_blocked_dequantize_linear_import():
    """A QDQ export of 4-bit weights (opset 21: DequantizeLinear of an int4 initializer in blocks of 32 along
    K): the int4 values are stored as int8 of the same values at import. Oracle: onnxruntime."""
    from onnx import helper as h

    w = RNG.integers(-8, 8, size=(96, 16))
    scale = RNG.uniform(0.01, 0.1, size=(3, 16)).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "scale"], ["wf"], axis=0, block_size=32),
             helper.make_node("MatMul", ["a", "wf"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "qdq4", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [h.make_tensor("w", TensorProto.INT4, w.shape, w.reshape(-1).tolist()),
                               numpy_helper.from_array(scale, "scale")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    a = (RNG.standard_normal((3, 96)) * 30).astype(np.float32)
    options = ort.SessionOptions()  # the graph as written: onnxruntime's extended optimizer would fuse it into a
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # MatMulNBits rounding A to 8 bits
    want = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"a": a})[0]
    model = onnx_attr.load(proto)
    np.testing.assert_allclose(model.run({"a": a})[0].numpy(), want, rtol=1e-5, atol=1e-4)
    assert model.verify({"a": a}).passed
