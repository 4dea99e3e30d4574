"""DeepLift at a hidden tensor addressed by its ONNX name."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerDeepLift as CaptumLayerDeepLift
from captum.attr import LayerIntegratedGradients as CaptumLayerIG
from captum.attr import NeuronDeepLift as CaptumNeuronDeepLift
from captum.attr import NeuronIntegratedGradients as CaptumNeuronIG
from torch import nn

import onnx_attr
from onnx_attr.importing.convert import tensor_nodes

from exporting import TokenBag, to_onnx


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


def test_layer_integrated_gradients_equals_captum(pair):
    model, imported = pair
    name = _tensor_of(imported, "Tanh")
    ours, delta = onnx_attr.LayerIntegratedGradients(imported, name).attribute(
        X, B, target=[0, 2, 4], n_steps=20, return_convergence_delta=True)
    theirs, their_delta = CaptumLayerIG(model, model[5]).attribute(X, B.expand_as(X), target=[0, 2, 4], n_steps=20,
                                                                   return_convergence_delta=True)
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta.float(), their_delta.float(), atol=1e-5, rtol=1e-3)


def test_layer_integrated_gradients_is_complete_at_a_cut_layer(pair):
    _, imported = pair
    name = _tensor_of(imported, "Relu")
    method = onnx_attr.LayerIntegratedGradients(imported, name)
    deltas = [method.attribute(X, B, target=1, n_steps=n, method="riemann_left",
                               return_convergence_delta=True)[1].abs().max() for n in (4, 64)]
    assert deltas[1] < deltas[0] / 8 and deltas[1] < 1e-2
    assert method.last_report["layer"] == name


@pytest.mark.parametrize("ours_cls,theirs_cls", [(onnx_attr.NeuronDeepLift, CaptumNeuronDeepLift),
                                                  (onnx_attr.NeuronIntegratedGradients, CaptumNeuronIG)],
                         ids=["deeplift", "integrated-gradients"])
def test_neuron_attribution_equals_captum(pair, ours_cls, theirs_cls):
    model, imported = pair
    name = _tensor_of(imported, "Relu")
    ours = ours_cls(imported, name).attribute(X, (2, 3, 5), baselines=B)
    theirs = theirs_cls(model, model[1]).attribute(X, (2, 3, 5), baselines=B.expand_as(X))
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-4)


def test_neuron_deeplift_adds_up_to_the_neuron_change(pair):
    _, imported = pair
    name = _tensor_of(imported, "Tanh")
    attributions = onnx_attr.NeuronDeepLift(imported, name).attribute(X, 7, baselines=B)
    hidden = onnx_attr.tensor_as_output(imported, name)
    change = hidden(X)[:, 7] - hidden(B)[:, 7]
    torch.testing.assert_close(attributions.sum((1, 2, 3)), change.detach(), atol=1e-5, rtol=1e-5)


def test_layer_integrated_gradients_at_an_embedding_of_token_ids():
    torch.manual_seed(5)
    imported = onnx_attr.load(to_onnx(TokenBag(20).eval(), torch.randint(0, 20, (2, 7)), input_names=("ids",)))
    name = _tensor_of(imported, "Gather")
    ids = torch.randint(1, 20, (3, 7))
    attributions, delta = onnx_attr.LayerIntegratedGradients(imported, name).attribute(
        ids, torch.zeros(1, 7, dtype=torch.long), target=2, return_convergence_delta=True)
    assert attributions.shape == (3, 7, 6)
    assert delta.abs().max() < 1e-4
