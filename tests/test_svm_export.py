"""scikit-learn's support vector machines as skl2onnx writes them (ai.onnx.ml SVMClassifier and
SVMRegressor). Oracles: scikit-learn's own predictions and decision values, onnxruntime (verify),
DeepLift's completeness at the magnitudes the data has (raw breast-cancer features, areas in the
thousands), and a by-hand DeepLift of a one-vector RBF machine."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR, NuSVC, NuSVR, OneClassSVM

import onnx_attr
from onnx_attr.errors import OnnxAttrError

skl2onnx = pytest.importorskip("skl2onnx")

IRIS, BREAST = load_iris(return_X_y=True), load_breast_cancer(return_X_y=True)
NAMES = np.array(["setosa", "versicolor", "virginica"])


def _cases():
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    return {
        "rbf-binary-scaled": (make_pipeline(StandardScaler(), SVC()), *BREAST),
        "rbf-binary-raw": (SVC(), *BREAST),  # unscaled: areas ~1000 against gamma='scale'
        "linear-3": (SVC(kernel="linear"), *IRIS),
        "poly-3": (SVC(kernel="poly", degree=3), *IRIS),
        "sigmoid-3-string-labels": (SVC(kernel="sigmoid", gamma=0.01), IRIS[0], NAMES[IRIS[1]]),
        "nusvc-3": (NuSVC(), *IRIS),
        "svr-rbf": (make_pipeline(StandardScaler(), SVR(C=50)), diabetes_x * 100, diabetes_y),
        "nusvr-raw": (NuSVR(gamma=1e-6), BREAST[0], BREAST[0][:, 3]),
        "one-class": (OneClassSVM(gamma=0.1), IRIS[0], None),
    }


def _export(estimator, x, y):
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(x, y) if y is not None else estimator.fit(x)
        proto = skl2onnx.to_onnx(estimator, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    return proto, x


def _relative_delta(model, x, baseline, target, output=None):
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(torch.tensor(x), torch.tensor(baseline), target=target, output=output,
                                       return_convergence_delta=True)
    assert attributions.shape == x.shape
    last = lambda v: (v if isinstance(v, tuple) else (v,))[-1].numpy()  # noqa: E731
    outputs, start = last(model.run(x)), last(model.run(np.broadcast_to(baseline, x.shape).copy()))
    change = outputs - start if target is None else (outputs - start)[np.arange(len(x)), target]
    return float((np.abs(delta.numpy()) / np.maximum(1.0, np.abs(change.reshape(-1)))).max())


@pytest.mark.parametrize("name", sorted(_cases()))
def test_svms_match_sklearn_and_onnxruntime_and_deeplift_is_complete(name):
    estimator, x, y = _cases()[name]
    proto, x = _export(estimator, x, y)
    model = onnx_attr.load(proto)
    rows = x[::23]
    report = model.verify(rows)
    assert report.passed, report.format()
    outputs = model.run(rows)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    if y is None:  # OneClassSVM: its decision value, labels from its sign
        np.testing.assert_allclose(outputs[-1].numpy().reshape(-1), estimator.decision_function(rows), rtol=1e-4,
                                   atol=1e-4)
    elif np.issubdtype(np.asarray(y).dtype, np.floating):
        np.testing.assert_allclose(outputs[0].numpy().reshape(-1), estimator.predict(rows), rtol=1e-4, atol=1e-3)
    else:
        labels = outputs[0].numpy()
        predicted = estimator.predict(rows)
        if predicted.dtype.kind == "U":  # string labels come back as indices into the class list
            predicted = np.searchsorted(estimator.classes_, predicted)
        np.testing.assert_array_equal(labels, predicted)
    scores = outputs[-1].numpy()
    target = scores.argmax(1).tolist() if scores.ndim == 2 and scores.shape[1] > 1 else None
    # references far from the inputs: zeros (every feature moves by its full value), and the mean row
    for baseline in (np.zeros((1, x.shape[1]), np.float32), x.mean(0, keepdims=True)):
        assert _relative_delta(model, rows, baseline, target) <= 1e-4


def test_binary_probabilities_strip_to_platt_log_odds():
    """SVC(probability=True) with two classes: onnxruntime's probability is libsvm's Platt scaling of
    the decision value. Stripped, the scores are [-z, z] with z = A·s + B its class-1 log-odds
    (skl2onnx writes s = -decision_function); the labels stay as scikit-learn predicts."""
    estimator = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0))
    proto, x = _export(estimator, *BREAST)
    rows = x[::37]
    kept = onnx_attr.load(proto, strip_final_activation=False)
    assert kept.verify(rows).passed
    np.testing.assert_allclose(kept.run(rows)[1].numpy(), estimator.predict_proba(rows), atol=1e-3)

    model = onnx_attr.load(proto)
    final = next(o.final_activation for o in model.outputs if o.name == "output_probability")
    assert final.op_type == "Sigmoid" and final.stripped
    report = model.verify(rows)
    assert report.passed, report.format()
    labels, logits = model.run(rows)
    np.testing.assert_array_equal(labels.numpy(), estimator.predict(rows))
    svc = estimator[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn 1.9 deprecates probability=True; its exports remain
        a, b = svc.probA_[0], svc.probB_[0]
    z = a * -estimator.decision_function(rows) + b
    np.testing.assert_allclose(logits.numpy(), np.stack([-z, z], 1), rtol=1e-4, atol=1e-4)
    assert _relative_delta(model, rows, np.zeros((1, x.shape[1]), np.float32), logits.numpy().argmax(1).tolist()) <= 1e-4


def test_multiclass_probabilities_are_refused_by_deeplift_by_name_and_the_cli_falls_back(tmp_path, capsys):
    """Three classes: the pairwise coupling is an iterative solve with no exact multipliers. DeepLift
    names it; IG runs through it; the CLI's default explains it by ablation, and says so."""
    from onnx_attr.app.cli import main

    estimator = SVC(probability=True, random_state=0)
    proto, x = _export(estimator, *IRIS)
    model = onnx_attr.load(proto)
    rows = x[::30]
    assert model.verify(rows).passed
    np.testing.assert_allclose(model.run(rows)[1].numpy(), estimator.predict_proba(rows), atol=2e-3)
    with pytest.raises(OnnxAttrError, match="SVMProbabilityCoupling"):
        onnx_attr.DeepLift(model).attribute(torch.tensor(rows), target=0)
    attributions = onnx_attr.IntegratedGradients(model).attribute(torch.tensor(rows), target=0, n_steps=8)
    assert torch.isfinite(attributions).all()
    path = tmp_path / "svc.onnx"
    onnx.save(proto, path)
    np.savez(tmp_path / "x.npz", X=rows)
    assert main(["-q", "attribute", str(path), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out"),
                 "--no-pictures"]) == 0
    assert "FeatureAblation" in capsys.readouterr().out


