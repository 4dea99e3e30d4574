"""Captum call forms found by porting Captum's tests (hunt 12): each was a raw exception or a
refusal where Captum's call runs."""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from onnx_attr.errors import InputError
from captum_models import export, load


class Scaled(torch.nn.Module):
    """x * gain, gain a 0-d float input (a setting, as a threshold or a temperature)."""

    def forward(self, x, gain):
        return x * gain


def test_a_python_int_is_read_as_a_float_setting():
    model = onnx_attr.load(export(Scaled(), [torch.ones(2, 3), torch.tensor(2.0)], ["x", "gain"]))
    x = torch.tensor([[1.0, -2.0, 3.0]])
    got = onnx_attr.InputXGradient(model).attribute(x, target=2, additional_forward_args=(3,))
    assert torch.equal(got, torch.tensor([[0.0, 0.0, 9.0]]))  # x · d(3x)/dx at column 2, by hand


class Offset(torch.nn.Module):
    """relu(x + offset) · w: offset an input the export declares [batch, 3], as Captum's add_input."""

    def forward(self, x, offset):
        return torch.relu(x + offset) @ torch.tensor([[2.0], [-3.0], [5.0]])


def test_a_number_for_an_input_with_axes_is_broadcast_to_its_declared_shape():
    """Captum's test_lrp_multi passes additional_forward_args=(0,) for an input a Python forward
    broadcasts; the export declares it [batch, 3], so the number fills that shape (the batch taken
    from x, named alike)."""
    model = onnx_attr.load(export(Offset(), [torch.ones(2, 3), torch.ones(2, 3)], ["x", "offset"]))
    x = torch.tensor([[1.0, -2.0, 300.0], [-4.0, 50.0, 6.0]])
    got = onnx_attr.InputXGradient(model).attribute(x, target=0, additional_forward_args=(1,))
    by_hand = x * (x + 1 > 0) * torch.tensor([2.0, -3.0, 5.0])
    assert torch.equal(got, by_hand)
    full = onnx_attr.InputXGradient(model).attribute(x, target=0, additional_forward_args=(torch.ones(2, 3),))
    assert torch.equal(got, full)


def test_a_number_for_an_axis_nothing_names_is_a_clear_error():
    import numpy as np

    from onnx_attr.importing.inputs import check_inputs
    from onnx_attr.importing.specs import TensorSpec

    specs = [TensorSpec("x", ("batch", 3), np.dtype("float32")), TensorSpec("w", (None, 3), np.dtype("float32"))]
    with pytest.raises(InputError, match="axis 0 is neither declared nor named"):
        check_inputs([torch.ones(2, 3), 0.5], specs)
    huge = [specs[0], TensorSpec("w", ("batch", 2**20, 2**20), np.dtype("float32"))]  # a hostile declaration
    with pytest.raises(InputError, match="pass the array itself"):
        check_inputs([torch.ones(2, 3), 0.5], huge)


