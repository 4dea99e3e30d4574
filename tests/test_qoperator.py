"""DeepLift and the gradient methods on onnxruntime's static quantization in QOperator format: the
integers carried as floats, each kernel written as its steps (onnx_attr/deeplift/qoperator.py).

Oracles: onnxruntime (the rewritten module's forward must equal its output bit for bit, and Σ
attributions its own f(x) - f(x0)), a value computed by hand from the integers, and the float model's
gradient (the straight-through gradient of its quantized twin points the same way)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import ort_run

pytest.importorskip("onnxruntime.quantization")


class _Blocks(torch.nn.Module):
    """Conv + Relu, a residual Add, MaxPool, SiLU (Sigmoid · x), LeakyRelu, AveragePool, Concat, a
    global mean, a self-attention over the pooled positions (two varying MatMuls and a Softmax), Gemm."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.c4 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.Conv2d(16, 16, 1)
        self.q, self.k = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16)
        self.fc = torch.nn.Linear(32, 10)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.nn.functional.max_pool2d(torch.relu(self.c2(a)) + a, 2)
        c = self.c3(b)
        d = c * torch.sigmoid(c)
        e = torch.cat([torch.nn.functional.leaky_relu(self.c4(d), 0.1), torch.nn.functional.avg_pool2d(d, 1)], 1)
        tokens = e.flatten(2).transpose(1, 2)  # [N, 16 positions, 32]
        scores = torch.softmax(self.q(tokens) @ self.k(tokens).transpose(1, 2), -1)
        mixed = scores @ tokens
        return self.fc(mixed.mean(1))


def _quantized(tmp_path, name: str, *, per_channel=False, activation="u8", scale=1.0, pixels=1.0, quant_format=None,
               net=None):
    """`net` (default: the blocks above, head scaled by `scale`) exported and through quantize_static, calibrated
    on six draws of `pixels`' scale: the float file and the quantized one."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    float_path, path = tmp_path / f"{name}_f.onnx", tmp_path / f"{name}.onnx"
    net = _Blocks(scale) if net is None else net
    torch.onnx.export(net.eval(), torch.randn(1, 3, 16, 16), str(float_path), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    draws = iter([{"x": (np.random.default_rng(i).standard_normal((1, 3, 16, 16)) * pixels).astype(np.float32)}
                  for i in range(6)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(draws, None)

    quantize_static(str(float_path), str(path), Reader(), quant_format=quant_format or QuantFormat.QOperator,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return float_path, path


def _plain(module, x):
    with torch.no_grad():
        out = module(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _exact_and_complete(path, pixel_scales=(1.0, 30.0, 1000.0)) -> onnx_attr.DeepLift:
    """The DeepLift rewrite's forward is onnxruntime's bit for bit, and Σ attributions its own change
    f(x) - f(x0) per row, at each pixel scale, from the zero baseline and from one far from the input."""
    model = onnx_attr.load(str(path))
    method = onnx_attr.DeepLift(model)
    for pixels in pixel_scales:
        x = (np.random.default_rng(int(pixels)).standard_normal((2, 3, 16, 16)) * pixels).astype(np.float32)
        expected = ort_run(model.reference_model, {"x": x})[0]
        rewritten = method.engine.rewrite
        for mode in ("off", "reference", "deeplift"):  # every engine mode computes the plain forward
            if mode == "deeplift":  # it needs the references a reference pass records
                rewritten.state.mode = "reference"
                _plain(rewritten.module, torch.from_numpy(x))
            rewritten.state.mode = mode
            np.testing.assert_array_equal(_plain(rewritten.module, torch.from_numpy(x)).numpy(), expected)
        rewritten.state.clear()
        rewritten.state.mode = "off"
        for baseline in (np.zeros_like(x), x[::-1] * -2 + pixels):
            baseline = np.ascontiguousarray(baseline)
            moved = expected - ort_run(model.reference_model, {"x": baseline})[0]
            target = [int(i) for i in np.abs(moved).argmax(1)]
            got = method.attribute(torch.from_numpy(x), baselines=torch.from_numpy(baseline), target=target).numpy()
            for row, t in enumerate(target):
                change = moved[row, t]
                assert change != 0
                assert abs(got[row].sum() - change) <= 2e-5 * abs(change), (pixels, row, got[row].sum(), change)
    return method


@pytest.mark.parametrize("variant", ["u8", "s8_per_channel"])
def test_qoperator_graph_explained_exactly(tmp_path, variant):
    """Every QOperator op onnxruntime's quantizer writes for these blocks (QLinearConv, QLinearAdd,
    QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearAveragePool, QLinearConcat, QLinearMatMul of two
    activations, QLinearSoftmax, QGemm) with MaxPool on the integers: the rewritten module computes
    onnxruntime's output bit for bit, and Σ attributions is onnxruntime's own change, at pixels of 1, 30
    and 1000 (saturating the input's quantizer) and a reference far from the input."""
    _, path = _quantized(tmp_path, variant, per_channel=variant != "u8", activation=variant[:2])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
            "QLinearConcat", "QLinearMatMul", "QLinearSoftmax", "QGemm", "MaxPool"} <= ops
    assert len(_exact_and_complete(path).engine.rewrite.qoperator) >= 15