def _one_vector_rbf(gamma: float, support: np.ndarray, coefficient: float, rho: float) -> onnx.ModelProto:
    node = helper.make_node("SVMRegressor", ["x"], ["y"], domain="ai.onnx.ml", kernel_type="RBF",
                            kernel_params=[gamma, 0.0, 3.0], n_supports=1, support_vectors=support.tolist(),
                            coefficients=[coefficient], rho=[rho])
    graph = helper.make_graph([node], "svr", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, len(support)])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])


def test_rbf_deeplift_matches_the_rescale_rule_by_hand():
    """f(x) = c·exp(-γ‖x − sv‖²) + ρ. DeepLift: Exp's secant m = Δexp / Δ(-γd²), and each squared
    term's secant (x_f + x0_f − 2 sv_f): attribution_f = c·m·(-γ)·(x_f + x0_f − 2 sv_f)(x_f − x0_f),
    computed here in float64 at magnitudes where the terms cancel (features near 1000)."""
    support = np.array([980.0, 1010.0, 995.0, 1003.0])
    gamma, coefficient = 1e-4, 2.5
    model = onnx_attr.load(_one_vector_rbf(gamma, support, coefficient, -0.3))
    x = np.array([[1000.0, 990.0, 1020.0, 1001.0], [960.0, 1030.0, 990.0, 1005.0]], np.float32)
    x0 = np.array([[990.0, 1000.0, 1000.0, 1000.0]], np.float32)
    assert model.verify(x).passed
    attributions = onnx_attr.DeepLift(model).attribute(torch.tensor(x), torch.tensor(x0)).numpy()
    xd, x0d = x.astype(np.float64), x0.astype(np.float64)
    d, d0 = ((xd - support) ** 2).sum(1, keepdims=True), ((x0d - support) ** 2).sum(1, keepdims=True)
    m = (np.exp(-gamma * d) - np.exp(-gamma * d0)) / (-gamma * d + gamma * d0)
    expected = coefficient * m * -gamma * (xd + x0d - 2 * support) * (xd - x0d)
    np.testing.assert_allclose(attributions, expected, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(attributions.sum(1), (model.run(x)[0].numpy() - model.run(x0)[0].numpy()).reshape(-1),
                               atol=1e-5)


def test_rbf_distance_is_computed_in_row_chunks(monkeypatch):
    """No [rows, vectors, features] tensor beyond the chunk: the chunked forward is the same."""
    from onnx_attr.importing.converters import svm

    proto = _one_vector_rbf(0.01, np.array([1.0, -2.0, 0.5]), 1.5, 0.1)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32) * 5
    whole = onnx_attr.load(proto).run(x)[0].numpy()
    monkeypatch.setattr(svm, "_CHUNK_ELEMENTS", 7)  # 2 rows per chunk
    chunked = onnx_attr.load(proto)
    assert chunked.verify(x).passed
    np.testing.assert_array_equal(chunked.run(x)[0].numpy(), whole)


