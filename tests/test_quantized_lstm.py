"""com.microsoft DynamicQuantizeLSTM, as onnxruntime's quantize_dynamic writes it from a PyTorch
LSTM: the import matches onnxruntime, and DeepLift through the quantized products is complete
(rules/quantized.py: the float multipliers plus the rounding residual credited back)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import onnx_attr
from exporting import to_onnx


class TaggerLSTM(nn.Module):
    """A captcha-OCR-like head: bidirectional LSTM over time, a linear layer to logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(12, 16, bidirectional=True, batch_first=True), nn.Linear(32, 5)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y) * 20.0  # logits in the tens to hundreds, as OCR heads give


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("qlstm")
    onnx.save(to_onnx(TaggerLSTM().eval(), torch.randn(1, 9, 12), dynamic_batch=False), folder / "float.onnx")
    quantize_dynamic(folder / "float.onnx", folder / "quantized.onnx", weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM"])
    proto = onnx.load(folder / "quantized.onnx")
    assert "DynamicQuantizeLSTM" in {n.op_type for n in proto.graph.node}
    return proto


def test_dynamic_quantize_lstm_matches_onnxruntime(quantized):
    from conftest import ort_run

    rng = np.random.default_rng(3)
    model = onnx_attr.load(quantized, strip_final_activation=False)
    for scale in (0.5, 3.0, 40.0):
        x = (rng.standard_normal((1, 9, 12)) * scale).astype(np.float32)
        got, want = model.run({"x": x})[0].numpy(), ort_run(quantized, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert model.verify(x).passed


@pytest.mark.parametrize("attrs", [dict(input_forget=1), dict(clip=0.6),
                                   dict(activations=["HardSigmoid", "Tanh", "Softsign"] * 2, activation_alpha=[0.3, 0.3])],
                         ids=["input_forget", "clip", "activations"])
def test_dynamic_quantize_lstm_attributes_match_onnxruntime(quantized, attrs):
    """The float LSTM's attributes on the quantized one (onnxruntime runs both through one LSTM code)."""
    from onnx import helper

    from conftest import ort_run

    proto = onnx.ModelProto()
    proto.CopyFrom(quantized)
    node = next(n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM")
    kept = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in attrs.items()])
    x = (np.random.default_rng(4).standard_normal((1, 9, 12)) * 3).astype(np.float32)
    got, want = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0]
    plain = ort_run(quantized, {"x": x})[0]
    assert np.abs(want - plain).max() > 1e-2  # the attribute changes onnxruntime's answer
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.slow
def test_dynamic_quantize_lstm_batched_matches_onnxruntime_on_one_thread(tmp_path):
    """Three rows: onnxruntime's serial path (one thread) quantizes h over the whole batch."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(to_onnx(TaggerLSTM().eval(), torch.randn(2, 9, 12)), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(6).standard_normal((3, 9, 12)) * 4).astype(np.float32)
    want = session.run(None, {"x": x})[0]
    got = onnx_attr.load(tmp_path / "q.onnx", strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_deeplift_through_the_quantized_lstm_is_complete(quantized, scale):
    rng = np.random.default_rng(4)
    model = onnx_attr.load(quantized)
    x = torch.from_numpy((rng.standard_normal((1, 9, 12)) * scale).astype(np.float32))
    x0 = torch.from_numpy((rng.standard_normal((1, 9, 12)) * scale * 0.5).astype(np.float32))
    dl = onnx_attr.DeepLift(model)
    for target in [(4, 2), (0, 1)]:
        attributions, delta = dl.attribute(x, x0, target=target, return_convergence_delta=True)
        change = model(x)[(0, *target)] - model(x0)[(0, *target)]
        assert abs(float(change)) > 1.0  # the residual is a real part of it, not rounding noise
        assert abs(float(delta)) <= 1e-5 * max(1.0, abs(float(change))), (target, float(delta), float(change))
    assert any(op == "DynamicQuantizeLSTM" for _, op, _ in dl.engine.rewrite.rewritten)


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 6)

    def forward(self, x):
        h = torch.sigmoid(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(h.flatten(1)) * 10.0


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_deeplift_through_quantized_conv_and_matmul_blocks_is_complete(tmp_path, weight_type):
    """quantize_dynamic on a conv net: DynamicQuantizeLinear → ConvInteger/MatMulInteger → Cast →
    Mul, each fused into one block; completeness at pixels 0–255 with a reference far away."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(to_onnx(SmallConvNet().eval(), torch.rand(1, 1, 16, 16), dynamic_batch=False), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=getattr(QuantType, weight_type),
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    model = onnx_attr.load(tmp_path / "q.onnx")
    rng = np.random.default_rng(5)
    x = torch.from_numpy((rng.random((1, 1, 16, 16)) * 255).astype(np.float32))
    x0 = torch.full_like(x, 127.5)
    dl = onnx_attr.DeepLift(model)
    for target in range(3):
        _, delta = dl.attribute(x, x0, target=target, return_convergence_delta=True)
        change = float(model(x)[0, target] - model(x0)[0, target])
        assert abs(float(delta)) <= 1e-4 * max(1.0, abs(change)), (target, float(delta), change)
    fused = [name for name, op, _ in dl.engine.rewrite.rewritten if op == "QuantizedBlock"]
    assert len(fused) == 3, dl.engine.rewrite.rewritten


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_quantized_block_transpose_is_the_dequantized_maps_gradient(tmp_path, weight_type):
    """The blocks' closed-form Wᵀg (no forward, no autograd) against two routes that share nothing
    with it: autograd through the block's straight-through map, and torch's own convolution and
    matmul with the dequantized weights read from the quantized file (asymmetric pads, stride,
    groups, dilation; a batched matmul). Completeness cannot catch a wrong Wᵀg (the residual's
    share absorbs it), so this is the test that can."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from conftest import make_model

    rng = np.random.default_rng(11)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((8, 2, 3, 2)) * 0.2).astype(np.float32)
    fc = (rng.standard_normal((9, 6)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[0, 1, 1, 0], strides=[2, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], group=4, dilations=[2, 1], pads=[1, 1, 1, 1]),
             helper.make_node("MatMul", ["c2", "fc"], ["y"])]
    proto = make_model(nodes, [("x", TensorProto.FLOAT, [2, 3, 11, 9])], [("y", TensorProto.FLOAT, None)],
                       initializers={"w1": w1, "w2": w2, "fc": fc}, opset=13)
    onnx.save(proto, tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=getattr(QuantType, weight_type),
                     op_types_to_quantize=["Conv", "MatMul"])
    stored = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(tmp_path / "q.onnx")
              .graph.initializer}

    def dequantized(name):
        q, scale, zero = (stored[n] for n in (f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"))
        return (q.double() - zero.double()) * scale.double()

    model = onnx_attr.load(tmp_path / "q.onnx")
    dl = onnx_attr.DeepLift(model)
    x = torch.from_numpy((rng.random((2, 3, 11, 9)) * 255).astype(np.float32))
    dl.attribute(x, torch.zeros_like(x), target=(0, 0, 0))
    blocks = [m for m in dl.engine.rewrite.module.modules() if type(m).__name__ == "QuantizedBlock"]
    assert len(blocks) == 3
    geometry = [lambda v: F.conv2d(F.pad(v, [1, 0, 0, 1]), dequantized("w1"), stride=(2, 1)),
                lambda v: F.conv2d(v, dequantized("w2"), padding=1, dilation=(2, 1), groups=4),
                lambda v: v @ dequantized("fc")]
    value = x
    for block, float_map in zip(blocks, geometry):
        out = block(value)
        grad = torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32)) * 30
        got = block.transpose(grad, value)
        live = value.clone().requires_grad_(True)
        (autograd,) = torch.autograd.grad(block.linear(live, value), live, grad)
        torch.testing.assert_close(got, autograd, rtol=1e-5, atol=1e-5 * float(autograd.abs().max()))
        live = value.double().requires_grad_(True)
        (oracle,) = torch.autograd.grad(float_map(live), live, grad.double())
        torch.testing.assert_close(got.double(), oracle, rtol=1e-5, atol=1e-5 * float(oracle.abs().max()))
        value = out


def test_verify_compares_a_batched_quantized_lstm_with_onnxruntime_on_one_thread(tmp_path):
    """onnxruntime's DynamicQuantizeLSTM quantizes h over one chunk of rows per thread (its own range
    each) past a few rows, so its answer for a batch of two depends on its thread count, by whole
    quantization steps (text2tashkeel's rawi model: 0.09 on 2 threads). verify runs it on one thread,
    whose answer the op's definition gives and the import matches: within tolerance, not excused."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(to_onnx(TaggerLSTM().eval(), torch.randn(2, 9, 12)), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
    model = onnx_attr.load(tmp_path / "q.onnx", strip_final_activation=False)
    x = (np.random.default_rng(6).standard_normal((2, 9, 12)) * 4).astype(np.float32)
    report = model.verify({"x": x})
    assert report.passed and all(o.within_tolerance for o in report.outputs), report.format()


class _Bag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embedding, self.head = torch.nn.Embedding(30, 8), torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.embedding(ids)).mean(1))