def test_qdq_model_saved_by_onnxruntimes_optimizer(tmp_path):
    """onnxruntime's optimizer turns a QDQ graph's groups into QLinear kernels; the saved model is one
    in QOperator format, explained the same way."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat

    _, qdq = _quantized(tmp_path, "qdq", quant_format=QuantFormat.QDQ)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    _exact_and_complete(tmp_path / "optimized.onnx", (1.0, 30.0))


def test_logits_in_the_hundreds_stay_complete(tmp_path):
    """Logits of hundreds (a head scaled ×300), pixels unnormalised (0..255): complete to float rounding."""
    _, path = _quantized(tmp_path, "large", scale=300.0, pixels=100.0)
    model = onnx_attr.load(str(path))
    x = np.random.default_rng(5).uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)
    logits = ort_run(model.reference_model, {"x": x})[0]
    assert np.abs(logits).max() > 100
    method = onnx_attr.DeepLift(model)
    moved = logits - ort_run(model.reference_model, {"x": np.zeros_like(x)})[0]
    target = int(np.abs(moved[0]).argmax())
    got = method.attribute(torch.from_numpy(x), target=target).numpy()
    assert abs(got.sum() - moved[0, target]) <= 2e-5 * abs(moved[0, target])


def _graph(nodes, initializers, output_type=TensorProto.FLOAT, output_shape=(1, 1, 1, 1)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 2])],
                              [helper.make_tensor_value_info("y", output_type, list(output_shape))],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _scalar(name, value, dtype):
    return helper.make_tensor(name, dtype, [], [value])


def test_one_qlinear_conv_by_hand(tmp_path):
    """y = requantize((x_q - 128)·3 - (x2_q - 128)·2): the integers by hand, and the staircase split's
    attributions by hand (each term's share of the rounding in proportion to its size)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz", "ys", "z"], ["yq"], kernel_shape=[1, 2]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "z"], ["y"])]
    inits = [_scalar("s", 0.1, TensorProto.FLOAT), _scalar("z", 128, TensorProto.UINT8),
             helper.make_tensor("w", TensorProto.INT8, [1, 1, 1, 2], [3, -2]), _scalar("ws", 1.0, TensorProto.FLOAT),
             _scalar("wz", 0, TensorProto.INT8), _scalar("ys", 0.7, TensorProto.FLOAT)]
    path = tmp_path / "conv.onnx"
    onnx.save(_graph(nodes, inits), str(path))
    model = onnx_attr.load(str(path))
    x = np.array([[[[1.26, 0.53]]]], dtype=np.float32)
    # by hand: x_q - 128 = round(12.6), round(5.3) = 13, 5; acc = 39 - 10 = 29; 29·0.1/0.7 = 4.142..., rounded 4
    assert ort_run(model.reference_model, {"x": x})[0].item() == pytest.approx(4 * 0.7)
    got = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), target=(0, 0, 0)).numpy().ravel()
    # the staircase split: the value before rounding 29/7 moves 29/7 from 0 and its rounding -1/7; the
    # terms w·Δp are 39/7 and -10/7 (S = 49/7), so the rounding's -1/7 goes 39/49 and 10/49 (with signs)
    # and the output's change, 4 steps of 0.7, is 2.8 = Σ
    pre = 29 / 7
    share = (4 - pre) / (49 / 7)
    expected_steps = np.array([39 / 7 + 39 / 7 * share, -10 / 7 + 10 / 7 * share])
    np.testing.assert_allclose(got, expected_steps * 0.7, rtol=1e-5)
    assert got.sum() == pytest.approx(2.8, rel=1e-6)


