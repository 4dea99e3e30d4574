"""Captum's own stated values for its layer and neuron tests (tests/attr/layer/test_layer_activation.py,
test_layer_ablation.py, test_layer_lrp.py, test_layer_gradient_shap.py; tests/attr/neuron/
test_neuron_gradient.py, test_neuron_ablation.py, test_neuron_gradient_shap.py), ported as
tests/test_captum_expectations_more.py does: Captum's models exported to ONNX, the layer named by its
ONNX tensor, Captum's call form, Captum's tolerances. Each case names its source test (file::test).

Where Captum's test draws random baselines after building its module, the case builds Captum's own
module (captum.testing.helpers.basic_models) first, so the generator stands where Captum's did."""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from captum_harness import as_tuple, captum_module, registrar, run_case
from captum_models_layers import load, tensor, torch_module

T = torch.tensor
CASES: list = []


case = registrar(CASES)
_tuple = as_tuple


def _checks(got, expected, delta, mode="sum"):
    """assertTensorTuplesAlmostEqual: a tuple expected is compared item by item, else as one tensor."""
    if not isinstance(expected, tuple):
        return [(got, expected, delta, mode)]
    got = _tuple(got)
    assert len(got) == len(expected), f"{len(got)} attributions for {len(expected)} expected"
    return [(g, e, delta, mode) for g, e in zip(got, expected)]


def _flag(method, expected: bool):
    """Captum's assertTrue/assertFalse(method.multiplies_by_inputs), as a check (after the values)."""
    return (float(method.multiplies_by_inputs), float(expected), 0.0, "max")


_L0 = lambda m: tensor(m, "Gemm", 0)  # noqa: E731  linear0
_L1 = lambda m: tensor(m, "Gemm", 1)  # noqa: E731  linear1
_L2 = lambda m: tensor(m, "Gemm", -1)  # noqa: E731  linear2
_RELU = lambda m: tensor(m, "Relu", 0)  # noqa: E731  relu (relu1 of the conv nets)
_MULTI_RELU = lambda m: [tensor(m, "Relu", 0), tensor(m, "Relu", 1)]  # noqa: E731  multi_relu's two outputs
_CONV_IN = torch.arange(16, dtype=torch.float).view(1, 1, 4, 4)


# --- tests/attr/layer/test_layer_activation.py ------------------------------------------------

def _act(name, layer, inp, expected, additional=None, to_input=False):
    m = load(name)
    la = onnx_attr.LayerActivation(m, layer(m))
    got = la.attribute(inp, additional_forward_args=additional, attribute_to_layer_input=to_input)
    return _checks(got, expected, 0.01)


def _act_multi(name, layers, inp, expected, additional=None):
    m = load(name)
    la = onnx_attr.LayerActivation(m, layers(m))
    got = la.attribute(inp, additional_forward_args=additional)
    checks = []
    for i in range(len(expected)):
        checks += _checks(got[i], expected[i], 0.01)
    return checks


@case("test_layer_activation.py::test_simple_input_activation")
def _():
    return _act("MultiLayer", _L0, T([[0.0, 100.0, 0.0]]), [[0.0, 100.0, 0.0]])


