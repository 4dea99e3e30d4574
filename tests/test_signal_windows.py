"""HannWindow, HammingWindow, BlackmanWindow and MelWeightMatrix (opset 17), the generators an audio
front-end exported at opset 17 builds its STFT window and mel filterbank with: onnxruntime is the
oracle (its MelWeightMatrix spaces the mel points by (mel(high) - mel(low)) / (num_mel_bins + 2), so
the last one falls short of upper_edge_hertz; we compute what it computes). A log-mel front-end
built from them explains with DeepLift, complete at raw-waveform magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run


def _run_both(nodes, initializers, out_type=FLOAT):
    probe = make_model(nodes, [], [("y", out_type, None)], initializers=initializers, opset=17)
    expected = ort_run(probe, {})[0]
    proto = make_model(nodes, [], [("y", out_type, list(expected.shape))], initializers=initializers, opset=17)
    return onnx_attr.load(proto, strip_final_activation=False).run({})[0].numpy(), expected


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("size", [2, 8, 17, 400])
def test_windows_as_onnxruntime(op, periodic, size):
    got, expected = _run_both([helper.make_node(op, ["n"], ["y"], periodic=periodic)], {"n": np.array(size, np.int64)})
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mels,dft,rate,low,high", [(4, 16, 8000, 0, 4000), (40, 400, 16000, 125, 7600),
                                                    (64, 1024, 44100, 0, 22050), (3, 32, 8000, 1000, 1500)])
def test_mel_weight_matrix_as_onnxruntime(mels, dft, rate, low, high):
    inits = {"n": np.array(mels, np.int64), "d": np.array(dft, np.int64), "r": np.array(rate, np.int64),
             "lo": np.array(low, np.float32), "hi": np.array(high, np.float32)}
    got, expected = _run_both([helper.make_node("MelWeightMatrix", ["n", "d", "r", "lo", "hi"], ["y"])], inits)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_window_larger_than_the_budget_is_refused_before_it_is_made():
    proto = make_model([helper.make_node("HannWindow", ["n"], ["y"])], [], [("y", FLOAT, ["n"])],
                       initializers={"n": np.array(2**40, np.int64)}, opset=17)
    with pytest.raises(onnx_attr.BudgetError):
        onnx_attr.load(proto, strip_final_activation=False).run({})


def test_log_mel_front_end_matches_onnxruntime_and_deeplift_is_complete():
    """waveform → STFT (Hann window) → power → mel filterbank → log → a linear head."""
    frames, n_fft, hop, mels = 16, 64, 32, 8
    samples = (frames - 1) * hop + n_fft
    nodes = [helper.make_node("HannWindow", ["n_fft"], ["window"]),
             helper.make_node("STFT", ["wave", "hop", "window"], ["spec"], onesided=1),
             helper.make_node("Mul", ["spec", "spec"], ["sq"]),
             helper.make_node("ReduceSum", ["sq", "last"], ["power"], keepdims=0),
             helper.make_node("MelWeightMatrix", ["mels", "n_fft", "rate", "lo", "hi"], ["filters"]),
             helper.make_node("MatMul", ["power", "filters"], ["mel"]),
             helper.make_node("Add", ["mel", "eps"], ["mel_eps"]),
             helper.make_node("Log", ["mel_eps"], ["logmel"]),
             helper.make_node("Flatten", ["logmel"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["y"])]
    rng = np.random.default_rng(0)
    inits = {"n_fft": np.array(n_fft, np.int64), "hop": np.array(hop, np.int64), "last": np.array([-1], np.int64),
             "mels": np.array(mels, np.int64), "rate": np.array(16000, np.int64), "lo": np.array(0.0, np.float32),
             "hi": np.array(8000.0, np.float32), "eps": np.array(1e-6, np.float32),
             "head": rng.standard_normal((frames * mels, 3)).astype(np.float32)}
    proto = make_model(nodes, [("wave", FLOAT, [1, samples, 1])], [("y", FLOAT, [1, 3])], initializers=inits, opset=17)
    wave = (rng.standard_normal((1, samples, 1)) * 3000).astype(np.float32)  # raw 16-bit-scale audio
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run({"wave": wave})[0].numpy(), ort_run(proto, {"wave": wave})[0], rtol=1e-4)
    x, x0 = torch.from_numpy(wave), torch.from_numpy(wave * 0.01)
    _, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=1, return_convergence_delta=True)
    change = float(model(x)[0, 1] - model(x0)[0, 1])
    assert abs(float(delta)) <= 1e-4 * max(1.0, abs(change)), (float(delta), change)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool_as_onnxruntime(p):
    x = np.random.default_rng(p).standard_normal((2, 3, 4, 5)).astype(np.float32) * 10
    proto = make_model([helper.make_node("GlobalLpPool", ["x"], ["y"], p=p)], [("x", FLOAT, [2, 3, 4, 5])],
                       [("y", FLOAT, [2, 3, 1, 1])])
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, ort_run(proto, {"x": x})[0], rtol=1e-5)