def test_integer_output_is_refused_saying_why(tmp_path):
    """A graph whose output is the integer tensor itself cannot carry it as floats (its type would
    change): DeepLift refuses by name and says why."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("QLinearSigmoid", ["xq", "s", "z", "s", "z"], ["y"], domain="com.microsoft")]
    path = tmp_path / "int_out.onnx"
    onnx.save(_graph(nodes, [_scalar("s", 0.1, TensorProto.FLOAT), _scalar("z", 128, TensorProto.UINT8)],
                     TensorProto.UINT8, (1, 1, 1, 2)), str(path))
    model = onnx_attr.load(str(path))
    with pytest.raises(Exception, match="QLinearSigmoid.*is an output of the graph"):
        onnx_attr.DeepLift(model).attribute(torch.ones(1, 1, 1, 2), target=(0, 0, 0))


def test_gradient_methods_follow_the_float_models_gradient(tmp_path):
    """The gradient methods pass each rounding straight through: Saliency on the quantized twin points
    where the float model's own gradient does (an oracle computed by torch on the float export)."""
    float_path, path = _quantized(tmp_path, "grad")
    x = (np.random.default_rng(3).standard_normal((1, 3, 16, 16))).astype(np.float32)
    target = int(ort_run(onnx.load(str(float_path)), {"x": x})[0].argmax())
    quantized = onnx_attr.Saliency(onnx_attr.load(str(path))).attribute(torch.from_numpy(x), target=target, abs=False)
    exact = onnx_attr.Saliency(onnx_attr.load(str(float_path))).attribute(torch.from_numpy(x), target=target, abs=False)
    a, b = quantized.ravel().double(), exact.ravel().double()
    assert float(a @ b / (a.norm() * b.norm())) > 0.8


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_integer_resize_is_carried(tmp_path, mode):
    """onnxruntime's quantizer keeps a Resize on the integers (QResize): nearest moves them; linear
    interpolates in float64 and truncates, written as those two steps (the truncation a staircase). A
    segmentation map's pixel is explained exactly, against onnxruntime's forward and its change."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2), torch.nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            y = torch.nn.functional.interpolate(torch.relu(self.a(x)), scale_factor=2, mode=mode,
                                                **({} if mode == "nearest" else {"align_corners": False}))
            return self.b(y)

    torch.manual_seed(0)
    _, path = _quantized(tmp_path, mode, net=Net())
    assert "Resize" in {n.op_type for n in onnx.load(str(path)).graph.node}
    model = onnx_attr.load(str(path))
    method = onnx_attr.DeepLift(model)
    x = (np.random.default_rng(9).standard_normal((1, 3, 16, 16)) * 3).astype(np.float32)
    expected = ort_run(model.reference_model, {"x": x})[0]
    np.testing.assert_array_equal(_plain(method.engine.rewrite.module, torch.from_numpy(x)).numpy(), expected)
    moved = expected - ort_run(model.reference_model, {"x": np.zeros_like(x)})[0]
    pixel = np.unravel_index(np.abs(moved[0]).argmax(), moved[0].shape)
    got = method.attribute(torch.from_numpy(x), target=tuple(int(i) for i in pixel)).numpy()
    assert abs(got.sum() - moved[0][pixel]) <= 2e-5 * abs(moved[0][pixel])


def test_layer_deeplift_on_an_integer_tensor(tmp_path):
    """LayerDeepLift on a tensor the graph holds in integers (MaxPool's uint8 output, which every path
    to the output passes): attributed in the integers' units, complete against onnxruntime's change."""
    _, path = _quantized(tmp_path, "layer")
    proto = onnx.load(str(path))
    layer = next(n.output[0] for n in proto.graph.node if n.op_type == "MaxPool")
    model = onnx_attr.load(str(path))
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    moved = ort_run(model.reference_model, {"x": x})[0] - ort_run(model.reference_model, {"x": np.zeros_like(x)})[0]
    target = int(np.abs(moved[0]).argmax())
    got = onnx_attr.LayerDeepLift(model, layer).attribute(torch.from_numpy(x), target=target)
    assert tuple(got.shape) == (1, 8, 8, 8)
    assert abs(float(got.sum()) - moved[0, target]) <= 2e-5 * abs(moved[0, target])


def test_an_integer_split_is_carried(tmp_path):
    """onnxruntime's quantizer keeps a Split on the integers (QSplit; LeViT's attention splits q, k and v
    so): each output is carried as floats (it had left the whole region refused)."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            left, right = torch.split(self.a(x), [4, 4], dim=1)
            return (self.b(left) * torch.sigmoid(right)).flatten(1)

    torch.manual_seed(0)
    _, path = _quantized(tmp_path, "split", net=Net())
    assert "Split" in {n.op_type for n in onnx.load(str(path)).graph.node}
    _exact_and_complete(path, (1.0, 30.0))
