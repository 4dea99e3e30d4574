"""More of Captum's own stated test values, ported as tests/test_captum_expectations.py does: the
models of Captum's tests (tests/captum_models.py plus captum_models_more.py), exported to ONNX,
attributed by onnx-attr with Captum's call form, checked against the values Captum's tests state
with those tests' tolerances. Each case names its source test (file::test)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import onnx_attr
from captum_harness import as_tuple, captum_module, registrar, run_case
from captum_models_more import load, tensor, torch_module

T = torch.tensor
CASES: list = []


case = registrar(CASES)
_tuple = as_tuple


def _checks(got, expected, delta, mode):
    got = _tuple(got)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected), f"{len(got)} attributions for {len(expected)} expected"
    return [(g, e, delta, mode) for g, e in zip(got, expected)]


# --- tests/attr/test_shapley.py ---------------------------------------------------------------

def _shapley(name, inputs, expected, *, feature_mask=None, additional=None, per_eval=(1,), baselines=None,
             target=0, n_samples=100, delta=1.0, true_shapley=True):
    model, checks = load(name), []
    for k in per_eval:
        got = onnx_attr.ShapleyValueSampling(model).attribute(
            inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
            baselines=baselines, perturbations_per_eval=k, n_samples=n_samples)
        checks += _checks(got, expected, delta, "max")
        if true_shapley:
            got = onnx_attr.ShapleyValues(model).attribute(
                inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
                baselines=baselines, perturbations_per_eval=k)
            checks += _checks(got, expected, 0.001, "max")
    return checks


@case("test_shapley.py::test_simple_shapley_sampling")
def _():
    return _shapley("MultiLayer", T([[20.0, 50.0, 30.0]]), [[76.66666, 196.66666, 116.66666]],
                    per_eval=(1, 2, 3), n_samples=250)


@case("test_shapley.py::test_simple_shapley_sampling_with_mask")
def _():
    return _shapley("MultiLayer", T([[20.0, 50.0, 30.0]]), [[275.0, 275.0, 115.0]],
                    feature_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3))


@case("test_shapley.py::test_simple_shapley_sampling_boolean")
def _():
    return _shapley("BasicModelBoolInput", T([[True, False, True]]), [[35.0, 35.0, 35.0]],
                    feature_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3))


@case("test_shapley.py::test_simple_shapley_sampling_boolean_with_baseline")
def _():
    return _shapley("BasicModelBoolInput", T([[True, False, True]]), [[-40.0, -40.0, 0.0]],
                    feature_mask=T([[0, 0, 1]]), baselines=True, per_eval=(1, 2, 3))


@case("test_shapley.py::test_simple_shapley_sampling_with_baselines")
def _():
    return _shapley("MultiLayer", T([[20.0, 50.0, 30.0]]), [[248.0, 248.0, 104.0]],
                    feature_mask=T([[0, 0, 1]]), baselines=4, per_eval=(1, 2, 3))


@case("test_shapley.py::test_multi_sample_shapley_sampling")
def _():
    return _shapley("MultiLayer", T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]]),
                    [[7.0, 32.5, 10.5], [76.66666, 196.66666, 116.66666]], per_eval=(1, 2, 3), n_samples=200)


@case("test_shapley.py::test_multi_sample_shapley_sampling_with_mask")
def _():
    return _shapley("MultiLayer", T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]]),
                    [[39.5, 39.5, 10.5], [275.0, 275.0, 115.0]], feature_mask=T([[0, 0, 1], [1, 1, 0]]),
                    per_eval=(1, 2, 3))


_SV_IN = (T([[23.0, 0.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 0.0, 50.0], [0.0, 100.0, 0.0]]),
          T([[0.0, 100.0, 10.0], [0.0, 10.0, 0.0]]))
_SV_EXP = ([[90, 0, 0], [78.0, 198.0, 118.0]], [[78, 0, 198], [0.0, 398.0, 0.0]], [[0, 398, 38], [0.0, 38.0, 0.0]])


@case("test_shapley.py::test_multi_input_shapley_sampling_without_mask")
def _():
    return _shapley("MultiLayerMultiInput", _SV_IN, _SV_EXP, additional=(1,), n_samples=200, true_shapley=False)


_MI_IN = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
          T([[0.0, 100.0, 10.0], [2.0, 10.0, 3.0]]))
_MI_MASK = (T([[1, 1, 1], [0, 1, 0]]), T([[0, 1, 2]]), T([[0, 1, 2], [0, 0, 0]]))
_MI_EXP = ([[1088.6666, 1088.6666, 1088.6666], [255.0, 595.0, 255.0]],
           [[76.6666, 1088.6666, 156.6666], [255.0, 595.0, 0.0]],
           [[76.6666, 1088.6666, 156.6666], [255.0, 255.0, 255.0]])
_MI_EXP_B = ([[1040, 1040, 1040], [184, 580.0, 184]], [[52, 1040, 132], [184, 580.0, -12.0]],
             [[52, 1040, 132], [184, 184, 184]])


@case("test_shapley.py::test_multi_input_shapley_sampling_with_mask")
def _():
    captum_module("BasicModel_MultiLayer_MultiInput")  # drawn after Captum's module is built, as Captum's test
    return (_shapley("MultiLayerMultiInput", _MI_IN, _MI_EXP, additional=(1,), feature_mask=_MI_MASK)
            + _shapley("MultiLayerMultiInput", _MI_IN, _MI_EXP_B, additional=(1,), feature_mask=_MI_MASK,
                       baselines=(2, 3.0, 4), per_eval=(1, 2, 3)))


@case("test_shapley.py::test_shapley_sampling_multi_task_output")
def _():
    return _shapley("MultiLayerPlusOnes2", T([[20.0, 50.0, 30.0]]),
                    [[[76.66666, 196.66666, 116.66666], [76.66666, 196.66666, 116.66666], [0, 0, 0], [0, 0, 0]]],
                    target=None, per_eval=(1, 2, 3), n_samples=150)


@case("test_shapley.py::test_shapley_sampling_multi_task_output_with_mask")
def _():
    return _shapley("MultiLayerPlusOnes1", T([[20.0, 50.0, 30.0], [20.0, 50.0, 30.0]]),
                    [[[275.0, 275.0, 115.0], [275.0, 275.0, 115.0], [0, 0, 0]],
                     [[75.0, 315.0, 315.0], [75.0, 315.0, 315.0], [0, 0, 0]]],
                    target=None, per_eval=(1, 2, 3), n_samples=150, feature_mask=T([[1, 1, 0], [0, 1, 1]]))


@case("test_shapley.py::test_single_shapley_batch_scalar_tensor_0d")
def _():
    return _shapley("SumMultiLayer_0d", T([[2.0, 10.0, 3.0]]), [[79.0, 79.0, 21.0]], feature_mask=T([[0, 0, 1]]),
                    target=None)


@case("test_shapley.py::test_single_shapley_batch_scalar_tensor_1d")
def _():
    return _shapley("SumMultiLayer_1d", T([[2.0, 10.0, 3.0]]), [[79.0, 79.0, 21.0]], feature_mask=T([[0, 0, 1]]),
                    target=None)


@case("test_shapley.py::test_multi_sample_shapley_batch_scalar_tensor_0d")
def _():
    return _shapley("SumMultiLayer_0d", T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]]), [[629.0, 629.0, 251.0]],
                    feature_mask=T([[0, 0, 1]]), target=None, n_samples=2500)


@case("test_shapley.py::test_multi_inp_shapley_batch_scalar_tensor_0d")
def _():
    inp = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
           T([[0.0, 100.0, 10.0], [20.0, 10.0, 13.0]]))
    expected = ([[3850.6666, 3850.6666, 3850.6666]], [[306.6666, 3850.6666, 410.6666]],
                [[306.6666, 3850.6666, 410.6666]])
    return _shapley("SumMultiLayerMultiInput_0d", inp, expected, additional=(1,),
                    feature_mask=(T([[1, 1, 1]]), T([[0, 1, 2]]), T([[0, 1, 2]])), target=None, n_samples=3500,
                    delta=1.2)


# --- tests/attr/test_kernel_shap.py ----------------------------------------------------------

def _kernel_shap(name, inputs, expected, *, feature_mask=None, additional=None, per_eval=(1,), baselines=None,
                 target=0, n_samples=100, delta=1.0, coefs=None):
    model, checks = load(name), []
    for k in per_eval:
        ks = onnx_attr.KernelShap(model)
        got = ks.attribute(inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
                           baselines=baselines, perturbations_per_eval=k, n_samples=n_samples)
        checks += _checks(got, expected, delta, "max")
        if coefs is not None:
            random.seed(1234); np.random.seed(1234); torch.manual_seed(1234)  # set_all_random_seeds(1234)
            got = ks.attribute(inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
                               baselines=baselines, perturbations_per_eval=k, n_samples=n_samples,
                               return_input_shape=False)
            checks.append((got, coefs, delta, "max"))
    return checks


@case("test_kernel_shap.py::test_linear_kernel_shap")
def _():
    return _kernel_shap("MultiLayer", T([[20.0, 50.0, 30.0]]), [[40.0, 120.0, 80.0]], n_samples=500,
                        baselines=T([[10.0, 20.0, 10.0]]), coefs=[[40.0, 120.0, 80.0]])


@case("test_kernel_shap.py::test_simple_kernel_shap")
def _():
    return _kernel_shap("MultiLayer", T([[20.0, 50.0, 30.0]]), [[76.66666, 196.66666, 116.66666]],
                        per_eval=(1, 2, 3), n_samples=500)


@case("test_kernel_shap.py::test_simple_kernel_shap_with_mask")
def _():
    return _kernel_shap("MultiLayer", T([[20.0, 50.0, 30.0]]), [[275.0, 275.0, 115.0]],
                        feature_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3), coefs=[[275.0, 115.0]])


@case("test_kernel_shap.py::test_simple_kernel_shap_with_baselines")
def _():
    return _kernel_shap("MultiLayer", T([[20.0, 50.0, 30.0]]), [[248.0, 248.0, 104.0]],
                        feature_mask=T([[0, 0, 1]]), baselines=4, per_eval=(1, 2, 3))


@case("test_kernel_shap.py::test_simple_batch_kernel_shap")
def _():
    return _kernel_shap("MultiLayer", T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]]),
                        [[7.0, 32.5, 10.5], [76.66666, 196.66666, 116.66666]], per_eval=(1, 2, 3), n_samples=2000)


@case("test_kernel_shap.py::test_simple_batch_kernel_shap_with_mask")
def _():
    return _kernel_shap("MultiLayer", T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]]),
                        [[39.5, 39.5, 10.5], [275.0, 275.0, 115.0]], feature_mask=T([[0, 0, 1], [1, 1, 0]]),
                        per_eval=(1, 2, 3), n_samples=100, coefs=[[39.5, 10.5], [115.0, 275.0]])


@case("test_kernel_shap.py::test_multi_input_kernel_shap_without_mask")
def _():
    inp = (T([[23.0, 0.0, 0.0]]), T([[20.0, 0.0, 50.0]]), T([[0.0, 100.0, 10.0]]))
    return _kernel_shap("MultiLayerMultiInput", inp, ([[90, 0, 0]], [[78, 0, 198]], [[0, 398, 38]]),
                        additional=(1,), n_samples=2000)


@case("test_kernel_shap.py::test_multi_input_kernel_shap_with_mask")
def _():
    inp = (T([[20.0, 50.0, 30.0]]), T([[0.0, 100.0, 0.0]]), T([[2.0, 10.0, 3.0]]))
    mask = (T([[0, 1, 0]]), T([[0, 1, 2]]), T([[0, 0, 0]]))
    return (_kernel_shap("MultiLayerMultiInput", inp, ([[255.0, 595.0, 255.0]], [[255.0, 595.0, 0.0]],
                                                        [[255.0, 255.0, 255.0]]), additional=(1,), feature_mask=mask)
            + _kernel_shap("MultiLayerMultiInput", inp, ([[184, 580.0, 184]], [[184, 580.0, -12.0]],
                                                          [[184, 184, 184]]), additional=(1,), feature_mask=mask,
                           baselines=(2, 3.0, 4), per_eval=(1, 2, 3)))


@case("test_kernel_shap.py::test_multi_input_batch_kernel_shap_without_mask")
def _():
    return _kernel_shap("MultiLayerMultiInput", _SV_IN, _SV_EXP, additional=(1,), n_samples=2500,
                        coefs=[[90.0, 0, 0, 78, 0, 198, 0, 398, 38], [78.0, 198.0, 118.0, 0.0, 398.0, 0.0, 0.0, 38.0, 0.0]])


@case("test_kernel_shap.py::test_multi_input_batch_kernel_shap")
def _():
    return (_kernel_shap("MultiLayerMultiInput", _MI_IN, _MI_EXP, additional=(1,), feature_mask=_MI_MASK,
                         n_samples=300)
            + _kernel_shap("MultiLayerMultiInput", _MI_IN, _MI_EXP_B, additional=(1,), feature_mask=_MI_MASK,
                           baselines=(2, 3.0, 4), per_eval=(1, 2, 3)))


@case("test_kernel_shap.py::test_single_kernel_shap_scalar_tensor_0d")
def _():
    return _kernel_shap("SumMultiLayer_0d", T([[2.0, 10.0, 3.0]]), [[79.0, 79.0, 21.0]], feature_mask=T([[0, 0, 1]]),
                        target=None)


@case("test_kernel_shap.py::test_multi_inp_kernel_shap_scalar_tensor_0d")
def _():
    inp = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
           T([[0.0, 100.0, 10.0], [20.0, 10.0, 13.0]]))
    expected = ([[3850.6666, 3850.6666, 3850.6666]], [[306.6666, 3850.6666, 410.6666]],
                [[306.6666, 3850.6666, 410.6666]])
    return _kernel_shap("SumMultiLayerMultiInput_0d", inp, expected, additional=(1,),
                        feature_mask=(T([[1, 1, 1]]), T([[0, 1, 2]]), T([[0, 1, 2]])), target=None, n_samples=1500)


# --- tests/attr/test_lime.py ------------------------------------------------------------------
# Captum: Lime(net, similarity_func=get_exp_kernel_similarity_function("cosine", 10.0),
#              interpretable_model=SkLearnLasso(alpha=1.0)); here the same as Lime's own arguments.

def _lime(name, inputs, expected, *, coefs=None, feature_mask=None, additional=None, per_eval=(1,), baselines=None,
          target=0, n_samples=100, delta=1.0):
    model, checks = load(name), []
    for k in per_eval:
        lime = onnx_attr.Lime(model, alpha=1.0, kernel_width=10.0, distance_mode="cosine")
        got = lime.attribute(inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
                             baselines=baselines, perturbations_per_eval=k, n_samples=n_samples)
        checks += _checks(got, expected, delta, "max")
        if coefs is not None:
            got = lime.attribute(inputs, target=target, feature_mask=feature_mask, additional_forward_args=additional,
                                 baselines=baselines, perturbations_per_eval=k, n_samples=n_samples,
                                 return_input_shape=False)
            checks.append((got, coefs, delta, "max"))
    return checks


@case("test_lime.py::(call form) Lime(net, similarity_func=..., interpretable_model=SkLearnLasso(alpha=1.0))")
def _():
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    lime = onnx_attr.Lime(load("MultiLayer"), similarity_func=get_exp_kernel_similarity_function("cosine", 10.0),
                          interpretable_model=SkLearnLasso(alpha=1.0))
    got = lime.attribute(T([[20.0, 50.0, 30.0]]), target=0, n_samples=500)
    return [(got, [[73.3716, 193.3349, 113.3349]], 1.0, "max")]


@case("test_lime.py::test_simple_lime")
def _():
    return _lime("MultiLayer", T([[20.0, 50.0, 30.0]]), [[73.3716, 193.3349, 113.3349]], per_eval=(1, 2, 3),
                 n_samples=500, coefs=[[73.3716, 193.3349, 113.3349]])


@case("test_lime.py::test_simple_lime_with_mask")
def _():
    return _lime("MultiLayer", T([[20.0, 50.0, 30.0]]), [[271.0, 271.0, 111.0]], feature_mask=T([[0, 0, 1]]),
                 per_eval=(1, 2, 3), n_samples=500, coefs=[[271.0, 111.0]])


@case("test_lime.py::test_simple_lime_with_baselines")
def _():
    return _lime("MultiLayer", T([[20.0, 50.0, 30.0]]), [[244.0, 244.0, 100.0]], feature_mask=T([[0, 0, 1]]),
                 baselines=4, per_eval=(1, 2, 3), coefs=[[244.0, 100.0]])


@case("test_lime.py::test_simple_lime_boolean")
def _():
    captum_module("BasicModelBoolInput")  # drawn after Captum's module is built, as Captum's test draws
    return _lime("BasicModelBoolInput", T([[True, False, True]]), [[31.42, 31.42, 30.90]],
                 feature_mask=T([[0, 0, 1]]), per_eval=(1, 2, 3))


@case("test_lime.py::test_simple_lime_boolean_with_baselines")
def _():
    return _lime("BasicModelBoolInput", T([[True, False, True]]), [[-36.0, -36.0, 0.0]],
                 feature_mask=T([[0, 0, 1]]), baselines=True, per_eval=(1, 2, 3))


@case("test_lime.py::test_simple_batch_lime")
def _():
    return _lime("MultiLayer", T([[20.0, 50.0, 30.0], [10.0, 14.0, 4.0]]),
                 [[73.4450, 193.5979, 113.4363], [32.11, 48.00, 11.00]], per_eval=(1, 2, 3), n_samples=800,
                 coefs=[[73.4450, 193.5979, 113.4363], [32.11, 48.00, 11.00]])


@case("test_lime.py::test_simple_batch_lime_with_mask")
def _():
    return _lime("MultiLayer", T([[20.0, 50.0, 30.0], [10.0, 14.0, 4.0]]),
                 [[271.0, 271.0, 111.0], [32.11, 48.00, 11.00]], feature_mask=T([[0, 0, 1], [0, 1, 2]]),
                 per_eval=(1, 2, 3), n_samples=600, coefs=[[271.0, 111.0, 0.0], [32.11, 48.00, 11.00]])


@case("test_lime.py::test_multi_input_lime_without_mask")
def _():
    inp = (T([[23.0, 0.0, 0.0]]), T([[20.0, 0.0, 50.0]]), T([[0.0, 100.0, 10.0]]))
    return _lime("MultiLayerMultiInput", inp, ([[87, 0, 0]], [[75, 0, 195]], [[0, 395, 35]]), additional=(1,),
                 n_samples=2000, coefs=[[87, 0, 0, 75, 0, 195, 0, 395, 35]])


@case("test_lime.py::test_multi_input_lime_with_mask")
def _():
    inp = (T([[20.0, 50.0, 30.0]]), T([[0.0, 100.0, 0.0]]), T([[2.0, 10.0, 3.0]]))
    mask = (T([[0, 1, 0]]), T([[0, 1, 2]]), T([[0, 0, 0]]))
    return (_lime("MultiLayerMultiInput", inp, ([[251.0, 591.0, 251.0]], [[251.0, 591.0, 0.0]], [[251.0, 251.0, 251.0]]),
                  additional=(1,), feature_mask=mask, n_samples=500, coefs=[[251.0, 591.0, 0.0]])
            + _lime("MultiLayerMultiInput", inp, ([[180, 576.0, 180]], [[180, 576.0, -8.0]], [[180, 180, 180]]),
                    additional=(1,), feature_mask=mask, baselines=(2, 3.0, 4), per_eval=(1, 2, 3), n_samples=500,
                    coefs=[[180, 576.0, -8.0]]))


@case("test_lime.py::test_multi_input_batch_lime_without_mask")
def _():
    expected = ([[87.8777, 0.0000, 0.0000], [75.8461, 195.6842, 115.3390]],
                [[74.7283, 0.0000, 195.1708], [0.0000, 395.3823, 0.0000]],
                [[0.0000, 395.5216, 35.5530], [0.0000, 35.1349, 0.0000]])
    return _lime("MultiLayerMultiInput", _SV_IN, expected, additional=(1,), n_samples=1000, delta=1.2,
                 coefs=[[87.8777, 0.0, 0.0, 74.7283, 0.0, 195.1708, 0.0, 395.5216, 35.5530],
                        [75.8461, 195.6842, 115.3390, 0.0, 395.3823, 0.0, 0.0, 35.1349, 0.0]])


@case("test_lime.py::test_multi_input_batch_lime")
def _():
    expected = ([[1086.2802, 1086.2802, 1086.2802], [250.8907, 590.9789, 250.8907]],
                [[73.2166, 1086.2802, 152.6888], [250.8907, 590.9789, 0.0000]],
                [[73.2166, 1086.2802, 152.6888], [250.8907, 250.8907, 250.8907]])
    expected_b = ([[1036.4233, 1036.4233, 1036.4233], [180.3035, 575.8969, 180.3035]],
                  [[48.2441, 1036.4233, 128.3161], [180.3035, 575.8969, -8.3229]],
                  [[48.2441, 1036.4233, 128.3161], [180.3035, 180.3035, 180.3035]])
    return (_lime("MultiLayerMultiInput", _MI_IN, expected, additional=(1,), feature_mask=_MI_MASK)
            + _lime("MultiLayerMultiInput", _MI_IN, expected_b, additional=(1,), feature_mask=_MI_MASK,
                    baselines=(2, 3.0, 4), per_eval=(1, 2, 3), n_samples=500,
                    coefs=[[48.2441, 1036.4233, 128.3161], [180.3035, 575.8969, -8.3229]]))


@case("test_lime.py::test_single_lime_scalar_tensor_0d")
def _():
    return _lime("SumMultiLayer_0d", T([[2.0, 10.0, 3.0]]), [[75.0, 75.0, 17.0]], feature_mask=T([[0, 0, 1]]),
                 target=None, coefs=[[75.0, 17.0]], n_samples=700)


@case("test_lime.py::test_multi_inp_lime_scalar_tensor_0d")
def _():
    inp = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
           T([[0.0, 100.0, 10.0], [20.0, 10.0, 13.0]]))
    expected = ([[3850.6666, 3850.6666, 3850.6666]], [[305.5, 3850.6666, 410.1]], [[305.5, 3850.6666, 410.1]])
    return _lime("SumMultiLayerMultiInput_0d", inp, expected, additional=(1,),
                 feature_mask=(T([[1, 1, 1]]), T([[0, 1, 2]]), T([[0, 1, 2]])), target=None, n_samples=1500,
                 coefs=[[305.5, 3850.6666, 410.1]], delta=1.5)


# --- tests/attr/test_guided_backprop.py, test_deconvolution.py --------------------------------

_CONV_IN = torch.arange(16, dtype=torch.float).view(1, 1, 4, 4)
_GB = [[[[0.0, 1.0, 1.0, 1.0], [1.0, 3.0, 3.0, 2.0], [1.0, 3.0, 3.0, 2.0], [1.0, 2.0, 2.0, 1.0]]]]
_GB2 = [[[[1.0, 2.0, 2.0, 1.0], [2.0, 4.0, 4.0, 2.0], [2.0, 4.0, 4.0, 2.0], [1.0, 2.0, 2.0, 1.0]]]]
_DC = [[[[2.0, 3.0, 3.0, 1.0], [3.0, 5.0, 5.0, 2.0], [3.0, 5.0, 5.0, 2.0], [1.0, 2.0, 2.0, 1.0]]]]


@case("test_guided_backprop.py::test_simple_input_conv_gb")
def _():
    return _checks(onnx_attr.GuidedBackprop(load("ConvNetOneConvSingle")).attribute((_CONV_IN,), target=0), (_GB,),
                   0.01, "sum")


@case("test_guided_backprop.py::test_simple_input_conv_neuron_gb (fc1: the Gemm)")
def _():
    m = load("ConvNetOneConvSingle")
    return _checks(onnx_attr.NeuronGuidedBackprop(m, tensor(m, "Gemm")).attribute((_CONV_IN,), neuron_selector=(0,)),
                   (_GB,), 0.01, "sum")


@case("test_guided_backprop.py::test_simple_input_conv_neuron_gb_agg_neurons")
def _():
    m = load("ConvNetOneConvSingle")
    return _checks(onnx_attr.NeuronGuidedBackprop(m, tensor(m, "Gemm")).attribute(
        (_CONV_IN,), neuron_selector=(slice(0, 1, 1),)), (_GB,), 0.01, "sum")


@case("test_guided_backprop.py::test_simple_multi_input_conv_gb")
def _():
    return _checks(onnx_attr.GuidedBackprop(load("ConvNetOneConv")).attribute((_CONV_IN, torch.ones(1, 1, 4, 4)),
                                                                              target=0), (_GB2, _GB2), 0.01, "sum")


@case("test_guided_backprop.py::test_simple_multi_input_conv_neuron_gb")
def _():
    m = load("ConvNetOneConv")
    return _checks(onnx_attr.NeuronGuidedBackprop(m, tensor(m, "Gemm")).attribute(
        (_CONV_IN, torch.ones(1, 1, 4, 4)), neuron_selector=(3,)), (_GB2, _GB2), 0.01, "sum")


@case("test_guided_backprop.py::test_gb_matching (relu2: the last Relu)")
def _():
    m, checks = load("ConvNetOneConvSingle"), []
    inp = 100.0 * torch.randn(1, 1, 4, 4)
    assert not onnx_attr.GuidedBackprop(m).multiplies_by_inputs
    for i in range(4):
        checks.append((onnx_attr.GuidedBackprop(m).attribute(inp, target=i),
                       onnx_attr.NeuronGuidedBackprop(m, tensor(m, "Relu", -1)).attribute(inp, (i,)), 0.01, "sum"))
    return checks


@case("test_deconvolution.py::test_simple_input_conv_deconv")
def _():
    return _checks(onnx_attr.Deconvolution(load("ConvNetOneConvSingle")).attribute((_CONV_IN,), target=0), (_DC,),
                   0.01, "sum")


@case("test_deconvolution.py::test_simple_input_conv_neuron_deconv")
def _():
    m = load("ConvNetOneConvSingle")
    return _checks(onnx_attr.NeuronDeconvolution(m, tensor(m, "Gemm")).attribute((_CONV_IN,), neuron_selector=(0,)),
                   (_DC,), 0.01, "sum")


@case("test_deconvolution.py::test_simple_input_conv_neuron_deconv_agg_neurons")
def _():
    m = load("ConvNetOneConvSingle")
    return _checks(onnx_attr.NeuronDeconvolution(m, tensor(m, "Gemm")).attribute(
        (_CONV_IN,), neuron_selector=(slice(0, 1, 1),)), (_DC,), 0.01, "sum")


@case("test_deconvolution.py::test_simple_multi_input_conv_deconv")
def _():
    return _checks(onnx_attr.Deconvolution(load("ConvNetOneConv")).attribute((_CONV_IN, torch.ones(1, 1, 4, 4)),
                                                                             target=0), (_DC, _DC), 0.01, "sum")


@case("test_deconvolution.py::test_simple_multi_input_conv_neuron_deconv")
def _():
    m = load("ConvNetOneConv")
    return _checks(onnx_attr.NeuronDeconvolution(m, tensor(m, "Gemm")).attribute(
        (_CONV_IN, torch.ones(1, 1, 4, 4)), neuron_selector=(3,)), (_DC, _DC), 0.01, "sum")


@case("test_deconvolution.py::test_deconv_matching (relu2: the last Relu)")
def _():
    m, checks = load("ConvNetOneConvSingle"), []
    inp = 100.0 * torch.randn(1, 1, 4, 4)
    assert not onnx_attr.Deconvolution(m).multiplies_by_inputs
    for i in range(4):
        checks.append((onnx_attr.Deconvolution(m).attribute(inp, target=i),
                       onnx_attr.NeuronDeconvolution(m, tensor(m, "Relu", -1)).attribute(inp, (i,)), 0.01, "sum"))
    return checks


# --- tests/attr/test_guided_grad_cam.py -------------------------------------------------------

_GGC = [[[[14.5, 29.0, 38.0, 19.0], [29.0, 58.0, 76.0, 38.0], [65.0, 130.0, 148.0, 74.0], [32.5, 65.0, 74.0, 37.0]]]]


@case("test_guided_grad_cam.py::test_simple_input_conv (relu1: the first Relu)")
def _():
    m = load("ConvNetOneConvSingle")
    ggc = onnx_attr.GuidedGradCam(m, tensor(m, "Relu"))
    assert not ggc.multiplies_by_inputs
    ex = [[[[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 12.0, 8.0], [28.0, 84.0, 97.5, 65.0], [28.0, 56.0, 65.0, 32.5]]]]
    return [(ggc.attribute(_CONV_IN, target=0, interpolate_mode="nearest", attribute_to_layer_input=False), ex,
             0.01, "sum")]


@case("test_guided_grad_cam.py::test_simple_multi_input_conv")
def _():
    m = load("ConvNetOneConv")
    got = onnx_attr.GuidedGradCam(m, tensor(m, "Conv")).attribute((_CONV_IN, torch.ones(1, 1, 4, 4)), target=0,
                                                                  interpolate_mode="nearest")
    return _checks(got, (_GGC, _GGC), 0.01, "sum")


@case("test_guided_grad_cam.py::test_simple_multi_input_relu_input (call form: attribute_to_layer_input=True)")
def _():
    m = load("ConvNetOneConv")
    got = onnx_attr.GuidedGradCam(m, tensor(m, "Relu")).attribute((_CONV_IN, torch.ones(1, 1, 4, 4)), target=0,
                                                                  attribute_to_layer_input=True)
    return _checks(got, (_GGC, _GGC), 0.01, "sum")


@case("test_guided_grad_cam.py::test_simple_multi_input_relu_input (relu1's input named: the Conv)")
def _():
    m = load("ConvNetOneConv")
    got = onnx_attr.GuidedGradCam(m, tensor(m, "Conv")).attribute((_CONV_IN, torch.ones(1, 1, 4, 4)), target=0)
    return _checks(got, (_GGC, _GGC), 0.01, "sum")


# --- tests/attr/layer/test_grad_cam.py --------------------------------------------------------

def _gradcam(name, layer, inp, expected, *, op_nth=None, **kwargs):
    m = load(name)
    layer = layer(m) if callable(layer) else layer
    gc = onnx_attr.LayerGradCam(m, layer)
    assert not gc.multiplies_by_inputs
    got = gc.attribute(inp, target=0, additional_forward_args=None, **kwargs)
    return _checks(got, expected, 0.01, "sum")


@case("test_grad_cam.py::test_simple_input_non_conv (linear0)")
def _():
    return _gradcam("MultiLayer", lambda m: tensor(m, "Gemm", 0), T([[0.0, 100.0, 0.0]]), [[400.0]])


@case("test_grad_cam.py::test_simple_multi_input_non_conv (multi_relu: both Relu tensors)")
def _():
    return _gradcam("MultiLayerMultiRelu", lambda m: [tensor(m, "Relu", 0), tensor(m, "Relu", 1)],
                    T([[0.0, 6.0, 0.0]]), ([[21.0]], [[21.0]]))


@case("test_grad_cam.py::test_simple_input_conv")
def _():
    return _gradcam("ConvNetOneConvSingle", lambda m: tensor(m, "Conv"), _CONV_IN, [[[[11.25, 13.5], [20.25, 22.5]]]])


@case("test_grad_cam.py::test_simple_input_conv_split_channels")
def _():
    return _gradcam("ConvNetOneConvSingle", lambda m: tensor(m, "Conv"), _CONV_IN,
                    [[[[-3.75, 3.0], [23.25, 30.0]], [[15.0, 10.5], [-3.0, -7.5]]]], attr_dim_summation=False)


@case("test_grad_cam.py::test_simple_input_conv_relu")
def _():
    return _gradcam("ConvNetOneConvSingle", lambda m: tensor(m, "Relu", 0), _CONV_IN, [[[[0.0, 4.0], [28.0, 32.5]]]])


def _neg_inp():
    inp = _CONV_IN.clone()
    inp[0, 0, 1, 1] = -4.0
    return inp


@case("test_grad_cam.py::test_simple_input_conv_without_final_relu (call form: attribute_to_layer_input=True)")
def _():
    inp = _neg_inp()
    return _gradcam("ConvNetOneConvSingle", lambda m: tensor(m, "Conv"), inp, 0.5625 * inp,
                    attribute_to_layer_input=True)


@case("test_grad_cam.py::test_simple_input_conv_without_final_relu (conv1's input named: x)")
def _():
    inp = _neg_inp()
    return _gradcam("ConvNetOneConvSingle", "x", inp, 0.5625 * inp)


@case("test_grad_cam.py::test_simple_input_conv_fc_with_final_relu (conv1's input named: x)")
def _():
    inp = _neg_inp()
    exp = 0.5625 * inp
    exp[0, 0, 1, 1] = 0.0
    return _gradcam("ConvNetOneConvSingle", "x", inp, exp, relu_attributions=True)


@case("test_grad_cam.py::test_simple_multi_input_conv")
def _():
    return _gradcam("ConvNetOneConv", lambda m: tensor(m, "Conv"), (_CONV_IN, torch.ones(1, 1, 4, 4)),
                    [[[[14.5, 19.0], [32.5, 37.0]]]])


@case("test_grad_cam.py::(call form) _grad_cam_test_assert passes grad_kwargs=None")
def _():
    m = load("ConvNetOneConvSingle")
    got = onnx_attr.LayerGradCam(m, tensor(m, "Conv")).attribute(
        _CONV_IN, target=0, additional_forward_args=None, attribute_to_layer_input=False, relu_attributions=False,
        attr_dim_summation=True, grad_kwargs=None)
    return _checks(got, [[[[11.25, 13.5], [20.25, 22.5]]]], 0.01, "sum")


# --- tests/attr/test_lrp.py -------------------------------------------------------------------

def _node(model, op, nth=0):
    return [n.meta["onnx_node"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == op][nth]


@case("test_lrp.py::test_lrp_basic_attributions")
def _():
    m = load("ConvNetOneConvSingle")
    target = int(torch_module("ConvNetOneConvSingle")(_CONV_IN).argmax(1))
    relevance, delta = onnx_attr.LRP(m).attribute(_CONV_IN, target, return_convergence_delta=True)
    return [(delta, 0.0, 0.0, "max"), (torch.tensor(relevance.shape), list(_CONV_IN.shape), 0, "max"),
            (relevance, [[[[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 0, 0, 0]]]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_simple_attributions")
def _():
    return [(onnx_attr.LRP(load("SimpleLRP"), "epsilon").attribute(T([[1.0, 2.0, 3.0]])), [[18.0, 36.0, 54.0]],
             1e-4, "sum")]


@case("test_lrp.py::test_lrp_simple_attributions_batch")
def _():
    inputs = T([[1.0, 2.0, 3.0], [3.0, 6.0, 9.0]])
    relevance, delta = onnx_attr.LRP(load("SimpleLRP"), "epsilon").attribute(inputs, target=0,
                                                                             return_convergence_delta=True)
    return [(torch.tensor(relevance.shape), [2, 3], 0, "max"), (torch.tensor(delta.shape[0]), 2, 0, "max"),
            (relevance, [[18.0, 36.0, 54.0], [54.0, 108.0, 162.0]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_simple_tanh")
def _():
    return [(onnx_attr.LRP(load("LRPTanh")).attribute(T([[1.0, 2.0, 3.0]])), [[0.0269, 0.0537, 0.0806]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_simple_attributions_GammaRule")
def _():
    from onnx_attr.methods.lrp import Gamma
    m = load("SimpleLRP_w00")
    lrp = onnx_attr.LRP(m, rules={_node(m, "Gemm", 0): Gamma(1.0), _node(m, "Gemm", 1): Gamma(0.25)})
    return [(lrp.attribute(T([[1.0, 2.0, 3.0]])), [[28 / 3, 104 / 3, 52]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_simple_attributions_AlphaBeta")
def _():
    return [(onnx_attr.LRP(load("SimpleLRP_w00"), "alpha1beta0").attribute(T([[1.0, 2.0, 3.0]])),
             [[12, 33.6, 50.4]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_Identity (IdentityRule on linear, Epsilon on linear2)")
def _():
    m = load("SimpleLRP_w00")
    lrp = onnx_attr.LRP(m, rules={_node(m, "Gemm", 0): "identity", _node(m, "Gemm", 1): "epsilon"})
    return [(lrp.attribute(T([[1.0, 2.0, 3.0]])), [[24.0, 36.0, 36.0]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_skip_connection")
def _():
    return [(onnx_attr.LRP(load("SkipConnection")).attribute(T([[2.0, 3.0]]), target=1), [[10, 18]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_maxpool1D")
def _():
    return [(onnx_attr.LRP(load("LRPMaxPool1d")).attribute(T([[[1.0, 2.0], [5.0, 6.0]]]), target=1),
             [[[0.0, 0.0], [10, 12]]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_maxpool2D")
def _():
    return [(onnx_attr.LRP(load("MaxPool2d")).attribute(T([[[[1.0, 2.0], [5.0, 6.0]]]])),
             [[[[0.0, 0.0], [0.0, 6.0]]]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_maxpool3D")
def _():
    return [(onnx_attr.LRP(load("MaxPool3d")).attribute(T([[[[[1.0, 2.0], [5.0, 6.0]], [[3.0, 4.0], [7.0, 8.0]]]]])),
             [[[[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 8.0]]]]], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_multi_inputs (input, 3*input: x and add_input)")
def _():
    inp = T([[1.0, 2.0, 3.0]])
    attributions, delta = onnx_attr.LRP(load("MultiLayerAddInput")).attribute((inp, 3 * inp), target=0,
                                                                               return_convergence_delta=True)
    return [(attributions[0], [[16, 32, 48]], 1e-4, "sum"), (delta, [-104.0], 1e-4, "sum")]


@case("test_lrp.py::test_lrp_multi (additional_forward_args=(0,) as add_input)")
def _():
    m, inp = load("MultiLayerAddInput"), T([[1.0, 2.0, 3.0]])
    plain = onnx_attr.LRP(load("MultiLayer")).attribute(inp, target=0)
    added = onnx_attr.LRP(m).attribute(inp, target=0, additional_forward_args=(0,))
    return [(added, plain, 0.0, "max")]


@case("test_lrp.py::test_lrp_ixg_equivalency")
def _():
    m, inp = load("SimpleLRP"), T([[1.0, 2.0, 3.0]])
    return [(onnx_attr.LRP(m).attribute(inp), onnx_attr.InputXGradient(m).attribute(inp), 1e-4, "sum")]


# --- tests/attr/layer/test_layer_conductance.py ----------------------------------------------

def _layer_cond(name, layer, inp, expected, *, baselines=None, additional=None):
    m = load(name)
    layer = layer(m)
    cond = onnx_attr.LayerConductance(m, layer)
    assert cond.multiplies_by_inputs
    checks = []
    for ibs in (None, 4, 20):
        got, delta = cond.attribute(inp, baselines=baselines, target=0, n_steps=500, method="gausslegendre",
                                    additional_forward_args=additional, internal_batch_size=ibs,
                                    return_convergence_delta=True)
        checks.append((delta.abs().max(), 0.0, 0.01, "max"))
        checks += _checks(got, expected, 0.1, "sum")
    return checks


_L0 = lambda m: tensor(m, "Gemm", 0)  # noqa: E731
_L1 = lambda m: tensor(m, "Gemm", 1)  # noqa: E731
_L2 = lambda m: tensor(m, "Gemm", -1)  # noqa: E731
_RELU = lambda m: tensor(m, "Relu", 0)  # noqa: E731
_MULTI_RELU = lambda m: [tensor(m, "Relu", 0), tensor(m, "Relu", 1)]  # noqa: E731


@case("test_layer_conductance.py::test_simple_input_conductance")
def _():
    return _layer_cond("MultiLayer", _L0, T([[0.0, 100.0, 0.0]]), [[0.0, 390.0, 0.0]])


@case("test_layer_conductance.py::test_simple_input_multi_conductance")
def _():
    return _layer_cond("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 100.0, 0.0]]),
                       ([[90.0, 100.0, 100.0, 100.0]], [[90.0, 100.0, 100.0, 100.0]]))


@case("test_layer_conductance.py::test_simple_input_with_scalar_baseline_conductance")
def _():
    return _layer_cond("MultiLayer", _L0, T([[0.0, 100.0, 0.0]]), [[0.0, 390.0, 0.0]], baselines=0.0)


@case("test_layer_conductance.py::test_simple_linear_conductance")
def _():
    return _layer_cond("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), [[90.0, 100.0, 100.0, 100.0]])


@case("test_layer_conductance.py::test_simple_relu_conductance")
def _():
    return _layer_cond("MultiLayer", _RELU, T([[0.0, 100.0, 0.0]]), [[90.0, 100.0, 100.0, 100.0]])


@case("test_layer_conductance.py::test_simple_output_conductance")
def _():
    return _layer_cond("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), [[390.0, 0.0]])


@case("test_layer_conductance.py::test_simple_multi_input_linear2_conductance")
def _():
    return _layer_cond("MultiLayerMultiInput", _L2, (T([[0.0, 10.0, 0.0]]), T([[0.0, 10.0, 0.0]]),
                                                     T([[0.0, 5.0, 0.0]])), [[390.0, 0.0]], additional=(4,))


@case("test_layer_conductance.py::test_simple_multi_input_relu_conductance")
def _():
    return _layer_cond("MultiLayerMultiInput", _RELU, (T([[0.0, 10.0, 1.0]]), T([[0.0, 4.0, 5.0]])),
                       [[90.0, 100.0, 100.0, 100.0]], additional=(T([[0.0, 0.0, 0.0]]), 5))


@case("test_layer_conductance.py::test_simple_multi_input_relu_conductance_batch")
def _():
    return _layer_cond("MultiLayerMultiInput", _RELU,
                       (T([[0.0, 10.0, 1.0], [0.0, 0.0, 10.0]]), T([[0.0, 4.0, 5.0], [0.0, 0.0, 10.0]])),
                       [[90.0, 100.0, 100.0, 100.0], [100.0, 100.0, 100.0, 100.0]],
                       additional=(T([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), 5))


@case("test_layer_conductance.py::(call form) _conductance_test_assert passes grad_kwargs=None")
def _():
    m = load("MultiLayer")
    got, delta = onnx_attr.LayerConductance(m, tensor(m, "Gemm", 0)).attribute(
        T([[0.0, 100.0, 0.0]]), baselines=None, target=0, n_steps=500, method="gausslegendre",
        additional_forward_args=None, internal_batch_size=None, return_convergence_delta=True, grad_kwargs=None)
    return [(got, [[0.0, 390.0, 0.0]], 0.1, "sum")]


# --- tests/attr/neuron/test_neuron_conductance.py ---------------------------------------------

def _neuron_cond(name, layer, inp, neuron, expected, additional=None, multiply_by_inputs=True):
    m = load(name)
    layer = layer(m)
    checks = []
    for ibs in (None, 5, 20):
        cond = onnx_attr.NeuronConductance(m, layer, multiply_by_inputs=multiply_by_inputs)
        assert cond.multiplies_by_inputs == multiply_by_inputs
        got = cond.attribute(inp, neuron, target=0, n_steps=500, method="gausslegendre",
                             additional_forward_args=additional, internal_batch_size=ibs)
        if isinstance(expected, tuple):
            for i in range(len(expected)):
                for j in range(len(expected[i])):
                    checks.append((got[i][j:j + 1].squeeze(0), expected[i][j], 0.1, "max"))
        else:
            checks.append((got.squeeze(0), expected, 0.1, "max"))
    return checks


@case("test_neuron_conductance.py::test_simple_conductance_input_linear2")
def _():
    return _neuron_cond("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), (0,), [0.0, 390.0, 0.0])


@case("test_neuron_conductance.py::test_simple_conductance_input_linear2_wo_mult_by_inputs")
def _():
    return _neuron_cond("MultiLayer", _L2, T([[100.0, 100.0, 100.0]]), (0,), [3.96, 3.96, 3.96],
                        multiply_by_inputs=False)


@case("test_neuron_conductance.py::test_simple_conductance_input_linear1")
def _():
    return _neuron_cond("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), 0, [0.0, 90.0, 0.0])


@case("test_neuron_conductance.py::test_simple_conductance_input_linear1_selector_fn")
def _():
    return _neuron_cond("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), lambda x: x[:, 0], [0.0, 90.0, 0.0])


@case("test_neuron_conductance.py::test_simple_conductance_input_relu")
def _():
    return _neuron_cond("MultiLayer", _RELU, T([[0.0, 70.0, 30.0]]), (3,), [0.0, 70.0, 30.0])


@case("test_neuron_conductance.py::test_simple_conductance_multi_input_linear2")
def _():
    return _neuron_cond("MultiLayerMultiInput", _L2, (T([[0.0, 10.0, 0.0]]), T([[0.0, 10.0, 0.0]]),
                                                      T([[0.0, 5.0, 0.0]])), (0,),
                        ([[0.0, 156.0, 0.0]], [[0.0, 156.0, 0.0]], [[0.0, 78.0, 0.0]]), (4,))


@case("test_neuron_conductance.py::test_simple_conductance_multi_input_relu")
def _():
    return _neuron_cond("MultiLayerMultiInput", _RELU, (T([[0.0, 10.0, 1.0]]), T([[0.0, 4.0, 5.0]])), (3,),
                        ([[0.0, 50.0, 5.0]], [[0.0, 20.0, 25.0]]), (T([[0.0, 0.0, 0.0]]), 5))


@case("test_neuron_conductance.py::test_simple_conductance_multi_input_batch_relu")
def _():
    return _neuron_cond("MultiLayerMultiInput", _RELU,
                        (T([[0.0, 10.0, 1.0], [0.0, 0.0, 10.0]]), T([[0.0, 4.0, 5.0], [0.0, 0.0, 10.0]])), (3,),
                        ([[0.0, 50.0, 5.0], [0.0, 0.0, 50.0]], [[0.0, 20.0, 25.0], [0.0, 0.0, 50.0]]),
                        (T([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), 5))


@case("test_neuron_conductance.py::test_layer_tuple_selector_fn (call form: tuple layer, x[0][:, 1])")
def _():
    m = load("MultiLayerMultiRelu")
    got = onnx_attr.NeuronConductance(m, _MULTI_RELU(m)).attribute(T([[0.0, 6.0, 0.0]]), lambda x: x[0][:, 1],
                                                                    target=0, n_steps=500, method="gausslegendre")
    return [(got.squeeze(0), [0.0, 6.0, 0.0], 0.1, "max")]


@case("test_neuron_conductance.py::test_layer_tuple_selector_fn (first relu named, x[:, 1])")
def _():
    return _neuron_cond("MultiLayerMultiRelu", _RELU, T([[0.0, 6.0, 0.0]]), lambda x: x[:, 1], [0.0, 6.0, 0.0])


@case("test_neuron_conductance.py::test_matching_layer_tuple_selector_fn (each relu named)")
def _():
    m, inp, checks = load("MultiLayerMultiRelu"), T([[0.0, 6.0, 0.0]]), []
    layers = _MULTI_RELU(m)
    layer_attr = onnx_attr.LayerConductance(m, layers).attribute(inp, target=0, n_steps=500, method="gausslegendre")
    for i, layer in enumerate(layers):
        nc = onnx_attr.NeuronConductance(m, layer)
        for j in range(layer_attr[i].shape[1]):
            neuron_attr = nc.attribute(inp, lambda x, j=j: x[:, j], target=0, n_steps=500, method="gausslegendre")
            checks.append((neuron_attr.sum(), layer_attr[i][0][j], 0.005, "max"))
    return checks


# --- tests/attr/layer/test_layer_gradient_x_activation.py -------------------------------------

def _lgxa(name, layer, inp, expected, additional=None, nested=False):
    m = load(name)
    layer = layer(m)
    ga = onnx_attr.LayerGradientXActivation(m, layer)
    assert ga.multiplies_by_inputs
    got = ga.attribute(inp, target=0, additional_forward_args=additional)
    grads = onnx_attr.LayerGradientXActivation(m, layer, multiply_by_inputs=False).attribute(
        inp, target=0, additional_forward_args=additional)
    acts = onnx_attr.LayerActivation(m, layer).attribute(inp, additional_forward_args=additional)
    if not nested:
        return (_checks(got, expected, 0.01, "sum")
                + _checks(got, tuple(a * g for a, g in zip(_tuple(acts), _tuple(grads))), 0.01, "sum"))
    checks = []
    for i in range(len(layer)):
        checks += _checks(got[i], expected[i], 0.01, "sum")
        checks += _checks(got[i], tuple(a * g for a, g in zip(_tuple(acts[i]), _tuple(grads[i]))), 0.01, "sum")
    return checks


@case("test_layer_gradient_x_activation.py::test_simple_input_gradient_activation")
def _():
    return _lgxa("MultiLayer", _L0, T([[0.0, 100.0, 0.0]]), [[0.0, 400.0, 0.0]])


@case("test_layer_gradient_x_activation.py::test_simple_linear_gradient_activation")
def _():
    return _lgxa("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), [[90.0, 101.0, 101.0, 101.0]])


@case("test_layer_gradient_x_activation.py::test_multi_layer_linear_gradient_activation")
def _():
    return _lgxa("MultiLayer", lambda m: [_L0(m), _L1(m)], T([[0.0, 100.0, 0.0]]),
                 ([[0.0, 400.0, 0.0]], [[90.0, 101.0, 101.0, 101.0]]), nested=True)


@case("test_layer_gradient_x_activation.py::test_simple_multi_gradient_activation")
def _():
    return _lgxa("MultiLayerMultiRelu", _MULTI_RELU, T([[3.0, 4.0, 0.0]]),
                 ([[0.0, 8.0, 8.0, 8.0]], [[0.0, 8.0, 8.0, 8.0]]))


@case("test_layer_gradient_x_activation.py::test_simple_relu_gradient_activation")
def _():
    return _lgxa("MultiLayer", _RELU, T([[3.0, 4.0, 0.0]]), [[0.0, 8.0, 8.0, 8.0]])


@case("test_layer_gradient_x_activation.py::test_multi_layer_multi_gradient_activation ([multi_relu, linear0])")
def _():
    m = load("MultiLayerMultiRelu")
    layers = [_MULTI_RELU(m), _L0(m)]
    got = onnx_attr.LayerGradientXActivation(m, layers).attribute(T([[3.0, 4.0, 0.0]]), target=0)
    return (_checks(got[0], ([[0.0, 8.0, 8.0, 8.0]], [[0.0, 8.0, 8.0, 8.0]]), 0.01, "sum")
            + _checks(got[1], [[9.0, 12.0, 0.0]], 0.01, "sum"))


@case("test_layer_gradient_x_activation.py::test_multi_layer_multi_gradient_activation (flat list of 3 tensors)")
def _():
    m = load("MultiLayerMultiRelu")
    got = onnx_attr.LayerGradientXActivation(m, _MULTI_RELU(m) + [_L0(m)]).attribute(T([[3.0, 4.0, 0.0]]), target=0)
    return _checks(got, ([[0.0, 8.0, 8.0, 8.0]], [[0.0, 8.0, 8.0, 8.0]], [[9.0, 12.0, 0.0]]), 0.01, "sum")


@case("test_layer_gradient_x_activation.py::test_simple_output_gradient_activation")
def _():
    return _lgxa("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), [[392.0, 0.0]])


@case("test_layer_gradient_x_activation.py::test_simple_gradient_activation_multi_input_linear2")
def _():
    return _lgxa("MultiLayerMultiInput", _L2, (T([[0.0, 10.0, 0.0]]), T([[0.0, 10.0, 0.0]]), T([[0.0, 5.0, 0.0]])),
                 [[392.0, 0.0]], (4,))


@case("test_layer_gradient_x_activation.py::test_simple_gradient_activation_multi_input_relu")
def _():
    return _lgxa("MultiLayerMultiInput", _RELU, (T([[0.0, 10.0, 1.0]]), T([[0.0, 4.0, 5.0]])),
                 [[90.0, 101.0, 101.0, 101.0]], (T([[0.0, 0.0, 0.0]]), 5))


# --- tests/attr/layer/test_internal_influence.py ----------------------------------------------

def _ii(name, layer, inp, expected, baseline=None, additional=None, **kwargs):
    m = load(name)
    layer = layer(m) if callable(layer) else layer
    checks = []
    for ibs in (None, 5, 20):
        ii = onnx_attr.InternalInfluence(m, layer)
        assert not ii.multiplies_by_inputs
        got = ii.attribute(inp, baselines=baseline, target=0, n_steps=500, method="riemann_trapezoid",
                           additional_forward_args=additional, internal_batch_size=ibs, **kwargs)
        checks += _checks(got, expected, 0.01, "max")
    return checks


@case("test_internal_influence.py::test_simple_input_internal_inf")
def _():
    return _ii("MultiLayer", _L0, T([[0.0, 100.0, 0.0]]), [[3.9, 3.9, 3.9]])


@case("test_internal_influence.py::test_simple_input_multi_internal_inf (multi_relu's inputs named)")
def _():
    return _ii("MultiLayerMultiRelu", lambda m: [tensor(m, "Gemm", 1), tensor(m, "Gemm", 2)], T([[0.0, 100.0, 0.0]]),
               ([[0.9, 1.0, 1.0, 1.0]], [[0.9, 1.0, 1.0, 1.0]]))


@case("test_internal_influence.py::test_simple_input_multi_internal_inf (call form: attribute_to_layer_input=True)")
def _():
    return _ii("MultiLayerMultiRelu", _MULTI_RELU, T([[0.0, 100.0, 0.0]]),
               ([[0.9, 1.0, 1.0, 1.0]], [[0.9, 1.0, 1.0, 1.0]]), attribute_to_layer_input=True)


@case("test_internal_influence.py::test_simple_linear_internal_inf")
def _():
    return _ii("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), [[0.9, 1.0, 1.0, 1.0]])


@case("test_internal_influence.py::test_simple_relu_input_internal_inf_inplace (relu's input named)")
def _():
    return _ii("MultiLayer", _L1, T([[0.0, 100.0, 0.0]]), ([0.9, 1.0, 1.0, 1.0],))


@case("test_internal_influence.py::test_simple_relu_internal_inf")
def _():
    return _ii("MultiLayer", _RELU, T([[3.0, 4.0, 0.0]]), [[1.0, 1.0, 1.0, 1.0]])


@case("test_internal_influence.py::test_simple_output_internal_inf")
def _():
    return _ii("MultiLayer", _L2, T([[0.0, 100.0, 0.0]]), [[1.0, 0.0]])


@case("test_internal_influence.py::test_simple_with_baseline_internal_inf")
def _():
    return _ii("MultiLayer", _L1, T([[0.0, 80.0, 0.0]]), [[0.7, 0.8, 0.8, 0.8]], T([[0.0, -20.0, 0.0]]))


@case("test_internal_influence.py::test_simple_multi_input_linear2_internal_inf")
def _():
    return _ii("MultiLayerMultiInput", _L2, (T([[0.0, 10.0, 0.0]]), T([[0.0, 10.0, 0.0]]), T([[0.0, 5.0, 0.0]])),
               [[1.0, 0.0]], additional=(4,))


@case("test_internal_influence.py::test_simple_multi_input_relu_internal_inf")
def _():
    return _ii("MultiLayerMultiInput", _RELU, (T([[0.0, 10.0, 1.0]]), T([[0.0, 4.0, 5.0]])), [[1.0, 1.0, 1.0, 1.0]],
               additional=(T([[0.0, 0.0, 0.0]]), 5))


@case("test_internal_influence.py::test_simple_multi_input_batch_relu_internal_inf")
def _():
    return _ii("MultiLayerMultiInput", _L1, (T([[0.0, 6.0, 14.0], [0.0, 80.0, 0.0]]),
                                             T([[0.0, 6.0, 14.0], [0.0, 20.0, 0.0]])),
               [[0.95, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], additional=(T([[0.0, 0.0, 0.0], [0.0, 20.0, 0.0]]), 5))


@case("test_internal_influence.py::test_multiple_linear_internal_inf")
def _():
    return _ii("MultiLayer", _L1, T([[0.0, 100.0, 0.0]] * 4), [[0.9, 1.0, 1.0, 1.0]] * 4)


@case("test_internal_influence.py::test_multiple_with_baseline_internal_inf")
def _():
    return _ii("MultiLayer", _L1, T([[0.0, 80.0, 0.0], [30.0, 30.0, 0.0]]),
               [[0.7, 0.8, 0.8, 0.8], [0.5, 0.6, 0.6, 0.6]], T([[0.0, -20.0, 0.0], [-20.0, -20.0, 0.0]]))


# --- tests/attr/test_feature_permutation.py ---------------------------------------------------

@case("test_feature_permutation.py::test_single_input")
def _():
    inp = torch.randn(2, 6)
    inp[:, 0] = 10000
    attribs = onnx_attr.FeaturePermutation(load("SumLast")).attribute(inp)
    assert attribs.squeeze(0).size() == (2, 6)
    assert (attribs[:, 1:6].abs() > 0).all(), attribs
    return [(attribs[:, 0], torch.zeros(2), 0.05, "max")]


@case("test_feature_permutation.py::test_simple_input_with_min_examples_in_group")
def _():
    return [(onnx_attr.FeaturePermutation(load("SumLast2")).attribute(T([[1.0, 2.0]])), [[0.0, 0.0]], 0.0, "sum")]


@case("test_feature_permutation.py::test_multiple_perturbations_per_eval")
def _():
    inp, target = torch.randn(2, 4), 1
    attribs = onnx_attr.FeaturePermutation(load("OneMinus")).attribute(inp, perturbations_per_eval=4, target=target)
    assert attribs.size() == (2, 4)
    y = 1 - inp
    checks = [(attribs[:, i], torch.zeros(2), 1e-4, "sum") for i in range(4) if i != target]
    return checks + [(attribs[:, target], torch.stack([(y[0] - y[1])[target], (y[1] - y[0])[target]]), 1e-4, "sum")]


#: Cases that differ from Captum on purpose or that are not supported yet, each with why
#: (docs/captum_differences.md lists the definitional ones).
DIFFERENCES = {
    "test_shapley.py::test_multi_sample_shapley_batch_scalar_tensor_0d":
        "definitional: a forward returning one value for the whole batch; each example is explained alone here",
    "test_shapley.py::test_multi_inp_shapley_batch_scalar_tensor_0d":
        "definitional: a forward returning one value for the whole batch; each example is explained alone here",
    "test_kernel_shap.py::test_multi_inp_kernel_shap_scalar_tensor_0d":
        "definitional: a forward returning one value for the whole batch; each example is explained alone here",
    "test_lime.py::test_multi_inp_lime_scalar_tensor_0d":
        "definitional: a forward returning one value for the whole batch; each example is explained alone here",
    "test_lrp.py::test_lrp_multi_inputs (input, 3*input: x and add_input)":
        "definitional: an ONNX Add of two inputs splits the relevance by contribution (conserved); Captum gives "
        "each summand the whole",
    "test_neuron_conductance.py::test_layer_tuple_selector_fn (call form: tuple layer, x[0][:, 1])":
        "not supported: a neuron method takes one tensor name (a clear error names the fix)",
    "test_internal_influence.py::test_simple_with_baseline_internal_inf":
        "definitional: riemann_trapezoid's weights (closer to the exact integral than Captum's)",
    "test_internal_influence.py::test_multiple_with_baseline_internal_inf":
        "definitional: riemann_trapezoid's weights (closer to the exact integral than Captum's)",
    "test_feature_permutation.py::test_simple_input_with_min_examples_in_group":
        "definitional: one example cannot be permuted across the batch; refused with a clear error, not zeros",
}
CASES = [pytest.param(*p.values, id=p.id, marks=[pytest.mark.xfail(reason=DIFFERENCES[p.id], strict=True)])
         if p.id in DIFFERENCES else p for p in CASES]
assert set(DIFFERENCES) <= {p.id for p in CASES}


@pytest.mark.parametrize("source, run", CASES)
def test_captum_stated_value(source, run):
    run_case(run)  # under Captum's BaseTest seed, as every case of Captum's