@case("test_layer_activation.py::test_simple_linear_activation")
def _():
    return _act("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), [[90.0, 101.0, 101.0, 101.0]])


@case("test_layer_activation.py::test_simple_multi_linear_activation")
def _():
    return _act_multi("MultiLayer", lambda m: [_L1(m), _L0(m)], T([[0.0, 100.0, 0.0]]),
                      ([[90.0, 101.0, 101.0, 101.0]], [[0.0, 100.0, 0.0]]))


@case("test_layer_activation.py::test_simple_relu_activation_input_inplace")
def _():
    return _act("MultiLayer", _RELU, T([[2.0, -5.0, 4.0]]), ([-9.0, 2.0, 2.0, 2.0],), to_input=True)


@case("test_layer_activation.py::test_simple_linear_activation_inplace")
def _():
    return _act("MultiLayer", _L1, T([[2.0, -5.0, 4.0]]), [[-9.0, 2.0, 2.0, 2.0]])


@case("test_layer_activation.py::test_simple_relu_activation")
def _():
    return _act("MultiLayer", _RELU, T([[3.0, 4.0, 0.0]]), [[0.0, 8.0, 8.0, 8.0]])


@case("test_layer_activation.py::test_simple_output_activation")
def _():
    return _act("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), [[392.0, 394.0]])


@case("test_layer_activation.py::test_simple_multi_output_activation (multi_relu: both Relu tensors)")
def _():
    return _act("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 6.0, 0.0]]),
                ([[0.0, 7.0, 7.0, 7.0]], [[0.0, 7.0, 7.0, 7.0]]))


@case("test_layer_activation.py::test_simple_multi_layer_multi_output_activation ([multi_relu, linear0, linear1])")
def _():
    return _act_multi("MultiLayerMultiRelu", lambda m: [_MULTI_RELU(m), _L0(m), _L1(m)], T([[0.0, 6.0, 0.0]]),
                      [([[0.0, 7.0, 7.0, 7.0]], [[0.0, 7.0, 7.0, 7.0]]), [[0.0, 6.0, 0.0]], [[-4.0, 7.0, 7.0, 7.0]]])


@case("test_layer_activation.py::test_simple_multi_layer_multi_output_activation (flat list of 4 tensors)")
def _():
    return _act_multi("MultiLayerMultiRelu", lambda m: _MULTI_RELU(m) + [_L0(m), _L1(m)], T([[0.0, 6.0, 0.0]]),
                      [[[0.0, 7.0, 7.0, 7.0]], [[0.0, 7.0, 7.0, 7.0]], [[0.0, 6.0, 0.0]], [[-4.0, 7.0, 7.0, 7.0]]])


@case("test_layer_activation.py::test_simple_multi_input_activation (multi_relu's inputs)")
def _():
    return _act("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 6.0, 0.0]]),
                ([[-4.0, 7.0, 7.0, 7.0]], [[-4.0, 7.0, 7.0, 7.0]]), to_input=True)


@case("test_layer_activation.py::test_simple_multi_input_linear2_activation")
def _():
    return _act("MultiLayerMultiInput", _L2, (T([[0.0, 10.0, 0.0]]), T([[0.0, 10.0, 0.0]]), T([[0.0, 5.0, 0.0]])),
                [[392.0, 394.0]], (4,))


@case("test_layer_activation.py::test_simple_multi_input_relu_activation")
def _():
    return _act("MultiLayerMultiInput", _RELU, (T([[0.0, 10.0, 1.0]]), T([[0.0, 4.0, 5.0]])),
                [[90.0, 101.0, 101.0, 101.0]], (T([[0.0, 0.0, 0.0]]), 5))


@case("test_layer_activation.py::(every _layer_activation_test_assert) assertTrue(layer_act.multiplies_by_inputs)")
def _():
    m = load("MultiLayer")
    return [_flag(onnx_attr.LayerActivation(m, _L0(m)), True),
            _flag(onnx_attr.LayerActivation(m, [_L1(m), _L0(m)]), True)]


@case("test_layer_activation.py::test_sequential_in_place (model[0]: the Conv)")
def _():
    name = "SeqConvReLU"
    m, inp = load(name), torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        expected = torch_module(name)[0](inp)
    return [(onnx_attr.LayerActivation(m, tensor(m, "Conv")).attribute(inp), expected, 1e-4, "sum")]


@case("test_layer_activation.py::test_sequential_module (model.seq: the output)")
def _():
    name = "Conv1dSeq"
    m, inp = load(name), torch.randn(2, 4, 1000)
    with torch.no_grad():
        expected = torch_module(name)(inp)
    return [(onnx_attr.LayerActivation(m, tensor(m, "Add", -1)).attribute(inp), expected, 1e-4, "sum")]


# --- tests/attr/layer/test_layer_ablation.py --------------------------------------------------

def _lablation(name, layer, inp, expected, *, layer_mask=None, additional=None, per_eval=(1,), baselines=None,
               target=0, to_input=False):
    m, checks = load(name), []
    for k in per_eval:
        got = onnx_attr.LayerFeatureAblation(m, layer(m)).attribute(
            inputs=inp, target=target, layer_mask=layer_mask, additional_forward_args=additional,
            layer_baselines=baselines, perturbations_per_eval=k, attribute_to_layer_input=to_input)
        checks += _checks(got, expected, 1e-4)
    return checks


_AB_IN = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
          T([[0.0, 100.0, 10.0], [2.0, 10.0, 3.0]]))


@case("test_layer_ablation.py::test_simple_ablation_with_mask")
def _():
    return _lablation("MultiLayer", _L0, T([[20.0, 50.0, 30.0]]), ([280.0, 280.0, 120.0],),
                      layer_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3), to_input=True)


@case("test_layer_ablation.py::test_multi_input_ablation")
def _():
    exp = [[168.0, 992.0, 148.0], [84.0, 632.0, 120.0]]
    return (_lablation("MultiLayerMultiInput", _L1, _AB_IN, exp, additional=(1,), baselines=T([[1.0, 2.0, 3.0]]),
                       per_eval=(1, 2, 3), to_input=True)
            + _lablation("MultiLayerMultiInput", _L0, _AB_IN, exp, additional=(1,), baselines=T([[1.0, 2.0, 3.0]]),
                         per_eval=(1, 2, 3)))