@pytest.mark.parametrize("change,message", [
    ({"vectors_per_class": [1, 1]}, "vectors_per_class"),  # 3 classes, 2 counts
    ({"support_vectors": [1.0, 2.0, 3.0, 4.0]}, "support-vector values"),  # not a whole number of vectors
    ({"support_vectors": [1.0, 2.0, 3.0]}, "features"),  # vectors of 1 feature, an input of 2
    ({"classlabels_ints": list(range(5000))}, "pairs of classes"),  # 12.5 M pairs: the loop budget
])
def test_malformed_svm_classifiers_are_refused_at_load_by_node(change, message):
    attrs = dict(kernel_type="RBF", kernel_params=[0.5, 0.0, 3.0], vectors_per_class=[1, 1, 1],
                 support_vectors=[0.0, 1.0, 1.0, 0.0, 1.0, 1.0], coefficients=[1.0, -1.0, 0.5, 0.5, -1.0, 1.0],
                 rho=[0.1, 0.2, 0.3], classlabels_ints=[0, 1, 2])
    attrs.update(change)
    node = helper.make_node("SVMClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", name="svm", **attrs)
    graph = helper.make_graph([node], "svc", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    with pytest.raises(OnnxAttrError, match=message) as caught:
        onnx_attr.load(proto)
    assert "svm" in str(caught.value)


@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
def test_two_class_scores_under_every_post_transform_match_onnxruntime(transform):
    """Two classes and no probabilities: onnxruntime writes [-s, s], their logistic under LOGISTIC, and
    [1 - s, s] under the softmaxes. Checked by verify on a hand-built node with mixed-sign coefficients."""
    rng = np.random.default_rng(1)
    node = helper.make_node("SVMClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", kernel_type="RBF",
                            kernel_params=[0.4, 0.3, 2.0], support_vectors=rng.normal(size=12).tolist(),
                            vectors_per_class=[2, 2], coefficients=rng.normal(size=4).tolist(), rho=[0.2],
                            classlabels_ints=[0, 1], post_transform=transform)
    graph = helper.make_graph([node], "svc", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model = onnx_attr.load(proto, strip_final_activation=False)
    report = model.verify(rng.normal(size=(5, 3)).astype(np.float32))
    assert report.passed, report.format()
