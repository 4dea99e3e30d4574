"""DeepLift through a GridSample whose grid varies (rules/sampling.py): the Shapley values of the image
and of each grid coordinate per output element.

Oracles: onnxruntime run on every hybrid (each player at its value or its reference), the Shapley
formula applied by hand to those outputs; the image's share per pixel from onnxruntime's outputs with
one pixel moved (the op is linear in the image at any grid); completeness at pixel magnitudes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import onnx_attr


def _model(mode: str, padding: str, align: int, image_shape, grid_shape, opset: int = 20) -> onnx.ModelProto:
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=padding, align_corners=align)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, image_shape),
                                            helper.make_tensor_value_info("grid", TensorProto.DOUBLE, grid_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None] * len(image_shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _expected(proto, x, x0, g, g0, target):
    """Per input, each element's contribution to y[target], from onnxruntime on the hybrids."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    f = lambda image, grid: session.run(None, {"x": image, "grid": grid})[0][target]  # noqa: E731
    k = g.shape[-1]
    n = k + 1
    location = (target[0], *target[2:])  # the grid row the target element reads

    def grid(subset):
        return np.where(np.isin(np.arange(k), list(subset)), g, g0)

    def weight(size):
        return math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)

    subsets = [s for size in range(k + 1) for s in itertools.combinations(range(k), size)]
    grid_part = np.zeros_like(g)
    for p in range(k):
        others = [q for q in range(n) if q != p]  # player k is the image
        for size in range(len(others) + 1):
            for s in itertools.combinations(others, size):
                image = x if k in s else x0
                coords = tuple(q for q in s if q < k)
                grid_part[location + (p,)] += weight(size) * (f(image, grid(coords + (p,))) - f(image, grid(coords)))
    image_part = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        moved = x0.copy()
        moved[index] = x[index]
        image_part[index] = sum(weight(len(s)) * (f(moved, grid(s)) - f(x0, grid(s))) for s in subsets)
    return image_part, grid_part


CASES = [("linear", "zeros", 0), ("linear", "border", 1), ("nearest", "reflection", 0), ("cubic", "zeros", 0)]


@pytest.mark.parametrize("mode,padding,align", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_image_and_grid_shares_are_the_hybrids_shapley_values(mode, padding, align):
    rng = np.random.default_rng(0)
    x, x0 = rng.uniform(0, 255, (1, 2, 4, 5)), rng.uniform(0, 255, (1, 2, 4, 5))  # pixels, a far reference
    g, g0 = rng.uniform(-1.2, 1.2, (1, 3, 3, 2)), rng.uniform(-1.2, 1.2, (1, 3, 3, 2))  # some samples outside
    proto = _model(mode, padding, align, [1, 2, 4, 5], [1, 3, 3, 2])
    model = onnx_attr.load(proto)
    dl = onnx_attr.DeepLift(model)
    for target in [(0, 0, 1, 2), (0, 1, 2, 0)]:
        got_x, got_g = dl.attribute((torch.from_numpy(x), torch.from_numpy(g)), (torch.from_numpy(x0), torch.from_numpy(g0)),
                                    target=target[1:])
        image_part, grid_part = _expected(proto, x, x0, g, g0, target)
        scale = max(np.abs(image_part).max(), np.abs(grid_part).max())
        np.testing.assert_allclose(got_x.numpy(), image_part, rtol=1e-7, atol=1e-9 * scale)
        np.testing.assert_allclose(got_g.numpy(), grid_part, rtol=1e-7, atol=1e-9 * scale)


def test_a_volume_sampled_at_a_varying_grid_has_four_players():
    """GridSample-20 over a volume [N, C, D, H, W] with a 3-coordinate grid: 16 hybrids per element."""
    rng = np.random.default_rng(1)
    x, x0 = rng.standard_normal((1, 1, 3, 3, 4)), np.zeros((1, 1, 3, 3, 4))
    g, g0 = rng.uniform(-1, 1, (1, 2, 2, 2, 3)), rng.uniform(-1, 1, (1, 2, 2, 2, 3))
    proto = _model("linear", "zeros", 0, [1, 1, 3, 3, 4], [1, 2, 2, 2, 3])
    got_x, got_g = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(
        (torch.from_numpy(x), torch.from_numpy(g)), (torch.from_numpy(x0), torch.from_numpy(g0)), target=(0, 1, 0, 1))
    image_part, grid_part = _expected(proto, x, x0, g, g0, (0, 0, 1, 0, 1))
    np.testing.assert_allclose(got_x.numpy(), image_part, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got_g.numpy(), grid_part, rtol=1e-7, atol=1e-12)


def test_an_unwarper_whose_grid_follows_the_image_is_complete():
    """A document unwarper in small: a Conv + Tanh predicts the grid from the image, which is then
    sampled at it (docuwarp's pattern). Pixels 0-255, the baseline a flat grey page: Σ attributions is
    the change of each output element, through the network that made the grid and the sampling."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32) * 0.01
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Tanh", ["c"], ["t"]),
             helper.make_node("Transpose", ["t"], ["grid"], perm=[0, 2, 3, 1]),
             helper.make_node("GridSample", ["x", "grid"], ["y"], mode="linear", align_corners=0)]
    graph = helper.make_graph(nodes, "unwarp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 16, 16])],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    assert model.verify(rng.uniform(0, 255, (2, 3, 16, 16)).astype(np.float32)).passed
    x = torch.from_numpy(rng.uniform(0, 255, (2, 3, 16, 16)).astype(np.float32))
    for target in [(0, 3, 4), (2, 15, 0), (1, 8, 8)]:
        got, delta = onnx_attr.DeepLift(model).attribute(x, torch.full((1, 3, 16, 16), 128.0), target=target,
                                                         return_convergence_delta=True)
        assert float(delta.abs().max()) <= 1e-5 * 255
        assert got.abs().sum() > 0
