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


def test_a_piecewise_region_of_steps_alone_is_flat_and_complete_at_its_reference():
    """2·Where(x > 0, 1, 0) and 3·Cast(x > 0) + 1: no gradient path through x at all. One feature equal to
    its reference needs the slope there, which is 0, not a raw autograd error; each flip is its own jump."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]), helper.make_node("Where", ["pos", "one", "zero"], ["s"]),
             helper.make_node("Mul", ["s", "two"], ["s2"]), helper.make_node("Cast", ["pos"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "three"], ["f3"]), helper.make_node("Add", ["f3", "one"], ["f31"]),
             helper.make_node("Add", ["s2", "f31"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["y"])]
    consts = {"zero": np.float32(0), "one": np.float32(1), "two": np.float32(2), "three": np.float32(3),
              "w": np.array([[1.0], [0.5], [3.0]], np.float32)}
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 1])], consts, opset=13))
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    x0 = np.array([[1.0, -1.0, -2.0]], np.float32)  # feature 0 at its reference
    got, delta = onnx_attr.DeepLift(model).attribute(x, x0, return_convergence_delta=True)
    np.testing.assert_allclose(np.asarray(got), [[0.0, 5 * 0.5, 5 * 3.0]], rtol=1e-6)
    assert abs(float(delta[0])) < 1e-6


def test_an_integer_valued_selection_stays_guarded():
    """Gather(table, Where(x > 0, Cast(x, int64), 0)): the region's value is an index, not a float a rescale
    could carry; a flip is refused naming the comparison, as before the fusion."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"], name="is_positive"),
             helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             helper.make_node("Where", ["pos", "xi", "izero"], ["idx"]),
             helper.make_node("Gather", ["table", "idx"], ["rows"]), helper.make_node("Mul", ["rows", "x"], ["p"]),
             helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=1)]
    consts = {"zero": np.float32(0), "izero": np.int64(0), "axes": np.array([1], np.int64),
              "table": np.array([1.0, -2.0, 5.0, 7.0], np.float32)}
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 1])], consts, opset=13))
    with pytest.raises(onnx_attr.UnsupportedOpError, match="is_positive"):
        onnx_attr.DeepLift(model).attribute(np.array([[1.0, 2.0, 3.0]], np.float32),
                                            np.array([[-0.5, 2.0, 3.0]], np.float32))


def test_a_piecewise_region_thousands_of_nodes_long_is_fused_without_recursion():
    """ReLU written as Where, then 3,000 elementwise steps (Add 1, Tanh, ...): one region, its value kind
    followed in a loop, complete across a flip."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]), helper.make_node("Where", ["pos", "x", "zero"], ["v0"])]
    for i in range(3000):
        nodes.append(helper.make_node("Tanh" if i % 2 else "Add", [f"v{i}"] + ([] if i % 2 else ["one"]), [f"v{i + 1}"]))
    nodes.append(helper.make_node("MatMul", ["v3000", "w"], ["y"]))
    consts = {"zero": np.float32(0), "one": np.float32(1), "w": np.ones((3, 1), np.float32)}
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["n", 3])], [("y", FLOAT, ["n", 1])], consts, opset=13))
    method = onnx_attr.DeepLift(model)
    _, delta = method.attribute(np.array([[1.0, -2.0, 3.0]], np.float32), np.array([[-1.0, 2.0, 0.5]], np.float32),
                                return_convergence_delta=True)
    assert abs(float(delta[0])) < 1e-5
    assert any("piecewise" in c for c in method.engine.rewrite.unary_chains)
