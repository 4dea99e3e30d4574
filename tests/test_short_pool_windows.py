"""Pools over an input shorter than one window: onnxruntime computes the output size as
(n + pads - kernel) / stride + 1 in integer arithmetic, which truncates toward zero, so an input
short of one window by less than a stride still gets that window (ONNX's floor gives none, and
torch's pools refuse), and one short by a stride or more gets an empty output. A PP-OCRv4
recogniser (AveragePool kernel 3 x 2, stride 3 x 2) fed a 32-pixel line reaches this: its pool
sees 2 rows. Each case against onnxruntime, whose divisor with count_include_pad counts the
overhang beyond the pads below opset 19 and not from 19 on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run

# (rows, kernel, stride, pads begin/end on the rows, ceil_mode): windows of 3..5 rows over 1..3 rows
SHORT = [(2, 3, 3, (0, 0), 0), (1, 3, 3, (0, 0), 0), (2, 4, 3, (1, 0), 0), (2, 4, 3, (0, 1), 0),
         (3, 5, 4, (1, 0), 0), (2, 3, 2, (0, 0), 0), (2, 3, 3, (0, 0), 1), (2, 3, 1, (0, 0), 0),
         (2, 5, 3, (0, 0), 0)]  # the last two: short by a stride or more, so empty


def _model(op, rows, kernel, stride, pads, ceil, opset, **extra):
    attrs = dict(kernel_shape=[kernel, 2], strides=[stride, 2], pads=[pads[0], 0, pads[1], 0], **extra)
    if ceil:
        attrs["ceil_mode"] = 1
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return make_model([node], [("x", FLOAT, [2, 3, rows, 8])], [("y", FLOAT, ["n", "c", "h", "w"])], opset=opset)


def _feeds(rows):
    rng = np.random.default_rng(rows)
    return {"x": (rng.standard_normal((2, 3, rows, 8)) * 50 + 120).astype(np.float32)}  # pixel magnitudes


def _check(proto, feeds):
    expected = ort_run(proto, feeds)[0]
    got = onnx_attr.load(proto, strip_final_activation=False).run(feeds)[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("opset", [11, 17, 19, 22])
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("rows,kernel,stride,pads,ceil", SHORT)
def test_average_pool_short_input_matches_onnxruntime(rows, kernel, stride, pads, ceil, include_pad, opset):
    _check(_model("AveragePool", rows, kernel, stride, pads, ceil, opset, count_include_pad=include_pad), _feeds(rows))


@pytest.mark.parametrize("op,opset", [("MaxPool", 12), ("MaxPool", 22), ("LpPool", 18)])
@pytest.mark.parametrize("rows,kernel,stride,pads,ceil", [c for c in SHORT if not c[4]])
def test_max_and_lp_pool_short_input_match_onnxruntime(op, opset, rows, kernel, stride, pads, ceil):
    _check(_model(op, rows, kernel, stride, pads, ceil, opset), _feeds(rows))


def test_dilated_average_pool_short_input_matches_onnxruntime():
    for rows, include_pad in itertools.product((1, 2), (0, 1)):  # extent 3 over 1 or 2 rows
        _check(_model("AveragePool", rows, 2, 3, (0, 0), 0, 19, dilations=[2, 1], count_include_pad=include_pad),
               _feeds(rows))


def test_short_window_is_complete_under_deeplift():
    """The padded-out window is still a linear average: DeepLift's sum matches onnxruntime's difference."""
    proto = _model("AveragePool", 2, 3, 3, (0, 0), 0, 12)
    x = _feeds(2)["x"]
    model = onnx_attr.load(proto, strip_final_activation=False)
    attr = onnx_attr.DeepLift(model).attribute(x, target=(0, 0, 3), baselines=np.zeros_like(x))
    change = ort_run(proto, {"x": x})[0][:, 0, 0, 3] - ort_run(proto, {"x": np.zeros_like(x)})[0][:, 0, 0, 3]
    np.testing.assert_allclose(np.asarray(attr).sum(axis=(1, 2, 3)), change, rtol=1e-5)