def test_a_list_given_to_a_neuron_method_is_a_clear_error():
    model = load("MultiLayerMultiRelu")
    relus = [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Relu"]
    with pytest.raises(InputError, match="takes one ONNX tensor name"):
        onnx_attr.NeuronConductance(model, relus)


def test_grad_kwargs_other_than_materialize_grads_are_refused():
    model = load("MultiLayer")
    gemm = next(n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Gemm")
    x = torch.tensor([[0.0, 100.0, 0.0]])
    cam = onnx_attr.LayerGradCam(model, gemm)
    assert torch.equal(cam.attribute(x, target=0, grad_kwargs={"materialize_grads": True}),
                       cam.attribute(x, target=0))
    with pytest.raises(InputError, match="grad_kwargs"):
        cam.attribute(x, target=0, grad_kwargs={"retain_graph": True})


def test_attribute_to_layer_input_reads_the_tensor_the_layer_is_computed_from():
    """Captum's test_simple_input_conv_without_final_relu: GradCAM at conv1's input, which is the
    model input x; the ReLU's input is linear1's output (test_simple_multi_input_relu_input)."""
    model = load("MultiLayer")
    names = {n.meta.get("onnx_op"): n.meta["onnx_tensor"] for n in model.module.graph.nodes if "onnx_tensor" in n.meta}
    x = torch.tensor([[0.0, 100.0, 0.0]])
    relu_in = onnx_attr.LayerActivation(model, names["Relu"]).attribute(x, attribute_to_layer_input=True)
    assert torch.equal(relu_in, torch.tensor([[90.0, 101.0, 101.0, 101.0]]))  # linear1(x), by hand
    first = [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Gemm"][0]
    at_input = onnx_attr.LayerGradientXActivation(model, first).attribute(x, target=0, attribute_to_layer_input=True)
    assert torch.allclose(at_input, onnx_attr.InputXGradient(model).attribute(x, target=0))
    after = onnx_attr.LayerActivation(model, names["Relu"]).attribute(x)  # the next call starts from the names
    assert torch.equal(after, torch.relu(relu_in))


def test_lrp_identity_rule_needs_its_input_shape_at_the_output():
    """Captum's IdentityRule passes relevance through unchanged (test_lrp_Identity's stated value is in
    test_captum_expectations_more.py); on a node that changes the shape it is a clear error."""
    from captum_models_more import load as load_more

    model = load_more("SimpleLRP")
    gemms = [n.meta["onnx_node"] for n in model.module.graph.nodes
             if n.meta.get("onnx_op") == "Gemm"]
    lrp = onnx_attr.LRP(model, rules={gemms[1]: onnx_attr.Identity()})
    with pytest.raises(InputError, match="identity rule.*input's shape \\[1, 3\\] at its output \\[1, 1\\]"):
        lrp.attribute(torch.tensor([[1.0, 2.0, 3.0]]))


def test_the_methods_carry_captums_multiplies_by_inputs_flags():
    """Captum 0.9's flags (read off Captum's classes): perturbation methods are global attributions,
    Lime and KernelShap are not; LayerActivation is. They were all False here."""
    model = load("MultiLayer")
    gemm = next(n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Gemm")
    expected = {"FeatureAblation": True, "Occlusion": True, "ShapleyValueSampling": True, "ShapleyValues": True,
                "FeaturePermutation": True, "Lime": False, "KernelShap": False}
    for name, flag in expected.items():
        assert getattr(onnx_attr, name)(model).multiplies_by_inputs is flag, name
    for name in ("LayerActivation", "LayerFeatureAblation", "NeuronFeatureAblation"):
        assert getattr(onnx_attr, name)(model, gemm).multiplies_by_inputs is True, name


def test_neuron_conductance_at_the_neurons_input_equals_captums():
    """attribute_to_neuron_input=True: the neuron in the tensor the ReLU reads (linear1's output).
    Oracle: Captum's NeuronConductance on its own module (Gauss-Legendre: the trapezoid weights
    differ on purpose, docs/captum_differences.md)."""
    basic_models = pytest.importorskip("captum.testing.helpers.basic_models")
    from captum.attr import NeuronConductance

    model = load("MultiLayer")
    relu = next(n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Relu")
    x, base = torch.tensor([[0.0, 100.0, 0.0], [3.0, -4.0, 20.0]]), torch.tensor([[0.0, -20.0, 0.0]])
    ours = onnx_attr.NeuronConductance(model, relu).attribute(x, neuron_selector=0, baselines=base, target=0,
                                                                attribute_to_neuron_input=True, method="gausslegendre")
    net = basic_models.BasicModel_MultiLayer()
    theirs = NeuronConductance(net, net.relu).attribute(x, neuron_selector=0, baselines=base, target=0,
                                                         attribute_to_neuron_input=True, method="gausslegendre")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_has_convergence_delta_as_captum():
    """Captum's has_convergence_delta: the methods whose attribute returns a delta."""
    model = load("MultiLayerMultiRelu")
    assert onnx_attr.DeepLift(model).has_convergence_delta()
    assert onnx_attr.IntegratedGradients(model).has_convergence_delta()
    assert not onnx_attr.Saliency(model).has_convergence_delta()
    assert not onnx_attr.FeatureAblation(model).has_convergence_delta()
