"""Several layers named at once where one is computed from another (Captum's list of layers).

Cut at both together, the upstream layer's only paths to the output run through the downstream
cut, so its gradient and its ablations read 0: every layer method answered zeros for it, with no
error. Oracles: Captum's stated values for each layer alone (BasicModel_MultiLayer, x = [0, 100, 0]:
LayerGradientXActivation at linear0 [0, 400, 0], at linear1 [90, 101, 101, 101]; LayerConductance at
linear0 [0, 390, 0]; InternalInfluence at linear0 [3.9, 3.9, 3.9]) and the gradient by hand.
"""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from onnx_attr.errors import InputError
from captum_models import load

X = torch.tensor([[0.0, 100.0, 0.0]])


def _layers(model):
    gemms = [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Gemm"]
    return gemms[0], gemms[1]  # linear0, then linear1 computed from it


def _close(got, expected, tol):
    assert torch.allclose(torch.as_tensor(got).double(), torch.tensor(expected).double(), atol=tol), got


def test_gradient_x_activation_reads_every_path_of_a_nested_layer():
    model = load("MultiLayer")
    l0, l1 = _layers(model)
    a0, a1 = onnx_attr.LayerGradientXActivation(model, [l0, l1]).attribute(X, target=0)
    _close(a0, [[0.0, 400.0, 0.0]], 1e-3)  # Captum's stated values, each layer alone
    _close(a1, [[90.0, 101.0, 101.0, 101.0]], 1e-3)
    # by hand: linear1's rows all ones, its first unit off (90 - 10 > 0 is on: all four on), linear2 ones
    g0 = onnx_attr.LayerGradientXActivation(model, [l0, l1], multiply_by_inputs=False).attribute(X, target=0)[0]
    _close(g0, [[4.0, 4.0, 4.0]], 1e-5)


def test_path_methods_read_every_path_of_a_nested_layer():
    model = load("MultiLayer")
    l0, l1 = _layers(model)
    conductance, delta = onnx_attr.LayerConductance(model, [l0, l1]).attribute(X, target=0, n_steps=500,
                                                                                 return_convergence_delta=True)
    assert float(delta.abs().max()) < 0.01  # each complete alone (Captum's bound for one layer)
    _close(conductance[0], [[0.0, 390.0, 0.0]], 0.1)  # Captum's stated value for linear0 alone (500 steps)
    alone = onnx_attr.LayerConductance(model, l1).attribute(X, target=0, n_steps=500)
    _close(conductance[1], alone, 1e-4)
    influence = onnx_attr.InternalInfluence(model, (l0, l1)).attribute(X, target=0)
    assert isinstance(influence, tuple)
    _close(influence[0], [[3.9, 3.9, 3.9]], 0.1)
    shap = onnx_attr.LayerGradientShap(model, [l0, l1]).attribute(X, baselines=torch.zeros(2, 3), target=0)
    assert float(shap[0].abs().sum()) > 100  # was exactly 0


def test_perturbation_of_a_nested_layer_reaches_the_output():
    model = load("MultiLayer")
    l0, l1 = _layers(model)
    both = onnx_attr.LayerFeatureAblation(model, [l0, l1]).attribute(X, target=0)
    # zeroing linear0's second unit (100) takes the output from 392 to -1 + 3·1 + relu(0 - 10) = 2
    _close(both[0], [[0.0, 390.0, 0.0]], 1e-3)
    _close(both[1], onnx_attr.LayerFeatureAblation(model, l1).attribute(X, target=0), 1e-4)


def test_independent_layers_are_still_cut_together():
    model = load("MultiLayerMultiRelu")
    relus = [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Relu"]
    got = onnx_attr.LayerGradientXActivation(model, relus).attribute(torch.tensor([[3.0, 4.0, 0.0]]), target=0)
    for a in got:  # Captum's stated value (test_simple_multi_gradient_activation)
        _close(a, [[0.0, 8.0, 8.0, 8.0]], 1e-3)


def test_integrated_gradients_refuses_nested_layers_by_name():
    model = load("MultiLayer")
    l0, l1 = _layers(model)
    with pytest.raises(InputError, match=f"{l1!r} is computed from layer {l0!r}.*its own call"):
        onnx_attr.LayerIntegratedGradients(model, [l0, l1]).attribute(X, target=0)


def test_deeplift_reads_every_path_of_a_nested_layer():
    model = load("MultiLayer")
    l0, l1 = _layers(model)
    (a0, a1), delta = onnx_attr.LayerDeepLift(model, [l0, l1]).attribute(X, target=0, return_convergence_delta=True)
    # linear0 alone: all paths pass through it, so its attributions sum to f(x) - f(0) = 392 - 2
    _close(a0, [[0.0, 390.0, 0.0]], 1e-3)
    _close(a1, onnx_attr.LayerDeepLift(model, l1).attribute(X, target=0), 1e-4)
    assert float(delta.abs().max()) < 1e-3  # each layer complete alone: not their sum, 780, against 390
    shap = onnx_attr.LayerDeepLiftShap(model, [l0, l1]).attribute(X, baselines=torch.zeros(2, 3), target=0)
    _close(shap[0], [[0.0, 390.0, 0.0]], 1e-3)
