"""DeepLift's completeness check on a deep network at small input magnitudes (an image fed in [0, 1]
to a net trained on 0..255; PP-OCR's detectors at a hundredth of their input): f(x) − f(x0) is a
small difference of two outputs that each carry the rounding of every node on their path. Oracle:
the same network in float64, where the rules leave 1e-14."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.methods.deeplift import DELTA_TOLERANCE, ROUNDING_ULPS, relative_delta


def _deep_tanh(dtype, layers: int = 120, width: int = 16):
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i in range(layers):
        weights += [numpy_helper.from_array((rng.normal(size=(width, width)) * 1.5 / np.sqrt(width)).astype(dtype), f"w{i}"),
                    numpy_helper.from_array((rng.normal(size=width) * 0.5).astype(dtype), f"b{i}")]
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]), helper.make_node("Tanh", [f"a{i}"], [f"t{i}"])]
        previous = f"t{i}"
    weights.append(numpy_helper.from_array((rng.normal(size=(width, 1)) * 3).astype(dtype), "head"))
    nodes.append(helper.make_node("MatMul", [previous, "head"], ["y"]))
    kind = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", kind, ["N", width])],
                              [helper.make_tensor_value_info("y", kind, ["N", 1])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_deep_networks_own_rounding_is_not_an_incomplete_explanation():
    """361 nodes deep, inputs at 1e-2: float32's delta is up to 4e-6 on an output of -3.79 (9 ulps;
    Δf ~1e-4), the float64 twin's 1e-14, so the rules are exact and the rest is the two forward
    passes' rounding. A floor of 8 ulps of the output flagged it (relative 1.2e-4 on this machine);
    the floor grows as √depth, the way independent roundings add up."""
    x = np.random.default_rng(1).normal(size=(4, 16)) * 1e-2
    wide = onnx_attr.DeepLift(onnx_attr.load(_deep_tanh(np.float64)))
    _, exact = wide.attribute(torch.from_numpy(x), target=0, return_convergence_delta=True)
    assert float(exact.abs().max()) < 1e-12
    method = onnx_attr.DeepLift(onnx_attr.load(_deep_tanh(np.float32)))
    method.attribute(torch.from_numpy(x.astype(np.float32)), target=0, return_convergence_delta=True)
    assert method.last_report["max_relative_delta"] <= DELTA_TOLERANCE and not method.last_report.get("warnings")


@pytest.mark.parametrize("depth", [1, 361, 10_000])
def test_an_error_the_rounding_cannot_explain_is_still_flagged(depth):
    """By hand: an output of 4 moving by 0.5, attributions off by 0.1% of that. √10,000 · 8 ulps of 4
    is 3.8e-4, far below the 5e-4 error; and an error within it (a tenth of that) passes."""
    change, magnitude = torch.tensor([0.5], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    assert float(relative_delta(torch.tensor([5e-4]), change, "float32", magnitude, depth)) > DELTA_TOLERANCE
    within = ROUNDING_ULPS * np.sqrt(depth) * np.finfo(np.float32).eps * 4.0 / 10
    assert float(relative_delta(torch.tensor([within]), change, "float32", magnitude, depth)) <= DELTA_TOLERANCE
