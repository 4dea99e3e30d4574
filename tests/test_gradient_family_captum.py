"""Guided, layer and neuron gradient methods equal Captum's, run on the same imported module
(`model.module`, the same weights), on a conv net at image scale (pixels 0-255, logits in the
hundreds). Captum hooks the `nn.ReLU` modules of the imported graph; ours swap the Relu nodes
for a sibling graph's, so the two must agree to float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx_attr.deeplift.layers import tensor_node


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()
        self.head = nn.Linear(6 * 6 * 6, 5)

    def forward(self, x):
        return self.head(self.r2(self.c2(self.r1(self.c1(x)))).flatten(1)) * 20.0


@pytest.fixture(scope="module")
def setup():
    return conv_setup()


def conv_setup():
    """The imported conv net, its second Relu's tensor and module, inputs and a background."""
    from exporting import to_onnx

    model = onnx_attr.load(to_onnx(ConvNet(), torch.rand(2, 1, 6, 6)))
    relus = [n.output[0] for n in model.onnx_model.graph.node if n.op_type == "Relu"]
    layer = relus[1]
    module = model.module.get_submodule(tensor_node(model.module, layer).target)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 1, 6, 6, generator=g) * 255.0
    background = torch.rand(4, 1, 6, 6, generator=g) * 255.0
    with torch.no_grad():
        assert float(model(x).abs().max()) > 50  # logits at the scale real models give
    return model, layer, module, x, background


def _close(ours, theirs, rtol=1e-4):
    ours, theirs = torch.as_tensor(ours).double(), torch.as_tensor(theirs).double()
    scale = float(theirs.abs().max()) or 1.0
    assert ours.shape == theirs.shape
    err = float((ours - theirs).abs().max()) / scale
    assert err <= rtol, f"max |ours - Captum's| / max |Captum's| = {err:.2e}"
    return err


def _seeded(call):
    torch.manual_seed(7)
    np.random.seed(7)
    return call()


INPUT_METHODS = ["GuidedBackprop", "Deconvolution"]


@pytest.mark.parametrize("name", INPUT_METHODS)
def test_guided_input_methods_equal_captum(setup, name):
    import captum.attr

    model, _, _, x, _ = setup
    target = [0, 3, 4]
    ours = getattr(onnx_attr, name)(model).attribute(x, target=target)
    theirs = getattr(captum.attr, name)(model.module).attribute(x, target=target)
    assert float(theirs.abs().max()) > 0
    _close(ours, theirs)


def test_guided_backprop_differs_from_the_gradient(setup):
    """A check that the ReLUs were swapped at all: the guided result is not the plain gradient."""
    model, _, _, x, _ = setup
    plain = onnx_attr.Saliency(model).attribute(x, target=1, abs=False)
    guided = onnx_attr.GuidedBackprop(model).attribute(x, target=1)
    assert not torch.allclose(plain, guided)
    with torch.no_grad():  # the swap keeps the forward pass bit for bit
        assert torch.equal(onnx_attr.GuidedBackprop(model).model(x), model(x))


LAYER_CALLS = {
    "LayerActivation": lambda x, b: {},
    "LayerGradientXActivation": lambda x, b: {"target": 2},
    "LayerGradCam": lambda x, b: {"target": 2},
    "InternalInfluence": lambda x, b: {"target": 2, "baselines": b[:1], "n_steps": 16},
    "LayerConductance": lambda x, b: {"target": 2, "baselines": b[:1], "n_steps": 16},
    "LayerGradientShap": lambda x, b: {"target": 2, "baselines": b, "n_samples": 3, "stdevs": 2.0},
    "LayerDeepLiftShap": lambda x, b: {"target": 2, "baselines": b},
}


@pytest.mark.parametrize("name", list(LAYER_CALLS))
def test_layer_methods_equal_captum(setup, name):
    import captum.attr

    model, layer, module, x, background = setup
    kwargs = LAYER_CALLS[name](x, background)
    ours = _seeded(lambda: getattr(onnx_attr, name)(model, layer).attribute(x, **kwargs))
    theirs = _seeded(lambda: getattr(captum.attr, name)(model.module, module).attribute(x, **kwargs))
    _close(ours, theirs)


def test_layer_grad_cam_options_equal_captum(setup):
    import captum.attr

    model, layer, module, x, _ = setup
    for options in ({"relu_attributions": True}, {"attr_dim_summation": False}):
        _close(onnx_attr.LayerGradCam(model, layer).attribute(x, target=4, **options),
               captum.attr.LayerGradCam(model.module, module).attribute(x, target=4, **options))


def test_layer_conductance_delta_equals_captum_and_falls_with_steps(setup):
    import captum.attr

    model, layer, module, x, background = setup
    deltas = []
    for steps in (8, 64):
        _, ours = onnx_attr.LayerConductance(model, layer).attribute(
            x, background[:1], target=1, n_steps=steps, return_convergence_delta=True)
        _, theirs = captum.attr.LayerConductance(model.module, module).attribute(
            x, background[:1], target=1, n_steps=steps, return_convergence_delta=True)
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-3, atol=1e-3)
        deltas.append(float(ours.abs().max()))
    assert deltas[1] < deltas[0]


def test_guided_grad_cam_equals_captum(setup):
    import captum.attr

    model, layer, module, x, _ = setup
    ours = onnx_attr.GuidedGradCam(model, layer).attribute(x, target=[1, 2, 3])
    theirs = captum.attr.GuidedGradCam(model.module, module).attribute(x, target=[1, 2, 3])
    assert float(theirs.abs().max()) > 0
    _close(ours, theirs)


NEURON_CALLS = {
    "NeuronGradient": lambda b: {},
    "NeuronGuidedBackprop": lambda b: {},
    "NeuronDeconvolution": lambda b: {},
    "NeuronGradientShap": lambda b: {"baselines": b, "n_samples": 3, "stdevs": 2.0},
    "NeuronDeepLiftShap": lambda b: {"baselines": b},
    "NeuronIntegratedGradients": lambda b: {"baselines": b[:1], "n_steps": 16},
}


@pytest.mark.parametrize("name", list(NEURON_CALLS))
def test_neuron_methods_equal_captum(setup, name):
    import captum.attr

    model, layer, module, x, background = setup
    kwargs = NEURON_CALLS[name](background)
    ours = _seeded(lambda: getattr(onnx_attr, name)(model, layer).attribute(x, (2, 3, 1), **kwargs))
    theirs = _seeded(lambda: getattr(captum.attr, name)(model.module, module).attribute(x, (2, 3, 1), **kwargs))
    assert float(torch.as_tensor(theirs).abs().max()) > 0
    _close(ours, theirs)


def test_neuron_conductance_equals_captum(setup):
    import captum.attr

    model, layer, module, x, background = setup
    for kwargs in ({"n_steps": 12, "method": "gausslegendre", "baselines": background[:1]},
                   {"n_steps": 10, "method": "riemann_middle"}, {"n_steps": 16}):
        ours = onnx_attr.NeuronConductance(model, layer).attribute(x, (2, 3, 1), target=[0, 1, 4], **kwargs)
        theirs = captum.attr.NeuronConductance(model.module, module).attribute(x, (2, 3, 1), target=[0, 1, 4],
                                                                                **kwargs)
        assert float(theirs.abs().max()) > 0
        if "method" not in kwargs:  # the default trapezoid: Captum's weights are 1/n, the textbook's 1/(n - 1)
            ours = ours * (kwargs["n_steps"] - 1) / kwargs["n_steps"]  # (docs/captum_differences.md)
        _close(ours, theirs)
