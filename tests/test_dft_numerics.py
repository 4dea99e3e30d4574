"""DFT and STFT of lengths that are not a power of 2, against onnxruntime: its CPU kernel sums them
term by term with its own twiddles, where an FFT's exact symmetries give exact zeros. A vocoder that
divides the imaginary part of its STFT by the real part (Kokoro, hunt 31) then made 0/0 = NaN where
onnxruntime's sums stay finite."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import torch

import onnx_attr
from conftest import make_model, ort_run


def _stft_model(n_fft: int, frames: int, hop: int) -> tuple:
    samples = n_fft + hop * (frames - 1)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    proto = make_model([helper.make_node("STFT", ["x", "hop", "window"], ["spec"], onesided=1)],
                       [("x", TensorProto.FLOAT, [1, samples, 1])],
                       [("spec", TensorProto.FLOAT, [1, frames, n_fft // 2 + 1, 2])],
                       initializers={"hop": np.array(hop, np.int64), "window": window}, opset=17)
    return proto, samples


def test_a_vocoders_phase_division_stays_finite_as_onnxruntimes_does():
    """A 20-point STFT of a tone whose period divides the frame (Kokoro's: 20 points every 5). Off the
    DC bin, torch's FFT cancels both parts of a bin to exact zeros by the hundred (0 / 0 in the phase);
    onnxruntime's sums leave rounding-sized values, and ours too where both parts would cancel, so
    imag / real makes no NaN there (Kokoro's 29 NaN bins spread over its whole waveform)."""
    proto, samples = _stft_model(20, 64, 5)
    proto.graph.node.extend([
        helper.make_node("Gather", ["spec", "zero"], ["real"], axis=3),
        helper.make_node("Gather", ["spec", "one"], ["imag"], axis=3),
        helper.make_node("Div", ["imag", "real"], ["ratio"])])
    proto.graph.initializer.extend([helper.make_tensor("zero", TensorProto.INT64, [], [0]),
                                    helper.make_tensor("one", TensorProto.INT64, [], [1])])
    del proto.graph.output[:]
    proto.graph.output.extend([helper.make_tensor_value_info("spec", TensorProto.FLOAT, [1, 64, 11, 2]),
                               helper.make_tensor_value_info("ratio", TensorProto.FLOAT, [1, 64, 11])])
    t = np.arange(samples)
    x = (0.3 * np.sin(2 * np.pi * t / 20) + 0.1 * np.cos(2 * np.pi * t / 10))[None, :, None].astype(np.float32)
    spec_ort, ratio_ort = ort_run(proto, {"x": x})
    spec, ratio = (o.numpy() for o in onnx_attr.load(proto, strip_final_activation=False).run({"x": x}))
    np.testing.assert_allclose(spec, spec_ort, atol=2e-6)
    frames = x[0, :, 0][np.arange(64)[:, None] * 5 + np.arange(20)] * onnx_numpy(proto, "window")
    fft = torch.view_as_real(torch.fft.rfft(torch.from_numpy(frames.astype(np.float32)), dim=1)).numpy()
    # what torch's FFT gives: 0 / 0 in the phase (by the hundred on the machines that wrote this, 64 on a later
    # one: how many bins cancel exactly depends on the FFT's kernels; the case needs some)
    assert (fft[:, 1:] == 0).all(-1).sum() > 10
    assert not (spec[0, :, 1:] == 0).all(-1).any()  # ours: none
    assert (spec[0, :, 1:] == 0).sum() < (fft[:, 1:] == 0).sum() / 3
    # no 0 / 0 (a real part of exactly 0 under a non-zero imaginary one is ±inf, which Atan takes)
    assert np.isfinite(ratio_ort[0, :, 1:]).all() and not np.isnan(ratio[0, :, 1:]).any()


def onnx_numpy(proto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


@pytest.mark.parametrize("case", ["real", "complex", "onesided", "inverse", "padded", "cut", "float64"])
def test_a_direct_dft_matches_onnxruntime(case):
    length = {"padded": 15, "cut": 9}.get(case)
    dtype = np.float64 if case == "float64" else np.float32
    elem = TensorProto.DOUBLE if case == "float64" else TensorProto.FLOAT
    last = 2 if case in ("complex", "inverse") else 1
    inputs = ["x", "length" if length else "", "axis"]
    rows = 7 if case == "onesided" else length or 12
    proto = make_model([helper.make_node("DFT", inputs, ["y"], onesided=int(case == "onesided"),
                                         inverse=int(case == "inverse"))],
                       [("x", elem, [3, 12, last])], [("y", elem, [3, rows, 2])],
                       initializers={"axis": np.array(1, np.int64),
                                     **({"length": np.array(length, np.int64)} if length else {})}, opset=20)
    x = (np.random.default_rng(3).normal(size=(3, 12, last)) * 50).astype(dtype)
    expected = ort_run(proto, {"x": x})[0]
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3 if dtype == np.float32 else 1e-9)
