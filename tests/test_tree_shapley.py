"""DeepLift on tree ensembles: each feature's baseline Shapley value of the trees (rules/trees.py).

Oracles: the Shapley values computed by brute force over every subset of features, each hybrid input
(x on the subset, the reference elsewhere) run by onnxruntime; a hand-computed tree; shap's
interventional TreeExplainer with the reference as its one background row; the completeness
identity at magnitudes of unscaled data.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import onnx_attr

skl2onnx = pytest.importorskip("skl2onnx")
sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


def brute_force_shapley(proto, x: np.ndarray, x0: np.ndarray, output: int = -1, run=None) -> np.ndarray:
    """[rows, features, columns]: Shapley values of onnxruntime's output (or `run`'s) over all 2^F hybrids."""
    if run is None:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        run = lambda hybrids: session.run(None, {name: hybrids})[output]  # noqa: E731
    n, f = x.shape
    subsets = np.array(list(itertools.product([False, True], repeat=f)))
    found = []
    for row in x:
        hybrids = np.where(subsets, row, x0[0]).astype(x.dtype)
        values = np.asarray(run(hybrids)).astype(np.float64).reshape(len(subsets), -1)
        by_subset = {tuple(s): v for s, v in zip(subsets.tolist(), values)}
        phi = np.zeros((f, values.shape[1]))
        for s, v in by_subset.items():
            k = sum(s)
            for i in range(f):
                if not s[i]:
                    with_i = list(s)
                    with_i[i] = True
                    weight = math.factorial(k) * math.factorial(f - k - 1) / math.factorial(f)
                    phi[i] += weight * (by_subset[tuple(with_i)] - v)
        found.append(phi)
    return np.stack(found)


def _export(estimator, x):
    classifier = hasattr(estimator, "predict_proba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skl2onnx.to_onnx(estimator, x[:1], options={id(estimator): {"zipmap": False}} if classifier else None,
                                target_opset={"": 17, "ai.onnx.ml": 3})


def _data(features: int = 6, scale: float = 1.0, seed: int = 0):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x[:, :features] * scale).astype(np.float32)  # unnormalised: areas in the thousands
    return x, y


def _cases():
    ens = sklearn_ensemble
    return {
        "forest-classifier": (ens.RandomForestClassifier(8, max_depth=6, random_state=0), 1.0),
        "forest-regressor-unscaled": (ens.RandomForestRegressor(6, max_depth=8, random_state=0), 1e3),
        "boosted-regressor": (ens.GradientBoostingRegressor(n_estimators=25, max_depth=4, random_state=0), 1.0),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_deeplift_on_trees_is_their_brute_force_shapley_value(name):
    """Forests (AVERAGE of probabilities, no transform) and boosted regressors (SUM + base): the
    output is the margins, so DeepLift's attributions are the margins' Shapley values, checked
    against all 64 hybrids through onnxruntime, with a reference far from every input."""
    estimator, scale = _cases()[name]
    x, y = _data(scale=scale)
    estimator.fit(x, y * (300.0 if "regressor" in name else 1))  # regression targets in the hundreds
    proto = _export(estimator, x)
    model = onnx_attr.load(proto, strip_final_activation=False)
    rows, reference = x[[3, 70, 250, 400]], x.max(0, keepdims=True) * 2  # beyond every split
    expected = brute_force_shapley(proto, rows, reference)
    for target in range(expected.shape[2]):
        got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference),
                                                         target=target, output=len(model.outputs) - 1, return_convergence_delta=True)
        np.testing.assert_allclose(got.numpy(), expected[:, :, target], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert float(delta.abs().max()) <= 1e-6 * max(1.0, np.abs(expected).max())


def _tree(nodes: list[tuple], leaves: dict[int, float], features: int, **extra) -> onnx.ModelProto:
    """One TreeEnsembleRegressor tree: nodes (id, feature, threshold, true id, false id), BRANCH_LEQ."""
    ids = [n[0] for n in nodes] + list(leaves)
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0] * len(ids), nodes_nodeids=ids,
        nodes_featureids=[n[1] for n in nodes] + [0] * len(leaves),
        nodes_values=[float(n[2]) for n in nodes] + [0.0] * len(leaves),
        nodes_modes=["BRANCH_LEQ"] * len(nodes) + ["LEAF"] * len(leaves),
        nodes_truenodeids=[n[3] for n in nodes] + [0] * len(leaves),
        nodes_falsenodeids=[n[4] for n in nodes] + [0] * len(leaves),
        target_treeids=[0] * len(leaves), target_nodeids=list(leaves), target_ids=[0] * len(leaves),
        target_weights=list(leaves.values()), **extra)
    graph = helper.make_graph([node], "tree", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, features])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


def test_a_hand_computed_and_tree():
    """x_a <= 0.5 ? (x_b <= 0.5 ? 1 : 2) : 3, from (0, 0) to (1, 1): f goes 1 -> 3. The hybrids
    give f({a}) = 3, f({b}) = 2, so φ_a = ((3 - 1) + (3 - 2)) / 2 = 1.5 and φ_b = ((2 - 1) + (3 - 3)) / 2 = 0.5."""
    proto = _tree([(0, 0, 0.5, 1, 2), (1, 1, 0.5, 3, 4)], {3: 1.0, 4: 2.0, 2: 3.0}, features=2)
    model = onnx_attr.load(proto)
    got = onnx_attr.DeepLift(model).attribute(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2))
    np.testing.assert_allclose(got.numpy(), [[1.5, 0.5]], rtol=0, atol=1e-6)


def test_a_feature_split_twice_on_one_path_moves_as_one():
    """x_a <= 0.5 ? (x_a <= 0.2 ? 10 : 20) : (x_b <= 0.5 ? 30 : 40): both of x_a's splits follow one
    value of x_a, so from (0, 0) to (0.3, 1) only x_a changes the leaf (10 -> 20): φ = (10, 0).
    From (0.1, 0) to (0.9, 1): f 10 -> 40; f({a}) = 30, f({b}) = 10: φ_a = (20 + 30) / 2 = 25,
    φ_b = (0 + 10) / 2 = 5."""
    proto = _tree([(0, 0, 0.5, 1, 2), (1, 0, 0.2, 3, 4), (2, 1, 0.5, 5, 6)], {3: 10.0, 4: 20.0, 5: 30.0, 6: 40.0},
                  features=2)
    model = onnx_attr.load(proto)
    got = onnx_attr.DeepLift(model).attribute(torch.tensor([[0.3, 1.0], [0.9, 1.0]]),
                                              torch.tensor([[0.0, 0.0], [0.1, 0.0]]))
    np.testing.assert_allclose(got.numpy(), [[10.0, 0.0], [25.0, 5.0]], rtol=0, atol=1e-5)


def test_softmax_and_logistic_ensembles_are_complete_and_their_margins_are_shapley():
    """A boosted classifier's SOFTMAX (three classes) or LOGISTIC (two) applies to the margins:
    DeepLift takes the margins' Shapley values through the transform's own rule, complete on
    the probabilities; with post_transform NONE the same file's margins are the brute-force values."""
    from sklearn.datasets import load_iris

    for x, y in (load_iris(return_X_y=True), _data()):
        x = x.astype(np.float32)
        estimator = sklearn_ensemble.GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(x, y)
        proto = _export(estimator, x)
        model = onnx_attr.load(proto, strip_final_activation=False)
        rows, reference = x[::37], x.min(0, keepdims=True) - 1
        for target in range(2):
            _, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference),
                                                           target=target, output=len(model.outputs) - 1, return_convergence_delta=True)
            assert float(delta.abs().max()) <= 1e-6
        if len(np.unique(y)) == 2:
            continue  # binary: skl2onnx writes one score column, then its own post-processing
        tree = next(n for n in proto.graph.node if n.op_type.startswith("TreeEnsemble"))
        transform = next(a for a in tree.attribute if a.name == "post_transform")
        transform.s = b"NONE"
        margins = onnx_attr.load(proto, strip_final_activation=False)
        expected = brute_force_shapley(proto, rows[:3], reference)
        got = onnx_attr.DeepLift(margins).attribute(torch.from_numpy(rows[:3]), torch.from_numpy(reference),
                                                    target=1, output=len(margins.outputs) - 1)
        np.testing.assert_allclose(got.numpy(), expected[:, :, 1], rtol=1e-5, atol=1e-6)


