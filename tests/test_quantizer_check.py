"""verify on a statically quantized (QDQ) graph checks each quantizer fed onnxruntime's own values:
an import error of half a percent in one convolution, which later quantizers round away before the
output (its max abs error is 0), fails there by name; a correct import passes with a few rounding
flips. The oracle is onnxruntime's value of every quantized tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_attr
from onnx_attr.importing.quantizer_check import MAX_FLIPPED

from test_quantize import _calibration


@pytest.fixture(scope="module")
def qdq_net(tmp_path_factory):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    layers, channels = [], 3
    for width in (16, 16, 24, 24, 32, 32):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU()]
        channels = width
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(channels, 10)).eval()
    folder = tmp_path_factory.mktemp("qdq")
    torch.onnx.export(net, torch.randn(1, 3, 32, 32), str(folder / "f.onnx"), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    draws = [{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(4)]
    quantize_static(str(folder / "f.onnx"), str(folder / "q.onnx"), _calibration(draws), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return str(folder / "q.onnx")


X = np.random.default_rng(9).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _with_error(path: str, conv: int, factor: float):
    """The import with one convolution's output scaled by `factor`: an import error we plant."""
    model = onnx_attr.load(path)
    module = [m for _, m in model.module.named_modules() if type(m).__name__ == "Conv"][conv]
    forward = module.forward
    module.forward = lambda *args, **kwargs: forward(*args, **kwargs) * factor
    return model


def test_a_correct_import_passes_with_rounding_flips_only(qdq_net):
    report = onnx_attr.load(qdq_net).verify({"x": X})
    checked = report.quantizers
    assert report.passed and checked.passed and checked.quantizers == 10  # the input's and each activation's
    assert checked.max_steps <= 1 and checked.flipped <= MAX_FLIPPED * checked.elements
    assert "rounding flips" in report.format()


@pytest.mark.parametrize("conv, factor, quantizer", [(1, 1.01, "/3/Relu_output_0_QuantizeLinear_Output"),
                                                      (2, 1.005, "/5/Relu_output_0_QuantizeLinear_Output")])
def test_an_error_the_outputs_round_away_fails_at_its_quantizer(qdq_net, conv, factor, quantizer):
    report = _with_error(qdq_net, conv, factor).verify({"x": X})
    assert report.outputs[0].max_abs == 0.0 and report.outputs[0].passed  # the output alone shows nothing
    assert not report.passed and report.quantizers.worst == quantizer
    assert "an import error there, not rounding" in report.format() and report.divergence is None


@pytest.fixture(scope="module")
def dynamic_net(qdq_net):
    """The same convolutions through quantize_dynamic: DynamicQuantizeLinear -> ConvInteger per layer."""
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(qdq_net).parent
    quantize_dynamic(str(folder / "f.onnx"), str(folder / "d.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["Conv"])
    return str(folder / "d.onnx")


def test_a_dynamically_quantized_import_passes_and_an_error_fails_at_the_next_quantizers_scale(dynamic_net):
    """A dynamic quantizer sets its scale from its input's range: an error that scales a whole conv
    output leaves its integers as they were, and shows in the scale."""
    report = onnx_attr.load(dynamic_net).verify({"x": X})
    assert report.passed and report.quantizers.quantizers == 6 and report.quantizers.max_steps <= 1
    model = onnx_attr.load(dynamic_net)
    conv = [m for _, m in model.module.named_modules() if type(m).__name__ == "IntegerConv"][2]
    forward = conv.forward
    conv.forward = lambda *args: (forward(*args).double() * 1.01).round().to(torch.int32)
    report = model.verify({"x": X})
    assert not report.passed and "its scale" in report.quantizers.worst_detail


class _StackedLSTM(torch.nn.Module):
    """A d-vector-like embedder: a projection, two stacked LSTMs over 60 frames, a projection."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(20, 24)
        self.lstm = torch.nn.LSTM(24, 32, num_layers=2, batch_first=True)
        self.out = torch.nn.Linear(32, 16)

    def forward(self, x):
        y, _ = self.lstm(self.inp(x))
        return self.out(y[:, -1])


@pytest.fixture(scope="module")
def lstm_net(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from exporting import to_onnx

    folder = tmp_path_factory.mktemp("qlstm_check")
    import onnx
    onnx.save(to_onnx(_StackedLSTM().eval(), torch.randn(1, 60, 20), dynamic_batch=False), folder / "f.onnx")
    quantize_dynamic(folder / "f.onnx", folder / "d.onnx", weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM", "MatMul", "Gemm"])
    return str(folder / "d.onnx")


def test_a_quantizer_after_a_quantized_lstm_is_left_to_the_outputs(lstm_net):
    """DynamicQuantizeLSTM requantizes its state at every step, out of onnxruntime's sight: the
    quantizer after it is not fed onnxruntime's values alone, and ulps there compound into steps
    (voicefilter's d-vector: 5). The one before it still is, and a 1% error in the product between
    them still fails verify."""
    import onnx

    from onnx_attr.importing.quantizer_check import after_hidden_quantizers

    proto = onnx.load(lstm_net)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DynamicQuantizeLinear") == 2 and "DynamicQuantizeLSTM" in ops
    first, last = (n.output[0] for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear")
    lstm = next(n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM")
    tainted = after_hidden_quantizers(proto.graph, {first, last})
    assert lstm.output[0] in tainted and first not in tainted and last not in tainted
    x = (np.random.default_rng(0).standard_normal((1, 60, 20)) * 4).astype(np.float32)
    report = onnx_attr.load(lstm_net).verify({"x": x})
    assert report.passed, report.format()
    assert (report.quantizers.quantizers, report.quantizers.after_hidden) == (1, 1)
    assert "left to the outputs' check" in report.format()
    model = onnx_attr.load(lstm_net)
    matmul = next(m for _, m in model.module.named_modules() if type(m).__name__ == "MatMulInteger")
    forward = matmul.forward
    matmul.forward = lambda *args: (forward(*args).double() * 1.01).round().to(torch.int32)
    report = model.verify({"x": x})
    assert not report.passed
