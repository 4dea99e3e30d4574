"""Layer methods at the edges a review of the nested-layer and layer-input changes found: one
tensor cut twice, two-input nodes with attribute_to_layer_input, settings named as layers, and
the constructor options of neuron and GuidedGradCam methods. Oracles: the input-level methods on
the same model (a layer that is the input itself), and each layer attributed alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.errors import InputError

RNG = np.random.default_rng(0)
X = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]]) * 40  # unnormalised magnitudes


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def two_branches():
    """x [N, 3] -> Gemm a, Gemm b (both read x) -> s = a·b -> Relu -> Gemm y [N, 2]."""
    nodes = [helper.make_node("Gemm", ["x", "wa", "ba"], ["a"], transB=1),
             helper.make_node("Gemm", ["x", "wb", "bb"], ["b"], transB=1),
             helper.make_node("Mul", ["a", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Gemm", ["r", "w1", "b1"], ["y"], transB=1)]
    weights = {"wa": _w(4, 3), "ba": _w(4), "wb": _w(4, 3), "bb": _w(4), "w1": _w(2, 4), "b1": _w(2)}
    return onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 3])], [("y", FLOAT, ["N", 2])], weights),
                          strip_final_activation=False)


MODEL = two_branches()


def test_two_layers_reading_one_tensor_each_get_its_attribution():
    """Captum's layer inputs of two branches are one tensor, x: both equal InputXGradient (was: the second 0)."""
    expected = onnx_attr.InputXGradient(MODEL).attribute(X, target=0)
    got = onnx_attr.LayerGradientXActivation(MODEL, ["a", "b"]).attribute(X, target=0, attribute_to_layer_input=True)
    for g in got:
        torch.testing.assert_close(g, expected)


def test_one_tensor_named_twice():
    alone, alone_delta = onnx_attr.LayerDeepLift(MODEL, "s").attribute(X, target=0, return_convergence_delta=True)
    (first, second), delta = onnx_attr.LayerDeepLift(MODEL, ["s", "s"]).attribute(X, target=0,
                                                                                 return_convergence_delta=True)
    torch.testing.assert_close(first, alone)
    torch.testing.assert_close(second, alone)
    assert float(delta.abs().max()) <= float(alone_delta.abs().max()) + 1e-3  # each complete alone, not 2× the change
    ablated = onnx_attr.LayerFeatureAblation(MODEL, ["s", "s"]).attribute(X, target=0)
    torch.testing.assert_close(ablated[1], onnx_attr.LayerFeatureAblation(MODEL, "s").attribute(X, target=0))
    with pytest.raises(InputError, match="named twice"):
        onnx_attr.LayerIntegratedGradients(MODEL, ["s", "s"]).attribute(X, target=0)


def test_layer_input_of_a_two_input_node_takes_one_baseline_per_tensor():
    ablation = onnx_attr.LayerFeatureAblation(MODEL, "s")
    got = ablation.attribute(X, target=0, attribute_to_layer_input=True, layer_baselines=(0.0, 0.0))
    alone = [onnx_attr.LayerFeatureAblation(MODEL, name).attribute(X, target=0) for name in ("a", "b")]
    for g, a in zip(got, alone):
        torch.testing.assert_close(g, a)
    with pytest.raises(InputError, match="one baseline or mask per layer"):
        ablation.attribute(X, target=0, attribute_to_layer_input=True, layer_baselines=(0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="GuidedGradCam takes one map"):
        onnx_attr.GuidedGradCam(MODEL, "s").attribute(X, target=0, attribute_to_layer_input=True)


def test_a_setting_is_no_layer():
    nodes = [helper.make_node("Mul", ["x", "g"], ["xg"]), helper.make_node("Gemm", ["xg", "w", "b"], ["y"], transB=1)]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 3]), ("g", FLOAT, [])], [("y", FLOAT, ["N", 2])],
                                      {"w": _w(2, 3), "b": _w(2)}), strip_final_activation=False)
    for method in ("LayerDeepLift", "LayerGradientXActivation"):
        with pytest.raises(InputError, match="0-d model input"):
            getattr(onnx_attr, method)(model, "g").attribute(X, target=0, additional_forward_args=(torch.tensor(2.0),))


def test_neuron_and_guided_grad_cam_constructors():
    onnx_attr.NeuronGradient(MODEL, "s", device_ids=None)  # Captum's signature
    onnx_attr.GuidedGradCam(MODEL, "s", device_ids=None)
    with pytest.raises(TypeError, match=r"NeuronGradient\(\).*multiply_by_input"):
        onnx_attr.NeuronGradient(MODEL, "s", multiply_by_input=True)
    with pytest.raises(TypeError):
        onnx_attr.GuidedGradCam(MODEL, "s", kernel_widht=3)
    with pytest.raises(InputError, match="one layer"):
        onnx_attr.GuidedGradCam(MODEL, ["a", "b"])


def test_layer_integrated_gradients_where_the_layer_has_another_batch_symbol():
    """GPT-2's export views the ids as [-1, T] before its embedding, so shape inference names the
    embedding's batch 'unk__0', not the ids' 'N'; LayerIntegratedGradients fed the layer to a cut model
    that read a batch of two as one example and refused (hunt 26). Oracle: the same call one row at a
    time, and completeness at the layer (every path passes it)."""
    import numpy as np
    from onnx import TensorProto, helper

    import onnx_attr
    from conftest import FLOAT, make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Shape", ["ids"], ["shape"], start=1),
             helper.make_node("Concat", ["minus_one", "shape"], ["rows"], axis=0),
             helper.make_node("Reshape", ["ids", "rows"], ["flat"]),
             helper.make_node("Gather", ["table", "flat"], ["emb"]),
             helper.make_node("Tanh", ["emb"], ["t"]),
             helper.make_node("ReduceSum", ["t", "time"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    model = onnx_attr.load(make_model(
        nodes, [("ids", TensorProto.INT64, ["N", "T"])], [("logits", FLOAT, ["N", 3])],
        {"table": rng.normal(0, 1, (20, 4)).astype(np.float32), "w": rng.normal(0, 1, (4, 3)).astype(np.float32),
         "minus_one": np.array([-1], dtype=np.int64), "time": np.array([1], dtype=np.int64)}, opset=15))
    ids = rng.integers(1, 20, (2, 6))
    method = onnx_attr.LayerIntegratedGradients(model, "emb")
    both, delta = method.attribute({"ids": ids}, target=[0, 2], n_steps=32, return_convergence_delta=True)
    assert both.shape == (2, 6, 4) and float(np.abs(delta).max()) < 1e-4
    for row, target in enumerate([0, 2]):
        alone = method.attribute({"ids": ids[row:row + 1]}, target=target, n_steps=32)
        np.testing.assert_allclose(both[row:row + 1], alone, rtol=1e-5, atol=1e-6)
