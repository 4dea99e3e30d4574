"""Values a graph computes and then discards (the Log of a negative number under Where(x > 0, Log(x), 0),
scikit-learn's PowerTransformer dividing X by X and imputing the 0/0): NaN or infinite there, with
secants to match, which 0 · NaN would carry to the inputs. DeepLift's multipliers stay finite and
complete; the oracles are hand-computed values, scikit-learn's transform and onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnx_attr

from conftest import FLOAT, make_model


def _safe_log():
    """y = Σ_i w_i · (x_i > 0 ? Log(x_i) : 0), the guard tf2onnx and hand-written exports put on a log."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]), helper.make_node("Log", ["x"], ["l"]),
             helper.make_node("Where", ["pos", "l", "zero"], ["g"]), helper.make_node("MatMul", ["g", "w"], ["y"])]
    consts = {"zero": np.float32(0), "w": np.array([[2.0], [-1.0], [0.5], [3.0]], np.float32)}
    return make_model(nodes, [("x", FLOAT, ["n", 4])], [("y", FLOAT, ["n", 1])], consts, opset=13)


def test_a_guarded_log_is_attributed_finite_and_complete():
    model = onnx_attr.load(_safe_log())
    x = np.array([[250.0, -3.0, 0.5, -0.0], [-7.0, 40.0, 1e-3, 12.0]], np.float32)
    x0 = np.array([[1.0, -2.0, -1.0, 0.0]], np.float32)  # a reference with the guard off too
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, return_convergence_delta=True)
    g = lambda v: np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), 0.0)  # noqa: E731
    expected = (g(x.astype(np.float64)) - g(x0.astype(np.float64))) * np.array([2.0, -1.0, 0.5, 3.0])
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(delta)).max() < 1e-4


def test_power_transformer_rows_with_zero_features_are_explained_complete():
    """Yeo-Johnson as skl2onnx writes it computes X / X (NaN at a 0 feature, then imputed): raw breast-cancer
    rows have zeros (concavity of round cells), and the mean row as the reference."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import PowerTransformer

    x = load_breast_cancer().data[:, 4:10].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = PowerTransformer().fit(x)
        proto = skl2onnx.to_onnx(fitted, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    rows = x[np.flatnonzero((x == 0).any(1))[:4]]
    assert (rows == 0).any()
    model = onnx_attr.load(proto)
    assert model.verify(rows).passed
    np.testing.assert_allclose(model.run(rows)[0].numpy(), fitted.transform(rows), rtol=1e-4, atol=1e-4)
    baseline = x.mean(0, keepdims=True)
    for column in range(rows.shape[1]):
        got, delta = onnx_attr.DeepLift(model).attribute(rows, baseline, target=column, return_convergence_delta=True)
        assert np.isfinite(np.asarray(got)).all()
        assert np.abs(np.asarray(delta)).max() < 1e-4 * max(1.0, float(np.abs(fitted.transform(rows)).max()))
