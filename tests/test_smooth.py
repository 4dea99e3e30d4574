"""Smooth substitution: log-sum-exp pooling against a brute-force window loop and MaxPool's
limit, DeepLift completeness on the smoothed graph, and the reported output change."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx_attr.importing.converters.pooling import MaxPool
from onnx_attr.deeplift.smooth import LogSumExpPool, smooth

from exporting import to_onnx

GEOMETRIES = [
    {"kernel_shape": [3], "strides": [2], "pads": [1, 1]},
    {"kernel_shape": [2, 3], "strides": [2, 1], "pads": [0, 1, 1, 0], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "dilations": [2, 1], "pads": [2, 1, 2, 1]},
    {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"kernel_shape": [2, 2, 2], "strides": [1, 2, 2]},
]


def _brute_force(x: np.ndarray, attrs: dict, beta: float, out_shape) -> np.ndarray:
    """Loop over output positions and kernel offsets, skipping padding, straight from the spec."""
    rank = len(attrs["kernel_shape"])
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    if attrs.get("auto_pad") == "SAME_UPPER":
        totals = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0) for n, s, k, d in
                  zip(x.shape[2:], strides, attrs["kernel_shape"], dilations)]
        begin = [t // 2 for t in totals]
    else:
        begin = attrs.get("pads", [0] * 2 * rank)[:rank]
    out = np.empty(out_shape)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for pos in itertools.product(*(range(o) for o in out_shape[2:])):
            values = []
            for offset in itertools.product(*(range(k) for k in attrs["kernel_shape"])):
                idx = [p * s + o * d - b for p, s, o, d, b in zip(pos, strides, offset, dilations, begin)]
                if all(0 <= i < size for i, size in zip(idx, x.shape[2:])):
                    values.append(x[(n, c, *idx)])
            v = beta * np.array(values)
            out[(n, c, *pos)] = (v.max() + np.log(np.exp(v - v.max()).sum())) / beta
    return out


@pytest.mark.parametrize("attrs", GEOMETRIES, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_log_sum_exp_pool_matches_the_window_loop_and_tends_to_max_pool(attrs):
    rng = np.random.default_rng(0)
    shape = (2, 3, *[7, 6, 5][:len(attrs["kernel_shape"])])
    x = torch.tensor(rng.normal(size=shape))
    pool, plain = LogSumExpPool(attrs, beta=3.0), MaxPool(attrs)
    y = pool(x)
    assert y.shape == plain(x).shape
    np.testing.assert_allclose(y.numpy(), _brute_force(x.numpy(), attrs, 3.0, y.shape), rtol=1e-10, atol=1e-10)
    sharp = LogSumExpPool(attrs, beta=1e4)(x)
    window = int(np.prod(attrs["kernel_shape"]))
    assert (sharp >= plain(x) - 1e-9).all() and (sharp <= plain(x) + np.log(window) / 1e4 + 1e-9).all()


class _Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.max_pool2d(torch.relu(self.conv(x)), 3, stride=2, padding=1).flatten(1))


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return onnx_attr.load(to_onnx(_Cnn().double().eval(), torch.randn(2, 2, 8, 8, dtype=torch.float64)))


def test_smoothing_reports_what_it_replaced_and_how_much_the_outputs_moved(cnn):
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    before = cnn(x)
    soft = smooth(cnn, relu_beta=5.0, maxpool_beta=5.0, inputs=x)
    assert [r["from"] for r in soft.smoothing["replaced"]] == ["Relu", "MaxPool"]
    change = soft.smoothing["output_change"][0]
    assert change["max_abs_change"] == pytest.approx(float((soft(x) - before).abs().max()))
    assert change["max_abs_change"] > 0 and 0 <= change["top1_agreement"] <= 1
    assert torch.equal(cnn(x), before)  # the original is untouched
    sharp = smooth(cnn, relu_beta=1e3, maxpool_beta=1e3, inputs=x).smoothing["output_change"][0]
    assert sharp["max_abs_change"] < change["max_abs_change"] / 50
    only_relu = smooth(cnn, maxpool_beta=None, inputs=x)
    assert [r["from"] for r in only_relu.smoothing["replaced"]] == ["Relu"]


def test_deeplift_on_the_smoothed_model_is_complete(cnn):
    soft = smooth(cnn, relu_beta=4.0, maxpool_beta=4.0)
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    method = onnx_attr.DeepLift(soft)
    attributions, delta = method.attribute(x, torch.randn(1, 2, 8, 8, dtype=torch.float64) * 0.2,
                                           target=[0, 1, 2, 0, 1], return_convergence_delta=True)
    assert method.last_report["max_relative_delta"] < 1e-9
    ops = {op for _, op, _ in method.engine.rewrite.rewritten}
    assert ops == {"Softplus", "LogSumExpPool"}
    with torch.no_grad():
        assert torch.equal(method.engine.rewrite.module(x), soft(x))


def test_bad_beta_is_a_clear_error(cnn):
    with pytest.raises(onnx_attr.InputError, match="relu_beta must be positive"):
        smooth(cnn, relu_beta=0)


def test_cli_attributes_a_smoothed_twin_and_verifies_the_original(tmp_path):
    import json

    from onnx_attr.app.cli import main

    from conftest import SAMPLES

    out = tmp_path / "run"
    assert main(["attribute", str(SAMPLES / "digits_cnn.onnx"), "--input", str(SAMPLES / "digits_cnn_inputs.npz"),
                 "--smooth", "5", "--target", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["passed"] is True
    assert {r["from"] for r in report["smoothing"]["replaced"]} == {"Relu", "MaxPool"}
    assert report["smoothing"]["output_change"][0]["max_abs_change"] > 0
    assert report["max_relative_delta"] < 1e-4


class _LongKernel(nn.Module):
    """[N, T] -> a 64-tap convolution -> Relu -> mean: runs on no fewer than 64 samples (a mel front end's
    STFT kernel, hunt 36), so the old random [N, 8] sample failed before anything was explained."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv1d(1, 4, 64, stride=16)

    def forward(self, x):
        return torch.relu(self.conv(x.unsqueeze(1))).mean(-1)


