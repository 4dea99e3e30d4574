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


@pytest.mark.parametrize("attrs", [{}, {"reverse": 1}, {"exclusive": 1, "reverse": 1}])
def test_a_long_float32_running_sum_is_onnxruntimes_bit_for_bit(attrs):
    """A vocoder's phase accumulator: 100,000 steps of about 0.05 on axis 1 of two rows. torch's CPU
    cumsum adds float32 in double and ended 0.034 away from onnxruntime's float32 additions."""
    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["y"], **attrs)],
                       [("x", TensorProto.FLOAT, [2, 100000])], [("y", TensorProto.FLOAT, [2, 100000])],
                       initializers={"axis": np.array(1, np.int64)}, opset=14)
    x = (np.random.default_rng(0).random((2, 100000)) * 0.1).astype(np.float32)
    expected = ort_run(proto, {"x": x})[0]
    import torch

    in_double = torch.from_numpy(x.astype(np.float64)).cumsum(1).float().numpy()
    assert not attrs and np.abs(in_double - expected).max() > 1e-3 or attrs  # the gap this closes
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_array_equal(got, expected)


def test_the_sequential_running_sum_has_torchs_gradient_and_traces_for_export():
    import torch

    from onnx_attr.importing.converters.reduce import CumSum

    x = torch.randn(3, 7, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(2))
    for exclusive, reverse in ((False, False), (True, True)):
        module = CumSum(exclusive, reverse)
        (grad,) = torch.autograd.grad((module(x, torch.tensor(1)) * weights).sum(), x)
        flipped = x.flip(1) if reverse else x
        plain = flipped.cumsum(1)
        if exclusive:
            plain = torch.cat([torch.zeros_like(plain[:, :1]), plain[:, :-1]], 1)
        plain = plain.flip(1) if reverse else plain
        (expected,) = torch.autograd.grad((plain * weights).sum(), x)
        torch.testing.assert_close(grad, expected)
    from onnx_attr.app.export import export_program

    proto = make_model([helper.make_node("CumSum", ["x", "axis"], ["y"])], [("x", TensorProto.FLOAT, [3, 7])],
                       [("y", TensorProto.FLOAT, [3, 7])], initializers={"axis": np.array(1, np.int64)}, opset=14)
    program, _ = export_program(onnx_attr.load(proto, strip_final_activation=False))
    value = torch.randn(3, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(program.module()(value), value.cumsum(1))