def test_shap_interventional_tree_explainer_agrees():
    """shap's TreeExplainer (interventional, the reference as its one background row) on the
    scikit-learn model itself, not its export."""
    shap = pytest.importorskip("shap")
    x, y = _data(features=10, scale=10.0)
    estimator = sklearn_ensemble.GradientBoostingRegressor(n_estimators=40, max_depth=5, random_state=0).fit(x, y * 100)
    model = onnx_attr.load(_export(estimator, x))
    rows, reference = x[:20], x[-1:]
    expected = shap.TreeExplainer(estimator, data=reference.astype(np.float64),
                                  feature_perturbation="interventional").shap_values(rows.astype(np.float64))
    got = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_file_whose_paths_multiply_is_refused_by_the_budget():
    """Sixty levels, each node's two branches the same next node: a valid walk (sixty steps), but 2^60
    root-to-leaf paths. DeepLift says so instead of allocating them."""
    levels = 60
    nodes = [(k, 0, 0.5, k + 1, k + 1) for k in range(levels)]
    proto = _tree(nodes, {levels: 1.0}, features=1)
    model = onnx_attr.load(proto)
    with pytest.raises(Exception, match="leaf paths"):
        onnx_attr.DeepLift(model).attribute(torch.ones(1, 1), torch.zeros(1, 1))


