"""DeepLift through ScatterElements with a max or min reduction (rules/scatter.py): a graph network's
global max pooling, the cross-max rule per segment.

Oracles: a hand-computed case; the same pooling written as Reshape + ReduceMax, whose rule
(rules/pooling.py, checked against Captum's MaxPool elsewhere) is a separate implementation of the
same rule; completeness through a small graph network at node-feature magnitudes in the hundreds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model


def _pool(reduction: str, nodes: int, segments: int, fill: float):
    """y[s] = reduction over x[i] with batch[i] = s (and the fill value), as torch.onnx writes it."""
    graph_nodes = [helper.make_node("ScatterElements", ["fill", "batch", "x"], ["y"], axis=0, reduction=reduction)]
    return make_model(graph_nodes, [("x", FLOAT, [nodes, 3]), ("batch", TensorProto.INT64, [nodes, 3])],
                      [("y", FLOAT, [segments, 3])],
                      {"fill": np.full((segments, 3), fill, np.float32)}, opset=18)


def test_a_hand_computed_segment_max():
    """Segment 0 holds x = (1, 5), x0 = (3, 0): the max rises 3 -> 5, so 5 - 3 = 2 goes to x's peak
    (element 1). Segment 1 holds x = (2, 2, 0), x0 = (0, 4, 0): it falls 4 -> 2, and 2 - 4 = -2 goes
    to the reference's peak (element 3). Empty segment 2 stays at -inf: no credit, no NaN."""
    model = onnx_attr.load(_pool("max", 5, 3, -np.inf))
    batch = np.repeat(np.array([[0], [0], [1], [1], [1]]), 3, 1)
    x = np.repeat(np.array([[1.0], [5.0], [2.0], [2.0], [0.0]], np.float32), 3, 1)
    x0 = np.repeat(np.array([[3.0], [0.0], [0.0], [4.0], [0.0]], np.float32), 3, 1)
    dl = onnx_attr.DeepLift(model)
    for segment, expected in ((0, [0.0, 2.0, 0.0, 0.0, 0.0]), (1, [0.0, 0.0, 0.0, -2.0, 0.0])):
        got = dl.attribute((torch.from_numpy(x), torch.from_numpy(batch)), (torch.from_numpy(x0), torch.from_numpy(batch)),
                           target=(segment, 1))
        got = got[0] if isinstance(got, tuple) else got
        np.testing.assert_allclose(got[:, 1].numpy(), expected, atol=1e-6)
        assert not got[:, [0, 2]].any()


@pytest.mark.parametrize("reduction", ["max", "min"])
def test_equal_segments_match_the_reduce_max_rule(reduction):
    """Four segments of six nodes each: ScatterElements over the batch index against Reshape +
    ReduceMax/ReduceMin over the same values, inputs and a far reference drawn at scale 100."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((24, 3)) * 100).astype(np.float32)
    x0 = (rng.standard_normal((24, 3)) * 100).astype(np.float32)
    x[5] = x0[5]  # an unchanged node (its share as the gradient)
    batch = np.repeat(np.arange(4), 6)[:, None].repeat(3, 1)
    fill = -np.inf if reduction == "max" else np.inf
    scatter = onnx_attr.load(_pool(reduction, 24, 4, fill))
    reduce = onnx_attr.load(make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("ReduceMax" if reduction == "max" else "ReduceMin", ["r", "axes"], ["y"], keepdims=0)],
        [("x", FLOAT, [24, 3])], [("y", FLOAT, [4, 3])],
        {"shape": np.array([4, 6, 3], np.int64), "axes": np.array([1], np.int64)}, opset=18))
    for target in [(0, 0), (2, 1), (3, 2)]:
        got = onnx_attr.DeepLift(scatter).attribute((torch.from_numpy(x), torch.from_numpy(batch)),
                                                    (torch.from_numpy(x0), torch.from_numpy(batch)), target=target)
        got = got[0] if isinstance(got, tuple) else got
        expected = onnx_attr.DeepLift(reduce).attribute(torch.from_numpy(x), torch.from_numpy(x0), target=target)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-4)


def test_a_graph_network_readout_is_complete():
    """Node features -> MatMul -> Relu -> global max pool over two molecules (the batch index held)
    -> Gemm to a score: Σ attributions is the change of each molecule's score."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Unsqueeze", ["batch", "one"], ["b1"]),
             helper.make_node("Expand", ["b1", "wide"], ["index"]),
             helper.make_node("ScatterElements", ["fill", "index", "r"], ["pooled"], axis=0, reduction="max"),
             helper.make_node("MatMul", ["pooled", "w2"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 5]), ("batch", TensorProto.INT64, ["n"])], [("y", FLOAT, [2, 2])],
                       {"w1": w1, "w2": w2, "one": np.array([1], np.int64), "wide": np.array([1, 8], np.int64),
                        "fill": np.zeros((2, 8), np.float32)}, opset=18)
    model = onnx_attr.load(proto)
    x = (rng.standard_normal((9, 5)) * 300).astype(np.float32)
    batch = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], np.int64)
    assert model.verify({"x": x, "batch": batch}).passed
    for target in [(0, 0), (1, 1)]:
        got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), torch.zeros(1, 5), target=target,
                                                         additional_forward_args=(torch.from_numpy(batch),),
                                                         return_convergence_delta=True)
        assert float(delta.abs().max()) <= 1e-5 * 300 * 8
        assert got[batch != target[0]].abs().max() == 0  # the other molecule's nodes do not reach this score
