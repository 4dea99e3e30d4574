"""Patterns from the second widening pass over models shipped in public packages
(benchmarks/real_exports.py), re-created as small graphs: onnxruntime is the oracle for the
forward, the completeness identity (and hand values) for DeepLift."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

RNG = np.random.default_rng(11)


def decibel_floor_model(hi: float | None = 40.0):
    """openWakeWord's melspectrogram (torchaudio AmplitudeToDB): a log-power map whose floor is
    its own maximum minus 80 dB, Clip(x, ReduceMax(x) - 80, hi): a bound that varies with x."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["power_lin"]),
        helper.make_node("Mul", ["power_lin", "power_lin"], ["power"]),
        helper.make_node("Clip", ["power", "tiny"], ["safe"]),
        helper.make_node("Log", ["safe"], ["ln"]),
        helper.make_node("Mul", ["ln", "ten_over_ln10"], ["db"]),
        helper.make_node("ReduceMax", ["db"], ["peak"], keepdims=0),
        helper.make_node("Sub", ["peak", "top_db"], ["floor"]),
        helper.make_node("Clip", ["db", "floor"] + (["hi"] if hi is not None else []), ["out"]),
    ]
    inits = {"w": RNG.standard_normal((6, 5)).astype(np.float32), "tiny": np.array(1e-10, np.float32),
             "ten_over_ln10": np.array(10 / np.log(10), np.float32), "top_db": np.array(80.0, np.float32)}
    if hi is not None:
        inits["hi"] = np.array(hi, np.float32)
    return make_model(nodes, [("x", FLOAT, [1, 4, 6])], [("out", FLOAT, [1, 4, 5])], initializers=inits, opset=13)


def clip_both_bounds_model():
    """Both bounds from the input: Clip(x, min(x) + 0.3, max(x) - 0.3), scalar bounds."""
    nodes = [
        helper.make_node("ReduceMin", ["x"], ["lo_raw"], keepdims=0),
        helper.make_node("ReduceMax", ["x"], ["hi_raw"], keepdims=0),
        helper.make_node("Add", ["lo_raw", "shift"], ["lo"]),
        helper.make_node("Sub", ["hi_raw", "shift"], ["hi"]),
        helper.make_node("Clip", ["x", "lo", "hi"], ["out"]),
    ]
    return make_model(nodes, [("x", FLOAT, [1, 8])], [("out", FLOAT, [1, 8])],
                      initializers={"shift": np.array(0.3, np.float32)}, opset=13)


@pytest.mark.parametrize("hi", [40.0, None], ids=["floor-and-ceiling", "floor-only"])
def test_clip_with_a_bound_that_varies_is_exact(hi):
    proto = decibel_floor_model(hi)
    x = (RNG.standard_normal((1, 4, 6)) * 30).astype(np.float32)
    x[0, 0] *= 1e-4  # rows far below the peak: clipped at the floor in x, not in the reference
    x0 = (RNG.standard_normal((1, 4, 6)) * 3).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-4)
    dl = onnx_attr.DeepLift(model)
    kinds = {op: kind for _, op, kind in dl.engine.rewrite.rewritten}
    assert "Clip" in kinds
    f, f0 = ort_run(proto, {"x": x})[0], ort_run(proto, {"x": x0})[0]
    floored = np.argwhere(f[0] == f[0].min())[0]
    for target in [tuple(int(i) for i in floored), (2, 3), (3, 0)]:
        attr, delta = dl.attribute(x, x0, target=target, return_convergence_delta=True)
        change = float(f[(0, *target)] - f0[(0, *target)])
        assert abs(float(attr.sum()) - change) <= 1e-4 * max(1.0, abs(change)), (target, attr.sum(), change)