def test_the_softmax_of_a_boosted_classifier_is_stripped_to_margins_whose_shapley_values_deeplift_gives():
    """By default the ensemble's SOFTMAX post_transform is stripped like a network's final softmax
    (the file's own attribute set to NONE): the output is scikit-learn's decision_function, the
    stripped file matches onnxruntime, and DeepLift gives the margins' brute-force Shapley values."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    estimator = sklearn_ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    model = onnx_attr.load(_export(estimator, x))
    scores = model.outputs[-1]
    assert scores.final_activation.op_type == "Softmax" and scores.final_activation.stripped
    assert model.verify(x[::5]).passed
    np.testing.assert_allclose(model.run(x[:10])[-1].numpy(), estimator.decision_function(x[:10]), rtol=1e-5, atol=1e-5)
    rows, reference = x[::25], x[:1]
    expected = brute_force_shapley(model.onnx_model, rows, reference)
    for target in range(3):
        got = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference), target=target,
                                                  output=len(model.outputs) - 1)
        np.testing.assert_allclose(got.numpy(), expected[..., target], rtol=1e-5, atol=1e-5)


def test_a_binary_logistic_of_positive_weights_is_kept():
    """One class scored with positive weights, LOGISTIC: onnxruntime's NONE would write [1 - s, s], not
    the margins, so the strip leaves it; the import still matches onnxruntime."""
    node = helper.make_node(
        "TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", classlabels_int64s=[0, 1],
        post_transform="LOGISTIC", nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_values=[0.5, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0], class_treeids=[0, 0], class_nodeids=[1, 2], class_ids=[0, 0],
        class_weights=[0.2, 1.5])
    graph = helper.make_graph([node], "pair", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [None, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model = onnx_attr.load(proto)
    assert model.outputs[1].final_activation is None
    x = np.array([[0.0], [1.0], [0.5]], np.float32)
    assert model.verify(x).passed
    _, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(x), target=1, output=1, return_convergence_delta=True)
    assert float(delta.abs().max()) <= 1e-6


def test_deeplift_shap_over_a_background_is_shaps_interventional_tree_explainer():
    """DeepLiftShap averages the one-reference values over a background of rows: the interventional
    TreeSHAP values shap computes with that background (ten rows)."""
    shap = pytest.importorskip("shap")
    x, y = _data(features=8)
    estimator = sklearn_ensemble.GradientBoostingRegressor(n_estimators=30, max_depth=4, random_state=0).fit(x, y)
    model = onnx_attr.load(_export(estimator, x))
    background = x[100:110]
    got = onnx_attr.DeepLiftShap(model).attribute(torch.from_numpy(x[:5]), torch.from_numpy(background))
    expected = shap.TreeExplainer(estimator, data=background.astype(np.float64),
                                  feature_perturbation="interventional").shap_values(x[:5].astype(np.float64))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_a_node_two_parents_share_is_a_path_through_each():
    """A malformed but valid file: node 4 (x_c <= 0.5) hangs under both node 1 and node 2. The walk
    takes it through either parent; so do the hybrids. onnxruntime refuses such a file, so the game's
    values come from the imported forward (checked against onnxruntime on proper trees above), and
    the Shapley formula is applied to them by brute force."""
    proto = _tree([(0, 0, 0.5, 1, 2), (1, 1, 0.5, 3, 4), (2, 1, 0.2, 4, 5), (4, 2, 0.5, 6, 7)],
                  {3: 1.0, 5: -2.0, 6: 10.0, 7: 30.0}, features=3)
    model = onnx_attr.load(proto)
    rows = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
    reference = np.array([[1.0, 0.1, 1.0]], np.float32)
    expected = brute_force_shapley(proto, rows, reference, run=lambda h: model.run(h)[0].numpy())[..., 0]
    got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference),
                                                     return_convergence_delta=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert float(delta.abs().max()) <= 1e-5


def _categorical_ensemble(trees: int = 6, depth: int = 4, features: int = 5, seed: int = 0) -> onnx.ModelProto:
    """TreeEnsemble-5 (ai.onnx.ml opset 5) mixing BRANCH_MEMBER splits (a categorical feature in a set of
    codes, as LightGBM's categorical splits are) with BRANCH_LEQ ones, leaves of weights in the hundreds."""
    rng = np.random.default_rng(seed)
    modes, feats, splits, true_ids, true_leaf, false_ids, false_leaf, members, weights, roots = ([] for _ in range(10))
    for _ in range(trees):
        roots.append(len(modes))

        def grow(level: int) -> tuple[int, int]:
            if level == depth or (level > 1 and rng.random() < 0.2):
                weights.append(float(rng.normal() * 100))
                return len(weights) - 1, 1
            at = len(modes)
            member = rng.random() < 0.5
            modes.append(6 if member else 0)
            feats.append(int(rng.integers(features)))
            splits.append(0.0 if member else float(rng.integers(0, 10)) + 0.5)
            if member:
                members.extend(sorted(rng.choice(10, size=int(rng.integers(1, 5)), replace=False).astype(float)))
                members.append(np.nan)
            true_ids.append(0), true_leaf.append(0), false_ids.append(0), false_leaf.append(0)
            true_ids[at], true_leaf[at] = grow(level + 1)
            false_ids[at], false_leaf[at] = grow(level + 1)
            return at, 0

        grow(0)
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, aggregate_function=1, post_transform=0,
        tree_roots=roots, nodes_modes=helper.make_tensor("modes", onnx.TensorProto.UINT8, [len(modes)], modes),
        nodes_featureids=feats, nodes_splits=helper.make_tensor("s", onnx.TensorProto.FLOAT, [len(splits)], splits),
        nodes_truenodeids=true_ids, nodes_trueleafs=true_leaf, nodes_falsenodeids=false_ids,
        nodes_falseleafs=false_leaf, leaf_targetids=[0] * len(weights),
        leaf_weights=helper.make_tensor("w", onnx.TensorProto.FLOAT, [len(weights)], weights),
        membership_values=helper.make_tensor("m", onnx.TensorProto.FLOAT, [len(members)], members))
    graph = helper.make_graph([node], "cats", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, features])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])


def test_set_membership_splits_import_and_get_their_shapley_values():
    """Was refused at import ("BRANCH_MEMBER"). The walk against onnxruntime on codes in and out of
    every set (and between codes), then DeepLift against the brute-force Shapley values over all 2^5
    hybrids run by onnxruntime, from a reference of codes no set holds."""
    proto = _categorical_ensemble()
    model = onnx_attr.load(proto)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 12, size=(300, 5)).astype(np.float32)
    x[::7] += 0.5  # between codes: in no set
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(model.run({"x": x})[0], session.run(None, {"x": x})[0], rtol=1e-6, atol=1e-4)  # float sums
    assert model.verify({"x": x}).passed
    rows, reference = x[:6], np.full((1, 5), 11.0, np.float32)
    expected = brute_force_shapley(proto, rows, reference)
    got, delta = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), torch.from_numpy(reference),
                                                     return_convergence_delta=True)
    np.testing.assert_allclose(got.numpy(), expected[:, :, 0], rtol=1e-5, atol=1e-4)
    assert float(delta.abs().max()) <= 1e-4 and np.abs(expected).max() > 10
