"""Gradient methods on a dynamically quantized model (onnxruntime's `quantize_dynamic`): the
rounding is taken straight through, so the input gradient is the float ops' with the dequantized
weights (methods/straight_through.py). The oracle is written here from the quantized file's own
weights and onnxruntime's intermediate values: the dequantized weights in numpy, the ReLU's mask
from onnxruntime's pre-activation, the map differentiated by torch on plain F.conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from torch.nn import functional as F

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(31)


def _quantized(tmp_path, weight_type):
    """Conv(3->8, 3x3, stride 2, pad 1, bias) -> Relu -> Flatten -> MatMul(128->10), dynamically
    quantized by onnxruntime, with the Conv's output kept as a second output (for the oracle's mask)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = (RNG.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    b = (RNG.standard_normal(8) * 0.1).astype(np.float32)
    fc = (RNG.standard_normal((8 * 4 * 4, 10)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 8, 8])], [("y", FLOAT, [1, 10]), ("c", FLOAT, [1, 8, 4, 4])],
                       initializers={"w": w, "b": b, "fc": fc}, opset=13)
    onnx.save(proto, tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "quantized.onnx", weight_type=getattr(QuantType, weight_type),
                     op_types_to_quantize=["Conv", "MatMul"], reduce_range=weight_type == "QInt8")
    quantized = onnx.load(tmp_path / "quantized.onnx")
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in quantized.graph.node}
    return quantized, b


