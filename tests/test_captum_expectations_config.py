"""Captum's shared test config (captum/testing/attr/helpers/test_config.py, Captum 0.9), the configs that
test_targets.py does not take (an int target or none): Captum runs them in test_jit.py and
test_data_parallel.py, comparing a JIT / DataParallel model with the eager one. The JIT- and
DataParallel-free variant here: the config's own module (its weights as the config built them) exported
to ONNX, every algorithm the config lists run by onnx-attr with the config's arguments, and the result
held to Captum's on the eager module under the same seed (1e-4 max, relative to the largest value;
Lime / KernelShap 1e-3, their solvers differ in precision).

Layers are named by their ONNX tensors: `multi_relu` is the tuple of its two Relu outputs, `m1` / `m234`
the two tensors of TrueMultiInput's final Add, others the output of the node computing them. The int
`scale` of BasicModel_MultiLayer_MultiInput is a 0-d input (Captum's 5 passed as it passes it)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import onnx_attr
from captum_harness import captum_method, run_case
from captum_models import export

CASES: list = []
_NO_RESEED = {"Lime", "KernelShap"}

_TRAPEZOID = "definitional: riemann_trapezoid weights (NeuronConductance's default; docs/captum_differences.md)"
_LRP_ADD = "definitional: an ONNX Add of inputs in LRP (docs/captum_differences.md)"
KNOWN = [  # (predicate on the case id, reason): strict xfails
    (lambda s: s.startswith("test_config::basic_multi_input_LRP"), _LRP_ADD),
    (lambda s: s.startswith("test_config::basic_neuron_single_target_NeuronConductance"), _TRAPEZOID),
]


def _seed():
    import random

    import numpy as np

    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)


class _IntScale(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x1, x2, x3, scale):
        return self.net.model(scale * (x1 + x2 + x3))


def _module_of(test_config):
    model = test_config["model"]
    return model.module if type(model).__name__ == "ModelInputWrapper" else model


@functools.lru_cache(maxsize=None)
def _load(name: str):
    from captum.testing.attr.helpers.test_config import config

    test_config = [c for c in config if c["name"] == name][0]
    module = copy.deepcopy(_module_of(test_config))
    kind = type(module).__name__
    rows = lambda *s: torch.rand(2, *s)  # noqa: E731
    if kind == "BasicModel_MultiLayer":
        built = (module, [rows(3)], ["x"])
    elif kind == "BasicModel_MultiLayer_MultiInput":
        built = (_IntScale(module), [rows(3), rows(3), rows(3), torch.tensor(1)], ["x1", "x2", "x3", "scale"])
    elif kind == "BasicModel_MultiLayer_TrueMultiInput":
        built = (module, [rows(3) for _ in range(4)], ["x1", "x2", "x3", "x4"])
    elif kind == "ReLULinearModel":
        built = (module, [rows(3), rows(3)], ["x1", "x2"])
    elif kind == "BasicModel_ConvNet":
        built = (module, [torch.rand(2, 1, 10, 10)], ["x"])
    else:
        raise NotImplementedError(kind)
    state = torch.get_rng_state()
    try:
        return onnx_attr.load(export(*built), strip_final_activation=False)
    finally:
        torch.set_rng_state(state)


def _nodes(model, op):
    return [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == op]


def _layer(model, test_config, layer):
    if isinstance(layer, list):
        return [_layer(model, test_config, one) for one in layer]
    module = _module_of(test_config)
    kind = type(module).__name__
    layer = layer.replace("module.", "", 1) if type(test_config["model"]).__name__ == "ModelInputWrapper" else layer
    if layer in ("relu", "model.relu"):
        return _nodes(model, "Relu")[0]
    if layer == "multi_relu":
        return tuple(_nodes(model, "Relu")[:2])
    if layer in ("linear0",):
        return _nodes(model, "Gemm")[0]
    if layer in ("linear1", "model.linear1"):
        return _nodes(model, "Gemm")[1]
    if layer in ("linear2", "l3"):
        return _nodes(model, "Gemm")[-1]
    if layer == "conv2":
        return _nodes(model, "Conv")[1]
    if layer in ("m1", "m234") and kind == "BasicModel_MultiLayer_TrueMultiInput":
        final = [n for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Add"][-1]
        outs = [a.meta["onnx_tensor"] for a in final.args if hasattr(a, "meta")]
        return outs[0] if layer == "m1" else outs[1]
    raise NotImplementedError(layer)


def _flatten(result):
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flatten(r)]
    return [result]


def _vs_captum(test_config, algorithm: str):
    layer = test_config.get("layer")
    noise_tunnel = test_config.get("noise_tunnel", False)
    relative = 1e-3 if algorithm in _NO_RESEED else 1e-4

    def run():
        method = captum_method(test_config, algorithm)
        _seed()
        theirs = method.attribute(**copy.deepcopy(test_config["attribute_args"]))
        model = _load(test_config["name"])
        ours_cls = getattr(onnx_attr, algorithm)
        ours_method = ours_cls(model, _layer(model, test_config, layer)) if layer is not None else ours_cls(model)
        if noise_tunnel:
            ours_method = onnx_attr.NoiseTunnel(ours_method)
        _seed()
        ours = ours_method.attribute(**copy.deepcopy(test_config["attribute_args"]))
        assert type(ours) is type(theirs) or not isinstance(theirs, (tuple, list)), (type(ours), type(theirs))
        got, expected = _flatten(ours), [t.detach() for t in _flatten(theirs)]
        assert len(got) == len(expected), f"{len(got)} attributions for Captum's {len(expected)}"
        return [(g, e, relative * max(1.0, float(e.abs().max())), "max") for g, e in zip(got, expected)]

    return run


def _register():
    from captum.testing.attr.helpers.test_config import config

    for test_config in config:
        args = test_config["attribute_args"]
        if "target" in args and isinstance(args["target"], (list, torch.Tensor)):
            continue  # test_captum_expectations_targets.py
        for algorithm in test_config["algorithms"]:
            name = algorithm.__name__
            suffix = "NoiseTunnel" if test_config.get("noise_tunnel", False) else ""
            source = f"test_config::{test_config['name']}_{name}{suffix} (vs Captum)"
            reasons = [reason for test, reason in KNOWN if test(source)]
            marks = [pytest.mark.xfail(strict=True, reason=reasons[0])] if reasons else []
            CASES.append(pytest.param(source, _vs_captum(test_config, name), marks=marks, id=source))


_register()


@pytest.mark.parametrize("source, run", CASES)
def test_captum_config_vs_captum(source, run):
    run_case(run)
