"""Patterns from the fifth widening pass over models shipped in public packages
(benchmarks/real_exports.py, session 14), re-created as small graphs: onnxruntime is the oracle
for the forward, the completeness identity for DeepLift."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run

RNG = np.random.default_rng(14)


def l2_normalize_model(bounds: list[str]):
    """torch.nn.functional.normalize as PyTorch exports it (efficientword-net's embedding head):
    y / Expand(Clip(||y||_2, eps, ""), shape), the omitted max written as an empty input name."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Abs", ["y"], ["a"]),
        helper.make_node("Pow", ["a", "two"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["ss"], keepdims=1),
        helper.make_node("Pow", ["ss", "half"], ["norm"]),
        helper.make_node("Clip", ["norm", *bounds], ["safe"]),
        helper.make_node("Expand", ["safe", "shape"], ["wide"]),
        helper.make_node("Div", ["y", "wide"], ["out"]),
    ]
    inits = {"w": RNG.standard_normal((6, 5)).astype(np.float32), "two": np.array(2.0, np.float32),
             "half": np.array(0.5, np.float32), "axes": np.array([1], np.int64),
             "shape": np.array([1, 5], np.int64), "eps": np.array(1e-12, np.float32),
             "big": np.array(3.0, np.float32)}
    return make_model(nodes, [("x", FLOAT, [1, 6])], [("out", FLOAT, [1, 5])], initializers=inits, opset=14)


@pytest.mark.parametrize("bounds", [["eps", ""], ["", "big"], ["eps"]], ids=["min-only", "max-only", "min-short"])
def test_clip_with_an_omitted_bound_imports_and_is_complete(bounds):
    proto = l2_normalize_model(bounds)
    x = (RNG.standard_normal((1, 6)) * 2).astype(np.float32)
    x0 = (RNG.standard_normal((1, 6)) * 0.5).astype(np.float32)
    model = onnx_attr.load(proto, strip_final_activation=False)
    expected = ort_run(proto, {"x": x})[0]
    np.testing.assert_allclose(model.run({"x": x})[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert model.verify({"x": x}).passed
    f0 = ort_run(proto, {"x": x0})[0]
    attr, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=2, return_convergence_delta=True)
    change = float(expected[0, 2] - f0[0, 2])
    assert abs(float(attr.sum()) - change) <= 1e-5 * max(1.0, abs(change))
