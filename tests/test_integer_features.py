"""scikit-learn fitted on integer features (load_digits' pixel counts as int64) exports an int64
input read straight by Scaler/LinearClassifier/TreeEnsemble. Nothing else in such a model can be
attributed, so its integer input is a measurement: made a float by an explicit Cast in the converted
graph (importing/ml_casts.py) and attributed there. Every method and the CLI used to stop at "no
input of this model can be attributed" (exit 2). Oracles: scikit-learn's own coefficients (a
linear model's DeepLift attribution is coef · (x - x0) / scale, feature by feature) and decision
function, onnxruntime for the import."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_digits

import onnx_attr
from onnx_attr.app.cli import main

from conftest import FLOAT, INT64, make_model

skl2onnx = pytest.importorskip("skl2onnx")


def digits_as_int64():
    x, y = load_digits(return_X_y=True)
    return x.astype(np.int64), y


def fitted_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits_as_int64()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, y)
    return clf, skl2onnx.to_onnx(clf, x[:1], target_opset=17), x


def test_integer_features_are_attributed_against_scikit_learns_coefficients():
    clf, proto, x = fitted_pipeline()
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    model = onnx_attr.load(proto)
    assert model.verify(x[:16]).passed
    rows = x[:6]
    target = clf.predict(rows).tolist()
    attributions, delta = onnx_attr.DeepLift(model).attribute(rows, target=target, return_convergence_delta=True)
    scaler, linear = clf[0], clf[1]
    # DeepLift of a linear model from the zero baseline: coef · (x - 0) / scale, per feature
    expected = linear.coef_[target] * rows / scaler.scale_
    np.testing.assert_allclose(np.asarray(attributions), expected, rtol=1e-4, atol=1e-4)
    change = clf.decision_function(rows) - clf.decision_function(0 * rows)
    np.testing.assert_allclose(np.asarray(attributions).sum(1), change[np.arange(6), target], rtol=1e-5, atol=1e-4)
    ig = onnx_attr.IntegratedGradients(model).attribute(rows, target=target)
    np.testing.assert_allclose(np.asarray(ig), expected, rtol=1e-3, atol=1e-3)


def test_a_forest_on_integer_features_runs_from_the_cli(tmp_path, capsys):
    from sklearn.ensemble import RandomForestClassifier

    x, y = digits_as_int64()
    forest = RandomForestClassifier(8, max_depth=5, random_state=0).fit(x, y)
    path = tmp_path / "forest.onnx"
    path.write_bytes(skl2onnx.to_onnx(forest, x[:1], target_opset=17).SerializeToString())
    np.savez(tmp_path / "x.npz", X=x[:2])
    assert main(["inspect", str(path)]) == 0
    assert "measured values: attributed at their cast to float" in capsys.readouterr().out
    assert main(["attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out")]) == 0
    saved = np.load(tmp_path / "out" / "attributions.npz")["X"]
    assert saved.shape == (2, 64) and np.abs(saved).sum(1).min() > 0  # FeatureAblation: DeepLift has no tree rule


def test_an_integer_input_beside_a_floating_one_stays_held():
    """A count or a mask beside floating features is not what the model is explained by: held."""
    nodes = [helper.make_node("Cast", ["count"], ["c"], to=FLOAT), helper.make_node("Mul", ["x", "c"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 3]), ("count", INT64, ["n", 3])], [("y", FLOAT, ["n", 3])])
    model = onnx_attr.load(proto)
    assert onnx_attr.DeepLift(model).embedded_inputs == []


def test_a_photo_without_a_batch_beside_per_face_keypoints():
    """insightface's face aligner: a uint8 photo [H, W, 3] (no batch axis: one photo, any number of faces)
    beside keypoints [N, 2]. The photo is attributed at its cast to a float; the keypoints' baseline
    stays at the faces' rows (it had been repeated to H rows, the photo's first axis, and the reference
    pass failed). Oracle: the Shapley product rule by hand, y = kps · mean(photo)."""
    nodes = [helper.make_node("Cast", ["photo"], ["p"], to=FLOAT),
             helper.make_node("ReduceMean", ["p"], ["m"], keepdims=0),
             helper.make_node("Mul", ["kps", "m"], ["y"])]
    proto = make_model(nodes, [("photo", TensorProto.UINT8, ["H", "W", 3]), ("kps", FLOAT, ["N", 2])],
                       [("y", FLOAT, ["N", 2])])
    model = onnx_attr.load(proto)
    photo = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    kps = np.array([[30.0, 40.0]], np.float32)
    (a_photo, a_kps), delta = onnx_attr.DeepLift(model).attribute(
        (photo, kps), (np.zeros_like(photo), np.zeros_like(kps)), target=(0, 1), return_convergence_delta=True)
    mean = photo.astype(np.float64).mean()
    assert abs(float(delta[0])) <= 1e-5 * 40 * mean
    np.testing.assert_allclose(np.asarray(a_kps), [[0.0, 40.0 * mean / 2]], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(a_photo), (40.0 / 2) * photo / photo.size, rtol=1e-5)
