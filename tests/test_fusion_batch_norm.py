"""tf2onnx's older Keras LayerNormalization (magika 0.5): a BatchNormalization fed the moments of its
own input, fused into LayerNormalization so DeepLift stays complete; left unfused (per-channel γ
that varies), gradients still flow and DeepLift refuses it clearly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr

D, C = 6, 3
RNG = np.random.default_rng(1)
W = RNG.standard_normal((D, C)).astype(np.float32)
GAMMA, BETA = RNG.standard_normal(D).astype(np.float32), RNG.standard_normal(D).astype(np.float32)


def keras_layer_norm(scale_value: float = 1.0, varying_scale: bool = False, count_constant: bool = False):
    """x [N, D] -> Reshape [1, N, D, 1] -> BatchNormalization(mean, var of itself over axes 0, 2, 3)
    -> Reshape back -> Mul γ -> Add β -> Relu -> MatMul, as tf2onnx writes Keras' LayerNormalization."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xshape"]),
        helper.make_node("Slice", ["xshape", "zero", "one", "zero"], ["n"]),
        helper.make_node("Expand", ["one_f", "n"], ["ones"]),
        helper.make_node("Expand", ["zero_f", "n"], ["zeros"]),
        helper.make_node("Reshape", ["x", "as4d"], ["x4"]),
        helper.make_node("ReduceMean", ["x4"], ["mean"], axes=[0, 2, 3], keepdims=1),
        helper.make_node("Sub", ["x4", "mean"], ["centred"]),
        helper.make_node("ReduceSumSquare", ["centred"], ["ss"], axes=[0, 2, 3], keepdims=0),
        helper.make_node("Squeeze", ["mean", "squeeze_axes"], ["mean_n"]),
        helper.make_node("BatchNormalization", ["x4", "scale" if varying_scale else "ones", "zeros", "mean_n",
                                                "var"], ["normed"], epsilon=1e-3),
        helper.make_node("Reshape", ["normed", "xshape"], ["back"]),
        helper.make_node("Mul", ["back", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    if count_constant:
        nodes.insert(8, helper.make_node("Div", ["ss", "count"], ["var"]))
    else:
        nodes[8:8] = [helper.make_node("Shape", ["x4"], ["s4"]),
                      helper.make_node("Gather", ["s4", "squeeze_axes"], ["reduced"], axis=0),
                      helper.make_node("ReduceProd", ["reduced"], ["count_i"], axes=[0], keepdims=0),
                      helper.make_node("Cast", ["count_i"], ["count_f"], to=TensorProto.FLOAT),
                      helper.make_node("Div", ["ss", "count_f"], ["var"])]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64),
             "one_f": np.array(scale_value, np.float32), "zero_f": np.array(0.0, np.float32),
             "as4d": np.array([1, -1, D, 1], np.int64), "squeeze_axes": np.array([0, 2, 3], np.int64),
             "gamma": GAMMA, "beta": BETA, "w": W, "count": np.array(float(D), np.float32),
             "scale": np.linspace(0.5, 2.0, 2).astype(np.float32)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, C])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


X = (RNG.standard_normal((2, D)) * 50 + 20).astype(np.float32)


@pytest.mark.parametrize("scale_value,count_constant", [(1.0, False), (2.5, True)])
def test_the_batch_norm_of_its_own_moments_is_fused_and_deeplift_is_complete(scale_value, count_constant):
    onnx_model = keras_layer_norm(scale_value, count_constant=count_constant)
    model = onnx_attr.load(onnx_model)
    assert any("LayerNorm" in note for note in model.notes)
    ops = [n.op_type for n in model.onnx_model.graph.node]
    assert "LayerNormalization" in ops and "BatchNormalization" not in ops
    expected = ort.InferenceSession(onnx_model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(model.run({"x": X})[0].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert model.verify({"x": X}).passed
    baseline = np.full_like(X, -30.0)
    attributions, delta = onnx_attr.DeepLift(model).attribute(X, baselines=baseline, target=1,
                                                              return_convergence_delta=True)
    change = (model.run({"x": X})[0][:, 1] - model.run({"x": baseline})[0][:, 1]).double().numpy()
    assert np.allclose(np.asarray(attributions).sum(1), change, rtol=1e-5, atol=1e-5 * np.abs(change).max())
    assert float(np.abs(np.asarray(delta)).max()) <= 1e-4 * max(1.0, float(np.abs(change).max()))


def test_statistics_that_vary_with_the_input_take_gradients_and_deeplift_refuses_them_clearly():
    """A per-channel scale that varies is not a LayerNorm's: not fused. The gradient flows through
    the computed statistics (against finite differences); DeepLift names the node."""
    model = onnx_attr.load(keras_layer_norm(varying_scale=True))
    assert "BatchNormalization" in [n.op_type for n in model.onnx_model.graph.node]
    assert model.verify({"x": X}).passed
    grads = np.asarray(onnx_attr.Saliency(model).attribute(X, target=0, abs=False))
    h, numeric = 1e-2, np.zeros_like(X)
    for i in range(X.shape[1]):
        up, down = X.copy(), X.copy()
        up[:, i] += h
        down[:, i] -= h
        numeric[:, i] = (model.run({"x": up})[0][:, 0] - model.run({"x": down})[0][:, 0]).numpy() / (2 * h)
    np.testing.assert_allclose(grads, numeric, rtol=2e-2, atol=2e-3)
    with pytest.raises(onnx_attr.OnnxAttrError, match="BatchNormalization"):
        onnx_attr.DeepLift(model).attribute(X, target=0)
