"""Captum's tests/attr/test_targets.py, ported: every config of Captum's shared test config
(captum/testing/attr/helpers/test_config.py) whose target is a list or a tensor, for every algorithm
it lists (FeaturePermutation left out, as Captum leaves it out), run on the config's own module
exported to ONNX with the config's own inputs.

Captum's check (test_target_<config>_<Algorithm>[NoiseTunnel]): the attribution of a batch with a
list / tensor of targets equals, example by example, the attribution of that example alone with its
own target (and, for per-example targets, with a one-element list of it), within the config's
target_delta (default 1e-4, "max"); the seed is reset before each call except for Lime/KernelShap,
which Captum runs on without reseeding.

A second table (`..._vs_captum`) runs Captum itself on the same module and arguments under the same
seed, and holds the batch result to Captum's (1e-4 max for the deterministic methods; the config's
target_delta for GradientShap / LayerGradientShap, whose 500-2000 draws are averaged).

Captum passes `additional_forward_args=(None, True)` to BasicModel_MultiLayer for its [N, 2, 2, 2]
output (the tuple targets index it): here that output is the exported graph's, and the argument is
left out. The int `scale` of BasicModel_MultiLayer_MultiInput is a 0-d input, passed as Captum
passes it (the 5 of `additional_forward_args=(x3, 5)`)."""

from __future__ import annotations

import copy

import pytest
import torch

import onnx_attr
from captum_harness import captum_method, run_case
from captum_models_extra import load, tensor

CONFIG_CASES: list = []
VS_CAPTUM_CASES: list = []

_NEURON = {"NeuronConductance"}
_LAYER = {"LayerConductance", "LayerIntegratedGradients", "LayerDeepLift", "InternalInfluence",
          "LayerFeatureAblation", "LayerGradientXActivation", "LayerGradCam", "LayerDeepLiftShap",
          "LayerGradientShap"}
_NO_RESEED = {"Lime", "KernelShap"}  # Captum: issubclass(algorithm, Lime)

# Known failures, each a strict xfail naming its class: "bug" (onnx-attr should do as Captum)
# or "definitional" (docs/captum_differences.md).
_LRP_ADD = "definitional: an ONNX Add of inputs in LRP (docs/captum_differences.md)"
_LRP_MUL = ("definitional (same root as the documented LRP Add): Captum lets the gradient through the "
            "multidim output's Mul by 2 and 4, scaling relevance by 8; onnx-attr conserves it")
_TRAPEZOID = "definitional: riemann_trapezoid weights (NeuronConductance's default; docs/captum_differences.md)"
KNOWN = [
    (lambda s: "vs Captum" in s and "multi_input_multi_target" in s and "LRP" in s, _LRP_ADD),
    (lambda s: "vs Captum" in s and "multiple_tuple_target_nt_LRP" in s, _LRP_MUL),
    (lambda s: "vs Captum" in s and "NeuronConductance" in s, _TRAPEZOID),
]


def _param(source: str, run):
    reasons = [reason for test, reason in KNOWN if test(source)]
    marks = [pytest.mark.xfail(strict=True, reason=reasons[0])] if reasons else []
    return pytest.param(source, run, marks=marks, id=source)


def _seed():
    import random

    import numpy as np

    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)


def _model_name(test_config) -> str:
    args = test_config["attribute_args"]
    kind = type(test_config["model"]).__name__
    if kind == "BasicModel_MultiLayer":
        multidim = args.get("additional_forward_args") == (None, True)
        return "C_MultiLayer_multidim" if multidim else "C_MultiLayer"
    if kind == "BasicModel_MultiLayer_MultiInput":
        return "C_MultiLayerMultiInput"
    raise NotImplementedError(kind)


def _ours_args(test_config) -> dict:
    args = copy.deepcopy(test_config["attribute_args"])
    if args.get("additional_forward_args") == (None, True):
        del args["additional_forward_args"]
    return args


def _method(algorithm: str, model_name: str, layer, noise_tunnel: bool):
    model = load(model_name)
    cls = getattr(onnx_attr, algorithm)
    method = cls(model, tensor(model, "Relu", 0)) if layer is not None else cls(model)
    return onnx_attr.NoiseTunnel(method) if noise_tunnel else method


def _rows_of(result, i):
    return result[i:i + 1] if isinstance(result, torch.Tensor) else tuple(r[i:i + 1] for r in result)


def _pairs(a, b):
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    assert len(a) == len(b), f"{len(a)} attributions for {len(b)}"
    return list(zip(a, b))