def test_smoothing_is_measured_on_the_input_explained(tmp_path):
    """--smooth on a model that cannot run on an 8-sample draw: the CLI measures the change on the
    input it explains; the API's default sample takes verify's sizes. Oracle: Softplus(β) by hand
    on torch's convolution (the change is softplus − relu of each pre-activation, averaged)."""
    import json

    from onnx_attr.app.cli import main

    import io
    import warnings

    module = _LongKernel().eval()
    path = tmp_path / "long.onnx"
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the samples' axis free too, as an audio front end's is
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 400),), input_names=["x"], dynamo=True, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("samples", min=64)},)
                          ).save(buffer)
    path.write_bytes(buffer.getvalue())
    x = (np.random.default_rng(5).standard_normal((2, 400)) * 300).astype(np.float32)  # int16-range audio
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(out), "-q", "--smooth", "0.05",
                 "--target", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    with torch.no_grad():
        z = module.conv(torch.from_numpy(x).unsqueeze(1))
        want = (torch.nn.functional.softplus(z, beta=0.05) - torch.relu(z)).mean(-1).abs().max().item()
    change = report["smoothing"]["output_change"][0]
    assert report["smoothing"]["measured_on"] == "this input"
    assert np.isclose(change["max_abs_change"], want, rtol=1e-4)
    sampled = smooth(onnx_attr.load(str(path)), relu_beta=0.05).smoothing
    assert sampled["output_change"][0]["max_abs_change"] > 0 and "free dims 96" in sampled["measured_on"]


def test_kinks_smoothing_leaves_are_said(tmp_path, capsys):
    """hunt 37: sfmp's MobileNetV2 has ReLU6s, exported as Clip(0, 6): --smooth replaced nothing and said
    nothing, so the run read as a smoothed model's. What keeps its kinks is now counted, in the report and
    on the console; the Relu beside them is replaced."""
    from onnx_attr.app.cli import main

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.lin = nn.Linear(16, 2)

        def forward(self, x):
            h = torch.nn.functional.relu6(self.conv(x))  # Clip(0, 6)
            h = torch.relu(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))
            return self.lin(torch.nn.functional.leaky_relu(h, 0.1))

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    path.write_bytes(to_onnx(Net().eval(), torch.randn(1, 3, 6, 6)))
    model = onnx_attr.load(str(path))
    smoothed = smooth(model, inputs=np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32))
    assert [r["from"] for r in smoothed.smoothing["replaced"]] == ["Relu"]
    assert smoothed.smoothing["not_smoothed"] == {"Clip": 1, "LeakyRelu": 1}
    np.savez(tmp_path / "x.npz", **{model.inputs[0].name: np.ones((1, 3, 6, 6), np.float32)})
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"), "--smooth", "5"]) == 0
    assert "these keep their kinks: 1 Clip, 1 LeakyRelu" in capsys.readouterr().err