def test_clip_with_both_bounds_varying_matches_hand_values():
    """x = [0 .. 7], reference 0. At x: lo = 0.3, hi = 6.7, out[3] = 3. At the reference lo = 0.3 >
    hi = -0.3, so every output is hi = -0.3 (ONNX and torch agree). Element 3's own credit, by
    hand: max(x, lo) = x + relu(lo - x) has secant (0 - 0.3) / (-2.7 - 0.3) = 0.1 there, then
    min(a, hi) = a - relu(a - hi) has secant 0.6 / 4.3, so it keeps 3 · 0.9 · (1 - 0.6 / 4.3); the
    rest of Δout[3] = 3.3 goes to the elements that set the bounds."""
    proto = clip_both_bounds_model()
    x = np.arange(8, dtype=np.float32)[None]
    x0 = np.zeros((1, 8), np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_array_equal(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0])
    np.testing.assert_allclose(ort_run(proto, {"x": x0})[0], -0.3)
    dl = onnx_attr.DeepLift(model)
    np.testing.assert_allclose(dl.attribute(x, x0, target=(7,)).sum(), 7.0, rtol=1e-6)
    attr3 = dl.attribute(x, x0, target=(3,))
    np.testing.assert_allclose(attr3.sum(), 3.3, rtol=1e-6)
    np.testing.assert_allclose(attr3[0, 3], 3 * 0.9 * (1 - 0.6 / 4.3), rtol=1e-5)
    xs = (RNG.standard_normal((1, 8)) * 50).astype(np.float32)
    x0s = (RNG.standard_normal((1, 8)) * 50).astype(np.float32)
    f, f0 = ort_run(proto, {"x": xs})[0], ort_run(proto, {"x": x0s})[0]
    for i in range(8):
        total = dl.attribute(xs, x0s, target=(i,)).sum()
        assert abs(total - (f[0, i] - f0[0, i])) <= 1e-4 * max(1.0, abs(f[0, i] - f0[0, i]))


@pytest.mark.parametrize("mode,shape,pads", [
    ("reflect", (1, 1, 3, 10), [0, 0, 0, 4, 0, 0, 0, 4]),  # silero v4's STFT: a 4-D tensor, last axis only
    ("reflect", (2, 6, 3, 4), [0, 2, 0, 0, 0, 3, 0, 0]),  # an axis that is not among the trailing ones
    ("edge", (2, 3, 4, 5, 6), [0, 1, 1, 0, 2, 0, 0, 2, 1, 0]),  # 5-D, four axes
    ("edge", (3, 5), [2, -1, 1, 3]),  # a crop on one side
    ("wrap", (2, 3, 7), [0, 1, 3, 0, 2, -2]),
    ("reflect", (2, 3), [0, 5, 0, 6]),  # pads past the length: mirrored again (period 2(n - 1))
])
def test_non_constant_pad_of_any_rank_and_axis_matches_onnxruntime(mode, shape, pads):
    """openWakeWord's silero VAD reflect-pads a [1, 1, 1, T] tensor along T only, which torch's
    F.pad refuses for a 4-D tensor; every mode on any axis is one index_select per padded axis."""
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)]
    proto = make_model(nodes, [("x", FLOAT, list(shape))], [("y", FLOAT, [f"d{i}" for i in range(len(shape))])],
                       initializers={"p": np.array(pads, np.int64)}, opset=19)
    x = RNG.standard_normal(shape).astype(np.float32)
    try:
        (expected,) = ort_run(proto, {"x": x})
    except Exception:  # onnxruntime refuses reflect pads longer than the axis: nothing to compare
        pytest.skip("onnxruntime refuses these pads")
    got = onnx_attr.load(proto).run({"x": x})[0].numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("channels,group,kernel,extreme", [
    (300, 1, 3, True),  # 2,700 products of |255 · 128|: partial sums far past 2^24, chunked
    (300, 1, 3, False),
    (32, 32, 3, True),  # depthwise: one float32 convolution
    (64, 2, 1, True),  # grouped, within one chunk
    (40, 4, 5, False),
])
def test_conv_integer_is_exact_and_matches_onnxruntime(channels, group, kernel, extreme):
    """rapid-table-det's dynamically quantized 800x800 detector: 65 ConvIntegers, each exact in
    float64, took a minute on CPU's slow float64 convolution; in float32 chunks of input channels
    whose sums stay below 2^24 they are exact too (compared bit for bit with onnxruntime)."""
    from onnx import TensorProto

    out_channels = 8 if group == 1 else channels
    x = RNG.integers(0, 256, (1, channels, 9, 9)).astype(np.uint8)
    w = RNG.integers(-128, 128, (out_channels, channels // group, kernel, kernel)).astype(np.int8)
    if extreme:  # same-signed products near the 8-bit limits: sums far past 2^24, odd at the last bits
        x = RNG.integers(200, 256, x.shape).astype(np.uint8)
        w = RNG.integers(-128, -90, w.shape).astype(np.int8)
    nodes = [helper.make_node("ConvInteger", ["x", "w", "xz"], ["y"], group=group, pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", TensorProto.UINT8, list(x.shape))],
                       [("y", TensorProto.INT32, [1, out_channels, 11 - kernel, 11 - kernel])],
                       initializers={"w": w, "xz": np.array(3, np.uint8)}, opset=13)
    (expected,) = ort_run(proto, {"x": x})
    got = onnx_attr.load(proto).run({"x": x})[0].numpy()
    np.testing.assert_array_equal(got, expected)
