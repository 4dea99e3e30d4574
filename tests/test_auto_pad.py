"""Conv, ConvTranspose and the pools under every auto_pad (SAME_UPPER, SAME_LOWER, VALID) and
asymmetric pads, with strides, dilations and odd/even sizes, and BatchNormalization at every
rank (known to shape inference or not): each against onnxruntime on the CPU provider."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from onnx_attr.importing.converters.normalization import AnyRankBatchNorm
from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(18)
PADS = ("SAME_UPPER", "SAME_LOWER", "VALID")
ANY4 = [("y", FLOAT, ["n", "c", "h", "w"])]  # output dims left to shape inference
GEOMETRY = list(itertools.product(PADS, (1, 2), (1, 2), (7, 8)))  # auto_pad, stride, dilation, size


def _check(proto, feeds, rtol=1e-5, atol=1e-4):
    """Ours against onnxruntime; where onnxruntime refuses the geometry (SAME with dilations:
    "Dilation not supported for AutoPadType::SAME_UPPER"), against ONNX's reference evaluator."""
    try:
        expected = ort_run(proto, feeds)
    except Exception as err:  # noqa: BLE001 - onnxruntime's refusal, named below
        if "Dilation not supported" not in str(err):
            raise
        from onnx.reference import ReferenceEvaluator

        expected = ReferenceEvaluator(proto).run(None, feeds)
    got = onnx_attr.load(proto, strip_final_activation=False).run(feeds)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e, rtol=rtol, atol=atol)


def _image(size, channels=3, scale=255.0):
    return (RNG.random((2, channels, size, size + 1)) * scale).astype(np.float32)  # pixels, odd and even axes


@pytest.mark.parametrize("auto_pad,stride,dilation,size", GEOMETRY)
@pytest.mark.parametrize("weight_as_input", [False, True])
def test_conv_auto_pad_matches_onnxruntime(auto_pad, stride, dilation, size, weight_as_input):
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad=auto_pad, strides=[stride, stride],
                            dilations=[dilation, dilation])
    inputs = [("x", FLOAT, [2, 3, size, size + 1])]
    feeds = {"x": _image(size)}
    if weight_as_input:
        inputs.append(("w", FLOAT, list(w.shape)))
        feeds["w"] = w
    proto = make_model([node], inputs, ANY4, initializers={"b": b} if weight_as_input else
                       {"w": w, "b": b}, opset=11)
    _check(proto, feeds, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("opset", [7, 11, 22])
def test_conv_same_upper_at_every_opset_and_asymmetric_pads(opset):
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    for attrs in ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, {"pads": [0, 1, 2, 0]}):
        node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
        proto = make_model([node], [("x", FLOAT, [2, 3, 8, 9])], ANY4, initializers={"w": w},
                           opset=opset)
        _check(proto, {"x": _image(8)}, atol=1e-2)


@pytest.mark.parametrize("auto_pad,stride,dilation,size", GEOMETRY)
def test_conv_transpose_auto_pad_matches_onnxruntime(auto_pad, stride, dilation, size):
    w = RNG.standard_normal((3, 2, 3, 2)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[stride, stride],
                            dilations=[dilation, dilation])
    proto = make_model([node], [("x", FLOAT, [2, 3, size, size + 1])], ANY4, initializers={"w": w},
                       opset=11)
    _check(proto, {"x": _image(size)}, atol=1e-2)


def test_conv_transpose_asymmetric_pads_and_output_shape():
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for attrs in ({"pads": [1, 0, 0, 2], "strides": [2, 2]}, {"output_shape": [15, 18], "strides": [2, 2]},
                  {"output_padding": [1, 0], "strides": [2, 1], "pads": [1, 1, 1, 1]}):
        node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
        proto = make_model([node], [("x", FLOAT, [2, 3, 7, 8])], ANY4, initializers={"w": w})
        _check(proto, {"x": _image(7)}, atol=1e-2)


POOLS = {"MaxPool": {}, "AveragePool": {"count_include_pad": 0}, "AveragePool-incl": {"count_include_pad": 1},
         "LpPool": {"p": 2}}