def _dequantized(proto, name: str) -> np.ndarray:
    """A weight of the quantized file, dequantized by hand: (q - zero point) * scale."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    q, scale, zero = inits[f"{name}_quantized"], inits[f"{name}_scale"], inits[f"{name}_zero_point"]
    if q.ndim == 4 and np.ndim(scale) == 1:  # per output channel
        scale, zero = scale.reshape(-1, 1, 1, 1), zero.reshape(-1, 1, 1, 1)
    return ((q.astype(np.float64) - zero.astype(np.float64)) * scale).astype(np.float32)


def _oracle_gradient(proto, bias, x: np.ndarray, target: int) -> np.ndarray:
    """d y[target] / dx with the rounding passed straight through: F.conv2d with the dequantized
    weights, the ReLU's mask where onnxruntime's quantized Conv output is positive."""
    c = ort_run(proto, {"x": x})[1]
    mask = torch.from_numpy((c > 0).astype(np.float32))
    live = torch.from_numpy(x).requires_grad_(True)
    conv = F.conv2d(live, torch.from_numpy(_dequantized(proto, "w")), torch.from_numpy(bias), stride=2, padding=1)
    y = (conv * mask).flatten(1) @ torch.from_numpy(_dequantized(proto, "fc"))
    (grad,) = torch.autograd.grad(y[0, target], live)
    return grad.numpy()


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_saliency_on_a_dynamically_quantized_model_is_the_straight_through_gradient(tmp_path, weight_type):
    proto, bias = _quantized(tmp_path, weight_type)
    model = onnx_attr.load(tmp_path / "quantized.onnx")
    x = (RNG.random((1, 3, 8, 8)) * 255).astype(np.float32)  # unnormalised pixels
    expected = _oracle_gradient(proto, bias, x, 3)
    got = np.asarray(onnx_attr.Saliency(model).attribute(x, target=3, abs=False))
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_the_view_computes_the_models_forward_bit_for_bit(tmp_path):
    from onnx_attr.methods.straight_through import StraightThroughBlock, straight_through_view

    _quantized(tmp_path, "QUInt8")
    model = onnx_attr.load(tmp_path / "quantized.onnx")
    view = straight_through_view(model)
    assert sum(isinstance(m, StraightThroughBlock) for m in view.module.modules()) == 2
    x = torch.from_numpy((RNG.random((1, 3, 8, 8)) * 255).astype(np.float32))
    live = x.clone().requires_grad_(True)
    for got, expected in zip(view(live), model(x)):
        assert torch.equal(got.detach(), expected)
    assert straight_through_view(model) is view  # found once


def test_integrated_gradients_is_the_straight_through_path_integral(tmp_path):
    """Before, autograd reached the input only through the quantizers' scales (functions of x's two
    extremes): IG put its credit on a few pixels, and missed f(x) - f(x') by much of it from a
    baseline that is not 0. Oracle: the midpoint sum of `_oracle_gradient` along the path."""
    proto, bias = _quantized(tmp_path, "QUInt8")
    model = onnx_attr.load(tmp_path / "quantized.onnx")
    x = (RNG.random((1, 3, 8, 8)) * 255).astype(np.float32)
    x0 = (RNG.random((1, 3, 8, 8)) * 255).astype(np.float32)  # a reference far from the input
    steps = 24
    expected = sum(_oracle_gradient(proto, bias, x0 + (k + 0.5) / steps * (x - x0), 3)
                   for k in range(steps)) / steps * (x - x0)
    ig = onnx_attr.IntegratedGradients(model)
    got, delta = ig.attribute(x, baselines=x0, target=3, n_steps=steps, method="riemann_middle",
                              return_convergence_delta=True)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # what the sum misses is the two ends' rounding: small beside the outputs themselves
    ends = [float(model(torch.from_numpy(v))[0][0, 3]) for v in (x, x0)]
    assert abs(float(delta[0])) < 0.02 * max(map(abs, ends)), (float(delta[0]), ends)


def test_saliency_through_microsofts_dynamic_quantize_matmul_is_the_dequantized_weight():
    """com.microsoft DynamicQuantizeMatMul (one node: x quantized over its range, the 8-bit product,
    the scales, the bias): d y[0, t] / dx is column t of the dequantized weight, computed here in numpy."""
    b = RNG.integers(-127, 128, (16, 6)).astype(np.int8)
    scale, zero = np.float32(0.02), np.int8(0)
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "b", "s", "z", "bias"], ["y"], domain="com.microsoft")
    proto = make_model([node], [("x", FLOAT, [1, 16])], [("y", FLOAT, [1, 6])],
                       initializers={"b": b, "s": scale, "z": zero, "bias": np.arange(6, dtype=np.float32)},
                       opset=13, domains=[("com.microsoft", 1)])
    model = onnx_attr.load(proto)
    x = (RNG.standard_normal((1, 16)) * 50).astype(np.float32)
    assert model.verify(x).passed
    got = np.asarray(onnx_attr.Saliency(model).attribute(x, target=4, abs=False))
    expected = (b[:, 4].astype(np.float64) - zero) * scale
    np.testing.assert_allclose(got[0], expected, rtol=1e-6, atol=1e-7)


def test_saliency_through_a_dynamically_quantized_lstm_is_the_float_lstms_gradient(tmp_path, monkeypatch):
    """com.microsoft DynamicQuantizeLSTM quantizes x and h inside one node: its products pass the
    rounding straight through (QuantizedWeight.exact). Oracle: the gradient of the float model it was
    quantized from (torch's own LSTM), within the 8-bit weights' rounding; before, autograd reached x
    only through the quantizers' scales (correlation 0.007 with it). On an x86 CPU without VNNI the
    import reproduces onnxruntime's int16 pair saturation, which moves the gradient 30% from the float model's at
    these inputs; the straight-through gradient is what is tested, so the exact sum is used here."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from exporting import to_onnx
    from onnx_attr.importing.converters import quantize
    from test_quantized_lstm import TaggerLSTM

    monkeypatch.setattr(quantize, "pairs_saturate", lambda: False)

    net = TaggerLSTM().eval()
    onnx.save(to_onnx(net, torch.randn(1, 9, 12), dynamic_batch=False), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "quantized.onnx", weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM"])
    model = onnx_attr.load(tmp_path / "quantized.onnx")
    x = (RNG.standard_normal((1, 9, 12)) * 3).astype(np.float32)
    got = np.asarray(onnx_attr.Saliency(model).attribute(x, target=(4, 2), abs=False))
    live = torch.from_numpy(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(net(live)[0, 4, 2], live)
    expected = expected.numpy()
    assert np.abs(got - expected).max() < 0.03 * np.abs(expected).max()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.999
