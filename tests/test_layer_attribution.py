"""DeepLift at a hidden tensor addressed by its ONNX name."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerDeepLift as CaptumLayerDeepLift
from torch import nn

import onnx_attr
from onnx_attr.convert import tensor_nodes

from exporting import to_onnx


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    return model, onnx_attr.load(to_onnx(model, torch.randn(2, 3, 8, 8)))


def _tensor_of(imported, op):
    """The ONNX name of the output of the first node of this op type."""
    node = next(n for n in imported.onnx_model.graph.node if n.op_type == op)
    assert node.output[0] in tensor_nodes(imported.module)
    return node.output[0]


X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
B = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.2


def test_completeness_at_a_cut_layer(pair):
    _, imported = pair
    name = _tensor_of(imported, "Relu")
    attributions, delta = onnx_attr.LayerDeepLift(imported, name).attribute(X, B, target=[0, 2, 4],
                                                                            return_convergence_delta=True)
    assert attributions.shape == (3, 4, 8, 8)
    assert delta.abs().max() < 1e-5  # every path from the input passes through this ReLU


def test_equals_captum_layer_deeplift(pair):
    model, imported = pair
    name = _tensor_of(imported, "Tanh")
    ours = onnx_attr.LayerDeepLift(imported, name).attribute(X, B, target=[0, 2, 4])
    theirs = CaptumLayerDeepLift(model, model[5]).attribute(X, B.expand_as(X), target=[0, 2, 4])
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-4)


def test_unknown_tensor_name_suggests_close_ones(pair):
    _, imported = pair
    with pytest.raises(onnx_attr.InputError, match="no intermediate tensor named"):
        onnx_attr.LayerDeepLift(imported, "relu_nope")