def _target_test(test_config, algorithm: str):
    """Captum's TargetsMeta.make_single_target_test, on our side only."""
    layer = test_config.get("layer")
    noise_tunnel = test_config.get("noise_tunnel", False)
    baseline_distr = test_config.get("baseline_distr", False)
    delta = test_config.get("target_delta", 0.0001)
    model_name = _model_name(test_config)

    def run():
        args = _ours_args(test_config)
        method = _method(algorithm, model_name, layer, noise_tunnel)
        inputs, targets = args["inputs"], args["target"]
        extra = args.get("additional_forward_args")
        n = len(inputs) if isinstance(inputs, torch.Tensor) else len(inputs[0])
        replace_baselines = "baselines" in args and not baseline_distr
        baselines = args.get("baselines")
        _seed()
        whole = method.attribute(**args)
        _seed()
        checks = []
        for i in range(n):
            single = dict(args)
            single["target"] = targets[i] if len(targets) == n else targets
            single["inputs"] = _rows_of(inputs, i)
            if extra is not None:
                single["additional_forward_args"] = tuple(
                    e[i:i + 1] if isinstance(e, torch.Tensor) else e for e in extra)
            if replace_baselines:
                single["baselines"] = _rows_of(baselines, i) if isinstance(baselines, (torch.Tensor, tuple)) \
                    else baselines
            if algorithm not in _NO_RESEED:
                _seed()
            alone = method.attribute(**single)
            checks += [(a, b, delta, "max") for a, b in _pairs(_rows_of(whole, i), alone)]
            if algorithm not in _NO_RESEED and len(targets) == n:
                single["target"] = targets[i:i + 1]
                _seed()
                listed = method.attribute(**single)
                checks += [(a, b, delta, "max") for a, b in _pairs(_rows_of(whole, i), listed)]
        return checks

    return run


def _vs_captum(test_config, algorithm: str):
    """The same batch call on Captum (its module, its args) and on onnx-attr, under one seed."""
    layer = test_config.get("layer")
    noise_tunnel = test_config.get("noise_tunnel", False)
    delta = test_config.get("target_delta", 0.0001) if "GradientShap" in algorithm else 1e-4
    relative = algorithm in _NO_RESEED  # Lime's Lasso / KernelShap's least squares: solver precision
    model_name = _model_name(test_config)

    def run():
        theirs_method = captum_method(test_config, algorithm)
        _seed()
        theirs = theirs_method.attribute(**copy.deepcopy(test_config["attribute_args"]))
        _seed()
        ours = _method(algorithm, model_name, layer, noise_tunnel).attribute(**_ours_args(test_config))
        return [(a, b.detach(), delta * max(1.0, float(b.abs().max())) * (10 if relative else 1), "max")
                for a, b in _pairs(ours, theirs)]

    return run


def _register():
    from captum.testing.attr.helpers.test_config import config

    for test_config in config:
        args = test_config["attribute_args"]
        if "target" not in args or not isinstance(args["target"], (list, torch.Tensor)):
            continue
        for algorithm in test_config["algorithms"]:
            name = algorithm.__name__
            if name == "FeaturePermutation":
                continue
            suffix = "NoiseTunnel" if test_config.get("noise_tunnel", False) else ""
            source = f"test_targets.py::test_target_{test_config['name']}_{name}{suffix}"
            CONFIG_CASES.append(_param(source, _target_test(test_config, name)))
            VS_CAPTUM_CASES.append(_param(source + " (vs Captum)", _vs_captum(test_config, name)))


_register()


@pytest.mark.parametrize("source, run", CONFIG_CASES)
def test_captum_targets(source, run):
    run_case(run)


@pytest.mark.parametrize("source, run", VS_CAPTUM_CASES)
def test_captum_targets_vs_captum(source, run):
    run_case(run)


def test_simple_target_missing_error():
    """test_targets.py::test_simple_target_missing_error: IG of a [N, 2] output with no target is
    refused (Captum: AssertionError)."""
    with pytest.raises(onnx_attr.OnnxAttrError):
        onnx_attr.IntegratedGradients(load("C_MultiLayer")).attribute(torch.zeros((1, 3)))


def test_multi_target_error():
    """test_targets.py::test_multi_target_error: a target tuple (1, 0) that leaves several values of
    the [N, 2, 2, 2] output (Captum's additional_forward_args=(None, True)) is refused."""
    with pytest.raises(onnx_attr.OnnxAttrError):
        onnx_attr.IntegratedGradients(load("C_MultiLayer_multidim")).attribute(torch.zeros((1, 3)), target=(1, 0))