@pytest.mark.parametrize("auto_pad,stride,dilation,size", GEOMETRY)
@pytest.mark.parametrize("pool", POOLS)
def test_pool_auto_pad_matches_onnxruntime(pool, auto_pad, stride, dilation, size):
    op = pool.split("-")[0]
    if dilation != 1 and auto_pad != "VALID":
        pytest.skip("SAME with dilated pooling windows: onnxruntime, ONNX's reference and the spec's shape "
                    "formula give three different answers, so there is no oracle")
    if op != "MaxPool" and dilation != 1:  # AveragePool/LpPool dilations: opset 19/18, with the rest below
        pytest.skip("dilated averages are covered at opset 19 below")
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 2], auto_pad=auto_pad, strides=[stride, stride],
                            dilations=[dilation, dilation], **POOLS[pool]) if op == "MaxPool" else \
        helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 2], auto_pad=auto_pad, strides=[stride, stride],
                         **POOLS[pool])
    proto = make_model([node], [("x", FLOAT, [2, 3, size, size + 1])], ANY4, opset=12)
    _check(proto, {"x": _image(size)}, atol=1e-3)


@pytest.mark.parametrize("auto_pad", PADS)
@pytest.mark.parametrize("op", ["AveragePool", "LpPool"])
def test_dilated_and_dynamic_average_pools_match_onnxruntime(op, auto_pad):
    """Dilated windows (opset 19), and SAME over spatial dims that only the run fixes."""
    cases = [([2, 3, "h", "w"], 1)] + ([([2, 3, 9, 8], 2)] if auto_pad == "VALID" else [])  # see the skip above
    for shape, dilation in cases:
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], auto_pad=auto_pad, strides=[2, 2],
                                dilations=[dilation, dilation])
        proto = make_model([node], [("x", FLOAT, shape)], ANY4, opset=19)
        _check(proto, {"x": (RNG.random((2, 3, 9, 8)) * 255).astype(np.float32)}, atol=1e-3)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("opset", [9, 15])
def test_batch_norm_at_every_rank(rank, opset):
    c = 3
    params = {"s": RNG.random(c).astype(np.float32) + 0.5, "b": RNG.standard_normal(c).astype(np.float32),
              "m": RNG.standard_normal(c).astype(np.float32) * 10, "v": RNG.random(c).astype(np.float32) * 4 + 0.1}
    shape = [2, c, 5, 4, 3][:rank]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    proto = make_model([node], [("x", FLOAT, shape)], [("y", FLOAT, shape)], initializers=params, opset=opset)
    _check(proto, {"x": (RNG.standard_normal(shape) * 100).astype(np.float32)}, atol=1e-3)


def test_batch_norm_whose_rank_shape_inference_lost():
    """A Conv over an input of unknown rank feeds the BatchNormalization: its rank is fixed by the
    run only (onnx2torch's converter refused it: "spatial rank == -2")."""
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    params = {"w": w, "s": RNG.random(3).astype(np.float32) + 0.5, "b": RNG.standard_normal(3).astype(np.float32),
              "m": RNG.standard_normal(3).astype(np.float32), "v": RNG.random(3).astype(np.float32) + 0.1}
    nodes = [helper.make_node("Reshape", ["flat", "shape"], ["x"]),  # a shape read at run time: rank unknown
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"]),
             helper.make_node("Relu", ["y"], ["r"])]
    proto = make_model(nodes, [("flat", FLOAT, [120]), ("shape", INT64, ["k"])], [("r", FLOAT, ["n", "c", "h", "w"])],
                       initializers=params, opset=15)
    feeds = {"flat": (RNG.random(120) * 255).astype(np.float32), "shape": np.array([2, 2, 6, 5], np.int64)}
    _check(proto, feeds, atol=1e-2)
    model = onnx_attr.load(proto, strip_final_activation=False)
    bn = [m for m in model.modules() if isinstance(m, AnyRankBatchNorm)]
    assert bn, "constant statistics should give a torch _BatchNorm (RevealCancel reads its weight)"


def test_same_padded_conv_keeps_deeplift_completeness():
    """A SAME_UPPER conv with a constant weight is a torch ConvNd the rewrite treats as linear; the
    DeepLift attributions of a Conv -> Relu -> sum sum to f(x) - f(x0)."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0, axes=[2, 3])]
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 7, 8])], [("y", FLOAT, [1, 4])], initializers={"w": w}, opset=12)
    model = onnx_attr.load(proto, strip_final_activation=False)
    import torch

    x = torch.from_numpy(_image(7)[:1])
    x0 = torch.full_like(x, 128.0)
    attributions = onnx_attr.DeepLift(model).attribute(x, baselines=x0, target=0)
    with torch.no_grad():
        y, y0 = model(x)[0, 0], model(x0)[0, 0]
    assert float(y - y0) != 0
    assert abs(float(attributions.sum()) - float(y - y0)) < 1e-5 * float(abs(y) + abs(y0))
