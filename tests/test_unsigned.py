"""uint16/32/64 arithmetic, comparison and order ops, which torch lacks CPU kernels for, against
hand-computed values at the edges (wrap-around, the top bit of uint64) and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import make_model

BIG = np.uint64(2 ** 63 + 1)
TYPES = {np.uint16: TensorProto.UINT16, np.uint32: TensorProto.UINT32, np.uint64: TensorProto.UINT64}


def run_binary(op, a, b, **attrs):
    elem = TYPES[a.dtype.type]
    out_elem = TensorProto.BOOL if op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual") else elem
    model = make_model([helper.make_node(op, ["a", "b"], ["y"], **attrs)],
                       [("a", elem, list(a.shape)), ("b", elem, list(b.shape))], [("y", out_elem, list(a.shape))])
    return onnx_attr.load(model).run({"a": a, "b": b})[0].numpy()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_wrapping_arithmetic_matches_numpy(dtype):
    top = np.iinfo(dtype).max
    a = np.array([top, 0, 7, top - 3], dtype)
    b = np.array([2, 1, 3, top], dtype)
    with np.errstate(over="ignore"):
        for op, expected in (("Add", a + b), ("Sub", a - b), ("Mul", a * b), ("Div", a // b), ("Mod", a % b)):
            if dtype is np.uint64 and op in ("Div", "Mod"):
                continue  # the top bit is set in a: refused below
            got = run_binary(op, a, b)
            assert got.dtype == dtype and np.array_equal(got, expected), op


def test_uint64_order_uses_the_top_bit():
    a = np.array([BIG, 1, 5], np.uint64)
    b = np.array([1, BIG, 5], np.uint64)
    assert run_binary("Greater", a, b).tolist() == [True, False, False]
    assert run_binary("LessOrEqual", a, b).tolist() == [False, True, True]
    assert run_binary("Max", a, b).tolist() == [int(BIG), int(BIG), 5]
    assert run_binary("Min", a, b).tolist() == [1, 1, 5]


def test_uint64_quotient_above_2_63_is_a_clear_error():
    with pytest.raises(onnx_attr.OnnxAttrError, match="2\\^63"):
        run_binary("Div", np.array([BIG], np.uint64), np.array([3], np.uint64))


def test_topk_of_uint64_orders_by_value():
    x = np.array([[3, int(BIG), 0, 9]], np.uint64)
    model = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"])],
                       [("x", TensorProto.UINT64, [1, 4])], [("v", TensorProto.UINT64, [1, 2]), ("i", TensorProto.INT64, [1, 2])],
                       initializers={"k": np.array([2], np.int64)})
    values, indices = onnx_attr.load(model).run(x)
    assert values.numpy().tolist() == [[int(BIG), 9]] and indices.numpy().tolist() == [[1, 3]]