def test_an_8bit_embedding_table_is_attributed_per_token(tmp_path):
    """onnxruntime's quantize_dynamic on Gather: the lookup reads uint8 rows, a DequantizeLinear makes
    them floats (text2tashkeel's diacritizer also transposes them first). DeepLift had refused the
    DequantizeLinear; the rewrite now dequantizes the table (the same arithmetic), so ids are
    attributed at the lookup. Oracles: onnxruntime's outputs (forward exact, completeness), and the
    attribution of a token equal to its baseline is 0."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from conftest import ort_run

    ids = torch.tensor([[3, 7, 7, 12, 0, 29]])
    onnx.save(to_onnx(_Bag().eval(), ids, input_names=["ids"]), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Gather"])
    proto = onnx.load(tmp_path / "q.onnx")
    assert {"Gather", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    model = onnx_attr.load(proto)
    x, base = ids.numpy(), np.array([[3, 0, 0, 0, 0, 0]], np.int64)  # token 0 at its baseline
    np.testing.assert_allclose(model.run({"ids": x})[0].numpy(), ort_run(proto, {"ids": x})[0], rtol=1e-5, atol=1e-6)
    got, delta = onnx_attr.DeepLift(model).attribute({"ids": x}, {"ids": base}, target=1,
                                                    return_convergence_delta=True)
    per_token = np.asarray(got["ids"])
    change = ort_run(proto, {"ids": x})[0][0, 1] - ort_run(proto, {"ids": base})[0][0, 1]
    assert per_token.shape == x.shape and per_token[0, 0] == 0.0
    assert abs(float(per_token.sum()) - change) < 1e-5 * max(1.0, abs(change)) and abs(float(delta[0])) < 1e-5


def test_ig_on_an_8bit_embedding_table_taps_its_dequantized_rows(tmp_path):
    """The gradient methods attribute ids at the lookup's float rows: for an 8-bit table, the
    DequantizeLinear right after it. IG over many steps is complete against onnxruntime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from conftest import ort_run

    ids = torch.tensor([[3, 7, 7, 12, 0, 29]])
    onnx.save(to_onnx(_Bag().eval(), ids, input_names=["ids"]), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Gather"])
    proto = onnx.load(tmp_path / "q.onnx")
    model = onnx_attr.load(proto)
    x, base = ids.numpy(), np.zeros((1, 6), np.int64)
    got = onnx_attr.IntegratedGradients(model).attribute({"ids": x}, {"ids": base}, target=1, n_steps=200)
    change = ort_run(proto, {"ids": x})[0][0, 1] - ort_run(proto, {"ids": base})[0][0, 1]
    assert np.asarray(got["ids"]).shape == x.shape
    assert abs(float(np.asarray(got["ids"]).sum()) - change) < 1e-3 * max(1.0, abs(change))


class IdsTagger(nn.Module):
    """text2tashkeel's shape: character ids -> embedding -> BiLSTM -> logits; no float input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.lstm, self.head = nn.Embedding(40, 16), nn.LSTM(16, 24, bidirectional=True, batch_first=True), \
            nn.Linear(48, 7)

    def forward(self, ids):
        y, _ = self.lstm(self.embed(ids))
        return self.head(y) * 10.0


def test_the_rounding_inside_a_quantized_lstm_is_measured_where_it_quantizes(tmp_path):
    """DynamicQuantizeLSTM quantizes its input X over X's own range inside the op. An ulp of
    difference before it (onnxruntime's tanh and sigmoid are not torch's) lands an element on the
    other side of a rounding boundary: text2tashkeel's int8 BiLSTM differed from onnxruntime by
    0.024 at 35 characters and more, its outputs at 30 exactly. With integer ids in, jittering the
    inputs measured nothing (spread 0), so `verify` failed on rounding. The jitter now goes where
    the op quantizes, as before a DynamicQuantizeLinear: onnxruntime's own answer moves there."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnx_attr.importing.qdq_jitter import jittered_quantizers
    from onnx_attr.importing.verify import _quantized_spread, run_onnxruntime

    onnx.save(to_onnx(IdsTagger().eval(), torch.zeros(1, 48, dtype=torch.long), dynamic_batch=False), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
    proto = onnx.load(tmp_path / "q.onnx")
    lstm = next(n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM")
    jittered = jittered_quantizers(proto, 0)
    assert jittered is not None
    fed = next(n for n in jittered.graph.node if n.op_type == "DynamicQuantizeLSTM").input[0]
    assert fed != lstm.input[0] and fed.startswith("onnx_attr_jitter")
    feeds = {"x": np.random.default_rng(0).integers(0, 40, (1, 48))}
    name = proto.graph.output[0].name
    theirs = run_onnxruntime(proto, feeds, [name], optimize=False)
    assert _quantized_spread(proto, feeds, [name], [np.asarray(t) for t in theirs])[0] > 0


class TwoLSTMs(nn.Module):
    """easyhtr's reader after quantize_dynamic (hunt 36): two stacked LSTMs, the second's zero state
    a ConstantOfShape of the first's output shape."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.first, self.second = nn.LSTM(12, 16, batch_first=True), nn.LSTM(16, 8, batch_first=True)

    def forward(self, x):
        return self.second(self.first(x)[0])[0] * 20.0


def test_stacked_quantized_lstms_convert(tmp_path):
    """`convert` failed twice over: each LSTM rebuilt its quantized weights for torch.export's fake
    tensors (other objects than the eager run's, with no values to plan by), and the second LSTM's
    state size, a ConstantOfShape of a Shape, was taken for a size that follows values, so it was not
    folded. Oracle: onnxruntime on the program read back from the file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from conftest import ort_run
    from onnx_attr.app.export import save_program

    onnx.save(to_onnx(TwoLSTMs().eval(), torch.randn(1, 9, 12), dynamic_batch=False), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "quantized.onnx", weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM"])
    proto = onnx.load(tmp_path / "quantized.onnx")
    assert [n.op_type for n in proto.graph.node].count("DynamicQuantizeLSTM") == 2
    x = (np.random.default_rng(4).standard_normal((1, 9, 12)) * 3).astype(np.float32)
    save_program(onnx_attr.load(proto, strip_final_activation=False), tmp_path / "q.pt2", {"x": x})
    got = torch.export.load(str(tmp_path / "q.pt2")).module()(torch.from_numpy(x))
    got = got[0] if isinstance(got, (tuple, list)) else got
    want = ort_run(proto, {"x": x})[0]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(want).max()))
