"""ReduceProd's DeepLift rule: a tree of Shapley pairwise products, exact at every magnitude and
number of factors. scikit-learn's PolynomialFeatures writes each monomial as one (it was refused,
and the CLI fell back to FeatureAblation). Oracles: onnxruntime's f(x) - f(baseline), scikit-learn's
predictions, and by hand: for two factors the Shapley values are Δa·b̄ and ā·Δb."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import helper

import onnx_attr

from conftest import FLOAT, make_model, ort_run


@pytest.mark.parametrize("axes,keepdims,shape,target", [([1], 1, ["n", 1, 3], (0, 1)), ([1, 2], 0, ["n"], None),
                                                         ([2], 0, ["n", 5], 2), ([-1, 1], 1, ["n", 1, 1], (0, 0))])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_a_product_over_axes_is_complete(axes, keepdims, shape, target, scale):
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Mul", ["t", "s"], ["u"]),
             helper.make_node("ReduceProd", ["u"], ["p"], axes=axes, keepdims=keepdims)]
    proto = make_model(nodes, [("x", FLOAT, ["n", 5, 3])], [("p", FLOAT, shape)], opset=13,
                       initializers={"s": np.array(scale, np.float32)})
    rng = np.random.default_rng(0)
    x, base = rng.standard_normal((4, 5, 3)).astype(np.float32), rng.standard_normal((4, 5, 3)).astype(np.float32)
    attributions, delta = onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(x, base, target=target,
                                                                              return_convergence_delta=True)
    index = (slice(None), *(target if isinstance(target, tuple) else () if target is None else (target,)))
    change = ort_run(proto, {"x": x})[0][index] - ort_run(proto, {"x": base})[0][index]
    np.testing.assert_allclose(np.asarray(attributions).sum((1, 2)), change, rtol=1e-4, atol=1e-5 * np.abs(change).max())


def test_two_factors_get_their_shapley_values():
    nodes = [helper.make_node("ReduceProd", ["x"], ["p"], axes=[1], keepdims=0)]
    proto = make_model(nodes, [("x", FLOAT, ["n", 2])], [("p", FLOAT, ["n"])], opset=13)
    x, base = np.array([[30.0, -7.0]], np.float32), np.array([[2.0, 5.0]], np.float32)
    attributions = np.asarray(onnx_attr.DeepLift(onnx_attr.load(proto)).attribute(x, base))
    (a, b), (a0, b0) = x[0], base[0]
    np.testing.assert_allclose(attributions[0], [(a - a0) * (b + b0) / 2, (a + a0) / 2 * (b - b0)], rtol=1e-6)


def test_polynomial_features_are_explained_by_deeplift():
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    x, y = load_diabetes(return_X_y=True)
    x = (100 * x[:, :4]).astype(np.float32)  # features of order ten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = make_pipeline(PolynomialFeatures(3), StandardScaler(), LinearRegression()).fit(x, y)
    model = onnx_attr.load(skl2onnx.to_onnx(reg, x[:1], target_opset=17))
    rows = x[:5]
    attributions, delta = onnx_attr.DeepLift(model).attribute(rows, return_convergence_delta=True)
    change = reg.predict(rows) - reg.predict(0 * rows)
    np.testing.assert_allclose(np.asarray(attributions).sum(1), change, rtol=1e-4, atol=1e-3)
