"""NaN as a missing value: rows with gaps, explained where the graph itself reads NaN as "missing"
(a tree ensemble's missing-value tracks, scikit-learn's SimpleImputer).

Oracles: the Shapley values by brute force over every hybrid of the row and the reference, each run
by onnxruntime, which routes the NaN down the trees' tracks itself; hand-computed values of a
linear model behind an imputer; the completeness identity against onnxruntime's own outputs; and
onnxruntime at the ablated copies. The refusals: NaN the graph computes with (a Scaler, a MatMul),
and methods that take the model's gradient at the input.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from test_tree_shapley import _tree, brute_force_shapley

import onnx_attr
from onnx_attr.errors import InputError

skl2onnx = pytest.importorskip("skl2onnx")
pytest.importorskip("sklearn")


def _lightgbm_style(scale: float = 1.0):
    """Three trees over four features, in LightGBM's manner: each split sends NaN down its own side
    (`nodes_missing_value_tracks_true`), so a missing feature lands in leaves no number reaches
    through the same splits. Thresholds and inputs scale together (`scale`: unnormalised data)."""
    s = scale
    trees = [
        # (id, feature, threshold, true, false), leaves, missing-to-true per interior node
        ([(0, 0, 0.5 * s, 1, 2), (1, 1, 1.0 * s, 3, 4), (2, 3, -1.0 * s, 5, 6)],
         {3: 1.0, 4: -2.0, 5: 3.0, 6: 0.5}, [1, 0, 1]),
        ([(0, 2, -1.0 * s, 1, 2), (2, 3, 2.0 * s, 3, 4)], {1: 0.5, 3: -1.5, 4: 4.0}, [0, 1]),
        ([(0, 1, 0.0, 1, 2), (1, 0, 2.0 * s, 3, 4), (2, 2, 3.0 * s, 5, 6)],
         {3: 2.5, 4: -0.25, 5: 1.25, 6: -3.0}, [0, 1, 0]),
    ]
    protos = [_tree(nodes, leaves, features=4, nodes_missing_value_tracks_true=tracks + [0] * len(leaves))
              for nodes, leaves, tracks in trees]
    # the three as one ensemble: the nodes of tree k under tree id k
    first = protos[0].graph.node[0]
    merged = {a.name: list(getattr(a, "ints") or getattr(a, "floats") or getattr(a, "strings")) for a in first.attribute
              if a.name.startswith(("nodes_", "target_"))}
    for k, proto in enumerate(protos[1:], start=1):
        for a in proto.graph.node[0].attribute:
            if a.name in merged:
                values = list(a.ints or a.floats or a.strings)
                merged[a.name] += [k] * len(values) if a.name in ("nodes_treeids", "target_treeids") else values
    for a in list(first.attribute):
        if a.name in merged:
            first.attribute.remove(a)
    from onnx import helper

    first.attribute.extend(helper.make_attribute(k, v) for k, v in merged.items())
    return protos[0]


def _rows(scale: float = 1.0) -> np.ndarray:
    rows = np.array([[0.2, 3.0, np.nan, 2.5],
                     [np.nan, np.nan, 4.0, -2.0],
                     [1.5, -1.0, -3.0, np.nan],
                     [np.nan, 0.5, np.nan, np.nan]], np.float32)
    return rows * scale


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_deeplift_on_missing_features_is_the_brute_force_shapley_value(scale):
    """A missing feature's attribution is its Shapley value against the reference, as onnxruntime
    routes the NaN: all 16 hybrids per row, at unit and at thousand-fold magnitudes, with a reference
    far from every split."""
    proto = _lightgbm_style(scale)
    model = onnx_attr.load(proto)
    rows, reference = _rows(scale), np.full((1, 4), 7.0 * scale, np.float32)
    expected = brute_force_shapley(proto, rows, reference)[:, :, 0]
    assert np.abs(expected[np.isnan(rows)]).max() > 0.5  # the missing features do move the output
    got, delta = onnx_attr.DeepLift(model).attribute(rows, reference, return_convergence_delta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    change = _session(proto).run(None, {"x": rows})[0][:, 0] - _session(proto).run(None, {"x": reference})[0][0, 0]
    np.testing.assert_allclose(got.sum(1), change, rtol=1e-6, atol=1e-6)
    assert float(delta.abs().max()) < 1e-6 * max(1.0, np.abs(change).max())  # float32 outputs


def test_perturbation_methods_take_missing_values_as_onnxruntime_does():
    """ShapleyValues (exact, every coalition) is the same brute-force value; FeatureAblation's
    attribution of a missing feature is onnxruntime's output change when the reference replaces it;
    KernelShap is complete. Lime weighs its samples by distances in the input's space, which a
    missing value has none in: refused with the methods that take it."""
    proto = _lightgbm_style()
    model = onnx_attr.load(proto)
    rows, reference = _rows(), np.zeros((1, 4), np.float32)
    session = _session(proto)
    expected = brute_force_shapley(proto, rows, reference)[:, :, 0]
    got = onnx_attr.ShapleyValues(model).attribute(rows, reference, target=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ablated = onnx_attr.FeatureAblation(model).attribute(rows, reference, target=0)
    for r, f in zip(*np.nonzero(np.isnan(rows))):
        copy = rows[r:r + 1].copy()
        copy[0, f] = 0.0
        change = session.run(None, {"x": rows[r:r + 1]})[0][0, 0] - session.run(None, {"x": copy})[0][0, 0]
        assert ablated[r, f] == pytest.approx(change, abs=1e-6)
    shap = onnx_attr.KernelShap(model).attribute(rows, reference, target=0, n_samples=200)
    total = session.run(None, {"x": rows})[0][:, 0] - session.run(None, {"x": reference})[0][0, 0]
    np.testing.assert_allclose(shap.sum(1), total, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="missing value.*KernelShap"):
        onnx_attr.Lime(model).attribute(rows, reference, target=0)


def _fit(pipeline, features: int = 6, seed: int = 0):
    """A scikit-learn pipeline on breast-cancer features (unnormalised: areas in the thousands) with
    15% of the entries missing, exported without ZipMap."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :features].astype(np.float32)
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < 0.15] = np.nan
    pipeline.fit(x, y * 100.0 if not hasattr(pipeline, "predict_proba") else y)
    options = {id(pipeline.steps[-1][1]): {"zipmap": False}} if hasattr(pipeline, "predict_proba") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(pipeline, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    return proto, x


def test_an_imputer_before_a_forest_is_explained_as_the_whole_pipelines_shapley_value():
    """SimpleImputer → StandardScaler → RandomForestRegressor: the imputer reads the NaN and the scaler
    works per feature, so the hybrids of the raw row are the forest's hybrids, and DeepLift's
    attributions are the whole pipeline's brute-force Shapley values, missing features included."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    proto, x = _fit(make_pipeline(SimpleImputer(), StandardScaler(), RandomForestRegressor(6, max_depth=6,
                                                                                           random_state=0)))
    model = onnx_attr.load(proto)
    rows = x[np.isnan(x).any(1)][:5]
    reference = np.nanmax(x, 0, keepdims=True) * 2
    expected = brute_force_shapley(proto, rows, reference)[:, :, 0]
    got, delta = onnx_attr.DeepLift(model).attribute(rows, reference, return_convergence_delta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert float(delta.abs().max()) < 1e-6 * np.abs(expected).sum(1).max()


def test_an_imputer_before_a_logistic_regression_matches_the_hand_computed_rescale():
    """SimpleImputer → LogisticRegression: z = w·imputed(x) + c, p = σ(z). DeepLift gives feature f
    w_f·(imputed(x)_f − b_f)·(p − p0)/(z − z0), the fill standing for a missing x_f; the probabilities
    of onnxruntime close the sum."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=5000))
    proto, x = _fit(pipeline)
    model = onnx_attr.load(proto, strip_final_activation=False)
    rows = x[np.isnan(x).any(1)][:6]
    reference = np.nanmean(x, 0, keepdims=True)
    imputer, regression = pipeline.steps[0][1], pipeline.steps[1][1]
    filled = np.where(np.isnan(rows), imputer.statistics_, rows).astype(np.float64)
    w, c = regression.coef_[0].astype(np.float64), float(regression.intercept_[0])
    z, z0 = filled @ w + c, reference.astype(np.float64) @ w + c
    sigmoid = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    expected = w * (filled - reference) * ((sigmoid(z) - sigmoid(z0)) / (z - z0))[:, None]
    got, delta = onnx_attr.DeepLift(model).attribute(rows, reference, target=1, output="probabilities",
                                                     return_convergence_delta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    probabilities = _session(proto).run(["probabilities"], {"X": rows})[0][:, 1]
    at_reference = _session(proto).run(["probabilities"], {"X": reference})[0][0, 1]
    np.testing.assert_allclose(got.sum(1), probabilities - at_reference, atol=1e-5)
    assert float(delta.abs().max()) < 1e-5


def test_an_imputer_of_a_sentinel_value_credits_its_fill():
    """SimpleImputer(missing_values=-1) → LinearRegression, a reference at the features' means: an entry
    equal to -1 becomes the fill, a jump of (fill − reference) that the imputer's secant carries. (The
    imputer was taken for a linear op: those entries' attributions were 0, and the sum fell short.)"""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(SimpleImputer(missing_values=-1.0), LinearRegression())
    _, x = _fit(make_pipeline(SimpleImputer(), LinearRegression()))
    x = np.where(np.isnan(x), -1.0, x).astype(np.float32)  # the gaps marked by a sentinel instead
    pipeline.fit(x, (np.arange(len(x)) % 7) * 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(pipeline, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    model = onnx_attr.load(proto)
    rows = x[(x == -1).any(1)][:6]
    reference = x.mean(0, keepdims=True)
    imputer, regression = pipeline.steps[0][1], pipeline.steps[1][1]
    filled = np.where(rows == -1, imputer.statistics_, rows).astype(np.float64)
    expected = regression.coef_ * (filled - reference)
    got, delta = onnx_attr.DeepLift(model).attribute(rows, reference, return_convergence_delta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert float(delta.abs().max()) < 1e-3


def test_nan_the_graph_computes_with_is_refused_clearly():
    """A StandardScaler before the forest (no imputer) computes with the NaN before the trees read it:
    DeepLift refuses it, saying where NaN is taken; FeatureAblation explains the row all the same,
    since the model's output stays finite. A linear model's output is NaN at such a row: refused
    for every method. IntegratedGradients, on a model that does read NaN, says which methods do."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scaled, x = _fit(make_pipeline(StandardScaler(), RandomForestRegressor(4, max_depth=4, random_state=0)))
    rows = x[np.isnan(x).any(1)][:3]
    model = onnx_attr.load(scaled)
    with pytest.raises(InputError, match="reads it from as one.*Scaler"):
        onnx_attr.DeepLift(model).attribute(rows)
    assert np.isfinite(onnx_attr.FeatureAblation(model).attribute(rows, target=0)).all()

    linear, _ = _fit(make_pipeline(SimpleImputer(), StandardScaler(), LinearRegression()))
    plain = onnx_attr.load(linear)
    proto = plain.onnx_model
    imputer = next(n for n in proto.graph.node if n.op_type == "Imputer")
    bypassed = onnx_attr.load(_without(linear, imputer))
    with pytest.raises(InputError, match="not finite there"):
        onnx_attr.FeatureAblation(bypassed).attribute(rows, target=0)
    with pytest.raises(InputError, match="clean or impute"):
        onnx_attr.DeepLift(bypassed).attribute(rows)
    with pytest.raises(InputError, match="reads NaN in \\['X'\\] as a missing value.*DeepLift"):
        onnx_attr.IntegratedGradients(plain).attribute(rows)
    assert np.isfinite(onnx_attr.DeepLift(plain).attribute(rows)).all()


def _without(proto, node):
    """The graph with `node` (one input, one output) taken out: its output wired to its input."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    inner = next(n for n in copy.graph.node if n.name == node.name and n.op_type == node.op_type)
    source, target = inner.input[0], inner.output[0]
    copy.graph.node.remove(inner)
    for n in copy.graph.node:
        for i, name in enumerate(n.input):
            if name == target:
                n.input[i] = source
    return copy


def test_the_cli_reads_empty_cells_as_missing_values_for_a_model_that_reads_them(tmp_path, capsys):
    """`onnx-attr attribute` on a CSV with empty cells: DeepLift (the default) explains the rows whose
    features are missing, complete against onnxruntime, and the report says how the cells were read.
    For a model that computes with its inputs, an empty cell stays the row's error."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    from onnx_attr.app.cli import main

    proto, x = _fit(make_pipeline(SimpleImputer(), RandomForestRegressor(5, max_depth=5, random_state=0)), features=4)
    (tmp_path / "forest.onnx").write_bytes(proto.SerializeToString())
    rows = x[np.isnan(x).any(1)][:4]
    lines = ["a,b,c,d"] + [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in rows]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "-o", str(out),
                 "--baseline", "zeros", "--no-pictures"]) == 0
    found = np.load(out / "attributions.npz")["X"]
    zeros = np.zeros((1, 4), np.float32)
    change = _session(proto).run(None, {"X": rows})[0][:, 0] - _session(proto).run(None, {"X": zeros})[0][0, 0]
    np.testing.assert_allclose(found.sum(1), change, rtol=1e-5, atol=1e-4)
    report = json.loads((out / "report.json").read_text())
    assert "NaN" in json.dumps(report)
    # a dataset job reads the cells alike: every row explained, none an error row
    assert main(["dataset", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "--out",
                 str(tmp_path / "d"), "--baseline", "zeros", "--quiet"]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["rows_computed"] == len(rows) and summary["error_rows_computed"] == 0, summary
    assert summary["verify"]["passed"], summary["verify"]
    assert main(["dataset", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "--out",
                 str(tmp_path / "dm"), "--baseline", "mean", "--quiet"]) == 0
    mean_row = np.load(tmp_path / "dm" / "baseline-mean.npz")["X"]
    np.testing.assert_allclose(mean_row, np.nanmean(rows, 0, keepdims=True), rtol=1e-6)
    # --baseline mean: the mean of the values present in each column
    assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "-o",
                 str(tmp_path / "mean"), "--baseline", "mean", "--no-pictures"]) == 0
    mean = np.nanmean(rows, 0, keepdims=True).astype(np.float32)
    found = np.load(tmp_path / "mean" / "attributions.npz")["X"]
    change = _session(proto).run(None, {"X": rows})[0][:, 0] - _session(proto).run(None, {"X": mean})[0][0, 0]
    np.testing.assert_allclose(found.sum(1), change, rtol=1e-5, atol=1e-4)

    linear, _ = _fit(make_pipeline(SimpleImputer(), LinearRegression()), features=4)
    imputer = next(n for n in linear.graph.node if n.op_type == "Imputer")
    (tmp_path / "linear.onnx").write_bytes(_without(linear, imputer).SerializeToString())
    for name, reads in (("forest", True), ("linear", False)):  # `inspect` says which inputs read NaN as missing
        capsys.readouterr()
        assert main(["inspect", str(tmp_path / f"{name}.onnx"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["inputs"][0]["reads_nan_as_missing"] is reads
    capsys.readouterr()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: [None if np.isnan(v) else float(v) for v in rows[:, j]] for j, k in enumerate("abcd")}),
                   tmp_path / "rows.parquet")
    for table in ("rows.csv", "rows.parquet"):  # a Parquet null says what a CSV's empty cell says (sweep 35)
        assert main(["attribute", str(tmp_path / "linear.onnx"), "-i", str(tmp_path / table), "-o",
                     str(tmp_path / f"out2_{table}"), "--no-pictures"]) != 0
        assert "is empty in this row (a missing value" in capsys.readouterr().err


@pytest.mark.parametrize("between,reads", [
    (("Cast", {"to": 11}), True),    # to double: the NaN stays a NaN
    (("Cast", {"to": 7}), False),    # to int64: the NaN becomes some number
    (("Identity", {}), True),
    (("Neg", {}), False),            # arithmetic: not the entry the user gave
])
def test_which_paths_read_nan_as_missing(between, reads):
    """The graph walk (importing/missing_values.py): data movement keeps the NaN the user gave,
    anything else (arithmetic, a cast to an integer) does not; `inspect` and every method follow it."""
    from onnx import helper

    proto = _lightgbm_style()
    tree = proto.graph.node[0]
    op, attrs = between
    step = helper.make_node(op, ["x"], ["x_moved"], **attrs)
    tree.input[0] = "x_moved"
    if op == "Cast" and attrs["to"] != 1:  # the tree reads a float: cast back
        proto.graph.node.insert(0, helper.make_node("Cast", ["x_moved"], ["x_back"], to=1))
        tree.input[0] = "x_back"
    proto.graph.node.insert(0, step)
    model = onnx_attr.load(proto)
    assert model.summary()["inputs"][0]["reads_nan_as_missing"] is reads
    if not reads:
        with pytest.raises(InputError, match="clean or impute"):
            onnx_attr.DeepLift(model).attribute(_rows(), np.zeros((1, 4), np.float32))


def test_a_missing_reference_asks_what_knowing_each_value_did():
    """A reference of NaN ("missing" at every feature, or at some): each attribution is what knowing
    the feature did against not knowing it. On trees: the brute-force Shapley values of the hybrids
    (x on S, missing elsewhere), run by onnxruntime; a row missing where the reference is too has not
    moved there. FeatureAblation ablates to missing; behind an imputer the hand rescale holds with the
    fill as the reference; a model that computes with the NaN refuses it."""
    proto = _lightgbm_style()
    model = onnx_attr.load(proto)
    rows = _rows()
    for reference in (np.full((1, 4), np.nan, np.float32), np.array([[np.nan, 2.0, np.nan, 0.5]], np.float32)):
        expected = brute_force_shapley(proto, rows, reference)[:, :, 0]
        got, delta = onnx_attr.DeepLift(model).attribute(rows, reference, return_convergence_delta=True)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        assert not got[np.isnan(rows) & np.isnan(reference)].any()
        assert float(delta.abs().max()) < 1e-5
    session = _session(proto)
    feature = 1  # row 0's feature 1 (3.0) ablated to the reference's (NaN, then 2.0)
    for reference in (np.full((1, 4), np.nan, np.float32), np.array([[np.nan, 2.0, np.nan, 0.5]], np.float32)):
        copy = rows[:1].copy()
        copy[0, feature] = reference[0, feature]
        ablated = onnx_attr.FeatureAblation(model).attribute(rows, reference, target=0)
        change = session.run(None, {"x": rows[:1]})[0][0, 0] - session.run(None, {"x": copy})[0][0, 0]
        assert ablated[0, feature] == pytest.approx(change, abs=1e-6)

    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(SimpleImputer(), LinearRegression())
    imputed, x = _fit(pipeline)
    rows = x[np.isnan(x).any(1)][:5]
    filled = np.where(np.isnan(rows), pipeline.steps[0][1].statistics_, rows).astype(np.float64)
    expected = pipeline.steps[1][1].coef_ * (filled - pipeline.steps[0][1].statistics_)
    got = onnx_attr.DeepLift(onnx_attr.load(imputed)).attribute(rows, np.full((1, x.shape[1]), np.nan, np.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    imputer = next(n for n in imputed.graph.node if n.op_type == "Imputer")
    plain = onnx_attr.load(_without(imputed, imputer))
    with pytest.raises(InputError, match="baseline 'X' has .* NaN"):
        onnx_attr.DeepLift(plain).attribute(np.nan_to_num(rows), np.full((1, x.shape[1]), np.nan, np.float32))
    with pytest.raises(InputError, match="baseline.* hold NaN, and the model's output .* is not finite"):
        onnx_attr.FeatureAblation(plain).attribute(np.nan_to_num(rows), np.full((1, x.shape[1]), np.nan, np.float32))


def test_the_cli_baseline_missing_explains_against_not_knowing(tmp_path, capsys):
    """`--baseline missing`: NaN where the model reads it as missing. The attributions of each row sum
    to onnxruntime's f(row) - f(every feature missing), in `attribute` and in a dataset job; a method
    that cannot take a missing reference, and a model that reads no NaN as missing, are refused with
    what to use instead."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    from onnx_attr.app.cli import main

    proto, x = _fit(make_pipeline(SimpleImputer(), RandomForestRegressor(5, max_depth=5, random_state=0)), features=4)
    (tmp_path / "forest.onnx").write_bytes(proto.SerializeToString())
    rows = x[:6] * 300.0  # unnormalised magnitudes
    lines = ["a,b,c,d"] + [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in rows]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    unknown = np.full((1, 4), np.nan, np.float32)
    change = _session(proto).run(None, {"X": rows})[0][:, 0] - _session(proto).run(None, {"X": unknown})[0][0, 0]
    for method in ("deeplift", "featureablation"):
        out = tmp_path / method
        assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "-o", str(out),
                     "--baseline", "missing", "--method", method, "--no-pictures"]) == 0
        found = np.load(out / "attributions.npz")["X"]
        if method == "deeplift":  # complete; ablation sums to the change only for additive models
            np.testing.assert_allclose(found.sum(1), change, rtol=1e-5, atol=1e-3)
        assert json.loads((out / "report.json").read_text())["baseline"] == "missing"
    assert main(["dataset", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "--out",
                 str(tmp_path / "d"), "--baseline", "missing", "--quiet"]) == 0
    import pyarrow.parquet as pq

    (shard,) = (tmp_path / "d").glob("shard-*.parquet")
    table = pq.read_table(shard).to_pandas().sort_values("row_id")
    assert (table["status"] == "ok").all()
    per_row = np.stack([np.asarray(v) for v in table["attributions"]])
    np.testing.assert_allclose(per_row.sum(1), change, rtol=1e-5, atol=1e-3)

    capsys.readouterr()
    assert main(["attribute", str(tmp_path / "forest.onnx"), "-i", str(tmp_path / "rows.csv"), "-o",
                 str(tmp_path / "ig"), "--baseline", "missing", "--method", "integratedgradients"]) != 0
    assert "cannot take a missing value as its reference; use one of" in capsys.readouterr().err
    linear, _ = _fit(make_pipeline(SimpleImputer(), LinearRegression()), features=4)
    imputer = next(n for n in linear.graph.node if n.op_type == "Imputer")
    (tmp_path / "linear.onnx").write_bytes(_without(linear, imputer).SerializeToString())
    clean = "\n".join(["a,b,c,d"] + [",".join(repr(float(v)) for v in row) for row in np.nan_to_num(rows)]) + "\n"
    (tmp_path / "clean.csv").write_text(clean)
    assert main(["attribute", str(tmp_path / "linear.onnx"), "-i", str(tmp_path / "clean.csv"), "-o",
                 str(tmp_path / "lin"), "--baseline", "missing"]) != 0
    assert "reads none of ['X'] with NaN as a missing value" in capsys.readouterr().err