@case("test_layer_ablation.py::test_multi_input_ablation_with_layer_mask")
def _():
    exp, mask = [[316.0, 992.0, 316.0], [84.0, 632.0, 120.0]], T([[0, 1, 0], [0, 1, 2]])
    return (_lablation("MultiLayerMultiInput", _L1, _AB_IN, exp, additional=(1,), baselines=T([[1.0, 2.0, 3.0]]),
                       per_eval=(1, 2, 3), layer_mask=mask, to_input=True)
            + _lablation("MultiLayerMultiInput", _L0, _AB_IN, exp, additional=(1,), baselines=T([[1.0, 2.0, 3.0]]),
                         per_eval=(1, 2, 3), layer_mask=mask))


@case("test_layer_ablation.py::test_simple_multi_input_conv_intermediate (relu1)")
def _():
    inp = (_CONV_IN, torch.ones(1, 1, 4, 4))
    return (_lablation("ConvNetOneConv", _RELU, inp, [[[[4.0, 13.0], [40.0, 49.0]], [[0, 0], [-15.0, -24.0]]]],
                       per_eval=(1, 2, 4, 8, 12, 16))
            + _lablation("ConvNetOneConv", _RELU, inp, ([[[4.0, 13.0], [40.0, 49.0]], [[0, 0], [-15.0, -24.0]]],),
                         baselines=T([[[-4.0, -13.0], [-2.0, -2.0]], [[0, 0], [0.0, 0.0]]]),
                         per_eval=(1, 2, 4, 8, 12, 16), to_input=True)
            + _lablation("ConvNetOneConv", _RELU, inp, [[[[17.0, 17.0], [67.0, 67.0]], [[0, 0], [-39.0, -39.0]]]],
                         per_eval=(1, 2, 4), layer_mask=T([[[[0, 0], [1, 1]], [[2, 2], [3, 3]]]])))


@case("test_layer_ablation.py::test_simple_multi_output_ablation (multi_relu: both Relu tensors)")
def _():
    return _lablation("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 6.0, 0.0]]),
                      ([[0.0, 7.0, 7.0, 7.0]], [[0.0, 7.0, 7.0, 7.0]]))


@case("test_layer_ablation.py::test_simple_multi_output_input_ablation (multi_relu's inputs)")
def _():
    return _lablation("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 6.0, 0.0]]),
                      ([[0.0, 7.0, 7.0, 7.0]], [[0.0, 7.0, 7.0, 7.0]]), to_input=True)


# --- tests/attr/layer/test_layer_lrp.py -------------------------------------------------------

