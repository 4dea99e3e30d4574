"""CumSum against onnxruntime: PyTorch exports it with no attributes, where onnx2torch's converter
read `reverse` as 1 and summed from the other end."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import make_model, ort_run


@pytest.mark.parametrize("attrs", [{}, {"reverse": 1}, {"exclusive": 1}, {"exclusive": 1, "reverse": 1},
                                   {"reverse": 0, "exclusive": 0}])
@pytest.mark.parametrize("dtype, axis", [(np.float32, 1), (np.float32, -1), (np.int64, 0)])
def test_cumsum_matches_onnxruntime(attrs, dtype, axis):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)],
                       [("x", elem, [3, 5])], [("y", elem, [3, 5])], initializers={"axis": np.array(axis, np.int64)},
                       opset=14)
    x = (np.random.default_rng(4).normal(size=(3, 5)) * 10).astype(dtype)
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, ort_run(proto, {"x": x})[0], rtol=1e-6, atol=1e-5)


def test_deeplift_through_a_pytorch_style_cumsum_is_complete_against_onnxruntime():
    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["s"]), helper.make_node("Tanh", ["s"], ["y"])],
                       [("x", TensorProto.FLOAT, [2, 6])], [("y", TensorProto.FLOAT, [2, 6])],
                       initializers={"axis": np.array(1, np.int64)})
    x = (np.random.default_rng(5).normal(size=(2, 6)) * 3).astype(np.float32)
    attr = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(x, target=4)
    expected = ort_run(proto, {"x": x})[0][:, 4]  # f(0) = 0
    np.testing.assert_allclose(np.asarray(attr).sum(1), expected, rtol=1e-5, atol=1e-6)
