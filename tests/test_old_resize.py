"""Resize-10 and Upsample (opsets 7-9), against onnxruntime: they map output pixels to input ones as
x / scale (asymmetric), the nearest pixel taken as onnxruntime's opset-10 kernel takes it (floor when
enlarging, ceiling when shrinking). onnx2torch's Resize-10 used half_pixel, and the version
converter's Resize made from an Upsample lost the mode: a linear resize came out shifted by half a
pixel (found by checking converters against onnxruntime at shapes and scales exports use)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run


def _check(proto, x):
    expected = ort_run(proto, {"x": x})[0]
    model = onnx_attr.load(proto, strip_final_activation=False)
    got = model.run({"x": x})[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return model


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.7, 2.5], [1, 1, 0.6, 2.5], [1, 1, 0.34, 1.0],
                                    [1, 1, 1.5, 0.75]])
def test_resize_10_as_onnxruntime(mode, scales):
    x = np.random.default_rng(1).standard_normal((1, 2, 7, 6)).astype(np.float32) * 100
    out = [int(np.floor(s * n)) for s, n in zip(scales, x.shape)]
    proto = make_model([helper.make_node("Resize", ["x", "s"], ["y"], mode=mode)], [("x", FLOAT, list(x.shape))],
                       [("y", FLOAT, out)], initializers={"s": np.array(scales, np.float32)}, opset=10)
    _check(proto, x)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.7, 2.5], [1, 1, 3, 1.4]])
def test_upsample_9_as_onnxruntime_and_deeplift_complete(mode, scales):
    x = np.random.default_rng(2).standard_normal((1, 2, 3, 4)).astype(np.float32) * 100
    out = [int(np.floor(s * n)) for s, n in zip(scales, x.shape)]
    proto = make_model([helper.make_node("Upsample", ["x", "s"], ["u"], mode=mode), helper.make_node("Tanh", ["u"], ["y"])],
                       [("x", FLOAT, list(x.shape))], [("y", FLOAT, out)],
                       initializers={"s": np.array(scales, np.float32)}, opset=9)
    model = _check(proto, x / 100)
    target = (0, 1, 1)
    _, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x / 100), torch.zeros(1, 2, 3, 4), target=target,
                                                   return_convergence_delta=True)
    assert abs(float(delta)) <= 1e-5