def _node(model, op, nth=0):
    return [n.meta["onnx_node"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == op][nth]


_SIMPLE_IN = T([[1.0, 2.0, 3.0]])


@case("test_layer_lrp.py::test_lrp_basic_attributions (conv1)")
def _():
    m = load("ConvNetOneConvSingle")
    target = int(torch_module("ConvNetOneConvSingle")(_CONV_IN).argmax(1))
    relevance, delta = onnx_attr.LayerLRP(m, tensor(m, "Conv")).attribute(_CONV_IN, target,
                                                                           return_convergence_delta=True)
    return [(relevance[0], [[[0, 4], [31, 40]], [[0, 0], [-6, -15]]], 1e-4, "sum"), (delta, [0.0], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_creator (rule=1: refused with a clear error)")
def _():
    m = load("ConvNetOneConvSingle")
    with pytest.raises((TypeError, onnx_attr.InputError)):  # Captum: TypeError at construction; here at first use
        onnx_attr.LayerLRP(m, tensor(m, "Conv"), rule=1).attribute(_CONV_IN, 0)
    return []


@case("test_layer_lrp.py::test_lrp_simple_attributions")
def _():
    m = load("SimpleLRP")
    upper, delta = onnx_attr.LayerLRP(m, _L2(m), "epsilon").attribute(_SIMPLE_IN, attribute_to_layer_input=True,
                                                                       return_convergence_delta=True)
    lower = onnx_attr.LayerLRP(m, _L0(m), "epsilon").attribute(_SIMPLE_IN)
    return [(lower[0], upper[0], 1e-4, "sum"), (delta, [0.0], 0.0, "max")]


@case("test_layer_lrp.py::test_lrp_simple_repeat_attributions")
def _():
    from onnx_attr import Gamma
    m = load("SimpleLRP")
    output = m.run(_SIMPLE_IN)[0]
    onnx_attr.LayerLRP(m, _L0(m), rules={_node(m, "Gemm", 0): Gamma(0.25), _node(m, "Gemm", 1): "alpha1beta0"}
                       ).attribute(_SIMPLE_IN)
    return [(m.run(_SIMPLE_IN)[0], output, 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_inplaceReLU")
def _():
    default, inplace = load("SimpleLRP"), load("SimpleLRP_inplace")
    rd = onnx_attr.LayerLRP(default, _L2(default), "epsilon").attribute(_SIMPLE_IN, attribute_to_layer_input=True)
    ri = onnx_attr.LayerLRP(inplace, _L2(inplace), "epsilon").attribute(_SIMPLE_IN, attribute_to_layer_input=True)
    return [(rd[0], ri[0], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_tanh")
def _():
    m = load("LRPTanh")
    return [(onnx_attr.LayerLRP(m, _L0(m)).attribute(_SIMPLE_IN)[0], [0.0537, 0.0537, 0.0537], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_attributions_GammaRule")
def _():
    from onnx_attr import Gamma
    m = load("SimpleLRP_w00")
    lrp = onnx_attr.LayerLRP(m, _L0(m), rules={_node(m, "Gemm", 0): Gamma(1.0), _node(m, "Gemm", 1): Gamma(0.25)})
    return [(lrp.attribute(_SIMPLE_IN)[0], [24.0, 36.0, 36.0], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_attributions_AlphaBeta")
def _():
    m = load("SimpleLRP_w00")
    return [(onnx_attr.LayerLRP(m, _L0(m), "alpha1beta0").attribute(_SIMPLE_IN)[0], [24.0, 36.0, 36.0], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_attributions_all_layers")
def _():
    m = load("SimpleLRP")
    relevance = onnx_attr.LayerLRP(m, [_L0(m), _L2(m)], "epsilon").attribute(_SIMPLE_IN, attribute_to_layer_input=True)
    assert len(relevance) == 2
    return [(relevance[0][0], [18.0, 36.0, 54.0], 1e-4, "sum")]


@case("test_layer_lrp.py::test_lrp_simple_attributions_all_layers_delta")
def _():
    m = load("SimpleLRP")
    inputs = torch.cat((_SIMPLE_IN, 2 * _SIMPLE_IN))
    relevance, delta = onnx_attr.LayerLRP(m, [_L0(m), _L2(m)], "epsilon").attribute(
        inputs, attribute_to_layer_input=True, return_convergence_delta=True)
    assert len(relevance) == len(delta)
    return [(relevance[0], [[18.0, 36.0, 54.0], [36.0, 72.0, 108.0]], 1e-4, "sum")]


# --- tests/attr/layer/test_layer_gradient_shap.py ---------------------------------------------

def _lgs(name, layer, inputs, baselines, target, expected, *, expected_delta=None, n_samples=5, to_input=False,
         add_args=None):
    m = load(name)
    lgs = onnx_attr.LayerGradientShap(m, layer(m))
    attrs, delta = lgs.attribute(inputs, baselines, target=target, additional_forward_args=add_args,
                                 n_samples=n_samples, stdevs=0.0009, return_convergence_delta=True,
                                 attribute_to_layer_input=to_input)
    checks = _checks(attrs, expected, 0.005)
    if expected_delta is None:  # assert_attribution_delta(is_layer=True)
        bsz = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
        assert list(delta.shape) == [bsz * n_samples], f"delta of shape {list(delta.shape)}"
        checks.append((delta.reshape(bsz, -1).mean(1).abs().max(), 0.0, 0.0006 - 1e-12, "max"))
    else:
        checks += [(d, e, 0.01, "sum") for d, e in zip(delta, expected_delta)]
    return checks


@case("test_layer_gradient_shap.py::test_basic_multilayer")
def _():
    baselines = T([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    return _lgs("MultiLayer", _L2, T([[1.0, -20.0, 10.0]]), baselines, 0, [[-8.4, 0.0]])


@case("test_layer_gradient_shap.py::test_basic_multilayer_wo_multiplying_by_inputs")
def _():
    m = load("MultiLayer")
    attrs = onnx_attr.LayerGradientShap(m, _L2(m), multiply_by_inputs=False).attribute(
        T([[1.0, -20.0, 10.0]]), torch.zeros(3, 3), target=0, stdevs=0.0)
    return [(attrs, [[1.0, 0.0]], 1e-4, "sum")]


@case("test_layer_gradient_shap.py::test_basic_multi_tensor_output (multi_relu: both Relu tensors)")
def _():
    inp = T([[0.0, 100.0, 0.0]])
    return _lgs("MultiLayerMultiRelu", _MULTI_RELU, inp, torch.zeros_like(inp), 0,
                ([[90.0, 100.0, 100.0, 100.0]], [[90.0, 100.0, 100.0, 100.0]]), n_samples=5)


@case("test_layer_gradient_shap.py::test_basic_multilayer_with_add_args")
def _():
    captum_module("BasicModel_MultiLayer", inplace=True)
    baselines = torch.randn(30, 3)
    return _lgs("MultiLayerAddInput", _L2, T([[1.0, -20.0, 10.0]]), baselines, 0, [[-13.9510, 0.0]],
                add_args=torch.ones(1, 3))


@case("test_layer_gradient_shap.py::test_basic_multilayer_compare_w_inp_features")
def _():
    import random
    import numpy as np
    captum_module("BasicModel_MultiLayer")
    m, inputs, baselines = load("MultiLayer"), T([[10.0, 20.0, 10.0]]), torch.randn(30, 3)
    expected, delta = onnx_attr.GradientShap(m).attribute(inputs, baselines, target=0, return_convergence_delta=True)
    random.seed(1234); np.random.seed(1234); torch.manual_seed(1234)  # self.setUp()
    return _lgs("MultiLayer", _L0, inputs, baselines, 0, expected, expected_delta=delta, to_input=True)


@case("test_layer_gradient_shap.py::test_classification (relu1)")
def _():
    inputs = torch.arange(0.0, 40 * 2.0).reshape(2, 40)
    return _lgs("Softmax_40_20_10", _RELU, inputs, lambda x: torch.arange(0.0, x.shape[1] * 4.0).reshape(4, x.shape[1]),
                1, torch.zeros(2, 20), n_samples=10)


@case("test_layer_gradient_shap.py::test_basic_multi_input (scale: a float input, as Captum's 1.0)")
def _():
    captum_module("BasicModel_MultiLayer_MultiInput")
    inputs = (T([[10.0, 20.0, 10.0]]), T([[1.0, 2.0, 1.0]]))
    baselines = (torch.randn(30, 3), torch.randn(30, 3))
    return _lgs("MultiLayerMultiInput_fscale", _L2, inputs, baselines, 0, T([[171.6841, 0.0]]),
                add_args=(T([[1.0, 2.0, 3.0]]), 1.0))


# --- tests/attr/neuron/test_neuron_gradient.py ------------------------------------------------

def _ngrad(name, layer, inp, neuron, expected, additional=None, to_input=False):
    m = load(name)
    got = onnx_attr.NeuronGradient(m, layer(m)).attribute(inp, neuron, additional_forward_args=additional,
                                                          attribute_to_neuron_input=to_input)
    return _checks(got, expected, 1e-4)


@case("test_neuron_gradient.py::test_simple_gradient_input_linear2")
def _():
    return _ngrad("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), (0,), [[4.0, 4.0, 4.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_linear1")
def _():
    return _ngrad("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), (0,), [[1.0, 1.0, 1.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_relu_inplace (call form: attribute_to_neuron_input=True)")
def _():
    return _ngrad("MultiLayer", _RELU, T([[0.0, 5.0, 4.0]]), (0,), [[1.0, 1.0, 1.0]], to_input=True)


@case("test_neuron_gradient.py::test_simple_gradient_input_relu_inplace (relu's input named: linear1)")
def _():
    return _ngrad("MultiLayer", _L1, T([[0.0, 5.0, 4.0]]), (0,), [[1.0, 1.0, 1.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_linear1_inplace")
def _():
    return _ngrad("MultiLayer", _L1, T([[0.0, 5.0, 4.0]]), (0,), [[1.0, 1.0, 1.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_relu")
def _():
    return _ngrad("MultiLayer", _RELU, T([[0.0, 5.0, 4.0]]), 0, [[0.0, 0.0, 0.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_relu2")
def _():
    return _ngrad("MultiLayer", _RELU, T([[0.0, 5.0, 4.0]]), 1, [[1.0, 1.0, 1.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_relu_selector_fn")
def _():
    return _ngrad("MultiLayer", _RELU, T([[0.0, 5.0, 4.0]]), lambda x: torch.sum(x), [[3.0, 3.0, 3.0]])


@case("test_neuron_gradient.py::test_simple_gradient_input_relu2_agg_neurons")
def _():
    return _ngrad("MultiLayer", _RELU, T([[0.0, 5.0, 4.0]]), (slice(0, 2, 1),), [[1.0, 1.0, 1.0]])


@case("test_neuron_gradient.py::test_simple_gradient_multi_input_linear2")
def _():
    inp = T([[0.0, 100.0, 0.0]])
    return _ngrad("MultiLayerMultiInput", _L2, (inp, inp, inp), (0,),
                  ([[12.0, 12.0, 12.0]], [[12.0, 12.0, 12.0]], [[12.0, 12.0, 12.0]]), (3,))


@case("test_neuron_gradient.py::test_simple_gradient_multi_input_linear1")
def _():
    inp = T([[0.0, 100.0, 0.0]])
    return _ngrad("MultiLayerMultiInput", _L1, (inp, inp), (0,), ([[5.0, 5.0, 5.0]], [[5.0, 5.0, 5.0]]), (inp, 5))


def _ngrad_matching(layer, inp):
    """Captum's _gradient_matching_test_assert: Captum's Saliency of the layer's neuron, computed
    by Captum on the PyTorch module, against NeuronGradient of that neuron."""
    from captum.attr import Saliency
    name = "ConvNet_MaxPool2d"
    m, net = load(name), torch_module(name)
    out_layer = _TorchLayer(net, layer)
    out = out_layer(inp)
    ng = onnx_attr.NeuronGradient(m, tensor(m, *layer))
    checks = []
    for i in range(out.shape[1]):
        neuron = (i,) + (0,) * (out.dim() - 2)
        sal = Saliency(lambda x, neuron=neuron: out_layer(x)[(slice(None), *neuron)]).attribute(inp, abs=False)
        got = ng.attribute(inp, neuron)
        assert got.shape == sal.shape == inp.shape
        checks.append((got, sal, 0.001, "max"))
    return checks + [_flag(ng, False)]


class _TorchLayer(torch.nn.Module):
    """The PyTorch module's value at the named layer (its functional ReLUs have no module to hook)."""

    def __init__(self, net, layer):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x):
        import torch.nn.functional as F
        net = self.net
        h = F.relu(net.conv2(net.pool1(F.relu(net.conv1(x)))))
        if self.layer == ("Relu", 1):
            return h
        return net(x)


@case("test_neuron_gradient.py::test_matching_output_gradient (softmax)")
def _():
    return _ngrad_matching(("Softmax", -1), torch.randn(2, 1, 10, 10))


@case("test_neuron_gradient.py::test_matching_intermediate_gradient (relu2)")
def _():
    return _ngrad_matching(("Relu", 1), torch.randn(3, 1, 10, 10))


# --- tests/attr/neuron/test_neuron_ablation.py ------------------------------------------------

def _nablation(name, layer, inp, expected, *, feature_mask=None, additional=None, per_eval=(1,), baselines=None,
               neuron=0, to_input=False):
    m, checks = load(name), []
    for k in per_eval:
        ablation = onnx_attr.NeuronFeatureAblation(m, layer(m))
        got = ablation.attribute(inp, neuron_selector=neuron, feature_mask=feature_mask,
                                 additional_forward_args=additional, baselines=baselines, perturbations_per_eval=k,
                                 attribute_to_neuron_input=to_input)
        if isinstance(expected, tuple):
            checks += [(got[i], expected[i], 1e-4, "sum") for i in range(len(expected))]
        else:
            checks.append((got, expected, 1e-4, "sum"))
    return checks


@case("test_neuron_ablation.py::(every _ablation_test_assert) assertTrue(ablation.multiplies_by_inputs)")
def _():
    m = load("MultiLayer")
    return [_flag(onnx_attr.NeuronFeatureAblation(m, _L2(m)), True)]


@case("test_neuron_ablation.py::test_simple_ablation_with_mask")
def _():
    return _nablation("MultiLayer", _L2, T([[20.0, 50.0, 30.0]]), [[280.0, 280.0, 120.0]],
                      feature_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3))


_NA_IN2 = T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]])
_NA_MASK2 = T([[0, 0, 1], [1, 1, 0]])


@case("test_neuron_ablation.py::test_multi_sample_ablation_with_mask")
def _():
    return _nablation("MultiLayer", _L2, _NA_IN2, [[41.0, 41.0, 12.0], [280.0, 280.0, 120.0]],
                      feature_mask=_NA_MASK2, per_eval=(1, 2, 3))


@case("test_neuron_ablation.py::test_multi_sample_ablation_with_selector_fn")
def _():
    return _nablation("MultiLayer", _L2, _NA_IN2, [[82.0, 82.0, 24.0], [560.0, 560.0, 240.0]],
                      feature_mask=_NA_MASK2, per_eval=(1, 2, 3), neuron=lambda x: torch.sum(x, dim=1))


@case("test_neuron_ablation.py::test_multi_sample_ablation_with_slice")
def _():
    return _nablation("MultiLayer", _L2, _NA_IN2, [[82.0, 82.0, 24.0], [560.0, 560.0, 240.0]],
                      feature_mask=_NA_MASK2, per_eval=(1, 2, 3), neuron=(slice(0, 2, 1),))


@case("test_neuron_ablation.py::test_multi_input_ablation_with_mask")
def _():
    inp1, inp2, inp3 = _AB_IN
    mask1, mask2, mask3 = T([[1, 1, 1], [0, 1, 0]]), T([[3, 4, 2]]), T([[5, 6, 7], [5, 5, 5]])
    expected = ([[492.0, 492.0, 492.0], [200.0, 200.0, 200.0]], [[80.0, 200.0, 120.0], [0.0, 400.0, 0.0]],
                [[0.0, 400.0, 40.0], [60.0, 60.0, 60.0]])
    expected_b = ([[468.0, 468.0, 468.0], [184.0, 192.0, 184.0]], [[68.0, 188.0, 108.0], [-12.0, 388.0, -12.0]],
                  [[-16.0, 384.0, 24.0], [12.0, 12.0, 12.0]])
    return (_nablation("MultiLayerMultiInput", _L2, (inp1, inp2, inp3), expected, additional=(1,),
                       feature_mask=(mask1, mask2, mask3))
            + _nablation("MultiLayerMultiInput", _L2, (inp1, inp2), expected[0:1], additional=(inp3, 1),
                         feature_mask=(mask1, mask2), per_eval=(1, 2, 3))
            + _nablation("MultiLayerMultiInput", _L2, (inp1, inp2, inp3), expected_b, additional=(1,),
                         feature_mask=(mask1, mask2, mask3), baselines=(2, 3.0, 4), per_eval=(1, 2, 3)))


@case("test_neuron_ablation.py::test_multi_input_ablation")
def _():
    b1, b2, b3 = T([[3.0, 0.0, 0.0]]), T([[0.0, 1.0, 0.0]]), T([[1.0, 2.0, 3.0]])
    b1e, b2e = T([[3.0, 0.0, 0.0], [3.0, 0.0, 2.0]]), T([[0.0, 1.0, 0.0], [0.0, 1.0, 4.0]])
    b3e = T([[3.0, 2.0, 4.0], [1.0, 2.0, 3.0]])
    return (_nablation("MultiLayerMultiInput", _L2, _AB_IN,
                       ([[80.0, 400.0, 0.0], [68.0, 200.0, 120.0]], [[80.0, 196.0, 120.0], [0.0, 396.0, 0.0]],
                        [[-4.0, 392.0, 28.0], [4.0, 32.0, 0.0]]),
                       additional=(1,), baselines=(b1, b2, b3), per_eval=(1, 2, 3))
            + _nablation("MultiLayerMultiInput", _L2, _AB_IN,
                         ([[80.0, 400.0, 0.0], [68.0, 200.0, 112.0]], [[80.0, 196.0, 120.0], [0.0, 396.0, -16.0]],
                          [[-12.0, 392.0, 24.0], [4.0, 32.0, 0.0]]),
                         additional=(1,), baselines=(b1e, b2e, b3e), per_eval=(1, 2, 3)))


_NC_1 = [[[[0.0, 2.0, 4.0, 3.0], [4.0, 9.0, 10.0, 7.0], [4.0, 13.0, 14.0, 11.0], [0.0, 0.0, 0.0, 0.0]]]]
_NC_2 = [[[[1.0, 2.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]]]
_NCI_1 = [[[[0.0, 1.0, 2.0, 0.0], [4.0, 5.0, 6.0, 0.0], [8.0, 9.0, 10.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]]
_NCI_2 = [[[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]]
_CONV2 = (_CONV_IN, torch.ones(1, 1, 4, 4))
_MASK01 = (T(0), T(1))


@case("test_neuron_ablation.py::test_simple_multi_input_conv (relu2)")
def _():
    relu2 = lambda m: tensor(m, "Relu", -1)  # noqa: E731
    return (_nablation("ConvNetOneConv", relu2, _CONV2, (67 * torch.ones_like(_CONV_IN), 13 * torch.ones(1, 1, 4, 4)),
                       feature_mask=_MASK01, per_eval=(1, 2, 4, 8, 12, 16))
            + _nablation("ConvNetOneConv", relu2, _CONV2, (_NC_1, _NC_2), per_eval=(1, 3, 7, 14)))


@case("test_neuron_ablation.py::test_simple_multi_input_conv_intermediate (relu1, neuron output)")
def _():
    return _nablation("ConvNetOneConv", _RELU, _CONV2, (torch.zeros_like(_CONV_IN), torch.zeros(1, 1, 4, 4)),
                      feature_mask=_MASK01, per_eval=(1, 2, 4, 8, 12, 16), neuron=(1, 0, 0))


@case("test_neuron_ablation.py::test_simple_multi_input_conv_intermediate (call form: attribute_to_neuron_input=True)")
def _():
    return (_nablation("ConvNetOneConv", _RELU, _CONV2, (45 * torch.ones_like(_CONV_IN), 9 * torch.ones(1, 1, 4, 4)),
                       feature_mask=_MASK01, per_eval=(1, 2, 4, 8, 12, 16), neuron=(1, 0, 0), to_input=True)
            + _nablation("ConvNetOneConv", _RELU, _CONV2, (_NCI_1, _NCI_2), per_eval=(1, 3, 7, 14), neuron=(1, 0, 0),
                         to_input=True))


@case("test_neuron_ablation.py::test_simple_multi_input_conv_intermediate (relu1's input named: the Conv)")
def _():
    conv = lambda m: tensor(m, "Conv")  # noqa: E731
    return (_nablation("ConvNetOneConv", conv, _CONV2, (45 * torch.ones_like(_CONV_IN), 9 * torch.ones(1, 1, 4, 4)),
                       feature_mask=_MASK01, per_eval=(1, 2, 4, 8, 12, 16), neuron=(1, 0, 0))
            + _nablation("ConvNetOneConv", conv, _CONV2, (_NCI_1, _NCI_2), per_eval=(1, 3, 7, 14), neuron=(1, 0, 0)))


# --- tests/attr/neuron/test_neuron_gradient_shap.py -------------------------------------------

def _ngs(name, layer, inputs, baselines, neuron, n_samples=5):
    m = load(name)
    ngs = onnx_attr.NeuronGradientShap(m, layer(m))
    nig = onnx_attr.NeuronIntegratedGradients(m, layer(m))
    attrs_gs = ngs.attribute(inputs, neuron, baselines=baselines, n_samples=n_samples, stdevs=0.09)
    if callable(baselines):
        baselines = baselines(inputs)
    attrs_ig = [nig.attribute(inputs, neuron, baselines=b.unsqueeze(0)) for b in torch.unbind(baselines)]
    return [(attrs_gs, torch.stack(attrs_ig, dim=0).mean(dim=0), 0.5, "sum"), _flag(ngs, True)]


@case("test_neuron_gradient_shap.py::test_basic_multilayer")
def _():
    m = load("MultiLayer")
    ngs = onnx_attr.NeuronGradientShap(m, _L1(m), multiply_by_inputs=False)
    attr = ngs.attribute(T([[1.0, 20.0, 10.0]]), 0, baselines=torch.zeros(2, 3), stdevs=0.0)
    return [(attr, [[1.0, 1.0, 1.0]], 1e-4, "sum"), _flag(ngs, False)]


@case("test_neuron_gradient_shap.py::test_basic_multilayer_wo_mult_by_inputs")
def _():
    captum_module("BasicModel_MultiLayer", inplace=True)
    return _ngs("MultiLayer", _L1, T([[1.0, 20.0, 10.0]]), torch.randn(2, 3), 0, 60)


@case("test_neuron_gradient_shap.py::test_basic_multilayer_wo_mult_by_inputs_agg_neurons")
def _():
    captum_module("BasicModel_MultiLayer", inplace=True)
    inputs, baselines = T([[1.0, 20.0, 10.0]]), torch.randn(2, 3)
    return (_ngs("MultiLayer", _L1, inputs, baselines, (slice(0, 1, 1),), 60)
            + _ngs("MultiLayer", _L1, inputs, baselines, lambda x: x[:, 0:1], 60))


@case("test_neuron_gradient_shap.py::test_classification (relu1)")
def _():
    inputs = torch.arange(0.0, 40 * 2.0).reshape(2, 40)
    return _ngs("Softmax_40_20_10", _RELU, inputs,
                lambda x: torch.arange(0.0, x.shape[1] * 5.0).reshape(5, x.shape[1]), 1, 100)


#: Cases that differ from Captum on purpose or that are not supported yet, each with why.
DIFFERENCES = {
}
CASES = [pytest.param(*p.values, id=p.id, marks=[pytest.mark.xfail(reason=DIFFERENCES[p.id], strict=True)])
         if p.id in DIFFERENCES else p for p in CASES]
assert set(DIFFERENCES) <= {p.id for p in CASES}


@pytest.mark.parametrize("source, run", CASES)
def test_captum_stated_value(source, run):
    run_case(run)  # under Captum's BaseTest seed, as every case of Captum's
